#include "bench/arrivals.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>

namespace bw::bench {
namespace {

TEST(ArrivalsTest, InfiniteRateSendsAllAtOnce) {
  auto offsets = arrival_offsets(5, std::numeric_limits<double>::infinity(), 1.0, 0);
  ASSERT_TRUE(offsets.ok());
  ASSERT_EQ(offsets->size(), 5u);
  for (double t : *offsets)
    EXPECT_EQ(t, 0.0);
}

TEST(ArrivalsTest, PoissonIsSeededIncreasingWithTheRightMean) {
  const size_t n = 20000;
  const double rate = 8.0;
  auto a = arrival_offsets(n, rate, 1.0, 42);
  auto b = arrival_offsets(n, rate, 1.0, 42);
  auto c = arrival_offsets(n, rate, 1.0, 43);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_EQ((*a)[0], 0.0);
  std::vector<double> gaps;
  for (size_t i = 1; i < n; ++i) {
    ASSERT_GE((*a)[i], (*a)[i - 1]);
    gaps.push_back((*a)[i] - (*a)[i - 1]);
  }
  const double mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / static_cast<double>(gaps.size());
  double var = 0.0;
  for (double g : gaps)
    var += (g - mean) * (g - mean);
  var /= static_cast<double>(gaps.size());
  // Exponential gaps: mean 1/rate and standard deviation 1/rate (coefficient of variation 1).
  EXPECT_NEAR(mean, 1.0 / rate, 0.03 / rate);
  EXPECT_NEAR(std::sqrt(var) / mean, 1.0, 0.05);
}

TEST(ArrivalsTest, BurstinessChangesTheSpreadNotTheMean) {
  auto even = arrival_offsets(20000, 4.0, 4.0, 1);
  ASSERT_TRUE(even.ok());
  const double total = even->back();
  EXPECT_NEAR(total / 19999.0, 0.25, 0.01);
  double var = 0.0;
  for (size_t i = 1; i < even->size(); ++i) {
    const double g = (*even)[i] - (*even)[i - 1];
    var += (g - 0.25) * (g - 0.25);
  }
  // Gamma with shape 4: coefficient of variation 1/sqrt(4) = 0.5.
  EXPECT_NEAR(std::sqrt(var / 19999.0) / 0.25, 0.5, 0.05);
}

TEST(ArrivalsTest, BadArguments) {
  EXPECT_EQ(arrival_offsets(3, 0.0, 1.0, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(arrival_offsets(3, -1.0, 1.0, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(arrival_offsets(3, 1.0, 0.0, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(arrival_offsets(3, std::nan(""), 1.0, 0).status().code(), StatusCode::kInvalidArgument);
  auto none = arrival_offsets(0, 1.0, 1.0, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

}  // namespace
}  // namespace bw::bench
