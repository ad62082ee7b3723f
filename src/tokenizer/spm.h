// SpmModel: SentencePiece BPE as llama.cpp's llm_tokenizer_spm_session runs it. The text
// (spaces already escaped as U+2581) is split into UTF-8 characters (by lead byte, so
// invalid bytes are one-byte symbols); adjacent symbols whose concatenation is a token
// are merged, highest score first (the leftmost on a tie), until none is; every symbol
// that is not a token becomes its bytes' <0xXX> tokens.
//
// llama.cpp merges the whole text as one sequence. When no token of the vocab has a
// character other than U+2581 right before a U+2581 (true of Llama's and most SPM
// vocabs; checked at construction), no merge can cross the start of a "▁word", so the
// text is cut there into segments that merge independently, with the same result, and
// each segment's tokens are cached (BPE's WordCache).
//
// Thread-safe: encode() is const and keeps its work space per thread.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/bpe_word_cache.h"
#include "tokenizer/vocab.h"

namespace bw {

class SpmModel {
 public:
  // `vocab` must outlive the model and have its index built.
  explicit SpmModel(const Vocab& vocab);

  // Appends the tokens of `text` (spaces already replaced by U+2581).
  void encode(std::string_view text, std::vector<int32_t>* out) const;

  // Whether encode() may cut the text at each "▁" that follows another character.
  bool segmentable() const { return segmentable_; }
  // llama.cpp's algorithm on the whole text at once, uncached (the tests' reference).
  void encode_whole(std::string_view text, std::vector<int32_t>* out) const { merge(text, out); }

 private:
  void merge(std::string_view text, std::vector<int32_t>* out) const;

  const Vocab& vocab_;
  bool segmentable_ = true;
  WordCache cache_;
  std::array<int32_t, 256> byte_tokens_{};  // <0xXX>, else the one-byte token, else unk
};

}  // namespace bw
