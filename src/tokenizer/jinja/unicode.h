// Unicode helpers for the Jinja interpreter: UTF-8 decoding that never fails, and the parts
// of Python's str semantics that templates use (str.isspace, upper/lower, code-point
// indexing). Python strings are sequences of code points; ours are UTF-8 bytes, so every
// length, index and slice goes through the code-point boundaries computed here.
//
// Invalid UTF-8 (possible in a template source, never in JSON input) is handled one byte at a
// time: each bad byte counts as one code point and is copied through unchanged.
//
// Case mapping covers ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic and fullwidth
// Latin; other scripts are left unchanged (Python maps all of Unicode).
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bw::jinja::unicode {

struct Decoded {
  char32_t cp = 0;  // the code point, or the raw byte value when !valid
  size_t len = 1;   // bytes consumed (1 for an invalid byte)
  bool valid = true;
};

// Decodes the sequence starting at s[pos] (pos < s.size()).
Decoded decode(std::string_view s, size_t pos);

void append_utf8(std::string& out, char32_t cp);

bool is_ascii(std::string_view s);

// Number of code points.
size_t length(std::string_view s);

// Byte offset of every code point plus s.size() at the end (size length(s) + 1).
std::vector<size_t> boundaries(std::string_view s);

// Byte offset of code point `index` (0..length); clamps to s.size().
size_t byte_offset(std::string_view s, size_t index);

// Code-point index of byte offset `offset` (which must be a boundary).
size_t code_point_index(std::string_view s, size_t offset);

// Python str.isspace() for one code point (also what Python's re `\s` matches).
bool is_space(char32_t cp);
bool is_alpha(char32_t cp);
bool is_digit(char32_t cp);
bool is_upper(char32_t cp);
bool is_lower(char32_t cp);

// Length in bytes of the whitespace code point at s[pos], 0 if none.
size_t space_at(std::string_view s, size_t pos);

// Python str.strip()/lstrip()/rstrip() without arguments (Unicode whitespace).
std::string_view strip(std::string_view s, bool left, bool right);

// Python str.upper() / str.lower() (within the scripts listed above).
std::string to_upper(std::string_view s);
std::string to_lower(std::string_view s);
// Appends the upper/lower-case form of one code point.
void append_upper(std::string& out, const Decoded& d);
void append_lower(std::string& out, const Decoded& d);

}  // namespace bw::jinja::unicode
