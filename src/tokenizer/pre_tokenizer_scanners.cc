#include "tokenizer/pre_tokenizer_scanners.h"

#include "tokenizer/unicode.h"

namespace bw::pretok {
namespace {

constexpr uint32_t kOutOfRange = 0xFFFFFFFF;

}  // namespace

// llama.cpp's unicode_regex_split_custom_gpt2, for one fragment.
void scan_gpt2(const uint32_t* cps, const uint16_t* fl, size_t begin, size_t end, std::vector<uint32_t>* out) {
  using namespace unicode;
  auto cpt = [&](size_t p) { return p < end ? cps[p] : kOutOfRange; };
  auto flags = [&](size_t p) -> uint16_t { return p < end ? fl[p] : 0; };
  PieceSink sink(static_cast<uint32_t>(begin), out);
  size_t pos = begin;
  while (pos < end) {
    const uint32_t cp = cps[pos];
    const uint16_t f = fl[pos];
    if (cp == '\'' && pos + 1 < end) {  // 's|'t|'re|'ve|'m|'ll|'d
      const uint32_t n1 = cps[pos + 1];
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        pos += 2;
        sink.end_at(pos);
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t n2 = cps[pos + 2];
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          pos += 3;
          sink.end_at(pos);
          continue;
        }
      }
    }
    const uint16_t f2 = cp == ' ' ? flags(pos + 1) : f;
    if (f2 & kLetter) {  // ' ?\p{L}+'
      pos += (cp == ' ');
      while (flags(pos) & kLetter)
        ++pos;
      sink.end_at(pos);
      continue;
    }
    if (f2 & kNumber) {  // ' ?\p{N}+'
      pos += (cp == ' ');
      while (flags(pos) & kNumber)
        ++pos;
      sink.end_at(pos);
      continue;
    }
    if (!(f2 & (kWhitespace | kLetter | kNumber)) && f2 != 0) {  // ' ?[^\s\p{L}\p{N}]+'
      pos += (cp == ' ');
      for (uint16_t g = flags(pos); !(g & (kWhitespace | kLetter | kNumber)) && g != 0; g = flags(++pos)) {
      }
      sink.end_at(pos);
      continue;
    }
    size_t num_ws = 0;
    while (flags(pos + num_ws) & kWhitespace)
      ++num_ws;
    if (num_ws > 1 && cpt(pos + num_ws) != kOutOfRange) {  // '\s+(?!\S)'
      pos += num_ws - 1;
      sink.end_at(pos);
      continue;
    }
    if (num_ws > 0) {  // '\s+'
      pos += num_ws;
      sink.end_at(pos);
      continue;
    }
    sink.end_at(++pos);  // no match: one code point
  }
}

// llama.cpp's unicode_regex_split_custom_llama3 for one fragment; `max_digits` 3 is the
// Llama-3 pattern, 1 is Qwen2's (whose regex differs only in \p{N} for \p{N}{1,3}).
void scan_llama3(const uint32_t* cps, const uint16_t* fl, size_t begin, size_t end, size_t max_digits,
                 std::vector<uint32_t>* out) {
  using namespace unicode;
  auto cpt = [&](size_t p) { return p < end ? cps[p] : kOutOfRange; };
  auto flags = [&](size_t p) -> uint16_t { return p < end ? fl[p] : 0; };
  auto lower = [](uint32_t c) { return c < 0x80 ? ((c >= 'A' && c <= 'Z') ? c + 32 : c) : to_lower(c); };
  PieceSink sink(static_cast<uint32_t>(begin), out);
  size_t pos = begin;
  while (pos < end) {
    const uint32_t cp = cps[pos];
    const uint16_t f = fl[pos];
    if (cp == '\'' && pos + 1 < end) {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
      const uint32_t n1 = lower(cps[pos + 1]);
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        pos += 2;
        sink.end_at(pos);
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t n2 = lower(cps[pos + 2]);
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          pos += 3;
          sink.end_at(pos);
          continue;
        }
      }
    }
    if (!(cp == '\r' || cp == '\n' || (f & kNumber))) {  // [^\r\n\p{L}\p{N}]?\p{L}+
      if ((f & kLetter) || (flags(pos + 1) & kLetter)) {
        ++pos;
        while (flags(pos) & kLetter)
          ++pos;
        sink.end_at(pos);
        continue;
      }
    }
    if (f & kNumber) {  // \p{N}{1,max_digits}
      size_t run_begin = pos;
      while (flags(pos) & kNumber) {
        if (++pos - run_begin >= max_digits) {
          sink.end_at(pos);
          run_begin = pos;
        }
      }
      sink.end_at(pos);
      continue;
    }
    const uint16_t f2 = cp == ' ' ? flags(pos + 1) : f;
    if (!(f2 & (kWhitespace | kLetter | kNumber)) && f != 0) {  //  ?[^\s\p{L}\p{N}]+[\r\n]*
      pos += (cp == ' ');
      for (uint16_t g = flags(pos); !(g & (kWhitespace | kLetter | kNumber)) && g != 0; g = flags(++pos)) {
      }
      for (uint32_t c = cpt(pos); c == '\r' || c == '\n'; c = cpt(++pos)) {
      }
      sink.end_at(pos);
      continue;
    }
    size_t num_ws = 0;
    size_t last_newline_end = 0;
    while (flags(pos + num_ws) & kWhitespace) {
      const uint32_t c = cps[pos + num_ws];
      if (c == '\r' || c == '\n') last_newline_end = pos + num_ws + 1;
      ++num_ws;
    }
    if (last_newline_end > 0) {  // \s*[\r\n]+
      pos = last_newline_end;
      sink.end_at(pos);
      continue;
    }
    if (num_ws > 1 && cpt(pos + num_ws) != kOutOfRange) {  // \s+(?!\S)
      pos += num_ws - 1;
      sink.end_at(pos);
      continue;
    }
    if (num_ws > 0) {  // \s+
      pos += num_ws;
      sink.end_at(pos);
      continue;
    }
    sink.end_at(++pos);
  }
}

}  // namespace bw::pretok
