// DecodeGraphs: decode-only steps as graph replays (CUDA graphs), so a step costs one
// input upload and one launch instead of a few hundred kernel launches from the host.
//
// A decode-only step (every sequence brings one token and samples) of B sequences is
// padded to the next captured size P >= B (1, 2, 4, 8, 16, 24, 32, then steps of 16) with
// rows that write no KV (slot -1) and attend to one key of block 0; its block tables are
// padded to a power-of-two width W. The inputs of every (P, W) live at fixed addresses in
// one device buffer, written with one copy per step. capture_all() records every (P, W) up
// to the context length at start-up; otherwise (or for a graph gone stale) the first step
// of a (P, W) runs the forward eagerly (which sizes every scratch buffer; its logits are
// this step's) and then records it. Later steps upload their inputs and replay. A graph is
// recorded again when the model's workspace has moved since, or when the backend reports
// it stale (CapturedGraph::replay: FailedPrecondition).
//
// Not thread-safe: driven by the runner.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"
#include "sched/scheduler.h"

namespace bw {

// Where a step's input tokens come from when the host does not know them yet (overlapped
// steps): rows[i] is the row of `from` (an earlier step's sample_async) that holds sequence
// i's token, or -1 for a token the host knows (ScheduledSequence::token_ids).
struct TokenSource {
  AsyncSample from;
  std::span<const int32_t> rows;
};

class DecodeGraphs {
 public:
  // max_batch: the largest batch replayed (rounded up to a captured size).
  DecodeGraphs(CausalLM& model, Backend& backend, int32_t block_size, int32_t max_batch, int32_t max_model_len);

  // Whether this step can run here: graphs supported and not disabled, decode only, at
  // most max_batch sequences, each within max_model_len.
  bool accepts(std::span<const ScheduledSequence> sequences) const;

  // Runs the step and returns its logits [B, vocab] f32 in backend memory, valid until the
  // next call. With `source`, the tokens it names are taken on the device.
  Result<TensorView> run(std::span<const ScheduledSequence> sequences, std::span<const KvCacheLayer> kv_cache,
                         const TokenSource* source = nullptr);

  // Records the graph of every padded size at every block-table width up to max_model_len
  // (vLLM and SGLang also record theirs at start-up): no step of a serving process then
  // pays an eager forward and a recording, which otherwise fall on the first steps of each
  // batch size and context length, i.e. on a burst of requests. Runs a forward pass of
  // padding rows per shape (reading KV block 0, writing none). Returns the number of
  // graphs; 0 where graphs are off. On failure (e.g. out of memory) drops what it recorded
  // and disables the graphs: steps then run eagerly.
  Result<int64_t> capture_all(std::span<const KvCacheLayer> kv_cache);

  // How many graphs capture_all() records for these arguments (the constructor's).
  static int64_t num_shapes(int32_t block_size, int32_t max_batch, int32_t max_model_len);

  // The padded batch size for b sequences (0 when b > max_batch).
  int32_t padded_size(int32_t b) const;
  int64_t num_graphs() const { return static_cast<int64_t>(graphs_.size()); }
  int64_t num_replays() const { return replays_; }
  int64_t num_captures() const { return captures_; }
  // Set when a capture failed: the steps run eagerly from then on.
  const Status& disabled() const { return disabled_; }
  // The batch sizes recorded, smallest first, and the widest block table (in blocks).
  std::span<const int32_t> sizes() const { return sizes_; }
  int32_t max_width() const { return max_width_; }

 private:
  struct Graph {
    std::unique_ptr<CapturedGraph> graph;
    uint64_t model_epoch = 0;
  };

  // The batch layout of (P, W) inside inputs_: ids, positions, slots, query starts, KV
  // lengths, logits rows, block tables (then the source rows of TokenSource, not read by
  // the graph).
  ForwardInput layout(int32_t padded, int32_t width) const;
  // Allocates the inputs and logits buffers for the largest shape (once).
  Status ensure_buffers();
  // Writes the step's inputs in the (padded, width) layout: `sequences` first, padding rows
  // after; with `source`, takes the device-held tokens it names.
  Status upload_inputs(std::span<const ScheduledSequence> sequences, const TokenSource* source, int32_t padded,
                       int32_t width);
  TensorView padded_logits(int32_t padded) const;  // [padded, vocab] f32
  // Captures the (padded, width) forward; its scratch must already be sized.
  Status record(int32_t padded, int32_t width, std::span<const KvCacheLayer> kv_cache);

  CausalLM& model_;
  Backend& backend_;
  int32_t block_size_;
  int32_t max_batch_;
  int32_t max_width_;  // block-table columns of the longest sequence, rounded to a power of two
  std::vector<int32_t> sizes_;
  std::map<std::pair<int32_t, int32_t>, Graph> graphs_;
  DeviceBuffer inputs_;
  DeviceBuffer logits_;  // [max_batch, vocab] f32
  std::vector<int32_t> host_;
  int64_t replays_ = 0;
  int64_t captures_ = 0;
  Status disabled_;
};

}  // namespace bw
