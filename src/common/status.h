// Status and Result<T>: how errors cross every module boundary in Breakwater.
//
// No exception crosses a module boundary; throwing libraries are wrapped where they are
// used. A Status is cheap to move, carries a code and a message that names what failed
// (the file, the tensor, the key) and what was expected. Codes map to HTTP/OpenAI errors in
// exactly one place (server/, later). Thread-safe: values only, no shared state.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace bw {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // bad user input (a flag, a request field, a token id)
  kNotFound,            // a file, tensor, key or model that does not exist
  kDataLoss,            // a corrupt or truncated file
  kUnimplemented,       // a valid request for something not built (yet)
  kResourceExhausted,   // out of memory (host or device), queue full
  kFailedPrecondition,  // the system is not in a state to do this
  kOutOfRange,          // an index or length past a limit
  kUnavailable,         // a device or service that cannot be reached
  kInternal,            // a bug or an unexpected library failure
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "DataLoss: model.gguf: tensor 'x' ...".
  std::string to_string() const;

  // Prepends context, e.g. the file name, keeping the code.
  Status with_context(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }

template <typename... Args>
Status InvalidArgument(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kInvalidArgument, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status NotFound(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kNotFound, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status DataLoss(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kDataLoss, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status Unimplemented(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kUnimplemented, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status ResourceExhausted(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kResourceExhausted, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status FailedPrecondition(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kFailedPrecondition, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status OutOfRange(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kOutOfRange, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status Unavailable(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kUnavailable, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status Internal(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kInternal, fmt::format(f, std::forward<Args>(args)...));
}

// Result<T>: a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}                  // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(not_ok(std::move(status))) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  // An OK status has no value to go with it: a bug in the caller (asserted in debug builds),
  // reported as Internal otherwise.
  static Status not_ok(Status status) {
    assert(!status.ok() && "Result constructed from an OK status without a value");
    if (!status.ok()) return status;
    return Status(StatusCode::kInternal, "Result built from OK status");
  }

  std::optional<T> value_;
  Status status_;
};

}  // namespace bw

#define BW_CONCAT_INNER(a, b) a##b
#define BW_CONCAT(a, b) BW_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::bw::Status bw_status_ = (expr);        \
    if (!bw_status_.ok()) return bw_status_; \
  } while (0)

// `lhs` may be a declaration ("int x"), so it cannot be parenthesised.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define BW_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) BW_ASSIGN_OR_RETURN_IMPL(BW_CONCAT(bw_result_, __LINE__), lhs, expr)
// NOLINTEND(bugprone-macro-parentheses)
