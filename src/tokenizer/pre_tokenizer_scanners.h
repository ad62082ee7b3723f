// The hand-written pre-tokenizer scanners: llama.cpp's unicode_regex_split_custom_gpt2
// and _llama3, which it runs instead of the GPT-2 and Llama-3 regexes (their results are
// the reference where they differ from a regex engine's). Qwen2's pattern is Llama 3's
// with single digits, so it runs the Llama-3 scanner with max_digits = 1 (checked against
// the regex in tests/tokenizer/pre_tokenizer_test.cc). Internal to PreTokenizer.
//
// A scanner splits one fragment [begin, end) of code points (with their unicode::flags)
// and appends the lengths of its pieces. Thread-safe: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bw::pretok {

// Emits piece lengths for one fragment [begin, end) of code points.
class PieceSink {
 public:
  PieceSink(uint32_t begin, std::vector<uint32_t>* out) : prev_end_(begin), out_(out) {}
  void end_at(size_t end) {
    if (end > prev_end_) out_->push_back(static_cast<uint32_t>(end - prev_end_));
    prev_end_ = end;
  }

 private:
  size_t prev_end_;
  std::vector<uint32_t>* out_;
};

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
void scan_gpt2(const uint32_t* cps, const uint16_t* flags, size_t begin, size_t end, std::vector<uint32_t>* out);

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
void scan_llama3(const uint32_t* cps, const uint16_t* flags, size_t begin, size_t end, size_t max_digits,
                 std::vector<uint32_t>* out);

}  // namespace bw::pretok
