#pragma once
// A real HTTP server on 127.0.0.1 for tests (cpp-httplib on its own thread).
// Register handlers on routes(), then start().

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

namespace ondemand::testing {

class TestHttpServer {
 public:
  TestHttpServer() {
    // Clients in these tests close their connections when they go away; this
    // only bounds how long stop() waits for an idle keep-alive connection.
    server_.set_keep_alive_timeout(1);
  }
  TestHttpServer(const TestHttpServer&) = delete;
  TestHttpServer& operator=(const TestHttpServer&) = delete;
  ~TestHttpServer() { stop(); }

  httplib::Server& routes() { return server_; }

  // Listens on `port` (0: any free port). The socket accepts connections as
  // soon as this returns; requests are served from then on.
  void start(int port = 0) {
    if (port == 0) {
      port_ = server_.bind_to_any_port("127.0.0.1");
    } else {
      port_ = server_.bind_to_port("127.0.0.1", port) ? port : -1;
    }
    if (port_ <= 0) throw std::runtime_error("test server could not listen");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!server_.is_running() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
  }

  void stop() {
    releasing = true;
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }

  int port() const { return port_; }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

  // Sleeps in a handler for `d`, returning early once the server is stopping.
  void slowDown(std::chrono::milliseconds d) const {
    const auto until = std::chrono::steady_clock::now() + d;
    while (!releasing && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  std::atomic<bool> releasing{false};

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = -1;
};

}  // namespace ondemand::testing
