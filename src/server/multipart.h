// multipart/form-data bodies (RFC 7578), as the OpenAI SDK sends for POST /v1/files: the
// boundary from the Content-Type header and the parts (name, filename, content). Pure
// functions; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace bw::server {

struct FormPart {
  std::string name;
  std::string filename;      // "" when the part is not a file
  std::string content_type;  // "" when absent
  std::string content;
};

// The boundary parameter of a `multipart/form-data; boundary=...` Content-Type; an
// InvalidArgument error when the type is something else or has no boundary.
Result<std::string> multipart_boundary(std::string_view content_type);

// Splits a body into its parts; InvalidArgument when it is not well-formed.
Result<std::vector<FormPart>> parse_multipart(std::string_view body, std::string_view boundary);

}  // namespace bw::server
