#include "cli/prompts_file.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "cli/engine_flags.h"

namespace bw::cli {

namespace {

bool is_id_list(const std::string& line) {
  bool has_digit = false;
  for (char c : line) {
    if (c >= '0' && c <= '9') {
      has_digit = true;
    } else if (c != ',' && c != ' ' && c != '\t' && c != '\r') {
      return false;
    }
  }
  return has_digit;
}

}  // namespace

Result<std::vector<std::vector<int32_t>>> read_prompts_file(const std::string& path, const Tokenizer* tokenizer) {
  std::ifstream in(path);
  if (!in) return NotFound("{}: cannot open the prompts file", path);
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (is_id_list(line)) {
      std::string commas = line;
      for (char& c : commas) {
        if (c == ' ' || c == '\t') c = ',';
      }
      std::string compact;  // "1,,2" from "1, 2" -> "1,2"
      for (char c : commas) {
        if (c != ',' || (!compact.empty() && compact.back() != ',')) compact += c;
      }
      if (!compact.empty() && compact.back() == ',') compact.pop_back();
      auto ids = parse_id_list(compact);
      if (!ids.ok()) return ids.status().with_context(fmt::format("{} line {}", path, line_no));
      prompts.push_back(std::move(*ids));
    } else {
      if (tokenizer == nullptr) {
        return InvalidArgument("{} line {}: a text prompt needs the model's tokenizer (give token ids instead)", path,
                               line_no);
      }
      prompts.push_back(tokenizer->encode(line, /*add_special=*/true, /*parse_special=*/true));
    }
  }
  if (prompts.empty()) return InvalidArgument("{}: no prompts", path);
  return prompts;
}

Status run_prompts(Engine& engine, const std::vector<std::vector<int32_t>>& prompts, const GenerationRequest& base,
                   bool json) {
  std::vector<std::unique_ptr<EventQueue>> queues;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest request = base;
    request.prompt_ids = prompts[i];
    queues.push_back(std::make_unique<EventQueue>());
    auto id = engine.submit(std::move(request), queues.back()->sink());
    if (!id.ok()) return id.status().with_context(fmt::format("prompt {}", i));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    Completion completion;
    Status error;
    for (;;) {
      std::optional<EngineEvent> event = queues[i]->pop();
      if (!event) return Unavailable("prompt {}: no answer from the engine", i);
      accumulate_event(*event, &completion);
      if (event->done) {
        error = event->error;
        break;
      }
    }
    const Completion::Choice& choice = completion.choices.at(0);
    const std::string reason(finish_reason_name(choice.finish_reason));
    if (json) {
      nlohmann::json j = {{"index", i},
                          {"prompt_ids", prompts[i]},
                          {"generated_ids", choice.token_ids},
                          {"finish_reason", reason},
                          {"cached_tokens", completion.usage.cached_tokens},
                          {"time_to_first_token_seconds", completion.timings.first_token_seconds},
                          {"total_seconds", completion.timings.total_seconds}};
      if (base.detokenize) j["text"] = choice.text;
      if (!error.ok()) j["error"] = error.to_string();
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::string ids;
      for (size_t t = 0; t < choice.token_ids.size(); ++t)
        ids += (t ? " " : "") + std::to_string(choice.token_ids[t]);
      std::printf("[%zu] %s (%zu prompt tokens, %d cached): %s\n", i, reason.c_str(), prompts[i].size(),
                  completion.usage.cached_tokens, ids.c_str());
      if (base.detokenize) std::printf("[%zu] text: %s\n", i, choice.text.c_str());
      if (!error.ok()) std::printf("[%zu] error: %s\n", i, error.to_string().c_str());
    }
  }
  // The last request's done event can precede the stats of its step by a moment.
  for (int i = 0; i < 200 && engine.stats().num_pending_requests != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const nlohmann::ordered_json stats = engine_stats_json(engine.stats());
  if (json) {
    std::printf("%s\n", nlohmann::ordered_json{{"stats", stats}}.dump().c_str());
  } else {
    std::printf("stats: %s\n", stats.dump(2).c_str());
  }
  return OkStatus();
}

}  // namespace bw::cli
