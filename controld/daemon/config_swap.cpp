#include "controld/daemon/config_swap.hpp"

#include "controld/io/log.hpp"

namespace ondemand::controld {

Config withOverrides(Config config, const ServeOverrides& overrides) {
  if (!overrides.socketPath.empty()) config.socketPath = overrides.socketPath;
  if (!overrides.stateDir.empty()) config.stateDir = overrides.stateDir;
  if (!overrides.statsdHost.empty() && !config.statsd) config.statsd = StatsdSettings{};
  if (config.statsd) {
    if (!overrides.statsdHost.empty()) config.statsd->host = overrides.statsdHost;
    if (overrides.statsdPort != 0) config.statsd->port = overrides.statsdPort;
    if (overrides.statsdNamespace) config.statsd->prefix = *overrides.statsdNamespace;
  }
  return config;
}

std::optional<Config> reloadConfig(const Config& running, const ServeOverrides& overrides) {
  auto result = loadConfig(running.sourceFile, processEnvironment());
  for (const auto& w : result.warnings)
    LogLine(LogLevel::Warning, "config_warning").kv("problem", formatProblem(w));
  if (!result.config) {
    for (const auto& e : result.errors)
      LogLine(LogLevel::Error, "config_error").kv("problem", formatProblem(e));
    LogLine(LogLevel::Error, "reload_rejected")
        .kv("errors", static_cast<std::uint64_t>(result.errors.size()))
        .kv("why", "keeping the running configuration");
    return std::nullopt;
  }
  Config next = withOverrides(std::move(*result.config), overrides);
  if (next.socketPath != running.socketPath || next.stateDir != running.stateDir ||
      next.metricsListen != running.metricsListen) {
    LogLine(LogLevel::Warning, "reload_partial")
        .kv("why", "socket, state_dir and metrics_listen changes need a restart");
    next.socketPath = running.socketPath;
    next.stateDir = running.stateDir;
    next.metricsListen = running.metricsListen;
  }
  return next;
}

}  // namespace ondemand::controld
