// RedisServer: a real redis-server for tests, on a free loopback port in its own temp dir
// (no persistence), killed at destruction. Tests that need one skip with a clear message
// when redis-server is not installed (scripts/install-deps.sh installs it).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

namespace bw::test {

class RedisServer {
 public:
  RedisServer();
  ~RedisServer();
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  static bool installed();

  // Starts redis-server (again, on the same port after stop()); waits until it answers
  // PING. False (with a gtest failure message) when it does not come up within 5 s.
  bool start();
  // SIGKILL (a crash) or SIGTERM; waits for the process to exit.
  void stop(bool kill = true);
  bool running() const { return pid_ > 0; }
  // SIGSTOP / SIGCONT: a Redis that accepts connections but answers nothing (a stall).
  void pause() const;
  void resume() const;

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

 private:
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// A free TCP port on 127.0.0.1 (bound and released; another process may take it).
int free_loopback_port();

}  // namespace bw::test

// Skips the current test when redis-server is not installed.
#define BW_REDIS_OR_SKIP()                   \
  if (!::bw::test::RedisServer::installed()) \
  GTEST_SKIP() << "redis-server is not installed (scripts/install-deps.sh installs it)"
