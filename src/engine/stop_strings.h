// StopStringMatcher: finds a request's stop strings in its streamed output text, so that
// neither a stop string nor anything after it is ever emitted, while text that cannot be
// part of one goes out at once.
//
// It holds back only the longest tail of the text that is a prefix of some stop string
// (never a whole stop string, so less than the longest one's length), and it reads each
// byte once: one KMP automaton per stop string carries the partial matches across feeds.
// The earliest match wins: the one that ends first in the stream, and of those ending at
// the same byte, the one that starts first (the longest). Stop strings and text are UTF-8;
// held-back text always starts on a code point boundary. One per request; not thread-safe.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bw {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stop_strings);  // empty strings ignored

  struct Output {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string matched; `text` ends just before it
    std::string matched;   // the stop string, when stopped
  };

  // Feeds newly decoded text (UTF-8, already complete code points). Returns the text that
  // is now safe to emit. Once stopped, further feeds return nothing.
  Output feed(std::string_view delta);

  // End of generation without a stop match: returns the held-back text (nothing once
  // stopped); nothing is held afterwards.
  std::string flush();

  bool empty() const { return stops_.empty(); }  // no stop strings
  bool stopped() const { return stopped_; }

 private:
  struct Stop {
    std::string text;
    std::vector<size_t> failure;  // KMP: failure[i] = longest proper border of text[0, i]
    size_t matched = 0;           // the longest prefix of text that ends the stream so far
  };

  std::vector<Stop> stops_;
  std::string held_;  // the tail that could still begin a stop string
  bool stopped_ = false;
};

}  // namespace bw
