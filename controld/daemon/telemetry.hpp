#pragma once
// What controld tells monitoring: per-service metrics (histograms, stops by
// reason) for `status --json`, `controld metrics` and GET /metrics on
// metrics_listen, and the same events as StatsD counters and timers.
// The daemon feeds it transitions and the workers' wait counts.

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "controld/config/config.hpp"
#include "controld/core/metrics.hpp"
#include "controld/io/metrics_server.hpp"
#include "controld/io/statsd.hpp"

namespace ondemand::controld {

class Telemetry {
 public:
  explicit Telemetry(uv_loop_t* loop);
  ~Telemetry();

  // Opens metrics_listen (at start only: a change needs a restart) with a
  // renderer for the page. Returns an error text.
  std::optional<std::string> listen(const std::string& hostPort, MetricsServer::Render render);
  // StatsD from the configuration (or the serve flags); again at each reload.
  void configureStatsd(const std::optional<StatsdSettings>& settings);

  void transition(const std::string& service, const Transition& t, const MachineSnapshot& after);
  void waitsEnded(const std::string& service, const protocol::WaitCounts& waits);
  void forget(const std::string& service) { services_.erase(service); }

  // The stops and histograms of one service, for its status.
  void fill(const std::string& service, protocol::StatusReply::Service& out) const;

 private:
  uv_loop_t* loop_;
  std::map<std::string, ServiceMetrics> services_;
  std::unique_ptr<MetricsServer> server_;
  std::unique_ptr<StatsdClient> statsd_;
  std::optional<StatsdSettings> statsdSettings_;
};

}  // namespace ondemand::controld
