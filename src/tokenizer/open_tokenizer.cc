#include "tokenizer/open_tokenizer.h"

#include <filesystem>

#include "common/mapped_file.h"

namespace bw {

Result<std::unique_ptr<Tokenizer>> open_tokenizer(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFound("{}: no such file or folder", path);
  if (std::filesystem::is_regular_file(path, ec) && std::filesystem::path(path).extension() == ".gguf") {
    ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
    auto tokenizer = Tokenizer::from_gguf(gguf);
    if (!tokenizer.ok()) return tokenizer.status().with_context(path);
    return std::move(*tokenizer);
  }
  return Unimplemented(
      "{}: loading a tokenizer from a Hugging Face folder (tokenizer.json) is not implemented yet; use a GGUF "
      "file, or a vocab-only GGUF of the same model",
      path);
}

Result<std::string> find_chat_template(const Tokenizer& tokenizer, const std::string& model_path,
                                       const std::string& override_file) {
  if (!override_file.empty()) return read_file_to_string(override_file);
  if (!tokenizer.vocab().chat_template.empty()) return tokenizer.vocab().chat_template;
  return NotFound("{}: the model has no chat template (tokenizer.chat_template); pass --chat-template FILE",
                  model_path);
}

}  // namespace bw
