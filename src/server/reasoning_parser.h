// ReasoningParser: splits a reasoning model's output (DeepSeek-R1 and its distills) into
// the reasoning inside <think>...</think> and the answer after it, as DeepSeek's API
// returns them (`reasoning_content` and `content`), for streamed deltas and whole texts.
//
// DeepSeek-R1's chat template ends the prompt with "<think>\n", so the model's output
// starts inside the reasoning with no opening tag: construct with
// starts_in_reasoning = true then (the service checks the rendered prompt). Otherwise an
// output that opens with "<think>" (after optional whitespace) enters reasoning, and one
// that does not is all content. "</think>" ends the reasoning; the tags themselves and
// the whitespace right after "</think>" never appear in either part. Tags split across
// deltas are held back until they are decided. One per choice; not thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace bw::server {

class ReasoningParser {
 public:
  explicit ReasoningParser(bool starts_in_reasoning);

  struct Delta {
    std::string reasoning;
    std::string content;
  };
  // Feeds the next text delta (whole UTF-8 characters).
  Delta feed(std::string_view text);
  // End of output: whatever was held back.
  Delta flush();

  bool in_reasoning() const;

 private:
  enum class State {
    kStart,      // not yet known whether the output opens with <think>
    kReasoning,  // inside <think>...</think>
    kContent,    // after </think>, or an output without reasoning
  };

  State state_;
  std::string held_;               // undecided text: leading whitespace, a partial tag
  bool strip_whitespace_ = false;  // just after </think>: drop whitespace until other text
};

// Whether a rendered chat prompt leaves the model inside <think> (ends with "<think>" and
// optional whitespace).
bool prompt_opens_reasoning(std::string_view rendered_prompt);

}  // namespace bw::server
