// The OpenAI Batch API's file formats: the input JSONL (one request a line), its
// validation errors, and the lines of the output and error files. Ids derived from a batch
// are deterministic (the same batch always gets the same output/error file ids and request
// ids), so finalisation can be redone after a crash without leaving duplicates.
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "jobs/job_store.h"

namespace bw::jobs {

struct BatchInputLine {
  int64_t line = 0;  // 0-based line index among the file's non-empty lines
  std::string custom_id;
  std::string method;  // "POST"
  std::string url;     // the batch endpoint
  std::string body;    // the request body, a JSON object, compact
};

// One entry of OpenAI's batch `errors.data`.
struct BatchInputError {
  std::string code;  // "invalid_json_line", "missing_custom_id", "duplicate_custom_id", ...
  std::string message;
  std::string param;  // the offending field, "" when none
  int64_t line = 0;   // 1-based line number in the file, 0 when the error is about the file
};

struct BatchInputLimits {
  int64_t max_requests = 50000;  // OpenAI's limit
  size_t max_errors = 100;       // errors reported at most (validation stops counting there)
};

struct ParsedBatchInput {
  std::vector<BatchInputLine> lines;
  std::vector<BatchInputError> errors;  // empty when the file is valid
};

// Parses the input JSONL of a batch for `endpoint`. Every line must be a JSON object with a
// string custom_id (unique in the file), method "POST", url equal to `endpoint` and an
// object body. Blank lines (also a trailing newline) are skipped. Any error makes the
// whole file invalid; all errors (up to max_errors) are listed.
ParsedBatchInput parse_batch_input(std::string_view content, std::string_view endpoint,
                                   const BatchInputLimits& limits = {});

// OpenAI's `errors` object: {"object":"list","data":[{"code","message","param","line"}]}.
std::string batch_errors_json(const std::vector<BatchInputError>& errors);

// Deterministic ids derived from a batch id.
std::string batch_output_file_id(std::string_view batch_id);            // "file-<batch>-output"
std::string batch_error_file_id(std::string_view batch_id);             // "file-<batch>-errors"
std::string batch_request_id(std::string_view batch_id, int64_t line);  // "batch_req_<16 hex>"

// Whether a finished job's line belongs in the output file (a 2xx answer) or the error
// file (a non-2xx answer, or no answer: failed, cancelled, expired).
bool job_goes_to_output_file(const JobRecord& job);

// One line (no trailing newline) of the output or error file for a terminal job:
//   {"id","custom_id","response":{"status_code","request_id","body"}|null,"error":{code,message}|null}
// A job with an endpoint answer carries it in `response` (error null); a job without one
// gets error {code, message}: code "batch_expired" / "batch_cancelled" for jobs cancelled by
// an expired / cancelled batch, else "request_failed" with the failure reason.
std::string batch_result_line(const JobRecord& job, std::string_view batch_id, bool batch_expired);

// The output and error file contents for a batch's jobs (ordered by line): each job on
// exactly one of them; jobs that are not terminal are left out.
struct BatchResultFiles {
  std::string output;
  std::string errors;
  int64_t num_output_lines = 0;
  int64_t num_error_lines = 0;
};
BatchResultFiles build_batch_result_files(const std::vector<JobRecord>& jobs, std::string_view batch_id,
                                          bool batch_expired);

}  // namespace bw::jobs
