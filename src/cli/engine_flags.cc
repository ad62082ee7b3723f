#include "cli/engine_flags.h"

#include <cctype>

namespace bw::cli {

void add_engine_flags(CLI::App& app, EngineFlags* f) {
  app.add_option("--max-seqs", f->max_num_seqs, "Sequences running at once")->capture_default_str();
  app.add_option("--max-batched-tokens", f->max_num_batched_tokens, "Tokens per engine step (decode + prefill)")
      ->capture_default_str();
  app.add_option("--max-model-len", f->max_model_len, "Context length; 0 = the model's")->capture_default_str();
  app.add_option("--kv-block-size", f->kv_block_size, "Tokens per KV cache block")->capture_default_str();
  app.add_option("--kv-cache-bytes", f->kv_cache_bytes,
                 "KV cache size, e.g. 2GiB; default: enough for --max-seqs full-length sequences, at most "
                 "--kv-memory-fraction of the memory available at start");
  app.add_option("--kv-memory-fraction", f->kv_memory_fraction,
                 "Cap of the automatic KV cache size, as a fraction of available memory")
      ->capture_default_str();
  app.add_option("--gpu-memory-utilization", f->gpu_memory_utilization,
                 "GPU backends: fraction of the device's memory for weights, activations and the KV cache (the KV "
                 "cache takes what the weights and activations leave)")
      ->capture_default_str();
  app.add_flag("--enforce-eager", f->enforce_eager,
               "GPU backends: launch every op of every step from the host (no CUDA graphs for decode steps)");
  app.add_flag("--lazy-graph-capture", f->lazy_graph_capture,
               "GPU backends: record each decode step's CUDA graph at the first step of its batch size and context "
               "length instead of at start-up (starts sooner; the first steps of a burst wait for recordings)");
  app.add_flag("--no-async-scheduling", f->no_async_scheduling,
               "GPU backends: wait for each decode step's tokens before scheduling the next (no overlap of the "
               "host's work with the device's)");
  app.add_option("--kv-dtype", f->kv_dtype,
                 "KV cache dtype: auto (the activations': f32 on the CPU, bf16 on a GPU unless the weights are f32), "
                 "f32, f16, bf16")
      ->capture_default_str();
  app.add_flag("--no-prefix-caching", f->no_prefix_caching, "Do not reuse KV blocks of earlier prompts");
  app.add_flag("--no-chunked-prefill", f->no_chunked_prefill, "Prefill each prompt in one step");
  app.add_option("--batch-window-ms", f->batch_window_ms,
                 "When idle, wait this long for more requests before the first step")
      ->capture_default_str();
  app.add_option("--log-slow-steps", f->log_slow_steps_ms,
                 "Log (warning) each engine step whose tokens came at least this many ms after the previous step's, "
                 "with its rows and prompt tokens; 0 = off")
      ->capture_default_str();
  app.add_option("--engine-seed", f->seed, "Seed for requests that give none")->capture_default_str();
  // Hidden (empty group): a testing aid that slows every engine step.
  app.add_option("--debug-step-delay-ms", f->debug_step_delay_ms)->group("");
}

Result<uint64_t> parse_byte_size(const std::string& text) {
  size_t i = 0;
  uint64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) != 0) {
    const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (value > (UINT64_MAX - digit) / 10) return InvalidArgument("size '{}' is too large", text);
    value = value * 10 + digit;
    ++i;
  }
  if (i == 0) return InvalidArgument("size '{}' must start with a number (e.g. 4GiB)", text);
  std::string unit = text.substr(i);
  for (char& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  int shift = 0;
  if (unit.empty() || unit == "B") {
    shift = 0;
  } else if (unit == "K" || unit == "KB" || unit == "KIB") {
    shift = 10;
  } else if (unit == "M" || unit == "MB" || unit == "MIB") {
    shift = 20;
  } else if (unit == "G" || unit == "GB" || unit == "GIB") {
    shift = 30;
  } else if (unit == "T" || unit == "TB" || unit == "TIB") {
    shift = 40;
  } else {
    return InvalidArgument("size '{}': unknown unit '{}' (use B, KiB, MiB, GiB, TiB)", text, text.substr(i));
  }
  if (shift > 0 && value > (UINT64_MAX >> shift)) return InvalidArgument("size '{}' is too large", text);
  return value << shift;
}

Result<DType> kv_dtype_from_flag(const std::string& flag, DType activation_dtype) {
  if (flag == "auto") return activation_dtype;
  auto kv_dtype = dtype_from_name(flag);
  if (!kv_dtype || !is_float(*kv_dtype)) return InvalidArgument("--kv-dtype must be auto, f32, f16 or bf16");
  return *kv_dtype;
}

Result<EngineConfig> engine_config_from_flags(const EngineFlags& f, DType activation_dtype) {
  EngineConfig config;
  config.scheduler.max_num_seqs = f.max_num_seqs;
  config.scheduler.max_num_batched_tokens = f.max_num_batched_tokens;
  config.scheduler.max_model_len = f.max_model_len;
  config.scheduler.enable_chunked_prefill = !f.no_chunked_prefill;
  if (f.max_model_len < 0) return InvalidArgument("--max-model-len must be >= 0");
  config.kv_block_size = f.kv_block_size;
  if (!f.kv_cache_bytes.empty()) {
    ASSIGN_OR_RETURN(config.kv_cache_bytes, parse_byte_size(f.kv_cache_bytes));
    if (config.kv_cache_bytes == 0) return InvalidArgument("--kv-cache-bytes must be positive");
  }
  ASSIGN_OR_RETURN(config.kv_dtype, kv_dtype_from_flag(f.kv_dtype, activation_dtype));
  config.enable_prefix_caching = !f.no_prefix_caching;
  if (!(f.kv_memory_fraction > 0.0 && f.kv_memory_fraction <= 1.0))
    return InvalidArgument("--kv-memory-fraction must be in (0, 1]");
  config.kv_memory_fraction = f.kv_memory_fraction;
  if (!(f.gpu_memory_utilization > 0.0 && f.gpu_memory_utilization <= 1.0))
    return InvalidArgument("--gpu-memory-utilization must be in (0, 1]");
  config.gpu_memory_utilization = f.gpu_memory_utilization;
  if (f.enforce_eager) config.max_graph_batch = 0;
  config.lazy_graph_capture = f.lazy_graph_capture;
  config.async_scheduling = !f.no_async_scheduling;
  if (f.batch_window_ms < 0) return InvalidArgument("--batch-window-ms must be >= 0");
  config.batch_window = std::chrono::milliseconds(f.batch_window_ms);
  if (f.log_slow_steps_ms < 0) return InvalidArgument("--log-slow-steps must be >= 0");
  config.log_slow_steps = std::chrono::milliseconds(f.log_slow_steps_ms);
  config.seed = f.seed;
  if (f.debug_step_delay_ms < 0) return InvalidArgument("--debug-step-delay-ms must be >= 0");
  config.debug_step_delay = std::chrono::milliseconds(f.debug_step_delay_ms);
  return config;
}

nlohmann::ordered_json engine_stats_json(const EngineStats& s) {
  nlohmann::ordered_json by_reason = nlohmann::ordered_json::object();
  for (size_t r = 0; r < s.finished_by_reason.size(); ++r) {
    by_reason[std::string(finish_reason_name(static_cast<FinishReason>(r)))] = s.finished_by_reason[r];
  }
  nlohmann::ordered_json histogram = nlohmann::ordered_json::object();
  for (size_t b = 0; b < s.batch_size_histogram.size(); ++b) {
    const std::string label =
        b + 1 == s.batch_size_histogram.size() ? fmt::format(">{}", 1 << (b - 1)) : fmt::format("<={}", 1 << b);
    histogram[label] = s.batch_size_histogram[b];
  }
  return nlohmann::ordered_json{{"steps", s.num_steps},
                                {"overlapped_steps", s.num_overlapped_steps},
                                {"requests_finished", s.requests_finished},
                                {"requests_failed", s.requests_failed},
                                {"finished_by_reason", by_reason},
                                {"prompt_tokens", s.prompt_tokens},
                                {"computed_tokens", s.computed_tokens},
                                {"generated_tokens", s.generated_tokens},
                                {"prefix_queried_tokens", s.prefix_queried_tokens},
                                {"prefix_hit_tokens", s.prefix_hit_tokens},
                                {"preemptions", s.num_preemptions},
                                {"kv_blocks", s.kv_num_blocks},
                                {"kv_block_size", s.kv_block_size},
                                {"kv_used_blocks", s.kv_used_blocks},
                                {"kv_cached_blocks", s.kv_cached_blocks},
                                {"running", s.num_running},
                                {"waiting", s.num_waiting},
                                {"busy_seconds", s.busy_seconds},
                                {"generation_tokens_per_second", s.generation_tokens_per_second},
                                {"batch_size_histogram", histogram}};
}

}  // namespace bw::cli
