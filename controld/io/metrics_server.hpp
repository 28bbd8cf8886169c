#pragma once
// `metrics_listen: HOST:PORT`: a minimal HTTP/1.1 server on controld's libuv
// loop that answers GET (and HEAD) /metrics with Prometheus' text format.
//
// Why not a library: libmicrohttpd's external-select mode wants its fd sets
// polled and its timeout honoured on every turn, which means re-registering
// uv_poll handles around each MHD_run; for one read-only path answered from
// memory that is more code and a new dependency, not less. What is here reads
// one request head (at most 8 KiB, 10 s), answers it, and closes the
// connection (Connection: close; Prometheus reconnects per scrape anyway). At
// most 64 connections are open at once; more are refused at accept. Nothing
// in it blocks: the page is rendered from memory on the loop.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "controld/io/uv.hpp"

namespace ondemand::controld {

class MetricsServer {
 public:
  using Render = std::function<std::string()>;

  MetricsServer(uv_loop_t* loop, Render render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds HOST:PORT (a numeric address, or a name resolved once, now).
  // Returns an error text.
  std::optional<std::string> listen(const std::string& hostPort);
  void close();

  std::uint64_t requestsServed() const { return served_; }

 private:
  struct Connection;
  void accept();
  void answer(Connection& c);
  void finish(Connection& c, std::string response);
  void drop(std::uint64_t id);

  uv_loop_t* loop_;
  Render render_;
  UvHandle<uv_tcp_t> listener_;
  std::uint64_t nextId_ = 1;
  std::map<std::uint64_t, std::unique_ptr<Connection>> connections_;
  std::uint64_t served_ = 0;
};

// The HTTP answer to one request head, without the body for HEAD. Pure, for
// the unit tests: `render` is called only for GET/HEAD /metrics.
std::string metricsHttpResponse(const std::string& head, const std::function<std::string()>& render);

}  // namespace ondemand::controld
