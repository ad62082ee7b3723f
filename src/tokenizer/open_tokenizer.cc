#include "tokenizer/open_tokenizer.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/mapped_file.h"
#include "tokenizer/hf_tokenizer.h"

namespace bw {
namespace {

namespace fs = std::filesystem;

bool starts_with_gguf_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, sizeof(magic)) && std::memcmp(magic, "GGUF", 4) == 0;
}

// config.json's vocab_size (the embedding rows the token ids index), or 0 when the file
// does not say. Multimodal configs keep it in text_config.
Result<int64_t> read_model_vocab_size(const fs::path& config_path) {
  ASSIGN_OR_RETURN(std::string text, read_file_to_string(config_path.string()));
  const nlohmann::json config = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) return DataLoss("{}: not a JSON object", config_path.string());
  const auto text_config = config.find("text_config");
  for (const nlohmann::json* scope : {&config, text_config == config.end() ? nullptr : &*text_config}) {
    if (scope == nullptr || !scope->is_object()) continue;
    auto it = scope->find("vocab_size");
    if (it == scope->end() || it->is_null()) continue;
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
      return DataLoss("{}: vocab_size must be a positive integer, not {}", config_path.string(), it->dump());
    }
    return it->get<int64_t>();
  }
  return int64_t{0};
}

// A Hugging Face tokenizer: tokenizer.json, with tokenizer_config.json, config.json and
// chat_template.jinja beside it when they exist.
Result<std::unique_ptr<Tokenizer>> open_hf_tokenizer(const fs::path& tokenizer_path) {
  const fs::path dir = tokenizer_path.parent_path();
  std::error_code ec;
  ASSIGN_OR_RETURN(std::string tokenizer_json, read_file_to_string(tokenizer_path.string()));
  std::string config_json;
  if (const fs::path p = dir / "tokenizer_config.json"; fs::is_regular_file(p, ec)) {
    ASSIGN_OR_RETURN(config_json, read_file_to_string(p.string()));
  }
  int64_t vocab_size = 0;
  if (const fs::path p = dir / "config.json"; fs::is_regular_file(p, ec)) {
    ASSIGN_OR_RETURN(vocab_size, read_model_vocab_size(p));
  }
  auto vocab = vocab_from_hf(tokenizer_json, config_json, vocab_size);
  if (!vocab.ok()) return vocab.status().with_context(dir.string());
  // Newer transformers save the template beside tokenizer_config.json.
  if (const fs::path p = dir / "chat_template.jinja"; vocab->chat_template.empty() && fs::is_regular_file(p, ec)) {
    ASSIGN_OR_RETURN(vocab->chat_template, read_file_to_string(p.string()));
  }
  auto tokenizer = Tokenizer::from_vocab(std::move(vocab).value());
  if (!tokenizer.ok()) return tokenizer.status().with_context(tokenizer_path.string());
  return std::move(*tokenizer);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> open_tokenizer(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("{}: no such file or folder", path);
  if (fs::is_directory(path, ec)) {
    const fs::path tokenizer_json = fs::path(path) / "tokenizer.json";
    if (fs::is_regular_file(tokenizer_json, ec)) return open_hf_tokenizer(tokenizer_json);
    return NotFound(
        "{}: the folder has no tokenizer.json (a Hugging Face model folder needs one; a GGUF file can be given "
        "instead)",
        path);
  }
  const fs::path p(path);
  if (p.extension() == ".gguf" || (p.extension() != ".json" && starts_with_gguf_magic(path))) {
    ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
    auto tokenizer = Tokenizer::from_gguf(gguf);
    if (!tokenizer.ok()) return tokenizer.status().with_context(path);
    return std::move(*tokenizer);
  }
  if (p.extension() == ".json") return open_hf_tokenizer(p);
  return InvalidArgument("{}: not a GGUF file, a tokenizer.json or a Hugging Face model folder", path);
}

Result<std::string> find_chat_template(const Tokenizer& tokenizer, const std::string& model_path,
                                       const std::string& override_file) {
  if (!override_file.empty()) return read_file_to_string(override_file);
  if (!tokenizer.vocab().chat_template.empty()) return tokenizer.vocab().chat_template;
  return NotFound(
      "{}: the model has no chat template (GGUF tokenizer.chat_template, or tokenizer_config.json chat_template / "
      "chat_template.jinja); pass --chat-template FILE",
      model_path);
}

}  // namespace bw
