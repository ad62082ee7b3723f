#include "common/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace bw {
namespace {

TEST(Sha256Test, FipsVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(m448.data(), m448.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string m896 =
      "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
      "mnopqrstnopqrstu";
  EXPECT_EQ(sha256_hex(m896.data(), m896.size()), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(Sha256Test, OneMillionA) {
  const std::string a(1000000, 'a');
  const std::string expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
  EXPECT_EQ(sha256_hex(a.data(), a.size()), expected);
  // The same message fed in uneven pieces.
  Sha256 h;
  size_t pos = 0;
  for (size_t step = 1; pos < a.size(); step = step * 3 % 1000 + 1) {
    const size_t take = std::min(step, a.size() - pos);
    h.update(a.data() + pos, take);
    pos += take;
  }
  EXPECT_EQ(h.hex_digest(), expected);
}

TEST(Sha256Test, DigestDoesNotResetAndPaddingEdges) {
  Sha256 h;
  h.update(std::string_view("ab"));
  (void)h.hex_digest();
  h.update(std::string_view("c"));
  EXPECT_EQ(h.hex_digest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // Lengths around the 55/56/64-byte padding boundaries agree whether fed at once or by byte.
  for (size_t n : {55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u}) {
    const std::string s(n, 'x');
    Sha256 bytewise;
    for (char c : s)
      bytewise.update(&c, 1);
    EXPECT_EQ(bytewise.hex_digest(), sha256_hex(s.data(), s.size())) << n;
  }
  h.reset();
  EXPECT_EQ(h.hex_digest(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
}  // namespace bw
