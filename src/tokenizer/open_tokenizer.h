// Finding a model's tokenizer and chat template on disk: a GGUF file (its tokenizer.*
// keys; a vocab-only GGUF is fine) or, later, a Hugging Face folder (tokenizer.json +
// tokenizer_config.json). Thread-safe: pure functions.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace bw {

// The tokenizer of the model at `path`.
Result<std::unique_ptr<Tokenizer>> open_tokenizer(const std::string& path);

// The chat template: the text of `override_file` when given, else the model's own
// (GGUF tokenizer.chat_template). NotFound with a hint when the model has none.
Result<std::string> find_chat_template(const Tokenizer& tokenizer, const std::string& model_path,
                                       const std::string& override_file);

}  // namespace bw
