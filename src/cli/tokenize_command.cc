// `breakwater tokenize`: text -> token ids (or id/piece pairs), ids -> text.
#include <cstdio>
#include <memory>
#include <string>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/mapped_file.h"
#include "tokenizer/open_tokenizer.h"

namespace bw::cli {

namespace {

struct TokenizeArgs {
  std::string model;
  std::string text;
  std::string file;
  std::string decode;
  bool ids_only = false;
  bool add_special = false;
  bool no_parse_special = false;
};

Status run_tokenize(const TokenizeArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, open_tokenizer(args.model));
  if (!args.decode.empty()) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, parse_id_list(args.decode));
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= tokenizer->vocab_size()) {
        return InvalidArgument("--decode: token id {} is outside the vocabulary [0, {})", id, tokenizer->vocab_size());
      }
    }
    const std::string text = tokenizer->decode(ids);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    return OkStatus();
  }
  if (!args.text.empty() && !args.file.empty()) return InvalidArgument("give --text or --file, not both");
  std::string text = args.text;
  if (!args.file.empty()) {
    ASSIGN_OR_RETURN(text, read_file_to_string(args.file));
  }
  const std::vector<int32_t> ids = tokenizer->encode(text, args.add_special, !args.no_parse_special);
  if (args.ids_only) {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i)
      line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return OkStatus();
  }
  for (int32_t id : ids) {
    const std::string piece = tokenizer->token_to_piece(id);
    std::printf("%6d -> '%.*s'\n", id, static_cast<int>(piece.size()), piece.data());
  }
  return OkStatus();
}

}  // namespace

CommandRunner register_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  app.add_option("--model", args->model, "A GGUF model or vocab-only GGUF")->required();
  app.add_option("--text", args->text, "Text to tokenize");
  app.add_option("--file", args->file, "File whose contents to tokenize");
  app.add_option("--decode", args->decode, "Comma-separated token ids to turn back into text");
  app.add_flag("--ids", args->ids_only, "Print only the ids, space-separated on one line");
  app.add_flag("--add-special", args->add_special, "Add the special tokens the vocabulary asks for (BOS)");
  app.add_flag("--no-parse-special", args->no_parse_special,
               "Treat special-token text such as <|im_start|> as plain text");
  return [args]() {
    Status s = run_tokenize(*args);
    if (!s.ok()) return report_error(s);
    return 0;
  };
}

}  // namespace bw::cli
