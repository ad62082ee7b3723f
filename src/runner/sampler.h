// Token sampling from one row of logits, following SamplingParams (sched/sampling_params.h):
// raw logprobs first, then logit bias, penalties (repetition over prompt + output,
// presence/frequency over output), then greedy argmax or temperature, min-p, top-k, top-p
// and one uniform draw from the sequence's own generator.
//
// One Sampler per sequence; it owns its generator and scratch buffers. Not thread-safe;
// different Samplers share nothing, so a sequence's tokens depend only on its seed and its
// own logits, whatever else runs in the batch.
//
// Cost per call, vocab V (the row loops run eight floats at a time, exp included): one pass
// for greedy; three for temperature sampling (max, exp, the draw's walk, which skips whole
// blocks); top-k selects with a bounded heap that skips blocks below its worst (no sort of
// the vocabulary); top-p gathers only the tokens above a probability threshold that
// provably holds the top-p set, found either at 1e-3 of the top token or from a histogram of
// the row's mass, then partitions them by mass (no full sort). Penalties cost
// O(len(prompt) + len(output)). Logprobs add one exp pass, and, when the row is modified, a
// copy of it (kept by the Sampler between calls: one vocab row of memory per sequence that
// asks for logprobs).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "sched/sampling_params.h"

namespace bw {

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};

struct SampledToken {
  int32_t token_id = 0;
  // Of token_id under the raw model distribution; set when params.logprobs >= 0.
  float logprob = 0.0f;
  // The params.logprobs most likely tokens (raw distribution), descending, ties by lower id.
  std::vector<TokenLogprob> top;
};

class Sampler {
 public:
  // Uses params.seed when set, else default_seed. Same seed + same logits -> same tokens,
  // whatever other sequences do. `params` should have passed validate(); out-of-range
  // values never crash (bad token ids in logit_bias or the history are ignored).
  Sampler(const SamplingParams& params, uint64_t default_seed);

  // logits: one row [vocab_size], f32, used as scratch (modified). prompt_ids / output_ids
  // feed the penalties (ids outside the row are ignored). An empty row returns token 0.
  SampledToken sample(std::span<float> logits, std::span<const int32_t> prompt_ids,
                      std::span<const int32_t> output_ids);

  const SamplingParams& params() const { return params_; }

 private:
  struct Candidate {
    int32_t token_id;
    float value;  // a logit, then an unnormalised probability
  };
  struct PenaltySlot {
    int32_t token_id;  // -1: empty
    int32_t output_count;
  };

  // By value descending, then id ascending: a strict order, so selections are deterministic.
  static bool better(const Candidate& a, const Candidate& b) {
    return a.value > b.value || (a.value == b.value && a.token_id < b.token_id);
  }
  // The n largest finite values of `values` (ties: lower id first), best first.
  static void select_top(std::span<const float> values, size_t n, std::vector<Candidate>* out);
  // A token drawn from `candidates` (value: unnormalised probability) with `uniform` in [0, 1).
  static int32_t draw(std::span<const Candidate> candidates, double uniform);

  bool modifies_logits() const;
  void apply_logit_bias(std::span<float> logits) const;
  void apply_penalties(std::span<float> logits, std::span<const int32_t> prompt_ids,
                       std::span<const int32_t> output_ids);
  void fill_logprobs(std::span<const float> raw_logits, SampledToken* out);
  int32_t sample_random(std::span<float> logits);
  int32_t sample_top_k(std::span<const float> logits, double uniform);
  int32_t sample_full(std::span<float> logits, double uniform);
  // Top-p over the row's probabilities (those of sample_full): candidates_ becomes the
  // kept set, in an order that depends only on the row.
  void select_top_p(std::span<const float> probs, double total);
  // candidates_ <- the tokens with probability >= threshold and > 0, in id order.
  void gather(std::span<const float> probs, float threshold);
  // Keeps the smallest set of best candidates whose mass reaches `target` (all of them if
  // none does); expected O(n), no full sort.
  static void keep_top_mass(std::vector<Candidate>* candidates, double target);
  static void keep_top_mass_range(std::vector<Candidate>* candidates, size_t lo, size_t hi, double kept_mass,
                                  double target);
  // Uniform in [0, 1) from exactly one generator output.
  double next_uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Scratch, reused between calls.
  std::vector<Candidate> candidates_;
  std::vector<PenaltySlot> penalty_slots_;
  std::vector<double> block_sums_;  // probability mass of each block of the row
  std::vector<float> raw_logits_;   // [vocab_size], f32; only when logprobs are asked for
};

// Index of the largest logit, lowest id on ties (0 for an empty row).
int32_t argmax(std::span<const float> logits);

}  // namespace bw
