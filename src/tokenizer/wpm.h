// WpmModel: WordPiece (BERT) as llama.cpp's llm_tokenizer_wpm_session runs it. The text is
// normalised (NFD first code points, accents dropped and lowercased when the vocab says
// so; control characters, NUL and U+FFFD dropped), split at whitespace and around
// punctuation, ASCII symbols and CJK ideographs; each word, prefixed with U+2581, is
// covered greedily by the longest tokens from the left, and a word that cannot be
// covered becomes the unknown token.
//
// Thread-safe: encode() is const.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace bw {

class WpmModel {
 public:
  // `vocab` must outlive the model and have its index built.
  explicit WpmModel(const Vocab& vocab);

  void encode(std::string_view text, std::vector<int32_t>* out) const;

  // The normalised words of `text` (exposed for tests).
  std::vector<std::string> split_words(std::string_view text) const;

 private:
  const Vocab& vocab_;
  size_t max_token_len_ = 0;
};

}  // namespace bw
