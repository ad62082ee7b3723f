// vocab_from_hf(): a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) read into the
// same Vocab that vocab_from_gguf() builds from the GGUF llama.cpp's convert_hf_to_gguf.py
// would write for that model, so a Tokenizer built from it encodes identically.
//
// What is mapped:
//  - model.type "BPE" with a ByteLevel pre-tokenizer -> VocabType::kBpe ("gpt2"): tokens
//    from model.vocab, merges from model.merges ("a b" strings or [a, b] pairs),
//    ignore_merges from model.ignore_merges (else the pre-tokenizer's default). The
//    pre_tokenizer chain is compared with llama.cpp's regexes (HF spellings such as
//    `(?i:'s|...)`, Digits and ByteLevel(use_regex) are rewritten first) and with the
//    chains of the real files llama.cpp maps by their tokenizer hash: GPT-2/MPT/OLMo
//    (gpt-2), Llama 3 (llama-bpe), Qwen2 and DeepSeek-R1-Distill-Qwen (qwen2), DeepSeek
//    LLM/V2 (deepseek-llm), DeepSeek Coder (deepseek-coder), DeepSeek V3/R1
//    (deepseek-v3), Falcon (falcon), StarCoder/Refact/SmolLM (starcoder). Anything else is
//    Unimplemented, naming the chain; the flags of the matched llama.cpp pre name
//    (PreTokenizerInfo) are applied as vocab_from_gguf does. Normalizers (Qwen2's NFC)
//    are ignored, as llama.cpp ignores them.
//  - model.type "BPE" with byte_fallback and SentencePiece spaces (a Prepend/Replace
//    "▁" normalizer, or a Metaspace pre-tokenizer) -> VocabType::kSpm ("llama"), as
//    Llama 2 / Mistral: a token's score is -(1 + rank of the first merge that makes it)
//    (single characters and tokens no merge makes: 0 / below every merge), <0xXX> tokens
//    are BYTE, add_space_prefix follows the Prepend / prepend_scheme.
//  - added_tokens: special (or text that convert_hf_to_gguf's does_token_look_special
//    accepts, like "<|...|>") -> CONTROL, else USER_DEFINED (BPE: with "▁" shown as a
//    space, as convert_hf_to_gguf does); lstrip/rstrip -> attribute bits; model.unk_token
//    -> UNKNOWN (SPM). Ids past model.vocab extend the list; ids that no token has, and
//    ids up to `pad_to_size` (config.json's vocab_size), become unused "[PAD<id>]".
//  - tokenizer_config.json (may be empty): bos/eos/unk/sep/pad/mask_token (a string or
//    {"content": ...}), add_bos_token/add_eos_token (absent: the pre-tokenizer's default,
//    as llama.cpp), chat_template (a string, or a list of {name, template} of which the
//    one named "default" is used). Then Vocab::apply_load_rules().
//
// Errors: DataLoss for malformed input, naming the file and the JSON field
// ("tokenizer.json: model.merges[3] must be ..."); Unimplemented for a model type
// (WordPiece, Unigram, ...) or pre-tokenizer this build does not map. Never throws.
//
// Not read (they do not change llama.cpp's tokens): config.json's bos/eos_token_id
// (convert_hf_to_gguf falls back to them when tokenizer_config.json names none), added
// tokens' `normalized` / `single_word`, the post_processor.
//
// Thread-safe: a pure function.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "tokenizer/vocab.h"

namespace bw {

// `pad_to_size`: the model's vocab_size (config.json); 0 when unknown. A smaller value
// than the tokens need is ignored (with a warning in Vocab::warnings).
Result<Vocab> vocab_from_hf(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                            int64_t pad_to_size = 0);

}  // namespace bw
