#pragma once
// `controld install-units --config FILE [--dir DIR] [--binary PATH] [--user USER]`:
// for installs from source, the systemd units for one configuration: a
// controld.service that runs this binary with that file (watchdog, notify,
// EnvironmentFile, the packaged unit's hardening) and a controld.socket that
// holds the file's control socket (socket activation).

#include <string>

#include "controld/config/config.hpp"

namespace ondemand::controld {

struct UnitOptions {
  std::string binary;  // absolute path of controld
  std::string configPath;
  std::string user;   // empty: root
  std::string group;  // the user's primary group
};

struct UnitFiles {
  std::string service;
  std::string socket;
};

UnitFiles renderUnits(const Config& config, const UnitOptions& options);

// Loads the configuration, writes DIR/controld.service and DIR/controld.socket
// and says what to run next. Returns the exit code.
int installUnits(const std::string& configPath, const std::string& dir, std::string binary, const std::string& user);

}  // namespace ondemand::controld
