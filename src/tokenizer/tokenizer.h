// Tokenizer: text <-> token ids for a GGUF vocabulary, with llama.cpp's semantics
// (llama_tokenize / llama_detokenize), so ids match llama.cpp's test vectors exactly.
//
// encode(text, add_special, parse_special):
//  - Special and added tokens are cut out of the text first, longest first (llama.cpp's
//    tokenizer_st_partition). USER_DEFINED tokens always are, as in llama.cpp and Hugging
//    Face; CONTROL (and UNKNOWN-type) tokens only with parse_special, otherwise their text
//    is tokenized like any other text.
//  - The pieces of text between them go through the vocabulary's algorithm: byte-level
//    BPE after the `tokenizer.ggml.pre` pre-tokenizer, SentencePiece BPE (with a space
//    prefixed to the text and after every special token when add_space_prefix), or
//    WordPiece.
//  - add_special adds BOS/EOS where the vocab says so (WordPiece: CLS ... SEP).
//  - Invalid UTF-8 is tokenized as llama.cpp does: each bad byte as U+FFFD (SPM: as its
//    own byte token).
//
// decode(ids, skip_special) is llama_detokenize(remove_special = skip_special,
// unparse_special = !skip_special): control tokens are shown unless skip_special (which
// also drops a leading BOS and trailing EOS that encode would add); SentencePiece drops
// the one space its prefix put before the first token (not after a dropped BOS, as
// llama.cpp). Two differences: the result is always valid UTF-8 (ill-formed bytes become
// U+FFFD, as Hugging Face decodes), and llama.cpp's optional clean-up of " ?" / " 's" is
// not applied (it would break decode(encode(x)) == x; Vocab::clean_spaces says whether
// the model wants it).
//
// Ownership: owns its Vocab and models; not copyable or movable (models point into the
// vocab), hence unique_ptr. Thread-safe: all const methods may run concurrently (many
// server threads encode at once); the word caches and scratch buffers are per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "io/gguf.h"
#include "tokenizer/vocab.h"

namespace bw {

class BpeModel;
class PreTokenizer;
class SpmModel;
class WpmModel;

class Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& gguf);
  // A hand-built (or modified) vocab. InvalidArgument when it is unusable: no tokens,
  // duplicate texts, add_bos/add_eos/add_sep without a valid id, BPE without merges.
  static Result<std::unique_ptr<Tokenizer>> from_vocab(Vocab vocab);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  // Appends to `out`.
  void encode(std::string_view text, bool add_special, bool parse_special, std::vector<int32_t>* out) const;

  // `continuation`: the ids continue text decoded before (the generated tokens after a
  // prompt), so SentencePiece's first-token space is real and kept, as llama-server
  // streams it.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false, bool continuation = false) const;

  // The bytes a token stands for (control tokens: their text; may be part of a UTF-8
  // character); empty for an id outside the vocabulary.
  std::string token_to_piece(int32_t id) const { return std::string(piece(id, false)); }
  // The same without copying; with skip_special, empty for CONTROL/UNKNOWN-type tokens.
  std::string_view piece(int32_t id, bool skip_special) const;

  const Vocab& vocab() const { return vocab_; }
  size_t vocab_size() const { return vocab_.size(); }
  int32_t bos() const { return vocab_.bos_id; }
  int32_t eos() const { return vocab_.eos_id; }
  int32_t eot() const { return vocab_.eot_id; }
  int32_t unk() const { return vocab_.unk_id; }
  int32_t sep() const { return vocab_.sep_id; }
  int32_t pad() const { return vocab_.pad_id; }
  bool is_eog(int32_t id) const { return vocab_.is_eog(id); }
  bool is_control(int32_t id) const { return vocab_.is_control(id); }

  // A text fragment of encode(): bytes [begin, end) of the text, or a special token.
  struct Fragment {
    size_t begin = 0;
    size_t end = 0;
    int32_t token = kNoToken;  // kNoToken: raw text
  };
  // How encode() cuts `text` around special tokens (exposed for tests).
  void partition(std::string_view text, bool parse_special, std::vector<Fragment>* out) const;

 private:
  class SpecialMatcher;
  explicit Tokenizer(Vocab vocab);
  Status init();
  void encode_text(std::string_view text, std::vector<int32_t>* out) const;

  const Vocab vocab_;
  std::vector<std::string> pieces_;  // token_to_piece of every token
  std::unique_ptr<SpecialMatcher> specials_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // BPE
  std::unique_ptr<BpeModel> bpe_;
  std::unique_ptr<SpmModel> spm_;
  std::unique_ptr<WpmModel> wpm_;
};

}  // namespace bw
