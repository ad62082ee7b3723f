#include "common/status.h"

#include <gtest/gtest.h>

namespace bw {
namespace {

Result<int> parse_positive(int x) {
  if (x <= 0) return InvalidArgument("expected a positive number, got {}", x);
  return x;
}

Result<int> twice(int x) {
  ASSIGN_OR_RETURN(int v, parse_positive(x));
  return 2 * v;
}

Status check(int x) {
  RETURN_IF_ERROR(parse_positive(x).status());
  return OkStatus();
}

TEST(StatusTest, OkAndErrorsCarryCodeAndMessage) {
  EXPECT_TRUE(OkStatus().ok());
  Status s = DataLoss("tensor '{}' truncated", "w");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(s.to_string(), "DataLoss: tensor 'w' truncated");
  EXPECT_EQ(s.with_context("model.gguf").message(), "model.gguf: tensor 'w' truncated");
}

TEST(StatusTest, ResultPropagates) {
  auto ok = twice(4);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 8);
  auto bad = twice(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(check(3).ok());
  EXPECT_EQ(check(0).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bw
