#include "bench/sse_parser.h"

namespace bw::bench {

Status SseParser::feed(std::string_view bytes, std::vector<std::string>* events) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (bytes[pos] == '\n') {
        ++pos;
        continue;
      }
    }
    const size_t end = bytes.find_first_of("\r\n", pos);
    if (end == std::string_view::npos) {
      line_.append(bytes.substr(pos));
      pos = bytes.size();
      break;
    }
    line_.append(bytes.substr(pos, end - pos));
    skip_lf_ = bytes[end] == '\r';
    pos = end + 1;
    on_line(line_, events);
    line_.clear();
  }
  if (line_.size() + data_.size() > max_event_bytes_) {
    return DataLoss("event stream: an event of more than {} bytes", max_event_bytes_);
  }
  return OkStatus();
}

void SseParser::finish(std::vector<std::string>* events) {
  if (!line_.empty()) {
    on_line(line_, events);
    line_.clear();
  }
  on_line("", events);
}

void SseParser::on_line(std::string_view line, std::vector<std::string>* events) {
  if (line.empty()) {
    if (has_data_) events->push_back(std::move(data_));
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line.front() == ':') return;  // a comment (keep-alive ping)
  std::string_view field = line;
  std::string_view value;
  const size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field != "data") return;
  if (has_data_) data_ += '\n';
  data_.append(value);
  has_data_ = true;
}

}  // namespace bw::bench
