#include "support/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <utility>

#include "support/test_support.h"

namespace bw::test {

namespace {

using namespace std::chrono_literals;

int exit_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

ServerProcess::ServerProcess(std::string binary, std::vector<std::string> args, std::string log_level) {
  // The argv is built before fork(): the child only dup2()s and execs.
  std::vector<std::string> full = {std::move(binary), "serve", "--port", "0", "--log-level", std::move(log_level)};
  if (std::find(args.begin(), args.end(), "--data-dir") == args.end()) {
    data_dir_ = std::make_unique<TempDir>();
    args.push_back("--data-dir");
    args.push_back(data_dir_->file("data"));
  }
  full.insert(full.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  std::vector<char*> argv;
  argv.reserve(full.size() + 1);
  for (auto& a : full)
    argv.push_back(a.data());
  argv.push_back(nullptr);

  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return;
  pid_ = fork();
  if (pid_ == 0) {
    dup2(out[1], STDOUT_FILENO);  // the duplicate does not inherit O_CLOEXEC
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  stdout_fd_ = out[0];
  if (pid_ < 0) {
    reaped();
    return;
  }
  // "breakwater: listening on http://127.0.0.1:PORT (loading ...)"
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd p{stdout_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char c = 0;
    if (read(stdout_fd_, &c, 1) != 1) break;
    line += c;
  }
  const size_t at = line.find("http://127.0.0.1:");
  if (at != std::string::npos) port_ = std::atoi(line.c_str() + at + 17);
}

ServerProcess::~ServerProcess() { kill9(); }  // before data_dir_ goes

bool ServerProcess::wait_ready() const {
  if (port_ == 0) return false;
  for (int i = 0; i < 500; ++i) {
    if (run_shell("curl -s -o /dev/null -w '%{http_code}' " + url() + "/health").output == "200") return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

int ServerProcess::stop(int sig, std::chrono::seconds timeout) {
  if (pid_ <= 0 || exited_) return -1;
  kill(pid_, sig);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped();
      return exit_status(status);
    }
    std::this_thread::sleep_for(10ms);
  }
  kill9();
  return -1;
}

int ServerProcess::terminate() {
  if (pid_ <= 0 || exited_) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  reaped();
  return exit_status(status);
}

void ServerProcess::kill9() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  reaped();
}

void ServerProcess::reaped() {
  exited_ = true;
  if (stdout_fd_ >= 0) close(stdout_fd_);
  stdout_fd_ = -1;
}

HttpResult curl(const std::string& args) {
  static std::atomic<int> counter{0};
  const std::string header_file = std::filesystem::temp_directory_path() /
                                  ("bw-curl-" + std::to_string(getpid()) + "-" + std::to_string(++counter));
  const CommandResult r = run_shell("curl -sS -D " + header_file + " -w '\\n%{http_code}' " + args);
  HttpResult h;
  const size_t nl = r.output.rfind('\n');
  if (nl != std::string::npos) {
    h.status = std::atoi(r.output.c_str() + nl + 1);
    h.body = r.output.substr(0, nl);
  }
  std::ifstream f(header_file);
  h.headers.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  std::error_code ec;
  std::filesystem::remove(header_file, ec);
  return h;
}

}  // namespace bw::test
