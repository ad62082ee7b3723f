// BpeModel: byte-level BPE (GPT-2 style) for one pre-tokenized word at a time, merging
// by rank exactly as llama.cpp's llm_tokenizer_bpe_session does: the word's bytes start as
// the symbols of their GPT-2-mapped characters, the adjacent pair with the lowest merge
// rank is merged (the leftmost on a tie) until no pair has a rank, and each final symbol
// is its token (a symbol that is not a token falls back to its single-byte tokens).
//
// Merges work on integer symbol ids (token ids, plus ids for merge parts that are not
// tokens) through a flat hash table, and the tokens of recent short words are kept in a
// per-thread cache, so repeated words cost one lookup.
//
// Thread-safe: encode_word() is const; the word cache is per thread (no locks).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tokenizer/bpe_word_cache.h"
#include "tokenizer/vocab.h"

namespace bw {

class BpeModel {
 public:
  // `vocab` needs its index built (Vocab::build_index). InvalidArgument when the merges
  // are unusable (none at all).
  static Result<std::unique_ptr<BpeModel>> create(const Vocab& vocab);
  ~BpeModel();

  // Appends the tokens of one word, given as its raw UTF-8 bytes (the GPT-2 byte mapping
  // is applied here).
  void encode_word(std::string_view word, std::vector<int32_t>* out) const;

  size_t num_merges() const { return num_merges_; }

 private:
  class MergeTable;
  class RawIndex;

  BpeModel();
  void merge(std::string_view word, std::vector<int32_t>* out) const;
  void merge_long(std::string_view word, std::vector<int32_t>* out) const;
  void emit(int32_t symbol, std::vector<int32_t>* out) const;

  int32_t num_tokens_ = 0;
  size_t num_merges_ = 0;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_symbol_{};        // symbol of each byte's mapped character
  std::array<int32_t, 256> single_char_token_{};  // token whose text is this one byte, or kNoToken
  std::vector<std::string> extra_texts_;          // texts of symbols >= num_tokens_ (not tokens)
  std::unique_ptr<MergeTable> merges_;
  std::unique_ptr<WordCache> cache_;
  // Raw (unmapped) bytes of every token whose text is all GPT-2-mapped characters -> id:
  // for ignore_merges, a word that is a whole token.
  std::unique_ptr<RawIndex> whole_words_;
};

}  // namespace bw
