// The prompts of a benchmark run, each with the number of tokens to ask for.
//
//  - Synthetic (like vLLM's random dataset): with a tokenizer, a prompt of exactly L tokens
//    made of random ordinary token ids, decoded to text (and re-encoded until the count
//    holds); without one, L random English words (about L tokens; lengths are then word
//    counts). Lengths are drawn uniformly from [L*(1-r), L*(1+r)] for a range ratio r.
//  - ShareGPT JSON (a list of {"conversations": [{"from": "human", "value": ...},
//    {"from": "gpt", "value": ...}, ...]}): the first turn is the prompt and the second
//    turn's length is the output length, counted in tokens with a tokenizer, else in words.
//    Conversations are shuffled with the seed; as in vLLM, pairs with a prompt or output
//    under 4 tokens, a prompt over 1024 or a total over 2048 are skipped.
//
// Thread-safe: pure functions (the tokenizer is only read).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "tokenizer/tokenizer.h"

namespace bw::bench {

struct BenchPrompt {
  std::string prompt;
  int64_t prompt_len = 0;  // tokens (words when no tokenizer was given)
  int64_t output_len = 0;  // max_tokens to ask for
};

struct SyntheticOptions {
  size_t num_prompts = 0;
  int64_t input_len = 0;
  int64_t output_len = 0;
  double range_ratio = 0.0;  // in [0, 1)
  uint64_t seed = 0;
};

// InvalidArgument for lengths < 1 or a range ratio outside [0, 1).
Result<std::vector<BenchPrompt>> synthetic_prompts(const SyntheticOptions& options, const Tokenizer* tokenizer);

struct ShareGptOptions {
  size_t num_prompts = 0;
  uint64_t seed = 0;
  std::optional<int64_t> output_len;  // overrides the second turn's length
};

// NotFound for a missing file, DataLoss for a file that is not JSON, InvalidArgument (naming
// the entry) for JSON of the wrong shape, and for fewer usable conversations than asked for.
Result<std::vector<BenchPrompt>> load_sharegpt(const std::string& path, const ShareGptOptions& options,
                                               const Tokenizer* tokenizer);

// Word count (runs of non-space bytes), the length unit without a tokenizer.
int64_t count_words(const std::string& text);

}  // namespace bw::bench
