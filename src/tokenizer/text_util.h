// Small string helpers shared by the tokenizer's vocabulary loaders and piece decoding.
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace bw {

// `text` with every non-overlapping occurrence of `from` (non-empty), left to right,
// replaced by `to`.
std::string replace_all(std::string_view text, std::string_view from, std::string_view to);

// The value of one hexadecimal digit (either case), or -1 for any other character.
int hex_value(char c);

}  // namespace bw
