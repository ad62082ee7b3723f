// Finding a model's tokenizer and chat template on disk: a GGUF file (its tokenizer.*
// keys; a vocab-only GGUF is fine), or a Hugging Face model folder / its tokenizer.json
// (read by vocab_from_hf, with tokenizer_config.json for the special tokens and chat
// template, config.json's vocab_size for padding and chat_template.jinja when the config
// has no template, each when present beside it). Thread-safe: pure functions.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace bw {

// The tokenizer of the model at `path`: a .gguf file (or any file with the GGUF magic), a
// folder with tokenizer.json, or a .json file (tokenizer.json). Errors name the path:
// NotFound for a missing file or a folder without tokenizer.json, DataLoss for a corrupt
// file, Unimplemented for a tokenizer this build cannot map.
Result<std::unique_ptr<Tokenizer>> open_tokenizer(const std::string& path);

// The chat template: the text of `override_file` when given, else the model's own
// (GGUF tokenizer.chat_template, or the Hugging Face folder's). NotFound with a hint
// when the model has none.
Result<std::string> find_chat_template(const Tokenizer& tokenizer, const std::string& model_path,
                                       const std::string& override_file);

}  // namespace bw
