#include "tokenizer/unicode.h"

#include <algorithm>
#include <map>

#include "tokenizer/unicode_data.h"

namespace bw::unicode {
namespace {

constexpr uint32_t kWhitespaceCodepoints[] = {0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x0020, 0x0085, 0x00A0, 0x1680,
                                              0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008,
                                              0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};

// The 256 code points of GPT-2's byte map, indexed by byte.
std::array<uint32_t, 256> make_byte_map() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> printable{};
  for (int b = 0x21; b <= 0x7E; ++b)
    printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b)
    printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b)
    printable[b] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b)
    map[b] = printable[b] ? static_cast<uint32_t>(b) : next++;
  return map;
}

const std::array<uint32_t, 256>& byte_map() {
  static const std::array<uint32_t, 256> map = make_byte_map();
  return map;
}

}  // namespace

FlagTable::FlagTable() {
  // Expand the runs into one flag per code point, then share identical 256-blocks.
  std::vector<uint16_t> all(kMaxCodepoint + 1, kUndefined);
  for (size_t i = 0; i < unicode_data::kNumCategoryRuns; ++i) {
    const uint32_t first = unicode_data::kCategoryRuns[i] >> 8;
    const uint32_t last =
        i + 1 < unicode_data::kNumCategoryRuns ? (unicode_data::kCategoryRuns[i + 1] >> 8) : kMaxCodepoint + 1;
    const auto flag = static_cast<uint16_t>(unicode_data::kCategoryRuns[i] & 0xFF);
    std::fill(all.begin() + first, all.begin() + last, flag);
  }
  for (uint32_t cp : kWhitespaceCodepoints)
    all[cp] |= kWhitespace;

  std::map<std::vector<uint16_t>, uint16_t> seen;
  for (size_t block = 0; block < index_.size(); ++block) {
    std::vector<uint16_t> values(all.begin() + block * 256, all.begin() + (block + 1) * 256);
    auto [it, inserted] = seen.emplace(values, static_cast<uint16_t>(seen.size()));
    if (inserted) blocks_.insert(blocks_.end(), values.begin(), values.end());
    index_[block] = it->second;
  }
}

const FlagTable& FlagTable::get() {
  static const FlagTable table;
  return table;
}

uint32_t to_lower(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const auto* begin = unicode_data::kLowercase;
  const auto* end = begin + unicode_data::kNumLowercase;
  const auto* it = std::lower_bound(begin, end, cp, [](const uint32_t(&pair)[2], uint32_t v) { return pair[0] < v; });
  return (it != end && (*it)[0] == cp) ? (*it)[1] : cp;
}

uint32_t nfd_first(uint32_t cp) {
  const auto* begin = unicode_data::kNfdRanges;
  const auto* end = begin + unicode_data::kNumNfdRanges;
  // The first range whose `last` is >= cp.
  const auto* it = std::lower_bound(begin, end, cp, [](const uint32_t(&r)[3], uint32_t v) { return r[1] < v; });
  return (it != end && (*it)[0] <= cp) ? (*it)[2] : cp;
}

void append_utf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    const char buf[2] = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    out->append(buf, 2);
  } else if (cp < 0x10000) {
    const char buf[3] = {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
                         static_cast<char>(0x80 | (cp & 0x3F))};
    out->append(buf, 3);
  } else {
    const char buf[4] = {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
                         static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
    out->append(buf, 4);
  }
}

bool is_canonical(std::string_view text) {
  const char* s = text.data();
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    const uint32_t cp = decode(s + i, n - i, &len);
    // U+FFFD from one byte is a replaced invalid byte; an overlong form re-encodes shorter.
    if ((cp == kReplacementChar && len == 1) || utf8_length(cp) != len) return false;
    i += len;
  }
  return true;
}

std::string canonicalize(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    size_t len = 0;
    append_utf8(&out, decode(text.data() + i, text.size() - i, &len));
    i += len;
  }
  return out;
}

size_t append_repaired(std::string* out, std::string_view bytes, bool final) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const auto b = static_cast<uint8_t>(bytes[i]);
    if (b < 0x80) {
      size_t j = i + 1;
      while (j < n && static_cast<uint8_t>(bytes[j]) < 0x80)
        ++j;
      out->append(bytes.data() + i, j - i);
      i = j;
      continue;
    }
    size_t need = 0;
    uint8_t lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      out->append(kReplacement, 3);
      ++i;
      continue;
    }
    size_t k = 1;
    for (; k <= need; ++k) {
      if (i + k >= n) break;
      const auto c = static_cast<uint8_t>(bytes[i + k]);
      if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) break;
    }
    if (k > need) {
      out->append(bytes.data() + i, need + 1);
      i += need + 1;
    } else if (i + k >= n && !final) {
      return i;  // a well-formed start of a sequence whose end has not arrived yet
    } else {
      out->append(kReplacement, 3);
      i += k;
    }
  }
  return n;
}

bool is_valid_utf8(std::string_view bytes) {
  std::string scratch;
  scratch.reserve(bytes.size());
  return append_repaired(&scratch, bytes, /*final=*/true) == bytes.size() && scratch.size() == bytes.size() &&
         scratch == bytes;
}

uint32_t byte_to_codepoint(uint8_t byte) { return byte_map()[byte]; }

int codepoint_to_byte(uint32_t cp) {
  if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) {
    return static_cast<int>(cp);
  }
  if (cp < 256 || cp >= 256 + 68) return -1;
  // U+0100 + n stands for the n-th byte outside the printable ranges.
  static const std::array<int16_t, 68> kOthers = [] {
    std::array<int16_t, 68> others{};
    const auto& map = byte_map();
    for (int b = 0; b < 256; ++b) {
      if (map[b] >= 256) others[map[b] - 256] = static_cast<int16_t>(b);
    }
    return others;
  }();
  return kOthers[cp - 256];
}

}  // namespace bw::unicode
