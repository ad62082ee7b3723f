#include "runner/generator.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "runner/batch_inputs.h"
#include "runner/kv_cache_storage.h"
#include "runner/model_runner.h"

namespace bw {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// One sequence's cache blocks are 0..num_blocks-1 in order.
struct SequenceCache {
  KvCacheStorage storage;
  std::vector<int32_t> block_table;
};

Result<SequenceCache> make_sequence_cache(Backend& backend, const ModelConfig& config, int64_t max_len,
                                          int64_t block_size, DType dtype) {
  const int64_t num_blocks = (max_len + block_size - 1) / block_size;
  ASSIGN_OR_RETURN(KvCacheStorage storage, KvCacheStorage::create(backend, config, num_blocks, block_size, dtype));
  std::vector<int32_t> table(static_cast<size_t>(num_blocks));
  std::iota(table.begin(), table.end(), 0);
  return SequenceCache{std::move(storage), std::move(table)};
}

// Runs tokens[start..] of one sequence through the model; returns the logits of the last
// row (or of every row when all_logits), as f32 on the host.
Result<std::vector<float>> run_step(CausalLM& model, Backend& backend, std::span<const int32_t> tokens,
                                    int64_t start_pos, const SequenceCache& cache, bool all_logits) {
  ScheduledSequence seq;
  seq.start_pos = static_cast<int32_t>(start_pos);
  seq.token_ids.assign(tokens.begin(), tokens.end());
  seq.block_table = cache.block_table;
  seq.sample = true;
  BatchInputs inputs;
  RETURN_IF_ERROR(inputs.build(backend, std::span<const ScheduledSequence>(&seq, 1),
                               static_cast<int32_t>(cache.storage.block_size()), all_logits));
  const int64_t vocab = model.config().vocab_size;
  const int64_t rows = inputs.num_logits_rows();
  // Logits are always f32 (the LM head writes f32 even from bf16 activations).
  const DType act = DType::kF32;
  ASSIGN_OR_RETURN(DeviceBuffer logits_buf, backend.allocate(*dtype_bytes(act, static_cast<uint64_t>(rows * vocab))));
  TensorView logits = logits_buf.view(act, {rows, vocab});
  RETURN_IF_ERROR(model.forward(inputs.input(), cache.storage.layers(), logits));
  std::vector<float> host;
  RETURN_IF_ERROR(read_logits(backend, logits, &host));
  return host;
}

Status check_prompt(std::span<const int32_t> prompt, const ModelConfig& config) {
  if (prompt.empty()) return InvalidArgument("the prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config.vocab_size) {
      return InvalidArgument("prompt token {} at index {} is outside the vocabulary [0, {})", prompt[i], i,
                             config.vocab_size);
    }
  }
  if (static_cast<int64_t>(prompt.size()) >= config.max_position_embeddings) {
    return InvalidArgument("the prompt has {} tokens; the model's context length is {}", prompt.size(),
                           config.max_position_embeddings);
  }
  return OkStatus();
}

}  // namespace

Result<std::vector<float>> Generator::prompt_logits(std::span<const int32_t> prompt, int64_t chunk_tokens,
                                                    int64_t kv_block_size, DType kv_dtype) {
  const ModelConfig& config = model_.config();
  RETURN_IF_ERROR(check_prompt(prompt, config));
  if (chunk_tokens <= 0) return InvalidArgument("chunk size must be positive");
  ASSIGN_OR_RETURN(SequenceCache cache,
                   make_sequence_cache(backend_, config, static_cast<int64_t>(prompt.size()), kv_block_size, kv_dtype));
  std::vector<float> all;
  all.reserve(prompt.size() * static_cast<size_t>(config.vocab_size));
  for (int64_t start = 0; start < static_cast<int64_t>(prompt.size()); start += chunk_tokens) {
    const int64_t n = std::min<int64_t>(chunk_tokens, static_cast<int64_t>(prompt.size()) - start);
    ASSIGN_OR_RETURN(std::vector<float> logits,
                     run_step(model_, backend_, prompt.subspan(static_cast<size_t>(start), static_cast<size_t>(n)),
                              start, cache, /*all_logits=*/true));
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

Result<GenerateResult> Generator::generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                           const std::function<void(int32_t)>& on_token) {
  const ModelConfig& config = model_.config();
  RETURN_IF_ERROR(check_prompt(prompt, config));
  if (options.max_tokens < 0) return InvalidArgument("max_tokens must be >= 0, got {}", options.max_tokens);
  if (options.prefill_chunk_tokens <= 0) return InvalidArgument("prefill chunk must be positive");
  RETURN_IF_ERROR(options.sampling.validate(config.vocab_size));
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  // Never run past the model's context: the last position is max_position_embeddings - 1.
  const int64_t max_new = std::min(options.max_tokens, config.max_position_embeddings - prompt_len);
  ASSIGN_OR_RETURN(SequenceCache cache,
                   make_sequence_cache(backend_, config, prompt_len + std::max<int64_t>(max_new, 1),
                                       options.kv_block_size, options.kv_dtype));
  std::vector<int32_t> stop_ids = options.stop_token_ids;
  if (!options.ignore_eos) stop_ids.insert(stop_ids.end(), config.eos_token_ids.begin(), config.eos_token_ids.end());

  GenerateResult result;
  result.prompt_ids.assign(prompt.begin(), prompt.end());
  result.finish_reason = "length";
  if (max_new == 0) return result;

  Sampler sampler(options.sampling, /*default_seed=*/0);
  const auto prefill_start = Clock::now();
  std::vector<float> logits;
  for (int64_t start = 0; start < prompt_len; start += options.prefill_chunk_tokens) {
    const int64_t n = std::min(options.prefill_chunk_tokens, prompt_len - start);
    ASSIGN_OR_RETURN(
        logits, run_step(model_, backend_, prompt.subspan(static_cast<size_t>(start), static_cast<size_t>(n)), start,
                         cache, /*all_logits=*/false));
  }
  int32_t token = sampler.sample(logits, prompt, result.generated_ids).token_id;
  result.prefill_seconds = seconds_since(prefill_start);

  const auto decode_start = Clock::now();
  for (;;) {
    result.generated_ids.push_back(token);
    if (on_token) on_token(token);
    if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (static_cast<int64_t>(result.generated_ids.size()) >= max_new) break;
    const int64_t pos = prompt_len + static_cast<int64_t>(result.generated_ids.size()) - 1;
    ASSIGN_OR_RETURN(logits, run_step(model_, backend_, std::span<const int32_t>(&token, 1), pos, cache, false));
    token = sampler.sample(logits, prompt, result.generated_ids).token_id;
  }
  result.decode_seconds = seconds_since(decode_start);
  return result;
}

}  // namespace bw
