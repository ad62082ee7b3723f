// The engine's command-line flags, shared by `generate --prompts-file` and `serve`.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "engine/engine.h"

namespace bw::cli {

struct EngineFlags {
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_model_len = 0;
  int32_t kv_block_size = 16;
  std::string kv_cache_bytes;  // "4GiB", "512MiB", "1073741824"; empty = auto
  double kv_memory_fraction = 0.25;
  double gpu_memory_utilization = 0.90;
  bool enforce_eager = false;
  bool lazy_graph_capture = false;
  bool no_async_scheduling = false;
  std::string kv_dtype = "auto";  // auto: the backend's activation dtype
  bool no_prefix_caching = false;
  bool no_chunked_prefill = false;
  int64_t batch_window_ms = 0;
  int64_t log_slow_steps_ms = 0;
  uint64_t seed = 0;
  int64_t debug_step_delay_ms = 0;
};

void add_engine_flags(CLI::App& app, EngineFlags* flags);
// `activation_dtype`: the backend's (Backend::activation_dtype), which --kv-dtype auto takes.
Result<EngineConfig> engine_config_from_flags(const EngineFlags& flags, DType activation_dtype);
// --kv-dtype: f32, f16, bf16, or auto (= activation_dtype: f32 on the CPU; on a GPU bf16,
// or f32 for f32 weights), as vLLM's --kv-cache-dtype auto follows the model's dtype.
Result<DType> kv_dtype_from_flag(const std::string& flag, DType activation_dtype);

// "4GiB" -> 4294967296; plain digits are bytes; K/M/G/T with or without "iB"/"B" are
// powers of 1024.
Result<uint64_t> parse_byte_size(const std::string& text);

// The engine's counters as a JSON object (the `stats` line of `generate --json`).
nlohmann::ordered_json engine_stats_json(const EngineStats& stats);

}  // namespace bw::cli
