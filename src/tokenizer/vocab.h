// Vocab: a tokenizer's vocabulary and settings as plain data, and vocab_from_gguf(),
// which reads them from a GGUF's `tokenizer.*` keys the way llama.cpp's llama_vocab::load
// does (same defaults when a key is absent, same auto-detection of end-of-generation and
// control tokens by their text).
//
// Supported `tokenizer.ggml.model` values: "gpt2" (byte-level BPE), "llama" (SentencePiece
// BPE with byte fallback) and "bert" (WordPiece). A vocab-only GGUF (no tensors) is fine.
//
// Ownership: a Vocab owns all its data (strings are copied out of the GgufFile). Plain
// value type; a const Vocab is safe to read from many threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "io/gguf.h"
#include "tokenizer/pre_tokenizer.h"

namespace bw {

inline constexpr int32_t kNoToken = -1;

enum class VocabType {
  kBpe,  // "gpt2": byte-level BPE with a regex pre-tokenizer
  kSpm,  // "llama": SentencePiece BPE (scores), U+2581 for spaces, byte fallback <0xXX>
  kWpm,  // "bert": WordPiece
};
std::string_view vocab_type_name(VocabType type);

// The token types stored in `tokenizer.ggml.token_type` (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Token attributes (llama.cpp's llama_token_attr), a bit set.
enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,      // special: shown only when asked, parsed only with parse_special
  kAttrUserDefined = 1u << 4,  // added token: always split out of the text, shown as is
  kAttrByte = 1u << 5,         // <0xXX> byte-fallback token
  kAttrLstrip = 1u << 7,       // when split out, eats whitespace on its left
  kAttrRstrip = 1u << 8,       // ... and on its right
};

struct VocabToken {
  std::string text;  // as stored (byte-level BPE: GPT-2-mapped; SPM/WPM: U+2581 for spaces)
  float score = 0.0f;
  uint32_t attr = kAttrNormal;  // TokenAttr bits
};

struct Vocab {
  VocabType type = VocabType::kBpe;
  std::string model;                                       // tokenizer.ggml.model
  std::string pre;                                         // tokenizer.ggml.pre as written ("" when absent)
  PreTokenizerType pre_type = PreTokenizerType::kDefault;  // BPE only
  std::string name;                                        // general.name (a few per-model rules depend on it)

  std::vector<VocabToken> tokens;   // indexed by token id
  std::vector<std::string> merges;  // BPE: "left right", in rank order

  int32_t bos_id = kNoToken;
  int32_t eos_id = kNoToken;
  int32_t eot_id = kNoToken;
  int32_t eom_id = kNoToken;
  int32_t unk_id = kNoToken;
  int32_t sep_id = kNoToken;
  int32_t pad_id = kNoToken;
  int32_t mask_id = kNoToken;
  int32_t fim_pre_id = kNoToken;
  int32_t fim_suf_id = kNoToken;
  int32_t fim_mid_id = kNoToken;
  int32_t fim_pad_id = kNoToken;
  int32_t fim_rep_id = kNoToken;
  int32_t fim_sep_id = kNoToken;
  std::vector<int32_t> eog_ids;  // end-of-generation tokens, ascending

  bool add_bos = false;           // encode(add_special) prepends bos_id
  bool add_eos = false;           // ... appends eos_id
  bool add_sep = false;           // WPM: appends sep_id
  bool add_space_prefix = false;  // SPM: a space before the text (and decode drops it again)
  bool remove_extra_whitespaces = false;
  bool clean_spaces = false;   // llama.cpp's detokenize clean-up (" ?" -> "?"); see Tokenizer::decode
  bool ignore_merges = false;  // BPE: a pre-token that is a whole token skips merging (llama3)
  bool wpm_lowercase = true;   // WPM normaliser
  bool wpm_strip_accents = true;

  std::string chat_template;  // tokenizer.chat_template, "" when absent

  // Things llama.cpp would log while loading (a bad special id, a duplicate token ...).
  std::vector<std::string> warnings;

  size_t size() const { return tokens.size(); }
  bool valid_id(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < tokens.size(); }
  uint32_t attr(int32_t id) const { return valid_id(id) ? tokens[static_cast<size_t>(id)].attr : 0u; }
  bool is_control(int32_t id) const { return (attr(id) & kAttrControl) != 0; }
  bool is_eog(int32_t id) const;

  // The id of the token with exactly this text, or kNoToken. Needs build_index().
  int32_t find(std::string_view text) const;
  // Builds the text -> id index used by find(). DataLoss when two tokens have the same
  // text (llama.cpp refuses such a vocab too).
  Status build_index();
  // Applies llama.cpp's load-time rules to a hand-built vocab: special ids out of range
  // are dropped, EOT/EOM/FIM/EOG tokens are detected by their text and marked CONTROL,
  // CONTROL tokens named "...unused..." are marked UNUSED, eog_ids is rebuilt. Needs
  // build_index(). vocab_from_gguf() already does this.
  void apply_load_rules();

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> index_;
};

// Reads the vocab of a GGUF file. Errors name the key: NotFound for a missing required
// key (tokenizer.ggml.model, tokenizer.ggml.tokens, tokenizer.ggml.merges for gpt2),
// DataLoss for a key of the wrong type or an array that is too short, Unimplemented for a
// tokenizer model or pre-tokenizer this build does not support.
Result<Vocab> vocab_from_gguf(const GgufFile& gguf);

}  // namespace bw
