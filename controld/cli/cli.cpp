// The client side of `controld`: status, start, stop, events, check-config,
// version, and serve (which hands over to the Daemon). Client commands talk to
// the daemon over the control socket with the same protocol as nginx workers.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "controld/cli/client.hpp"
#include "controld/cli/commands.hpp"
#include "controld/cli/install_units.hpp"
#include "controld/config/config.hpp"
#include "controld/daemon/daemon.hpp"
#include "controld/drivers/semaphore/semaphore_check.hpp"
#include "controld/io/log.hpp"
#include "controld/version.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

using namespace cli;

namespace {

// check-config [FILE] [--config FILE] [--online]
int checkConfig(const std::string& checkFile, const std::string& configOption, bool online) {
  if (!checkFile.empty() && !configOption.empty() && checkFile != configOption) {
    std::cerr << "check-config: give the file once, as FILE or as --config FILE\n";
    return kExitUsage;
  }
  const std::string file = checkFile.empty() ? configOption : checkFile;
  if (file.empty()) {
    std::cerr << "check-config: which file? controld check-config --config FILE\n";
    return kExitUsage;
  }
  auto result = loadConfig(file, processEnvironment());
  const int rc = printProblems(result);
  if (rc != kExitOk) return rc;
  if (online) {
    const int onlineRc = checkSemaphoreOnline(*result.config, std::cout, std::cerr);
    if (onlineRc != kExitOk) return onlineRc;
  }
  std::cout << file << ": ok (" << result.config->services.size() << " services)\n";
  return kExitOk;
}

// serve --config FILE: the daemon, until SIGTERM.
int serveDaemon(const std::string& configOption, const ServeOverrides& overrides) {
  if (configOption.empty()) {
    std::cerr << "serve: --config FILE is required (e.g. controld serve --config /etc/controld/controld.yaml)\n";
    return kExitUsage;
  }
  auto result = loadConfig(configOption, processEnvironment());
  for (const auto& w : result.warnings)
    LogLine(LogLevel::Warning, "config_warning").kv("problem", formatProblem(w));
  if (!result.config) {
    for (const auto& e : result.errors)
      std::cerr << formatProblem(e) << "\n";
    return kExitUsage;
  }
  if (overrides.statsdHost.empty() && !result.config->statsd &&
      (overrides.statsdPort != 0 || overrides.statsdNamespace)) {
    std::cerr << "controld serve: --statsd-port and --statsd-namespace need --statsd-host (or statsd: in the "
                 "configuration)\n";
    return kExitUsage;
  }
  Daemon daemon(std::move(*result.config), processEnvironment(), overrides);
  return daemon.run();
}

// Where the client commands find the daemon: --socket, the socket of
// --config, $CONTROLD_SOCKET, or the default. Sets an exit code when the
// configuration cannot be read.
std::optional<int> chooseSocket(const std::string& socketOption, const std::string& configOption,
                                SocketChoice& socket) {
  if (!socketOption.empty()) {
    socket.path = socketOption;
  } else if (!configOption.empty()) {
    auto loaded = loadConfig(configOption, processEnvironment());
    if (!loaded.config) {
      std::cerr << "controld: cannot read the socket from " << configOption << ":\n";
      printProblems(loaded);
      return kExitUsage;
    }
    socket.path = loaded.config->socketPath;
  } else if (const char* env = std::getenv("CONTROLD_SOCKET"); env != nullptr && *env != '\0') {
    socket.path = env;
  } else {
    socket.path = kDefaultSocket;
    socket.defaulted = true;
  }
  return std::nullopt;
}

}  // namespace

int cliMain(int argc, char** argv) {
  CLI::App app{"controld: wakes services behind nginx on request and stops them when idle"};
  app.require_subcommand(1);
  // Options of the main command may also follow the subcommand:
  // `controld --socket S status` and `controld status --socket S`.
  app.fallthrough();
  app.set_version_flag("--version",
                       std::string(versionString()) + " (protocol " + std::to_string(protocol::kVersion) + ")",
                       "print the version and exit");
  std::string socketOption;
  std::string configOption;
  bool json = false;
  bool wait = false;
  bool online = false;
  std::string service;
  std::string checkFile;

  app.add_option("--socket,-s", socketOption,
                 "control socket (default: from --config, $CONTROLD_SOCKET, or " + std::string(kDefaultSocket) +
                     "); for serve: listen here instead of the configuration's socket");
  app.add_option("--config,-c", configOption,
                 "controld.yaml or hestia_config.yml (serve, check-config; the other commands read its socket)");
  app.add_flag("--json", json, "machine-readable output (docs/PROTOCOL.md)");

  auto* serve = app.add_subcommand("serve", "run the daemon in the foreground (logs to stderr)");
  std::string serveStateDir;
  serve->add_option("--state-dir", serveStateDir, "keep state here instead of the configuration's state_dir");
  ServeOverrides overrides;
  std::string statsdNamespace;
  serve->add_option("--statsd-host", overrides.statsdHost, "send StatsD metrics to this host (wins over statsd.host)");
  serve->add_option("--statsd-port", overrides.statsdPort, "StatsD port (default 8125)")->check(CLI::Range(1, 65535));
  auto* namespaceOption =
      serve->add_option("--statsd-namespace", statsdNamespace, "prefix of every StatsD metric (default ondemand)");

  auto* statusCmd = app.add_subcommand("status", "show services: state, since, idle-stop in, in flight, last task");
  statusCmd->add_option("service", service, "one service, in detail with its history");

  auto* startCmd = app.add_subcommand("start", "wake a service by hand");
  startCmd->add_option("service", service)->required();
  startCmd->add_flag("--wait", wait, "return when it is warm (exit 0) or failed (exit 1)");

  auto* stopCmd = app.add_subcommand("stop", "stop a service now, requests in flight or not");
  stopCmd->add_option("service", service)->required();
  stopCmd->add_flag("--wait", wait, "return when it is cold (exit 0) or the stop failed (exit 1)");

  auto* eventsCmd = app.add_subcommand("events", "print every service's state, then follow state changes live");

  auto* clusterCmd = app.add_subcommand("cluster", "the cluster: nodes, their leases, etcd, owners (docs/CLUSTER.md)");

  auto* metricsCmd =
      app.add_subcommand("metrics", "the status in Prometheus' text format (for node_exporter's textfile collector)");

  auto* installCmd =
      app.add_subcommand("install-units", "write controld.service and controld.socket for a configuration");
  std::string unitDir = "/etc/systemd/system";
  std::string unitBinary;
  std::string unitUser;
  installCmd->add_option("--dir", unitDir, "where to write them (default /etc/systemd/system)");
  installCmd->add_option("--binary", unitBinary, "controld's path in ExecStart= (default: this program)");
  installCmd->add_option("--user", unitUser, "run controld as this user (default root)");

  auto* check = app.add_subcommand("check-config", "validate a configuration: every problem with file:line and key");
  check->add_option("file", checkFile, "the file to check (or --config FILE)");
  check->add_flag("--online", online, "also ask Semaphore: reachable, token accepted, templates exist");

  app.add_subcommand("version", "print the version");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }

  if (const char* level = std::getenv("CONTROLD_LOG_LEVEL")) {
    LogLevel parsed;
    if (parseLogLevel(level, parsed)) setLogLevel(parsed);
  }

  if (app.got_subcommand("version")) {
    std::cout << versionString() << " (protocol " << protocol::kVersion << ")\n";
    return kExitOk;
  }
  if (*installCmd) {
    if (configOption.empty()) {
      std::cerr << "install-units: which configuration? controld install-units --config FILE\n";
      return kExitUsage;
    }
    return installUnits(configOption, unitDir, unitBinary, unitUser);
  }
  if (*check) return checkConfig(checkFile, configOption, online);
  if (*serve) {
    overrides.socketPath = socketOption;
    overrides.stateDir = serveStateDir;
    if (*namespaceOption) overrides.statsdNamespace = statsdNamespace;
    return serveDaemon(configOption, overrides);
  }
  SocketChoice socket;
  if (auto rc = chooseSocket(socketOption, configOption, socket)) return *rc;
  if (*statusCmd) return status(socket, service, json);
  if (*startCmd) return startOrStop(socket, "start", service, wait, json);
  if (*stopCmd) return startOrStop(socket, "stop", service, wait, json);
  if (*eventsCmd) return events(socket, json);
  if (*metricsCmd) return metrics(socket);
  if (*clusterCmd) return cluster(socket, json);
  return kExitUsage;
}

}  // namespace ondemand::controld
