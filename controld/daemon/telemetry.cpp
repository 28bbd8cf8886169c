#include "controld/daemon/telemetry.hpp"

#include "controld/io/log.hpp"

namespace ondemand::controld {

namespace {

protocol::StatusReply::Histogram histogram(const Histogram& h) {
  return {h.boundsMs(), h.counts(), h.sumMs()};
}

}  // namespace

Telemetry::Telemetry(uv_loop_t* loop) : loop_(loop) {}
Telemetry::~Telemetry() = default;

std::optional<std::string> Telemetry::listen(const std::string& hostPort, MetricsServer::Render render) {
  server_.reset();
  if (hostPort.empty()) return std::nullopt;
  auto server = std::make_unique<MetricsServer>(loop_, std::move(render));
  if (auto error = server->listen(hostPort)) return error;
  server_ = std::move(server);
  LogLine(LogLevel::Info, "metrics_listening").kv("address", hostPort);
  return std::nullopt;
}

void Telemetry::configureStatsd(const std::optional<StatsdSettings>& settings) {
  const bool same = settings.has_value() == statsdSettings_.has_value() &&
                    (!settings || (settings->host == statsdSettings_->host && settings->port == statsdSettings_->port &&
                                   settings->prefix == statsdSettings_->prefix));
  if (same) return;
  statsdSettings_ = settings;
  statsd_.reset();
  if (settings && !settings->host.empty()) {
    statsd_ = std::make_unique<StatsdClient>(loop_, settings->host, settings->port, settings->prefix);
  }
}

void Telemetry::transition(const std::string& service, const Transition& t, const MachineSnapshot& after) {
  const auto event = services_[service].transition(t, after);
  if (!event || !statsd_) return;
  const std::string name = StatsdClient::sanitize(service);
  switch (event->kind) {
    case MetricEvent::Kind::StartOk:
      statsd_->count(name + ".start.ok");
      statsd_->timing(name + ".cold_start", static_cast<std::uint64_t>(std::max<std::int64_t>(0, event->durationMs)));
      break;
    case MetricEvent::Kind::StartFailed:
      statsd_->count(name + ".start.failed");
      break;
    case MetricEvent::Kind::Stop:
      statsd_->count(name + ".stop." + StatsdClient::sanitize(event->reason));
      statsd_->timing(name + ".stop_duration",
                      static_cast<std::uint64_t>(std::max<std::int64_t>(0, event->durationMs)));
      break;
  }
}

void Telemetry::waitsEnded(const std::string& service, const protocol::WaitCounts& waits) {
  if (waits.empty()) return;
  services_[service].waitsEnded(waits);
  if (!statsd_) return;
  // Workers report waits in buckets with their total: one timing of the
  // mean, sampled at 1/count, makes StatsD count every wait and sum them
  // exactly (its percentiles see the mean of each report).
  const std::uint64_t n = waits.count();
  statsd_->timing(StatsdClient::sanitize(service) + ".wait", waits.sumMs / n, 1.0 / static_cast<double>(n));
}

void Telemetry::fill(const std::string& service, protocol::StatusReply::Service& out) const {
  static const ServiceMetrics kNone;
  const auto it = services_.find(service);
  const ServiceMetrics& m = it == services_.end() ? kNone : it->second;
  out.stops.assign(m.stops().begin(), m.stops().end());
  out.coldStart = histogram(m.coldStart());
  out.wait = histogram(m.wait());
}

}  // namespace ondemand::controld
