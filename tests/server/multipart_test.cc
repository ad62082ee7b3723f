// multipart/form-data parsing for POST /v1/files.
#include "server/multipart.h"

#include <gtest/gtest.h>

namespace bw::server {
namespace {

TEST(Multipart, BoundaryFromContentType) {
  Result<std::string> b = multipart_boundary("multipart/form-data; boundary=----abc123");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "----abc123");
  b = multipart_boundary(R"(Multipart/Form-Data; charset=utf-8; boundary="x y")");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "x y");
  EXPECT_FALSE(multipart_boundary("application/json").ok());
  EXPECT_FALSE(multipart_boundary("multipart/form-data").ok());
}

TEST(Multipart, ParsesFieldsAndFiles) {
  const std::string body =
      "--XX\r\n"
      "Content-Disposition: form-data; name=\"purpose\"\r\n\r\n"
      "batch\r\n"
      "--XX\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
      "Content-Type: application/octet-stream\r\n\r\n"
      "{\"a\":1}\r\n{\"b\":2}\n\r\n"
      "--XX--\r\n";
  Result<std::vector<FormPart>> parts = parse_multipart(body, "XX");
  ASSERT_TRUE(parts.ok()) << parts.status().message();
  ASSERT_EQ(parts->size(), 2u);
  EXPECT_EQ((*parts)[0].name, "purpose");
  EXPECT_EQ((*parts)[0].content, "batch");
  EXPECT_EQ((*parts)[1].name, "file");
  EXPECT_EQ((*parts)[1].filename, "in.jsonl");
  EXPECT_EQ((*parts)[1].content_type, "application/octet-stream");
  EXPECT_EQ((*parts)[1].content, "{\"a\":1}\r\n{\"b\":2}\n");
}

TEST(Multipart, RejectsMalformedBodies) {
  EXPECT_FALSE(parse_multipart("no boundary here", "XX").ok());
  EXPECT_FALSE(parse_multipart("--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated", "XX").ok());
  EXPECT_FALSE(parse_multipart("--XX\r\nno header end", "XX").ok());
  EXPECT_FALSE(parse_multipart("--XXgarbage", "XX").ok());
}

}  // namespace
}  // namespace bw::server
