// PreTokenizer: splits text into the words byte-level BPE merges within, by the regexes
// llama.cpp uses for each `tokenizer.ggml.pre` value.
//
// A pre-tokenizer is a list of regexes applied in turn, each one splitting every piece
// left by the previous one into its matches and the text between them (llama.cpp's
// unicode_regex_split). Like llama.cpp, the GPT-2 and Llama-3 patterns run as hand-written
// scanners (whose results are the reference, where they differ from a regex engine), and
// so does Qwen2's (checked against the regex in the tests); the others run on PCRE2 (JIT
// when available) with llama.cpp's semantics: patterns with \p{..} classes match a copy
// of the text where each non-ASCII code point is one byte naming its category (so \p{L}
// is "a letter" by llama.cpp's Unicode tables, and the ASCII meaning of \s, [^...] etc.
// is exactly std::regex's), the others match the code points with non-ASCII whitespace
// shown as \v; `$` means the end of the piece.
//
// Input must be canonical UTF-8 (unicode::canonicalize), which is what llama.cpp splits
// (it replaces invalid bytes with U+FFFD first). Thread-safe: split() is const and keeps
// per-thread scratch buffers; a PreTokenizer may be shared by many threads.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace bw {

// One entry per distinct list of regexes (several `tokenizer.ggml.pre` names share one).
enum class PreTokenizerType {
  kDefault,        // "default" or no pre key: punctuation runs, GPT-2, \p{N}+, 3 digits
  kGpt2,           // gpt-2, mpt, olmo, jais, roberta-bpe, phi-2, jina-*
  kLlama3,         // llama-bpe/llama3, dbrx, smaug-bpe, chatglm-bpe, falcon3, pixtral
  kQwen2,          // qwen2, deepseek-r1-qwen, stablelm2, megrez
  kDeepseekLlm,    // deepseek-llm
  kDeepseekCoder,  // deepseek-coder
  kDeepseek3,      // deepseek-v3
  kFalcon,         // falcon
  kStarcoder,      // starcoder, refact, command-r, smollm, codeshell, exaone, minerva-7b
  kBloom,          // bloom, poro-chat, gpt3-finnish
  kViking,         // viking
  kTekken,         // tekken
  kChameleon,      // chameleon
  kGpt4o,          // gpt-4o
};

// What a `tokenizer.ggml.pre` name means to llama.cpp: the regexes, and the vocab
// settings it changes from the BPE defaults.
struct PreTokenizerInfo {
  PreTokenizerType type = PreTokenizerType::kDefault;
  bool clean_spaces = true;    // llama.cpp's detokenizer clean-up
  bool ignore_merges = false;  // a word that is a whole token is not merged
  bool add_bos = false;        // encode(add_special) adds BOS unless the GGUF says otherwise
  bool add_sep = false;
  bool no_bos = false;  // the default BOS id is dropped (chatglm)
};

// nullopt for a name llama.cpp does not know (or this build does not support).
std::optional<PreTokenizerInfo> pre_tokenizer_info(std::string_view name);
// A name for logs and test output ("qwen2", "deepseek-llm" ...).
std::string_view pre_tokenizer_type_name(PreTokenizerType type);
// The regexes of a type, as llama.cpp writes them.
std::vector<std::string> pre_tokenizer_regexes(PreTokenizerType type);

class PreTokenizer {
 public:
  // Compiles the regexes. `force_regex` runs every pattern on PCRE2, even those that
  // have a hand-written scanner (tests compare the two).
  static Result<PreTokenizer> create(PreTokenizerType type, bool force_regex = false);

  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  PreTokenizerType type() const { return type_; }

  // Splits canonical UTF-8 `text` into words (views into `text`, in order, covering it),
  // appended to `words`.
  void split(std::string_view text, std::vector<std::string_view>* words) const;
  std::vector<std::string> split(std::string_view text) const;

 private:
  struct Stage;
  PreTokenizer() = default;

  PreTokenizerType type_ = PreTokenizerType::kDefault;
  std::vector<std::unique_ptr<Stage>> stages_;
  bool needs_collapsed_ = false;  // some stage matches the category-collapsed text
  bool needs_wide_ = false;       // some stage matches the whitespace-normalised UTF-8
};

}  // namespace bw
