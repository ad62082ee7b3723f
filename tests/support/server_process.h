// ServerProcess: a `breakwater serve` child process on an ephemeral port, for the end-to-end
// tests (tests/server, tests/jobs, tests/bench). The constructor forks and execs
// `<binary> serve --port 0 --log-level <level> <args...>` and reads the port from the
// "listening on http://127.0.0.1:PORT" line the server prints on its stdout (port() stays 0
// when no such line comes within 30 s); the destructor SIGKILLs a server still running.
// Without --data-dir in `args` the server gets one in a temporary folder of its own
// (removed with the ServerProcess), so no test writes ./breakwater-data.
// Also curl(): one HTTP request through the curl command line tool.
//
// Thread-safety: a ServerProcess is not synchronized. The const members (port(), pid(),
// url(), wait_ready()) may be called from several threads at once, but stop(), terminate(),
// kill9() and destruction must not run concurrently with any other call on the same object.
// curl() is safe to call from any thread.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace bw::test {

class TempDir;

class ServerProcess {
 public:
  // `binary`: the breakwater executable (the tests pass BW_BREAKWATER_BIN); `args` follow
  // `serve --port 0 --log-level <log_level>` on its command line.
  ServerProcess(std::string binary, std::vector<std::string> args, std::string log_level = "warn");
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Polls GET /health (curl, 20 ms apart, up to 500 tries) until it answers 200. False when
  // it never does, or at once when no port was read.
  bool wait_ready() const;

  // Sends `sig` and waits up to `timeout` for the exit: the exit code, or 128 + the signal
  // number when a signal ended it. -1 when the process is not running (never started or
  // already reaped) or did not exit in time (it is then SIGKILLed and reaped).
  int stop(int sig = SIGTERM, std::chrono::seconds timeout = std::chrono::seconds(30));
  // SIGTERM, then waits without a time limit; the exit status as for stop().
  int terminate();
  // SIGKILL (a crash) and reap; nothing when the process is not running.
  void kill9();

 private:
  // Records that the child was reaped and closes its stdout pipe.
  void reaped();

  std::unique_ptr<TempDir> data_dir_;  // when the caller passed no --data-dir
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  int port_ = 0;
  bool exited_ = false;
};

// One curl invocation: `curl -sS -D <temp file> -w '\n%{http_code}' <args>` (args shell-quoted
// by the caller), with curl's stderr folded into the body.
struct HttpResult {
  int status = 0;       // the HTTP status code, 0 when there was no response
  std::string body;     // the response body (without the status line curl appends)
  std::string headers;  // the raw response headers, as received
};
HttpResult curl(const std::string& args);

}  // namespace bw::test
