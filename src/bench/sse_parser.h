// SseParser: an incremental parser of a text/event-stream body (the HTML Server-Sent
// Events rules), fed with whatever byte chunks the network delivers. Lines end in "\n",
// "\r\n" or "\r" (also when the "\r" and "\n" arrive in different chunks); "data:" lines
// (one optional space after the colon) are joined with "\n" and an event is dispatched at
// the blank line; comments (":...") and other fields (event:, id:, retry:) are ignored.
//
// Ownership: a value; one per response. Not thread-safe (one connection feeds it).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace bw::bench {

class SseParser {
 public:
  // A line or event longer than this is a broken stream (DataLoss), not a reason to grow.
  static constexpr size_t kDefaultMaxEventBytes = size_t{16} << 20;

  explicit SseParser(size_t max_event_bytes = kDefaultMaxEventBytes) : max_event_bytes_(max_event_bytes) {}

  // Parses `bytes` and appends the data of every event completed by them to `events`.
  // DataLoss once a line or an event passes the limit (the parser is then unusable).
  Status feed(std::string_view bytes, std::vector<std::string>* events);

  // End of the body: an event whose data lines were not closed by a blank line is still
  // dispatched (lenient, as browsers are not but clients of LLM servers need to be).
  void finish(std::vector<std::string>* events);

  // Bytes held for an incomplete line or event.
  size_t buffered_bytes() const { return line_.size() + data_.size(); }

 private:
  void on_line(std::string_view line, std::vector<std::string>* events);

  size_t max_event_bytes_;
  std::string line_;       // the current line so far
  std::string data_;       // the current event's data lines, joined with "\n"
  bool has_data_ = false;  // a data: field was seen (data may be empty)
  bool skip_lf_ = false;   // the last byte was "\r": a "\n" right after it is the same line end
};

}  // namespace bw::bench
