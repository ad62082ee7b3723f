// HttpServer: the listener, the I/O threads and shutdown. Connections live in
// http_connection.cc.
//
// Threads: `io_threads` threads run one io_context; every connection runs on its own
// strand, the acceptor is driven by one accept at a time (its calls and stop_accepting()
// are serialised by acceptor_mu_).
//
// Shutdown: stop accepting; wait (up to the grace) for in-flight responses; post a close to
// every connection (in-flight ones get their disconnect callback); let the io_context run
// out of work (stop it if it does not within a few seconds) and join the threads; then
// close the post gate so later responder calls are dropped, and run anything queued before
// it closed. The io_context itself lives in ServerCore until the last connection (held by
// a responder, maybe) is gone.
#include "server/http_server.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/strand.hpp>
#include <nlohmann/json.hpp>

#include "server/http_connection.h"

namespace bw::server {

std::string HttpRequest::header(std::string_view lower_case_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_case_name) return value;
  }
  return "";
}

namespace http_internal {

ServerCore::ServerCore(HttpServerConfig config_in, HttpHandler handler_in, Logger logger_in)
    : ioc(std::max(1, config_in.io_threads)),
      config(std::move(config_in)),
      handler(std::move(handler_in)),
      logger(std::move(logger_in)) {}

void ServerCore::close_posts() {
  std::lock_guard<std::mutex> lock(post_mu_);
  post_open_ = false;
}

void ServerCore::remove_inflight() {
  if (num_inflight.fetch_sub(1) == 1) {
    std::lock_guard<std::mutex> lock(inflight_mu_);
    inflight_cv_.notify_all();
  }
}

bool ServerCore::wait_idle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(inflight_mu_);
  return inflight_cv_.wait_until(lock, deadline, [this] { return num_inflight.load() == 0; });
}

bool ServerCore::add_connection(const std::shared_ptr<Connection>& connection) {
  std::lock_guard<std::mutex> lock(connections_mu_);
  // Counted and registered even when stopping: Connection::close() undoes both.
  num_connections.fetch_add(1);
  connections_.emplace(connection.get(), connection);
  return !stopping.load();
}

void ServerCore::remove_connection(const Connection* connection) {
  std::lock_guard<std::mutex> lock(connections_mu_);
  connections_.erase(connection);
}

std::vector<std::shared_ptr<Connection>> ServerCore::connections() {
  std::lock_guard<std::mutex> lock(connections_mu_);
  std::vector<std::shared_ptr<Connection>> result;
  result.reserve(connections_.size());
  for (const auto& [key, weak] : connections_) {
    if (auto connection = weak.lock()) result.push_back(std::move(connection));
  }
  return result;
}

std::string ServerCore::error_body(int status, const std::string& message) const {
  if (config.error_body) {
    try {
      return config.error_body(status, message);
    } catch (const std::exception& e) {
      logger->warn("http: error_body threw: {}", e.what());
    } catch (...) {
      logger->warn("http: error_body threw");
    }
  }
  nlohmann::json body = {{"error", {{"message", message}, {"code", status}}}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

// The server whose I/O thread this is (shutdown() cannot join its own thread).
thread_local const void* tls_io_thread_owner = nullptr;

void raise_fd_limit(const Logger& logger) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  rlim_t before = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &limit) == 0) {
    logger->debug("http: raised the open-file limit from {} to {}", before, limit.rlim_max);
  } else {
    logger->debug("http: could not raise the open-file limit from {}", before);
  }
}

class ServerImpl final : public HttpServer {
 public:
  explicit ServerImpl(std::shared_ptr<ServerCore> core)
      : core_(std::move(core)),
        acceptor_(core_->ioc),
        accept_retry_timer_(core_->ioc),
        work_(asio::make_work_guard(core_->ioc)) {}

  ~ServerImpl() override { shutdown(std::chrono::milliseconds(0)); }
  ServerImpl(const ServerImpl&) = delete;
  ServerImpl& operator=(const ServerImpl&) = delete;

  Status listen();
  void start_threads();

  uint16_t port() const override { return port_; }
  void stop_accepting() override;
  void shutdown(std::chrono::milliseconds grace) override;
  int num_connections() const override { return core_->num_connections.load(); }
  int num_inflight() const override { return core_->num_inflight.load(); }

 private:
  void accept_next();  // with acceptor_mu_ held
  void on_accept(const boost::system::error_code& ec, tcp::socket socket);
  void run_io();

  const std::shared_ptr<ServerCore> core_;  // first: the io_context outlives the members below

  std::mutex acceptor_mu_;
  tcp::acceptor acceptor_;                 // guarded by acceptor_mu_
  asio::steady_timer accept_retry_timer_;  // guarded by acceptor_mu_
  uint16_t port_ = 0;

  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
  std::mutex threads_mu_;
  std::condition_variable threads_cv_;
  int threads_running_ = 0;  // guarded by threads_mu_

  std::mutex shutdown_mu_;
  bool shut_down_ = false;  // guarded by shutdown_mu_
};

Status ServerImpl::listen() {
  const HttpServerConfig& config = core_->config;
  std::string address = fmt::format("{}:{}", config.host, config.port);
  boost::system::error_code ec;
  tcp::resolver resolver(core_->ioc);
  auto endpoints = resolver.resolve(config.host, std::to_string(config.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec) return Unavailable("cannot listen on {}: {}", address, ec.message());
  std::string last_error = "no address";
  std::lock_guard<std::mutex> lock(acceptor_mu_);
  for (const auto& entry : endpoints) {
    tcp::endpoint endpoint = entry.endpoint();
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) {
      port_ = acceptor_.local_endpoint(ec).port();
      if (!ec) break;
    }
    last_error = ec.message();
    boost::system::error_code ignored;
    acceptor_.close(ignored);
  }
  if (!acceptor_.is_open()) return Unavailable("cannot listen on {}: {}", address, last_error);
  core_->logger->info("http: listening on {}:{}", config.host, port_);
  accept_next();
  return OkStatus();
}

void ServerImpl::start_threads() {
  int count = std::max(1, core_->config.io_threads);
  {
    std::lock_guard<std::mutex> lock(threads_mu_);
    threads_running_ = count;
  }
  threads_.reserve(count);
  for (int i = 0; i < count; ++i)
    threads_.emplace_back([this] { run_io(); });
}

void ServerImpl::run_io() {
  tls_io_thread_owner = this;
  for (;;) {
    try {
      core_->ioc.run();
      break;
    } catch (const std::exception& e) {
      core_->logger->warn("http: exception on an I/O thread: {}", e.what());
    } catch (...) {
      core_->logger->warn("http: exception on an I/O thread");
    }
  }
  tls_io_thread_owner = nullptr;
  std::lock_guard<std::mutex> lock(threads_mu_);
  --threads_running_;
  threads_cv_.notify_all();
}

void ServerImpl::accept_next() {
  if (!acceptor_.is_open()) return;
  acceptor_.async_accept(asio::make_strand(core_->ioc), [this](const boost::system::error_code& ec, auto socket) {
    on_accept(ec, tcp::socket(std::move(socket)));
  });
}

void ServerImpl::on_accept(const boost::system::error_code& ec, tcp::socket socket) {
  if (ec) {
    std::lock_guard<std::mutex> lock(acceptor_mu_);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    // Out of descriptors or a transient failure: retry shortly rather than spin.
    core_->logger->warn("http: accept failed: {}", ec.message());
    accept_retry_timer_.expires_after(std::chrono::milliseconds(50));
    accept_retry_timer_.async_wait([this](const boost::system::error_code& wait_ec) {
      if (wait_ec) return;
      std::lock_guard<std::mutex> retry_lock(acceptor_mu_);
      accept_next();
    });
    return;
  }
  if (core_->draining.load() || core_->stopping.load()) {
    boost::system::error_code ignored;
    socket.close(ignored);
  } else if (core_->num_connections.load() >= core_->config.max_connections) {
    core_->logger->debug("http: {} connections open, refusing another", core_->num_connections.load());
    boost::system::error_code ignored;
    socket.close(ignored);
  } else {
    auto connection = std::make_shared<Connection>(core_, std::move(socket));
    if (core_->add_connection(connection)) connection->post_start();
  }
  std::lock_guard<std::mutex> lock(acceptor_mu_);
  accept_next();
}

void ServerImpl::stop_accepting() {
  core_->draining.store(true);
  std::lock_guard<std::mutex> lock(acceptor_mu_);
  if (acceptor_.is_open()) {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    core_->logger->info("http: stopped accepting connections");
  }
  accept_retry_timer_.cancel();
}

void ServerImpl::shutdown(std::chrono::milliseconds grace) {
  if (tls_io_thread_owner == this) {
    // From a handler: the I/O threads cannot be joined from one of them.
    core_->logger->error("http: shutdown() called on an I/O thread; only stopped accepting");
    stop_accepting();
    return;
  }
  std::lock_guard<std::mutex> shutdown_lock(shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  bool started = !threads_.empty();

  stop_accepting();
  if (grace.count() > 0 && !core_->wait_idle(Clock::now() + grace)) {
    core_->logger->warn("http: {} responses still in flight after the grace period; closing",
                        core_->num_inflight.load());
  }
  core_->stopping.store(true);
  for (const auto& connection : core_->connections())
    connection->post_close();

  work_.reset();
  {
    std::unique_lock<std::mutex> lock(threads_mu_);
    if (!threads_cv_.wait_for(lock, std::chrono::seconds(3), [this] { return threads_running_ == 0; })) {
      core_->logger->warn("http: I/O threads still busy after closing every connection; stopping them");
      core_->ioc.stop();
    }
  }
  for (auto& thread : threads_)
    thread.join();
  threads_.clear();

  // Responder calls are no-ops from now on; run what they queued before the gate closed
  // (every connection is closed, so it only releases memory).
  core_->close_posts();
  core_->ioc.restart();
  core_->ioc.poll();
  core_->handler = nullptr;
  if (started) core_->logger->info("http: server stopped");
}

}  // namespace
}  // namespace http_internal

Result<std::unique_ptr<HttpServer>> HttpServer::start(HttpServerConfig config, HttpHandler handler, Logger logger) {
  if (!logger) logger = make_null_logger();
  if (!handler) return InvalidArgument("HttpServer::start: no handler");
  http_internal::raise_fd_limit(logger);
  auto core = std::make_shared<http_internal::ServerCore>(std::move(config), std::move(handler), std::move(logger));
  auto server = std::make_unique<http_internal::ServerImpl>(core);
  Status status = server->listen();
  if (!status.ok()) return status;
  server->start_threads();
  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace bw::server
