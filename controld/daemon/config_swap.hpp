#pragma once
// Which configuration the daemon runs: the file's, with `serve --socket` and
// `--state-dir` winning over it, at start and at every reload (SIGHUP). A
// reload that does not load keeps the running configuration; one that moves
// the socket or state_dir keeps those two (they need a restart).

#include <optional>
#include <string>

#include "controld/config/config.hpp"

namespace ondemand::controld {

// `serve --socket` / `--state-dir`: they win over the configuration file, at
// start and at every reload.
struct ServeOverrides {
  std::string socketPath;  // empty: the file's
  std::string stateDir;    // empty: the file's
  // --statsd-host/--statsd-port/--statsd-namespace: each wins over `statsd:`.
  std::string statsdHost;
  int statsdPort = 0;
  std::optional<std::string> statsdNamespace;
};

Config withOverrides(Config config, const ServeOverrides& overrides);

// Reads config.sourceFile again and logs what it finds (warnings, errors,
// what cannot change without a restart). nullopt: keep `running`.
std::optional<Config> reloadConfig(const Config& running, const ServeOverrides& overrides);

}  // namespace ondemand::controld
