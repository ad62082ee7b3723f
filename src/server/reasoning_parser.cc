// ReasoningParser (reasoning_parser.h): a three-state machine over the text deltas. Only
// undecided text is held: leading whitespace plus a prefix of "<think>" before the output
// commits, or a suffix that may begin "</think>" inside the reasoning. So any split of an
// output into deltas yields the same parts as the whole text.
#include "server/reasoning_parser.h"

#include <algorithm>

namespace bw::server {

namespace {

constexpr std::string_view kOpenTag = "<think>";
constexpr std::string_view kCloseTag = "</think>";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t leading_spaces(std::string_view text) {
  size_t n = 0;
  while (n < text.size() && is_space(text[n]))
    ++n;
  return n;
}

// The length of the longest suffix of `text` that is a proper prefix of `tag`.
size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  for (size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n) {
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

ReasoningParser::ReasoningParser(bool starts_in_reasoning)
    : state_(starts_in_reasoning ? State::kReasoning : State::kStart) {}

bool ReasoningParser::in_reasoning() const { return state_ == State::kReasoning; }

ReasoningParser::Delta ReasoningParser::feed(std::string_view text) {
  Delta out;
  std::string buffer = std::move(held_);
  held_.clear();
  buffer.append(text);
  std::string_view rest = buffer;
  while (!rest.empty()) {
    switch (state_) {
      case State::kStart: {
        const std::string_view after = rest.substr(leading_spaces(rest));
        if (after.substr(0, kOpenTag.size()) == kOpenTag) {
          state_ = State::kReasoning;  // the whitespace and the tag are dropped
          rest = after.substr(kOpenTag.size());
        } else if (after.size() < kOpenTag.size() && kOpenTag.substr(0, after.size()) == after) {
          held_ = std::string(rest);  // whitespace, maybe the start of "<think>": undecided
          return out;
        } else {
          state_ = State::kContent;  // no reasoning: everything, whitespace included, is content
        }
        break;
      }
      case State::kReasoning: {
        const size_t end = rest.find(kCloseTag);
        if (end != std::string_view::npos) {
          out.reasoning.append(rest.substr(0, end));
          rest = rest.substr(end + kCloseTag.size());
          state_ = State::kContent;
          strip_whitespace_ = true;
          break;
        }
        const size_t hold = partial_tag_suffix(rest, kCloseTag);
        out.reasoning.append(rest.substr(0, rest.size() - hold));
        held_ = std::string(rest.substr(rest.size() - hold));
        return out;
      }
      case State::kContent: {
        if (strip_whitespace_) {
          rest = rest.substr(leading_spaces(rest));
          if (rest.empty()) return out;
          strip_whitespace_ = false;
        }
        out.content.append(rest);
        return out;
      }
    }
  }
  return out;
}

ReasoningParser::Delta ReasoningParser::flush() {
  Delta out;
  switch (state_) {
    case State::kStart:  // never opened "<think>": what was held is content
      out.content = std::move(held_);
      state_ = State::kContent;
      break;
    case State::kReasoning:  // a "</think>" that never completed is reasoning text
      out.reasoning = std::move(held_);
      break;
    case State::kContent:
      break;
  }
  held_.clear();
  return out;
}

bool prompt_opens_reasoning(std::string_view rendered_prompt) {
  size_t end = rendered_prompt.size();
  while (end > 0 && is_space(rendered_prompt[end - 1]))
    --end;
  const std::string_view trimmed = rendered_prompt.substr(0, end);
  return trimmed.size() >= kOpenTag.size() && trimmed.substr(trimmed.size() - kOpenTag.size()) == kOpenTag;
}

}  // namespace bw::server
