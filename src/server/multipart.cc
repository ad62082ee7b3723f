#include "server/multipart.h"

#include <algorithm>
#include <cctype>

namespace bw::server {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// The value of `key=` in a header's parameters ("form-data; name=\"file\"; filename=...").
std::string header_param(std::string_view header, std::string_view key) {
  size_t pos = 0;
  while (pos < header.size()) {
    size_t end = header.find(';', pos);
    if (end == std::string_view::npos) end = header.size();
    std::string_view item = trim(header.substr(pos, end - pos));
    pos = end + 1;
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos || lower(trim(item.substr(0, eq))) != key) continue;
    std::string_view value = trim(item.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    return std::string(value);
  }
  return "";
}

}  // namespace

Result<std::string> multipart_boundary(std::string_view content_type) {
  const size_t semi = content_type.find(';');
  if (lower(trim(content_type.substr(0, semi))) != "multipart/form-data")
    return InvalidArgument("expected a multipart/form-data body, got Content-Type '{}'", content_type);
  if (semi == std::string_view::npos) return InvalidArgument("the multipart/form-data Content-Type has no boundary");
  std::string boundary = header_param(content_type.substr(semi + 1), "boundary");
  if (boundary.empty() || boundary.size() > 200)
    return InvalidArgument("the multipart/form-data Content-Type has no valid boundary");
  return boundary;
}

Result<std::vector<FormPart>> parse_multipart(std::string_view body, std::string_view boundary) {
  const std::string delimiter = "--" + std::string(boundary);
  std::vector<FormPart> parts;
  size_t pos = body.find(delimiter);
  if (pos == std::string_view::npos) return InvalidArgument("the multipart body has no boundary line");
  pos += delimiter.size();
  for (;;) {
    if (body.substr(pos, 2) == "--") return parts;  // the closing delimiter
    if (body.substr(pos, 2) != "\r\n") return InvalidArgument("malformed multipart boundary line");
    pos += 2;
    const size_t header_end = body.find("\r\n\r\n", pos);
    if (header_end == std::string_view::npos) return InvalidArgument("a multipart part has no header end");
    FormPart part;
    std::string_view headers = body.substr(pos, header_end - pos);
    size_t hpos = 0;
    while (hpos <= headers.size()) {
      size_t hend = headers.find("\r\n", hpos);
      if (hend == std::string_view::npos) hend = headers.size();
      std::string_view line = headers.substr(hpos, hend - hpos);
      hpos = hend + 2;
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      const std::string name = lower(trim(line.substr(0, colon)));
      std::string_view value = trim(line.substr(colon + 1));
      if (name == "content-disposition") {
        part.name = header_param(value, "name");
        part.filename = header_param(value, "filename");
      } else if (name == "content-type") {
        part.content_type = std::string(value);
      }
    }
    const size_t content_start = header_end + 4;
    const size_t next = body.find("\r\n" + delimiter, content_start);
    if (next == std::string_view::npos) return InvalidArgument("a multipart part is not terminated");
    part.content = std::string(body.substr(content_start, next - content_start));
    parts.push_back(std::move(part));
    pos = next + 2 + delimiter.size();
  }
}

}  // namespace bw::server
