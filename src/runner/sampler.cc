#include "runner/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace bw {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Probability mass is summed per block of the row so that a draw finds its block first.
constexpr size_t kBlock = 256;

// Top-p first tries the tokens with at least this probability relative to the top token's.
constexpr float kTopPFirstThreshold = 1e-3f;

// The row loops work on eight floats at a time through the GCC/Clang vector extension (one
// AVX register on x86-64-v3, two SSE or NEON registers elsewhere): without -ffast-math
// neither compiler vectorises exp, max or a double sum on its own. A row's tail is padded
// with -inf, so every element goes through the same operations.
constexpr size_t kLanes = 8;
// Without AVX, compilers warn that 32-byte vectors passed by value have their own ABI: the
// helpers below are internal to this file and always inlined.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef double D4 __attribute__((vector_size(32)));

[[gnu::always_inline]] inline F8 broadcast(float x) { return F8{} + x; }

// The lanes of a last, partial group: x[i, n), then -inf. (Through a pointer, so it need
// not be inlined.)
void load_tail(const float* x, size_t i, size_t n, F8* v) {
  *v = broadcast(kNegInf);
  for (size_t j = 0; i + j < n; ++j)
    (*v)[j] = x[i + j];
}

void store_tail(float* x, size_t i, size_t n, const F8* v) {
  for (size_t j = 0; i + j < n; ++j)
    x[i + j] = (*v)[j];
}

// Lanes of x[i, i + 8), -inf past n.
[[gnu::always_inline]] inline F8 load(const float* x, size_t i, size_t n) {
  F8 v;
  if (i + kLanes <= n) {
    std::memcpy(&v, x + i, sizeof(v));
  } else {
    load_tail(x, i, n, &v);
  }
  return v;
}

[[gnu::always_inline]] inline void store(float* x, size_t i, size_t n, F8 v) {
  if (i + kLanes <= n) {
    std::memcpy(x + i, &v, sizeof(v));
  } else {
    store_tail(x, i, n, &v);
  }
}

// mask ? a : b, lane by lane (mask lanes are all ones or all zeros).
[[gnu::always_inline]] inline F8 select(I8 mask, F8 a, F8 b) { return (F8)(((I8)a & mask) | ((I8)b & ~mask)); }
[[gnu::always_inline]] inline I8 select(I8 mask, I8 a, I8 b) { return (a & mask) | (b & ~mask); }

// Bit j set when lane j of the mask is.
[[gnu::always_inline]] inline uint32_t bitmask(I8 mask) {
  const I8 bits = mask & I8{1, 2, 4, 8, 16, 32, 64, 128};
  return static_cast<uint32_t>(bits[0] | bits[1] | bits[2] | bits[3] | bits[4] | bits[5] | bits[6] | bits[7]);
}

[[gnu::always_inline]] inline bool any(I8 mask) {
  uint64_t words[4];
  std::memcpy(words, &mask, sizeof(words));
  return (words[0] | words[1] | words[2] | words[3]) != 0;
}

// exp(x) for x <= 0, within 1e-7 relative of std::exp; exactly 0 below -87 (so for -inf
// and NaN too). Cephes' expf polynomial after a Cody-Waite reduction by n * ln(2), with n
// rounded to nearest by the 1.5 * 2^23 trick (which also leaves n's bits in the mantissa).
[[gnu::always_inline]] inline F8 exp_nonpositive(F8 x) {
  constexpr float kMinArg = -87.0f;
  constexpr float kRound = 12582912.0f;                     // 1.5 * 2^23
  const I8 in_range = x >= kMinArg;                         // false for NaN
  const F8 c = select(x > kMinArg, x, broadcast(kMinArg));  // NaN -> kMinArg
  const F8 shifted = c * 1.44269504088896341f + kRound;
  const F8 n = shifted - kRound;                            // round(c / ln 2), in [-126, 0]
  const I8 n_bits = (I8)shifted - (I8)broadcast(kRound);    // the same n, as an integer
  const F8 r = c - n * 0.693359375f - n * -2.12194440e-4f;  // |r| <= ln(2) / 2
  F8 p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F8 y = p * r * r + r + 1.0f;
  const I8 scale = (n_bits + 127) << 23;  // 2^n
  return select(in_range, y * (F8)scale, broadcast(0.0f));
}

float exp_nonpositive(float x) { return exp_nonpositive(broadcast(x))[0]; }

// A sum in double of floats that are first added in float, eight lanes at a time, over
// runs of kFloatRun values (each lane adds 8 values in float: at most ~5e-7 relative error;
// the double conversion costs as much as the exp, so it is amortised).
constexpr size_t kFloatRun = 8 * kLanes;
class LaneSum {
 public:
  [[gnu::always_inline]] inline void add(F8 v) {
    low_ += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), D4);
    high_ += __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), D4);
  }
  double total() const {
    double sum = 0.0;
    for (size_t j = 0; j < kLanes / 2; ++j)
      sum += low_[j] + high_[j];
    return sum;
  }

 private:
  D4 low_ = {};
  D4 high_ = {};
};

// The largest value, NaN ignored; -inf for an empty row.
float max_value(std::span<const float> x) {
  F8 lanes = broadcast(kNegInf);
  for (size_t i = 0; i < x.size(); i += kLanes) {
    const F8 v = load(x.data(), i, x.size());
    lanes = select(lanes < v, v, lanes);
  }
  float m = kNegInf;
  for (size_t j = 0; j < kLanes; ++j)
    m = m < lanes[j] ? lanes[j] : m;
  return m;
}

// Whether any of x[0, 2 * kLanes) is greater than `threshold`.
bool any_greater(const float* x, float threshold) {
  F8 a;
  F8 b;
  std::memcpy(&a, x, sizeof(a));
  std::memcpy(&b, x + kLanes, sizeof(b));
  return any((a > threshold) | (b > threshold));
}

// Calls f(v, i) on each group of eight values of x (v holds x[i, i + 8); the last group
// is padded with -inf), and flush() after every kFloatRun values and at the end.
template <typename F, typename Flush>
[[gnu::always_inline]] inline void for_each_group(std::span<const float> x, F&& f, Flush&& flush) {
  size_t i = 0;
  while (i + kLanes <= x.size()) {
    const size_t run_end = std::min(i + kFloatRun, x.size() / kLanes * kLanes);
    for (; i < run_end; i += kLanes) {
      F8 v;
      std::memcpy(&v, x.data() + i, sizeof(v));
      f(v, i);
    }
    flush();
  }
  if (i < x.size()) {
    F8 v;
    load_tail(x.data(), i, x.size(), &v);
    f(v, i);
    flush();
  }
}

// sum_i exp(x_i - shift), for shift >= every x_i; in double.
double sum_exp_shifted(std::span<const float> x, float shift) {
  LaneSum sum;
  F8 part = {};
  for_each_group(
      x, [&](const F8& v, size_t) { part += exp_nonpositive(v - shift); },
      [&] {
        sum.add(part);
        part = F8{};
      });
  return sum.total();
}

// x_i <- exp((x_i - max) / temperature), set to 0 under min_p: probabilities relative to the
// top token's. Returns their sum, in double. (Multiplies by 1 / temperature: within an ulp
// of dividing, at a fraction of the cost.)
double to_relative_probs(std::span<float> x, float max, float temperature, float min_p) {
  const float inv_temperature = 1.0f / temperature;
  LaneSum sum;
  F8 part = {};
  for_each_group(
      x,
      [&](const F8& v, size_t i) {
        F8 p = exp_nonpositive((v - max) * inv_temperature);
        p = select(p >= min_p, p, broadcast(0.0f));
        store(x.data(), i, x.size(), p);
        part += p;
      },
      [&] {
        sum.add(part);
        part = F8{};
      });
  return sum.total();
}

// Positive probabilities up to 1 by the top bits of their floats (the exponent and 4 bits
// of mantissa: buckets 1/16 of an octave wide, in value order).
constexpr int kBucketShift = 19;
constexpr size_t kNumBuckets = (0x3F800000u >> kBucketShift) + 1;  // up to the bucket of 1.0f
size_t mass_bucket(float p) { return std::min<size_t>(std::bit_cast<uint32_t>(p) >> kBucketShift, kNumBuckets - 1); }

// The sum of the probabilities at or above `threshold`, over the blocks that can hold any
// (partial sums in float per block, then double).
double mass_at_or_above(std::span<const float> probs, std::span<const double> block_sums, float threshold) {
  LaneSum sum;
  for (size_t b = 0; b < block_sums.size(); ++b) {
    if (block_sums[b] <= 0.0 || block_sums[b] < threshold) continue;
    const size_t end = std::min((b + 1) * kBlock, probs.size());
    F8 part = {};
    for (size_t i = b * kBlock; i < end; i += kLanes) {
      const F8 p = load(probs.data(), i, end);
      part += select(p >= threshold, p, broadcast(0.0f));
    }
    sum.add(part);
  }
  return sum.total();
}

// The bucket where the mass summed from the top bucket down reaches `target` (kNumBuckets
// when none does), and the mass of the buckets above it.
struct BucketBoundary {
  size_t bucket = kNumBuckets;
  double above = 0.0;
};
BucketBoundary find_boundary(std::span<const double> bucket_mass, double target) {
  BucketBoundary boundary;
  for (size_t b = bucket_mass.size(); b-- > 0;) {
    if (boundary.above + bucket_mass[b] >= target) {
      boundary.bucket = b;
      return boundary;
    }
    boundary.above += bucket_mass[b];
  }
  boundary.bucket = kNumBuckets;
  return boundary;
}

// The smallest float in a bucket.
float bucket_floor(size_t bucket) { return std::bit_cast<float>(static_cast<uint32_t>(bucket) << kBucketShift); }

// The effective min-p: in [0, 1], so the top token always survives.
float clamped_min_p(float min_p) { return min_p > 0.0f ? std::min(min_p, 1.0f) : 0.0f; }

// frequency * count + presence with the product rounded before the sum, as the CUDA
// sampler computes it (__fmul_rn, __fadd_rn): left alone, the compiler may fuse the two
// into one FMA at some optimisation levels and not others (volatile keeps them apart).
float occurrence_penalty(float frequency, int32_t count, float presence) {
  const volatile float scaled = frequency * static_cast<float>(count);
  return scaled + presence;
}

}  // namespace

// One pass: per lane, the largest value and where it first occurs; then the lowest such
// index among the lanes holding the overall largest.
int32_t argmax(std::span<const float> logits) {
  F8 best = broadcast(kNegInf);
  I8 best_index = {};
  I8 index = {0, 1, 2, 3, 4, 5, 6, 7};
  for (size_t i = 0; i < logits.size(); i += kLanes) {
    const F8 v = load(logits.data(), i, logits.size());
    const I8 greater = v > best;
    best = select(greater, v, best);
    best_index = select(greater, index, best_index);
    index += static_cast<int32_t>(kLanes);
  }
  float max = kNegInf;
  for (size_t j = 0; j < kLanes; ++j)
    max = max < best[j] ? best[j] : max;
  int32_t argmax = std::numeric_limits<int32_t>::max();
  for (size_t j = 0; j < kLanes; ++j) {
    if (best[j] == max) argmax = std::min(argmax, best_index[j]);
  }
  return argmax == std::numeric_limits<int32_t>::max() ? 0 : argmax;
}

Sampler::Sampler(const SamplingParams& params, uint64_t default_seed)
    : params_(params), rng_(params.seed.value_or(default_seed)) {}

SampledToken Sampler::sample(std::span<float> logits, std::span<const int32_t> prompt_ids,
                             std::span<const int32_t> output_ids) {
  SampledToken out;
  if (logits.empty()) return out;
  const bool want_logprobs = params_.logprobs >= 0;
  std::span<const float> raw_logits = logits;
  if (want_logprobs && modifies_logits()) {
    raw_logits_.assign(logits.begin(), logits.end());
    raw_logits = raw_logits_;
  }
  apply_logit_bias(logits);
  apply_penalties(logits, prompt_ids, output_ids);
  out.token_id = params_.is_greedy() ? argmax(logits) : sample_random(logits);
  if (want_logprobs) fill_logprobs(raw_logits, &out);
  return out;
}

bool Sampler::modifies_logits() const {
  return !params_.is_greedy() || !params_.logit_bias.empty() || params_.has_penalty();
}

void Sampler::apply_logit_bias(std::span<float> logits) const {
  for (const auto& [token_id, bias] : params_.logit_bias) {
    if (token_id >= 0 && static_cast<size_t>(token_id) < logits.size()) logits[static_cast<size_t>(token_id)] += bias;
  }
}

// Every distinct token of the history goes into a small open-addressing table (about
// twice the history's length), with its count in the output; then each is penalised once.
void Sampler::apply_penalties(std::span<float> logits, std::span<const int32_t> prompt_ids,
                              std::span<const int32_t> output_ids) {
  const float repetition = params_.repetition_penalty;
  const float presence = params_.presence_penalty;
  const float frequency = params_.frequency_penalty;
  const bool use_repetition = repetition != 1.0f;
  if (!use_repetition && presence == 0.0f && frequency == 0.0f) return;
  const size_t num_ids = (use_repetition ? prompt_ids.size() : 0) + output_ids.size();
  if (num_ids == 0) return;

  const size_t capacity = std::bit_ceil(std::max<size_t>(16, 2 * num_ids));
  const int shift = 64 - std::countr_zero(capacity);
  const size_t mask = capacity - 1;
  penalty_slots_.assign(capacity, PenaltySlot{-1, 0});
  const auto find_or_insert = [&](int32_t token_id) -> PenaltySlot& {
    size_t h = static_cast<size_t>((static_cast<uint64_t>(token_id) * 0x9E3779B97F4A7C15ull) >> shift);
    while (penalty_slots_[h].token_id != -1 && penalty_slots_[h].token_id != token_id)
      h = (h + 1) & mask;
    penalty_slots_[h].token_id = token_id;
    return penalty_slots_[h];
  };
  const auto valid = [&](int32_t token_id) { return token_id >= 0 && static_cast<size_t>(token_id) < logits.size(); };
  if (use_repetition) {
    for (const int32_t token_id : prompt_ids) {
      if (valid(token_id)) find_or_insert(token_id);
    }
  }
  for (const int32_t token_id : output_ids) {
    if (valid(token_id)) ++find_or_insert(token_id).output_count;
  }

  for (const PenaltySlot& slot : penalty_slots_) {
    if (slot.token_id < 0) continue;
    float& logit = logits[static_cast<size_t>(slot.token_id)];
    if (use_repetition) logit = logit > 0.0f ? logit / repetition : logit * repetition;
    if (slot.output_count > 0) logit -= occurrence_penalty(frequency, slot.output_count, presence);
  }
}

void Sampler::fill_logprobs(std::span<const float> raw_logits, SampledToken* out) {
  const float max_logit = max_value(raw_logits);
  const float token_logit = raw_logits[static_cast<size_t>(out->token_id)];
  if (!std::isfinite(max_logit)) {
    // No distribution to speak of (all -inf, or an infinite logit): certainty or nothing.
    out->logprob = token_logit == max_logit ? 0.0f : kNegInf;
    return;
  }
  // log p_i = x_i - (max + log(sum_j exp(x_j - max))), the sum and the difference in double.
  const double log_normaliser = static_cast<double>(max_logit) + std::log(sum_exp_shifted(raw_logits, max_logit));
  const auto logprob_of = [&](float x) { return static_cast<float>(static_cast<double>(x) - log_normaliser); };
  out->logprob = logprob_of(token_logit);
  if (params_.logprobs > 0) {
    select_top(raw_logits, static_cast<size_t>(params_.logprobs), &candidates_);
    out->top.reserve(candidates_.size());
    for (const Candidate& c : candidates_)
      out->top.push_back({c.token_id, logprob_of(c.value)});
  }
}

void Sampler::select_top(std::span<const float> values, size_t n, std::vector<Candidate>* out) {
  out->clear();
  if (n == 0) return;
  const size_t size = values.size();
  if (n >= size / 8) {
    // A large share of the row: select among all finite values.
    for (size_t i = 0; i < size; ++i) {
      if (values[i] > kNegInf) out->push_back({static_cast<int32_t>(i), values[i]});
    }
    if (out->size() > n) {
      std::nth_element(out->begin(), out->begin() + static_cast<std::ptrdiff_t>(n), out->end(), better);
      out->resize(n);
    }
    std::sort(out->begin(), out->end(), better);
    return;
  }
  // A heap of the n best so far, the worst on top. Ids arrive in increasing order, so a
  // later token replaces the worst only with a strictly larger value, and blocks with
  // nothing larger are skipped whole.
  out->reserve(n);
  size_t i = 0;
  for (; i < size && out->size() < n; ++i) {
    if (values[i] > kNegInf) out->push_back({static_cast<int32_t>(i), values[i]});
  }
  std::make_heap(out->begin(), out->end(), better);
  float worst = out->empty() ? 0.0f : out->front().value;
  const auto offer = [&](size_t id) {
    if (values[id] > worst) {
      std::pop_heap(out->begin(), out->end(), better);
      out->back() = {static_cast<int32_t>(id), values[id]};
      std::push_heap(out->begin(), out->end(), better);
      worst = out->front().value;
    }
  };
  for (; i + 2 * kLanes <= size; i += 2 * kLanes) {
    if (!any_greater(values.data() + i, worst)) continue;
    for (size_t j = i; j < i + 2 * kLanes; ++j)
      offer(j);
  }
  for (; i < size; ++i)
    offer(i);
  std::sort_heap(out->begin(), out->end(), better);
}

int32_t Sampler::draw(std::span<const Candidate> candidates, double uniform) {
  double total = 0.0;
  for (const Candidate& c : candidates)
    total += c.value;
  const double target = uniform * total;
  double cumulative = 0.0;
  for (const Candidate& c : candidates) {
    cumulative += c.value;
    if (cumulative > target) return c.token_id;
  }
  // Rounding put the target at the very end: the last token with any probability.
  for (auto it = candidates.rbegin(); it != candidates.rend(); ++it) {
    if (it->value > 0.0f) return it->token_id;
  }
  return candidates.empty() ? 0 : candidates.front().token_id;
}

int32_t Sampler::sample_random(std::span<float> logits) {
  // Exactly one draw per token, whatever path follows.
  const double uniform = next_uniform();
  // A temperature so small that 1 / temperature overflows is greedy.
  if (!std::isfinite(1.0f / params_.temperature)) return argmax(logits);
  const int32_t top_k = params_.top_k;
  if (top_k > 0 && static_cast<size_t>(top_k) < logits.size()) return sample_top_k(logits, uniform);
  return sample_full(logits, uniform);
}

int32_t Sampler::sample_top_k(std::span<const float> logits, double uniform) {
  select_top(logits, static_cast<size_t>(params_.top_k), &candidates_);
  if (candidates_.empty()) return argmax(logits);  // nothing above -inf
  const float max_logit = candidates_.front().value;
  if (!std::isfinite(max_logit)) return candidates_.front().token_id;
  // Probabilities relative to the top token's (1 for it), dropping those under min_p.
  const float inv_temperature = 1.0f / params_.temperature;
  const float min_p = clamped_min_p(params_.min_p);
  size_t num_kept = 0;
  double total = 0.0;
  for (Candidate& c : candidates_) {
    const float p = exp_nonpositive((c.value - max_logit) * inv_temperature);
    if (!(p >= min_p) || p == 0.0f) break;  // sorted, so all the rest are smaller
    c.value = p;
    total += p;
    ++num_kept;
  }
  if (num_kept == 0) return candidates_.front().token_id;
  candidates_.resize(num_kept);
  if (params_.top_p < 1.0f) {
    const double target = static_cast<double>(params_.top_p) * total;
    double cumulative = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      cumulative += candidates_[i].value;
      if (cumulative >= target) {
        candidates_.resize(i + 1);
        break;
      }
    }
  }
  return draw(candidates_, uniform);
}

int32_t Sampler::sample_full(std::span<float> logits, double uniform) {
  const float max_logit = max_value(logits);
  if (!std::isfinite(max_logit)) return argmax(logits);  // all -inf (or NaN), or an infinite logit
  // The row becomes probabilities relative to the top token's (1 for it), zero under min-p,
  // with the mass of each block.
  const size_t size = logits.size();
  const size_t num_blocks = (size + kBlock - 1) / kBlock;
  block_sums_.resize(num_blocks);
  double total = 0.0;
  for (size_t b = 0; b < num_blocks; ++b) {
    const size_t begin = b * kBlock;
    block_sums_[b] = to_relative_probs(logits.subspan(begin, std::min(kBlock, size - begin)), max_logit,
                                       params_.temperature, clamped_min_p(params_.min_p));
    total += block_sums_[b];
  }
  if (!(total > 0.0)) return argmax(logits);  // a temperature that is not a number

  if (params_.top_p < 1.0f) {
    select_top_p(logits, total);
    return draw(candidates_, uniform);
  }
  // The block holding the target, then the token within it.
  const double target = uniform * total;
  double cumulative = 0.0;
  size_t last_block = 0;
  for (size_t b = 0; b < num_blocks; ++b) {
    if (block_sums_[b] <= 0.0) continue;
    last_block = b;
    if (cumulative + block_sums_[b] <= target) {
      cumulative += block_sums_[b];
      continue;
    }
    const size_t begin = b * kBlock;
    const size_t end = std::min(begin + kBlock, size);
    for (size_t i = begin; i < end; ++i) {
      cumulative += logits[i];
      if (logits[i] > 0.0f && cumulative > target) return static_cast<int32_t>(i);
    }
    break;  // rounding: the block's own sum said the target was inside it
  }
  // Rounding put the target at the very end: the last token with any probability.
  const size_t begin = last_block * kBlock;
  for (size_t i = std::min(begin + kBlock, size); i > begin; --i) {
    if (logits[i - 1] > 0.0f) return static_cast<int32_t>(i - 1);
  }
  return argmax(logits);
}

// Only tokens at or above a threshold are gathered: every token below it sorts after every
// token at or above it, so once those hold top_p of the mass the top-p set lies among them.
void Sampler::select_top_p(std::span<const float> probs, double total) {
  // (Positive even for a top_p that failed validation, so that one token is always kept.)
  const double target = std::max(static_cast<double>(params_.top_p) * total, std::numeric_limits<double>::min());
  // Most distributions reach top_p among the tokens within 1e-3 of the top one (a margin
  // covers the float partial sums).
  if (mass_at_or_above(probs, block_sums_, kTopPFirstThreshold) >= target * (1.0 + 1e-5)) {
    gather(probs, kTopPFirstThreshold);
  } else {
    // Else the row's mass by bucket gives the boundary bucket, and only the tokens from it
    // up are gathered.
    std::vector<double> bucket_mass(kNumBuckets, 0.0);
    for (size_t b = 0; b < block_sums_.size(); ++b) {
      if (block_sums_[b] <= 0.0) continue;
      const size_t end = std::min((b + 1) * kBlock, probs.size());
      for (size_t i = b * kBlock; i < end; ++i)
        bucket_mass[mass_bucket(probs[i])] += probs[i];
    }
    const BucketBoundary boundary = find_boundary(bucket_mass, target);
    gather(probs, boundary.bucket == kNumBuckets ? 0.0f : bucket_floor(boundary.bucket));
  }
  keep_top_mass(&candidates_, target);
}

void Sampler::gather(std::span<const float> probs, float threshold) {
  candidates_.clear();
  const F8 floor = broadcast(threshold);
  for (size_t b = 0; b < block_sums_.size(); ++b) {
    // A block's sum bounds each of its probabilities.
    if (block_sums_[b] <= 0.0 || block_sums_[b] < threshold) continue;
    const size_t end = std::min((b + 1) * kBlock, probs.size());
    for (size_t i = b * kBlock; i < end; i += kLanes) {
      const F8 p = load(probs.data(), i, end);
      for (uint32_t hits = bitmask((p >= floor) & (p > 0.0f)); hits != 0; hits &= hits - 1) {
        const size_t id = i + static_cast<size_t>(std::countr_zero(hits));
        candidates_.push_back({static_cast<int32_t>(id), probs[id]});
      }
    }
  }
}

// A histogram of the mass by bucket finds the bucket where the cumulative mass (from the
// top) reaches the target: the buckets above are kept whole, the boundary bucket goes to
// quickselect, the ones below are dropped. O(n) plus the boundary bucket.
void Sampler::keep_top_mass(std::vector<Candidate>* candidates, double target) {
  constexpr size_t kHistogramAbove = 256;
  std::vector<Candidate>& c = *candidates;
  if (c.size() <= kHistogramAbove) {
    keep_top_mass_range(candidates, 0, c.size(), 0.0, target);
    return;
  }
  std::vector<double> mass(kNumBuckets, 0.0);
  for (const Candidate& x : c)
    mass[mass_bucket(x.value)] += x.value;
  const BucketBoundary boundary = find_boundary(mass, target);
  if (boundary.bucket == kNumBuckets) return;  // rounding: everything is kept
  const auto kept_end =
      std::partition(c.begin(), c.end(), [&](const Candidate& x) { return mass_bucket(x.value) > boundary.bucket; });
  const auto boundary_end =
      std::partition(kept_end, c.end(), [&](const Candidate& x) { return mass_bucket(x.value) == boundary.bucket; });
  keep_top_mass_range(candidates, static_cast<size_t>(kept_end - c.begin()),
                      static_cast<size_t>(boundary_end - c.begin()), boundary.above, target);
}

// Quickselect on mass within [lo, hi), [0, lo) being kept with kept_mass: partition around a
// pivot; if the better side reaches the target the boundary lies in it, else keep it (and
// the pivot) and look among the worse. Small ranges are sorted and walked. Drops all past
// the boundary.
void Sampler::keep_top_mass_range(std::vector<Candidate>* candidates, size_t lo, size_t hi, double kept_mass,
                                  double target) {
  constexpr size_t kSortBelow = 64;
  std::vector<Candidate>& c = *candidates;
  while (hi - lo > kSortBelow) {
    // Median of three as the pivot, moved to the front of the range.
    const size_t mid = lo + (hi - lo) / 2;
    if (better(c[mid], c[lo])) std::swap(c[mid], c[lo]);
    if (better(c[hi - 1], c[lo])) std::swap(c[hi - 1], c[lo]);
    if (better(c[hi - 1], c[mid])) std::swap(c[hi - 1], c[mid]);
    std::swap(c[lo], c[mid]);
    const Candidate pivot = c[lo];
    const auto first = c.begin() + static_cast<std::ptrdiff_t>(lo);
    const auto split = std::partition(first + 1, c.begin() + static_cast<std::ptrdiff_t>(hi),
                                      [&](const Candidate& x) { return better(x, pivot); });
    const size_t pivot_pos = static_cast<size_t>(split - c.begin()) - 1;
    std::swap(c[lo], c[pivot_pos]);  // [lo, pivot_pos) better, then the pivot, then worse
    double mass = 0.0;
    for (size_t i = lo; i < pivot_pos; ++i)
      mass += c[i].value;
    if (kept_mass + mass >= target) {
      hi = pivot_pos;
    } else if (kept_mass + mass + pivot.value >= target) {
      c.resize(pivot_pos + 1);
      return;
    } else {
      kept_mass += mass + pivot.value;
      lo = pivot_pos + 1;
    }
  }
  std::sort(c.begin() + static_cast<std::ptrdiff_t>(lo), c.begin() + static_cast<std::ptrdiff_t>(hi), better);
  double cumulative = kept_mass;
  for (size_t i = lo; i < hi; ++i) {
    cumulative += c[i].value;
    if (cumulative >= target) {
      c.resize(i + 1);
      return;
    }
  }
  c.resize(hi);
}

}  // namespace bw
