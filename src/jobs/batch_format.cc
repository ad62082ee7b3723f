#include "jobs/batch_format.h"

#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace bw::jobs {

namespace {

using Json = nlohmann::ordered_json;

uint64_t fnv1a(std::string_view text, uint64_t hash = 0xcbf29ce484222325ull) {
  for (const char c : text) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

std::string line_hash(std::string_view batch_id, int64_t line) {
  return fmt::format("{:016x}", fnv1a(std::to_string(line), fnv1a(batch_id) ^ 0x9e3779b97f4a7c15ull));
}

// The JSON of an endpoint answer; a body that is not JSON is carried as a string.
Json parse_body(const std::string& body) {
  Json parsed = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return Json(body);
  return parsed;
}

}  // namespace

ParsedBatchInput parse_batch_input(std::string_view content, std::string_view endpoint,
                                   const BatchInputLimits& limits) {
  ParsedBatchInput out;
  std::unordered_set<std::string> seen;
  auto add_error = [&](std::string code, std::string message, std::string param, int64_t line) {
    if (out.errors.size() < limits.max_errors)
      out.errors.push_back({std::move(code), std::move(message), std::move(param), line});
  };
  int64_t line_index = 0;
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view text = content.substr(pos, end - pos);
    pos = end + 1;
    const int64_t index = line_index++;
    const int64_t number = index + 1;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;
    if (static_cast<int64_t>(out.lines.size()) >= limits.max_requests) {
      add_error("too_many_requests", fmt::format("the file has more than {} requests", limits.max_requests), "",
                number);
      break;
    }
    Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      add_error("invalid_json_line", "this line is not a JSON object", "", number);
      continue;
    }
    BatchInputLine line;
    line.line = index;
    bool ok = true;
    auto custom_id = j.find("custom_id");
    if (custom_id == j.end() || !custom_id->is_string() || custom_id->get<std::string>().empty()) {
      add_error("missing_required_parameter", "custom_id must be a non-empty string", "custom_id", number);
      ok = false;
    } else {
      line.custom_id = custom_id->get<std::string>();
      if (!seen.insert(line.custom_id).second) {
        add_error("duplicate_custom_id", fmt::format("the custom_id '{}' appears more than once", line.custom_id),
                  "custom_id", number);
        ok = false;
      }
    }
    auto method = j.find("method");
    if (method == j.end() || !method->is_string() || method->get<std::string>() != "POST") {
      add_error("invalid_method", "method must be \"POST\"", "method", number);
      ok = false;
    } else {
      line.method = "POST";
    }
    auto url = j.find("url");
    if (url == j.end() || !url->is_string()) {
      add_error("missing_required_parameter", "url must be a string", "url", number);
      ok = false;
    } else if (url->get<std::string>() != endpoint) {
      add_error("mismatched_endpoint",
                fmt::format("the url '{}' does not match the batch endpoint '{}'", url->get<std::string>(), endpoint),
                "url", number);
      ok = false;
    } else {
      line.url = url->get<std::string>();
    }
    auto body = j.find("body");
    if (body == j.end() || !body->is_object()) {
      add_error("missing_required_parameter", "body must be a JSON object", "body", number);
      ok = false;
    } else {
      line.body = body->dump();
    }
    if (ok) out.lines.push_back(std::move(line));
  }
  if (out.lines.empty() && out.errors.empty()) add_error("empty_file", "the input file has no requests", "", 0);
  return out;
}

std::string batch_errors_json(const std::vector<BatchInputError>& errors) {
  Json data = Json::array();
  for (const BatchInputError& e : errors) {
    data.push_back({{"code", e.code},
                    {"message", e.message},
                    {"param", e.param.empty() ? Json(nullptr) : Json(e.param)},
                    {"line", e.line > 0 ? Json(e.line) : Json(nullptr)}});
  }
  return Json{{"object", "list"}, {"data", std::move(data)}}.dump();
}

std::string batch_output_file_id(std::string_view batch_id) { return fmt::format("file-{}-output", batch_id); }
std::string batch_error_file_id(std::string_view batch_id) { return fmt::format("file-{}-errors", batch_id); }
std::string batch_request_id(std::string_view batch_id, int64_t line) {
  return "batch_req_" + line_hash(batch_id, line);
}

bool job_goes_to_output_file(const JobRecord& job) {
  return job.state == JobState::kSucceeded && job.result && job.result->http_status >= 200 &&
         job.result->http_status < 300;
}

std::string batch_result_line(const JobRecord& job, std::string_view batch_id, bool batch_expired) {
  Json line = {{"id", batch_request_id(batch_id, job.spec.line)}, {"custom_id", job.spec.custom_id}};
  if (job.state != JobState::kCancelled && job.result && job.result->http_status > 0) {
    line["response"] = {{"status_code", job.result->http_status},
                        {"request_id", "req_" + line_hash(batch_id, job.spec.line)},
                        {"body", parse_body(job.result->body)}};
    line["error"] = nullptr;
  } else {
    std::string code = "request_failed";
    std::string message = job.error.empty() ? std::string("the request failed") : job.error;
    if (job.state == JobState::kCancelled) {
      code = batch_expired ? "batch_expired" : "batch_cancelled";
      message = batch_expired ? "This request could not be executed before the completion window expired."
                              : "The batch was cancelled before this request completed.";
    }
    line["response"] = nullptr;
    line["error"] = {{"code", code}, {"message", message}};
  }
  return line.dump();
}

BatchResultFiles build_batch_result_files(const std::vector<JobRecord>& jobs, std::string_view batch_id,
                                          bool batch_expired) {
  BatchResultFiles files;
  for (const JobRecord& job : jobs) {
    if (job.state == JobState::kQueued || job.state == JobState::kRunning) continue;
    std::string text = batch_result_line(job, batch_id, batch_expired);
    text += '\n';
    if (job_goes_to_output_file(job)) {
      files.output += text;
      ++files.num_output_lines;
    } else {
      files.errors += text;
      ++files.num_error_lines;
    }
  }
  return files;
}

}  // namespace bw::jobs
