// The raw Unicode tables behind tokenizer/unicode.h (generated; see unicode_data.cc).
// Internal to the tokenizer module: use the lookups in unicode.h instead. Thread-safe:
// constant data.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bw::unicode_data {

// Category flag runs, ascending: `(first_code_point << 8) | flag`; a run lasts until the
// next one starts (the last one until U+10FFFF). Flags are unicode::kUndefined ..
// unicode::kControl.
extern const uint32_t kCategoryRuns[];
extern const size_t kNumCategoryRuns;

// Simple lowercase mappings {code point, lowercase}, ascending by code point.
extern const uint32_t kLowercase[][2];
extern const size_t kNumLowercase;

// First code point of the NFD decomposition: {first, last, nfd} ranges, ascending.
extern const uint32_t kNfdRanges[][3];
extern const size_t kNumNfdRanges;

}  // namespace bw::unicode_data
