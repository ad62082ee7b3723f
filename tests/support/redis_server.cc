#include "support/redis_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "common/redis_connection.h"
#include "support/test_support.h"

namespace bw::test {

namespace {

std::filesystem::path fresh_dir() {
  std::random_device rd;
  const auto dir = std::filesystem::temp_directory_path() / ("bw-redis-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

int free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

bool RedisServer::installed() { return run_shell("command -v redis-server >/dev/null 2>&1").exit_code == 0; }

RedisServer::RedisServer() : dir_(fresh_dir()), port_(free_loopback_port()) {}

RedisServer::~RedisServer() {
  stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

bool RedisServer::start() {
  if (pid_ > 0) return true;
  const std::string port = std::to_string(port_);
  const std::string dir = dir_.string();
  const std::string log = (dir_ / "redis.log").string();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: no persistence, loopback only, quiet.
    execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "", "--appendonly",
           "no", "--dir", dir.c_str(), "--loglevel", "warning", "--logfile", log.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return false;
  }
  pid_ = pid;
  RedisOptions options;
  options.port = port_;
  options.reconnect_backoff = std::chrono::milliseconds(0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    auto connection = RedisConnection::connect(options);
    if (connection.ok()) {
      auto reply = (*connection)->command({"PING"});
      if (reply.ok() && reply->str == "PONG") return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ADD_FAILURE() << "redis-server did not answer on port " << port_ << " within 5 s";
  stop();
  return false;
}

void RedisServer::pause() const {
  if (pid_ > 0) ::kill(pid_, SIGSTOP);
}

void RedisServer::resume() const {
  if (pid_ > 0) ::kill(pid_, SIGCONT);
}

void RedisServer::stop(bool kill) {
  if (pid_ <= 0) return;
  ::kill(pid_, kill ? SIGKILL : SIGTERM);
  ::kill(pid_, SIGCONT);  // a paused server handles its SIGTERM
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

}  // namespace bw::test
