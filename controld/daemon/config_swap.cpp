#include "controld/daemon/config_swap.hpp"

#include "controld/io/log.hpp"

namespace ondemand::controld {

Config withOverrides(Config config, const ServeOverrides& overrides) {
  if (!overrides.socketPath.empty()) config.socketPath = overrides.socketPath;
  if (!overrides.stateDir.empty()) config.stateDir = overrides.stateDir;
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
  if (next.socketPath != running.socketPath || next.stateDir != running.stateDir) {
    LogLine(LogLevel::Warning, "reload_partial").kv("why", "socket and state_dir changes need a restart");
    next.socketPath = running.socketPath;
    next.stateDir = running.stateDir;
  }
  return next;
}

}  // namespace ondemand::controld
