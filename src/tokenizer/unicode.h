// Unicode helpers for the tokenizers: UTF-8 decoding the way llama.cpp does it (every
// invalid byte becomes U+FFFD), strict UTF-8 repair for decoded text, character category
// flags (llama.cpp's \p{L} \p{N} \p{P} ... classes and its whitespace set), simple
// lowercasing, the first code point of NFD decompositions, and GPT-2's byte <-> code
// point map for byte-level BPE.
//
// The category data is Unicode 15.0 (tokenizer/unicode_data.cc). Thread-safe: the tables
// are immutable; the flag table is built once on first use (a function-local static).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bw::unicode {

// Category flags (one of kUndefined..kControl per code point) plus kWhitespace.
enum : uint16_t {
  kUndefined = 1 << 0,    // unassigned (Cn), and anything past U+10FFFF
  kNumber = 1 << 1,       // \p{N}
  kLetter = 1 << 2,       // \p{L}
  kSeparator = 1 << 3,    // \p{Z}
  kMark = 1 << 4,         // \p{M}
  kPunctuation = 1 << 5,  // \p{P}
  kSymbol = 1 << 6,       // \p{S}
  kControl = 1 << 7,      // \p{C} other than Cn
  kCategoryMask = 0xFF,
  kWhitespace = 1 << 8,  // White_Space: U+0009..U+000D, U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, ...
};

inline constexpr uint32_t kReplacementChar = 0xFFFD;
inline constexpr uint32_t kMaxCodepoint = 0x10FFFF;

// The flags of every code point, as a two-level table (256-code-point blocks, identical
// blocks shared). Built once; lookups are two loads.
class FlagTable {
 public:
  static const FlagTable& get();
  uint16_t operator()(uint32_t cp) const {
    if (cp > kMaxCodepoint) return kUndefined;
    return blocks_[static_cast<size_t>(index_[cp >> 8]) * 256 + (cp & 255)];
  }

 private:
  FlagTable();
  std::array<uint16_t, (kMaxCodepoint + 1) / 256> index_{};
  std::vector<uint16_t> blocks_;
};

inline uint16_t flags(uint32_t cp) { return FlagTable::get()(cp); }

// Simple lowercase mapping (the code point itself when it has none).
uint32_t to_lower(uint32_t cp);
// The first code point of the canonical decomposition (the code point itself when it has
// none): llama.cpp's unicode_cpts_normalize_nfd, used by WordPiece.
uint32_t nfd_first(uint32_t cp);

// Bytes in the UTF-8 sequence a lead byte starts, by its high nibble (1 for ASCII,
// continuation and 0xF8..0xFF bytes); llama.cpp's unicode_len_utf8.
inline size_t sequence_length(uint8_t lead) {
  static constexpr uint8_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[lead >> 4];
}

// Decodes the code point at the start of s[0, n) (n >= 1) as llama.cpp's
// unicode_cpts_from_utf8 does: the lead byte's bit pattern says the length, continuation
// bytes must be 10xxxxxx, overlong forms and surrogates are accepted as they decode.
// Anything else (a stray continuation byte, a truncated sequence, 0xF8..0xFF) gives
// U+FFFD for one byte. Unlike llama.cpp (which throws later), values past U+10FFFF are
// also U+FFFD for one byte. Sets *len to the bytes consumed.
inline uint32_t decode(const char* s, size_t n, size_t* len) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  auto cont = [&](size_t i) { return i < n && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; };
  auto bits = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[i]) & 0x3F); };
  if ((b0 & 0x40) != 0) {
    if ((b0 & 0x20) == 0) {
      if (cont(1)) {
        *len = 2;
        return ((b0 & 0x1Fu) << 6) | bits(1);
      }
    } else if ((b0 & 0x10) == 0) {
      if (cont(1) && cont(2)) {
        *len = 3;
        return ((b0 & 0x0Fu) << 12) | (bits(1) << 6) | bits(2);
      }
    } else if ((b0 & 0x08) == 0) {
      if (cont(1) && cont(2) && cont(3)) {
        const uint32_t cp = ((b0 & 0x07u) << 18) | (bits(1) << 12) | (bits(2) << 6) | bits(3);
        if (cp <= kMaxCodepoint) {
          *len = 4;
          return cp;
        }
      }
    }
  }
  *len = 1;
  return kReplacementChar;
}

// Appends the UTF-8 encoding of `cp` (<= U+10FFFF; surrogates get their 3-byte form).
void append_utf8(std::string* out, uint32_t cp);
// Bytes in the UTF-8 encoding of `cp`.
inline size_t utf8_length(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

// True when decode() + append_utf8() reproduce `text` byte for byte (no invalid bytes,
// no overlong forms): then the tokenizers can work on `text` itself.
bool is_canonical(std::string_view text);
// `text` with every code point decoded by decode() and re-encoded: what llama.cpp
// tokenizes in place of the raw bytes.
std::string canonicalize(std::string_view text);

// Strict UTF-8 repair, for decoded text: copies well-formed sequences of `bytes` to `out`
// and replaces each maximal ill-formed subpart with U+FFFD (the Unicode / WHATWG
// practice, as Python's errors="replace"). A well-formed but incomplete sequence at the
// end is kept back (unless `final`, when it becomes one U+FFFD). Returns the number of
// bytes consumed; the rest (at most 3 bytes) must be passed again with more bytes.
size_t append_repaired(std::string* out, std::string_view bytes, bool final);
// True when `bytes` is well-formed UTF-8 (no surrogates, nothing past U+10FFFF).
bool is_valid_utf8(std::string_view bytes);

// GPT-2's byte-level map: each byte is shown as a printable code point (the printable
// Latin-1 bytes as themselves, the others as U+0100 + n in byte order).
uint32_t byte_to_codepoint(uint8_t byte);
// The byte a mapped code point stands for, or -1 when `cp` is not one of the 256.
int codepoint_to_byte(uint32_t cp);

}  // namespace bw::unicode
