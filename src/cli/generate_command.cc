// `breakwater generate`: load a model, run one prompt, print the generated ids and the
// prefill / decode speed (or one JSON object with --json).
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend_factory.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "cli/prompts_file.h"
#include "common/logging.h"
#include "common/thread_pool.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "runner/generator.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/open_tokenizer.h"

namespace bw::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt_ids;
  std::string prompt;
  bool chat = false;
  std::string chat_template_file;
  int64_t max_tokens = 16;
  float temperature = 0.0f;
  uint64_t seed = 0;
  bool json = false;
  std::string device = "cpu";
  int threads = 0;
  std::string weight_dtype = "auto";
  bool ignore_eos = false;
  std::string prompts_file;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  EngineFlags engine;
  std::string log_level = "warn";
};

double per_second(double count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

// The prompt's token ids: --prompt-ids as given, or --prompt tokenized (through the chat
// template with --chat).
Result<std::vector<int32_t>> prompt_tokens(const GenerateArgs& args, const Tokenizer* tokenizer) {
  if (!args.prompt_ids.empty()) return parse_id_list(args.prompt_ids);
  if (tokenizer == nullptr) return Internal("no tokenizer");
  if (!args.chat) return tokenizer->encode(args.prompt, /*add_special=*/true, /*parse_special=*/true);
  ASSIGN_OR_RETURN(std::string source, find_chat_template(*tokenizer, args.model, args.chat_template_file));
  ASSIGN_OR_RETURN(ChatTemplate chat_template, ChatTemplate::create(std::move(source)));
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  const Vocab& vocab = tokenizer->vocab();
  if (vocab.valid_id(vocab.bos_id)) options.bos_token = tokenizer->token_to_piece(vocab.bos_id);
  if (vocab.valid_id(vocab.eos_id)) options.eos_token = tokenizer->token_to_piece(vocab.eos_id);
  const nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", args.prompt}}});
  ASSIGN_OR_RETURN(std::string rendered, chat_template.render(messages, options));
  // The template writes the special tokens (BOS, role markers) itself.
  return tokenizer->encode(rendered, /*add_special=*/false, /*parse_special=*/true);
}

Status run_generate(const GenerateArgs& args, int* exit_code) {
  Logger log = make_stderr_logger("generate", args.log_level);
  const int num_sources = !args.prompt_ids.empty() + !args.prompt.empty() + !args.prompts_file.empty();
  if (num_sources != 1) return InvalidArgument("give exactly one of --prompt-ids, --prompt and --prompts-file");
  if (args.chat && !args.prompts_file.empty()) return InvalidArgument("--chat works with --prompt only");
  if (args.chat && args.prompt.empty()) return InvalidArgument("--chat needs --prompt TEXT");
  ASSIGN_OR_RETURN(std::optional<DType> weight_dtype, parse_weight_dtype(args.weight_dtype));
  // Every engine flag is checked before the slow load, also where one prompt runs without
  // the engine.
  RETURN_IF_ERROR(engine_config_from_flags(args.engine, DType::kF32).status());
  if (args.max_tokens < 0) return InvalidArgument("--max-tokens must be >= 0");
  if (args.temperature < 0) return InvalidArgument("--temperature must be >= 0");

  const auto load_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::open(args.model));
  // The CUDA backend computes in f32 for f32 weights and in bf16 otherwise.
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                   create_backend(args.device, args.threads, weight_dtype.value_or(checkpoint.config().weight_dtype)));
  log->info("{}: {}", args.model, checkpoint.config().summary());
  ASSIGN_OR_RETURN(const DType kv_dtype, kv_dtype_from_flag(args.engine.kv_dtype, backend->activation_dtype()));
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto t = model_tokenizer(checkpoint, args.model); t.ok()) {
    tokenizer = std::move(*t);
  } else if (!args.prompt.empty()) {
    return t.status();
  } else {
    log->info("no tokenizer, printing ids only: {}", t.status().message());
  }
  std::vector<std::vector<int32_t>> prompts;
  if (!args.prompts_file.empty()) {
    ASSIGN_OR_RETURN(prompts, read_prompts_file(args.prompts_file, tokenizer.get()));
  } else {
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt, prompt_tokens(args, tokenizer.get()));
    prompts.push_back(std::move(prompt));
  }
  ThreadPool load_pool(args.threads);
  WeightLoadOptions load_options;
  load_options.weight_dtype = weight_dtype;
  load_options.pool = &load_pool;
  ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> model, load_causal_lm(checkpoint, *backend, load_options));
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  if (!args.prompts_file.empty()) {
    ASSIGN_OR_RETURN(EngineConfig config, engine_config_from_flags(args.engine, backend->activation_dtype()));
    config.model_name = args.model;
    ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(*model, *backend, tokenizer.get(), config, log));
    GenerationRequest base;
    base.stop.max_tokens = static_cast<int32_t>(std::min<int64_t>(args.max_tokens, INT32_MAX));
    base.stop.ignore_eos = args.ignore_eos;
    base.sampling.temperature = args.temperature;
    base.sampling.top_k = args.top_k;
    base.sampling.top_p = args.top_p;
    base.sampling.min_p = args.min_p;
    base.sampling.seed = args.seed;  // every prompt reproducible on its own
    base.detokenize = tokenizer != nullptr;
    RETURN_IF_ERROR(run_prompts(*engine, prompts, base, args.json));
    *exit_code = 0;
    return OkStatus();
  }
  const std::vector<int32_t>& prompt = prompts.front();
  GenerateOptions options;
  options.max_tokens = args.max_tokens;
  options.sampling.temperature = args.temperature;
  options.sampling.seed = args.seed;
  options.ignore_eos = args.ignore_eos;
  options.kv_block_size = args.engine.kv_block_size;
  options.kv_dtype = kv_dtype;
  Generator generator(*model, *backend);
  // Text is streamed to the terminal as tokens arrive (never a broken UTF-8 sequence).
  std::optional<StreamingDetokenizer> detok;
  if (tokenizer) detok.emplace(*tokenizer, /*skip_special=*/true, /*continuation=*/true);
  std::string text;
  auto on_token = [&](int32_t id) {
    if (!detok) return;
    const std::string delta = detok->push(id);
    text += delta;
    if (!args.json) {
      std::fwrite(delta.data(), 1, delta.size(), stdout);
      std::fflush(stdout);
    }
  };
  ASSIGN_OR_RETURN(GenerateResult r, generator.generate(prompt, options, on_token));
  if (detok) {
    const std::string rest = detok->flush();
    text += rest;
    if (!args.json) std::printf("%s\n", rest.c_str());
  }

  const double prefill_tps = per_second(static_cast<double>(r.prompt_ids.size()), r.prefill_seconds);
  // The first token comes out of prefill; decode steps produce the rest.
  const double decode_steps = r.generated_ids.empty() ? 0.0 : static_cast<double>(r.generated_ids.size() - 1);
  const double decode_tps = per_second(decode_steps, r.decode_seconds);
  if (args.json) {
    nlohmann::json j;
    j["model"] = args.model;
    j["device"] = backend->name();
    j["prompt_ids"] = r.prompt_ids;
    j["generated_ids"] = r.generated_ids;
    j["finish_reason"] = r.finish_reason;
    if (tokenizer) j["text"] = text;
    j["timings"] = {{"load_seconds", load_seconds},
                    {"prefill_seconds", r.prefill_seconds},
                    {"prefill_tokens_per_second", prefill_tps},
                    {"decode_seconds", r.decode_seconds},
                    {"decode_tokens_per_second", decode_tps}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::string ids;
    for (size_t i = 0; i < r.generated_ids.size(); ++i)
      ids += (i ? " " : "") + std::to_string(r.generated_ids[i]);
    std::printf("generated ids: %s\n", ids.c_str());
    std::printf("finish reason: %s\n", r.finish_reason.c_str());
    std::printf("prefill: %zu tokens in %.3f s (%.1f tokens/s)\n", r.prompt_ids.size(), r.prefill_seconds, prefill_tps);
    std::printf("decode: %.0f tokens in %.3f s (%.1f tokens/s)\n", decode_steps, r.decode_seconds, decode_tps);
  }
  *exit_code = 0;
  return OkStatus();
}

}  // namespace

CommandRunner register_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  app.add_option("--model", args->model, "Model: a .gguf file or a Hugging Face folder (config.json + safetensors)")
      ->required();
  app.add_option("--prompt-ids", args->prompt_ids, "Prompt token ids, comma-separated (e.g. 1,403,407)");
  app.add_option("--prompt", args->prompt, "Prompt text (tokenized with the model's tokenizer)");
  app.add_flag("--chat", args->chat, "Wrap --prompt as a user message in the model's chat template");
  app.add_option("--chat-template", args->chat_template_file, "A Jinja chat template file to use instead");
  app.add_option("--max-tokens", args->max_tokens, "Tokens to generate")->capture_default_str();
  app.add_option("--temperature", args->temperature, "Sampling temperature; 0 is greedy")->capture_default_str();
  app.add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  app.add_flag("--json", args->json, "Print one JSON object");
  app.add_option("--device", args->device, "Device: cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads", args->threads, "CPU threads; 0 = all hardware threads")->capture_default_str();
  app.add_option("--dtype", args->weight_dtype,
                 "Weight dtype in memory: auto (the checkpoint's float type; quantised -> f32), f32, f16, bf16")
      ->capture_default_str();
  app.add_option("--prompts-file", args->prompts_file,
                 "Run every prompt of this file (one per line: text, or token ids separated by commas or spaces) "
                 "through one engine concurrently");
  app.add_option("--top-k", args->top_k, "Sample among the k most likely tokens (0: all)")->capture_default_str();
  app.add_option("--top-p", args->top_p, "Nucleus sampling threshold")->capture_default_str();
  app.add_option("--min-p", args->min_p, "Drop tokens below min-p times the top probability")->capture_default_str();
  add_engine_flags(app, &args->engine);
  app.add_flag("--ignore-eos", args->ignore_eos, "Keep generating after an end-of-sequence token");
  app.add_option("--log-level", args->log_level, "trace, debug, info, warn, error, off")->capture_default_str();
  return [args]() {
    int exit_code = 1;
    Status s = run_generate(*args, &exit_code);
    if (!s.ok()) return report_error(s);
    return exit_code;
  };
}

}  // namespace bw::cli
