#include "engine/stop_strings.h"

#include <algorithm>
#include <utility>

namespace bw {

namespace {

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// failure[i]: the length of the longest proper prefix of s[0, i] that is also its suffix.
std::vector<size_t> kmp_failure(std::string_view s) {
  std::vector<size_t> failure(s.size(), 0);
  size_t k = 0;
  for (size_t i = 1; i < s.size(); ++i) {
    while (k > 0 && s[i] != s[k])
      k = failure[k - 1];
    if (s[i] == s[k]) ++k;
    failure[i] = k;
  }
  return failure;
}

}  // namespace

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (std::string& s : stop_strings) {
    if (s.empty()) continue;
    Stop stop;
    stop.failure = kmp_failure(s);
    stop.text = std::move(s);
    stops_.push_back(std::move(stop));
  }
}

StopStringMatcher::Output StopStringMatcher::feed(std::string_view delta) {
  Output out;
  if (stopped_) return out;
  if (stops_.empty()) {
    out.text.assign(delta);
    return out;
  }
  // held_ + delta is the text not yet emitted; only delta's bytes are new to the automata.
  const size_t held_size = held_.size();
  held_.append(delta);
  for (size_t i = held_size; i < held_.size(); ++i) {
    const char c = held_[i];
    const Stop* found = nullptr;
    for (Stop& stop : stops_) {
      size_t k = stop.matched;  // < size: a complete match stops the matcher
      while (k > 0 && stop.text[k] != c)
        k = stop.failure[k - 1];
      if (stop.text[k] == c) ++k;
      stop.matched = k;
      // Ending at the same byte, the longer one starts first.
      if (k == stop.text.size() && (found == nullptr || k > found->text.size())) found = &stop;
    }
    if (found != nullptr) {
      // A match never starts before held_: its prefix was held back.
      const size_t start = i + 1 - found->text.size();
      out.text = held_.substr(0, start);
      out.stopped = true;
      out.matched = found->text;
      stopped_ = true;
      held_.clear();
      return out;
    }
  }
  // Hold back the longest tail that is a prefix of a stop string, from a code point start.
  size_t hold = 0;
  for (const Stop& stop : stops_)
    hold = std::max(hold, stop.matched);
  size_t emit = held_.size() - hold;
  while (emit > 0 && emit < held_.size() && is_utf8_continuation(held_[emit]))
    --emit;
  out.text = held_.substr(0, emit);
  held_.erase(0, emit);
  return out;
}

std::string StopStringMatcher::flush() {
  std::string rest;
  rest.swap(held_);  // empty once stopped
  for (Stop& stop : stops_)
    stop.matched = 0;
  return rest;
}

}  // namespace bw
