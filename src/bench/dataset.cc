#include "bench/dataset.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/mapped_file.h"

namespace bw::bench {

namespace {

using Json = nlohmann::json;

constexpr std::array<std::string_view, 64> kWords = {
    "the",    "of",      "and",   "to",     "in",       "is",    "that",   "for",    "it",      "as",    "was",
    "with",   "be",      "by",    "on",     "not",      "he",    "this",   "are",    "or",      "his",   "from",
    "at",     "which",   "but",   "have",   "an",       "had",   "they",   "you",    "were",    "their", "one",
    "all",    "we",      "can",   "her",    "has",      "there", "been",   "if",     "more",    "when",  "will",
    "would",  "who",     "so",    "no",     "river",    "stone", "light",  "garden", "window",  "story", "little",
    "friend", "morning", "happy", "played", "together", "found", "bright", "ocean",  "mountain"};

// Lengths uniform in [len*(1-r), len*(1+r)], at least 1.
std::vector<int64_t> draw_lengths(size_t n, int64_t len, double ratio, std::mt19937_64* rng) {
  const auto lo = std::max<int64_t>(1, static_cast<int64_t>(std::floor(static_cast<double>(len) * (1.0 - ratio))));
  const auto hi = std::max<int64_t>(lo, static_cast<int64_t>(std::ceil(static_cast<double>(len) * (1.0 + ratio))));
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  std::vector<int64_t> out(n);
  for (auto& v : out)
    v = ratio > 0.0 ? dist(*rng) : len;
  return out;
}

std::string random_words(int64_t n, std::mt19937_64* rng) {
  std::uniform_int_distribution<size_t> pick(0, kWords.size() - 1);
  std::string text;
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) text += ' ';
    text += kWords[pick(*rng)];
  }
  return text;
}

// Text that the tokenizer encodes to exactly `len` tokens (or as close as a few rounds of
// decode/re-encode get), made of random ordinary tokens.
BenchPrompt random_token_prompt(const Tokenizer& tokenizer, const std::vector<int32_t>& ordinary, int64_t len,
                                std::mt19937_64* rng) {
  std::uniform_int_distribution<size_t> pick(0, ordinary.size() - 1);
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i)
    ids.push_back(ordinary[pick(*rng)]);
  BenchPrompt best;
  int64_t best_gap = -1;
  for (int round = 0; round < 16; ++round) {
    std::string text = tokenizer.decode(ids, /*skip_special=*/true);
    const auto count = static_cast<int64_t>(tokenizer.encode(text, false, false).size());
    const int64_t gap = std::llabs(count - len);
    if (best_gap < 0 || gap < best_gap) {
      best_gap = gap;
      best = {std::move(text), count, 0};
    }
    if (gap == 0) break;
    // Re-encoding merged or split tokens: trim or extend the ids by the difference.
    if (count > len) {
      ids.resize(ids.size() - std::min<size_t>(ids.size() - 1, static_cast<size_t>(count - len)));
    } else {
      for (int64_t i = count; i < len; ++i)
        ids.push_back(ordinary[pick(*rng)]);
    }
  }
  return best;
}

int64_t length_of(const std::string& text, const Tokenizer* tokenizer) {
  if (tokenizer == nullptr) return count_words(text);
  return static_cast<int64_t>(tokenizer->encode(text, false, false).size());
}

}  // namespace

int64_t count_words(const std::string& text) {
  int64_t n = 0;
  bool in_word = false;
  for (const char c : text) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

Result<std::vector<BenchPrompt>> synthetic_prompts(const SyntheticOptions& options, const Tokenizer* tokenizer) {
  if (options.input_len < 1) return InvalidArgument("--input-len must be at least 1, got {}", options.input_len);
  if (options.output_len < 1) return InvalidArgument("--output-len must be at least 1, got {}", options.output_len);
  if (!(options.range_ratio >= 0.0 && options.range_ratio < 1.0)) {
    return InvalidArgument("--range-ratio must be in [0, 1), got {}", options.range_ratio);
  }
  std::mt19937_64 rng(options.seed);
  const std::vector<int64_t> input_lens =
      draw_lengths(options.num_prompts, options.input_len, options.range_ratio, &rng);
  const std::vector<int64_t> output_lens =
      draw_lengths(options.num_prompts, options.output_len, options.range_ratio, &rng);
  std::vector<int32_t> ordinary;
  if (tokenizer != nullptr) {
    const Vocab& vocab = tokenizer->vocab();
    for (size_t id = 0; id < vocab.size(); ++id) {
      if ((vocab.tokens[id].attr & kAttrNormal) != 0) ordinary.push_back(static_cast<int32_t>(id));
    }
    if (ordinary.empty()) return InvalidArgument("--tokenizer: the vocabulary has no ordinary tokens to sample");
  }
  std::vector<BenchPrompt> prompts;
  prompts.reserve(options.num_prompts);
  for (size_t i = 0; i < options.num_prompts; ++i) {
    BenchPrompt p;
    if (tokenizer != nullptr) {
      p = random_token_prompt(*tokenizer, ordinary, input_lens[i], &rng);
    } else {
      p.prompt = random_words(input_lens[i], &rng);
      p.prompt_len = input_lens[i];
    }
    p.output_len = output_lens[i];
    prompts.push_back(std::move(p));
  }
  return prompts;
}

Result<std::vector<BenchPrompt>> load_sharegpt(const std::string& path, const ShareGptOptions& options,
                                               const Tokenizer* tokenizer) {
  auto text = read_file_to_string(path);
  if (!text.ok()) return text.status();
  const Json root = Json::parse(*text, nullptr, false);
  if (root.is_discarded()) return DataLoss("{}: not valid JSON", path);
  if (!root.is_array())
    return InvalidArgument("{}: expected a JSON list of conversations, got {}", path, root.type_name());
  struct Pair {
    const std::string* prompt;
    const std::string* completion;
  };
  std::vector<Pair> pairs;
  for (size_t i = 0; i < root.size(); ++i) {
    const Json& entry = root[i];
    if (!entry.is_object()) return InvalidArgument("{}: entry {} is not an object", path, i);
    auto conv = entry.find("conversations");
    if (conv == entry.end()) return InvalidArgument("{}: entry {} has no \"conversations\"", path, i);
    if (!conv->is_array()) return InvalidArgument("{}: entry {}: \"conversations\" is not a list", path, i);
    if (conv->size() < 2) continue;  // no answer to take a length from
    for (size_t t = 0; t < 2; ++t) {
      const Json& turn = (*conv)[t];
      if (!turn.is_object() || !turn.contains("value") || !turn["value"].is_string()) {
        return InvalidArgument("{}: entry {}: turn {} has no string \"value\"", path, i, t);
      }
    }
    pairs.push_back(
        {&(*conv)[0]["value"].get_ref<const std::string&>(), &(*conv)[1]["value"].get_ref<const std::string&>()});
  }
  std::mt19937_64 rng(options.seed);
  std::shuffle(pairs.begin(), pairs.end(), rng);
  std::vector<BenchPrompt> prompts;
  for (const Pair& pair : pairs) {
    if (prompts.size() == options.num_prompts) break;
    const int64_t prompt_len = length_of(*pair.prompt, tokenizer);
    const int64_t output_len = options.output_len ? *options.output_len : length_of(*pair.completion, tokenizer);
    if (prompt_len < 4 || (!options.output_len && output_len < 4)) continue;  // too short to measure
    if (prompt_len > 1024 || prompt_len + output_len > 2048) continue;        // too long
    prompts.push_back({*pair.prompt, prompt_len, output_len});
  }
  if (prompts.size() < options.num_prompts) {
    return InvalidArgument("{}: {} usable conversations (of {} entries), but --num-prompts is {}", path, prompts.size(),
                           root.size(), options.num_prompts);
  }
  return prompts;
}

}  // namespace bw::bench
