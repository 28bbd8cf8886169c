#pragma once
// controld's configuration: the native controld.yaml and Hestia's
// hestia_config.yml, both loaded into the same structures. Every problem is
// reported with file, line, key and what was expected; nothing falls back to a
// silent default. docs/CONFIGURATION.md is the reference for users.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shared/duration.hpp"

namespace ondemand::controld {

using namespace std::chrono_literals;

struct SourceLocation {
  std::string file;
  int line = 0;  // 1-based, 0 when unknown
};

struct SemaphoreSettings {
  std::string baseUrl;  // "http://semaphore.internal:3000", no trailing slash
  std::int64_t projectId = 1;
  std::string apiToken;  // from api_token, api_token_file or SEMAPHORE_API_TOKEN
  std::string username;  // session login when no token is given
  std::string password;
  Millis httpTimeout = 30s;
};

// A base URL without the slashes it may end in ("http://x:3000/" -> "http://x:3000").
std::string withoutTrailingSlashes(std::string url);

// `cluster:`: several controlds sharing their services through etcd
// (docs/CLUSTER.md). Absent: controld works alone.
struct ClusterSettings {
  std::vector<std::string> endpoints;  // "http://127.0.0.1:2379", no trailing slash
  std::string node;                    // unique per controld; default: the host name
  std::string prefix = "/ondemand/";   // always ends with '/'
  Millis leaseTtl = 10s;               // whole seconds, at least 2s
  std::string username;                // etcd auth (with password from password_file)
  std::string password;
  std::string caFile;    // TLS: the CA that signed etcd's certificates
  std::string certFile;  // TLS client certificate (with key_file)
  std::string keyFile;
  Millis requestTimeout = 5s;  // one etcd request
};

struct SemaphoreServiceSettings {
  std::int64_t startTemplateId = 0;
  std::int64_t stopTemplateId = 0;  // 0 = no stop template: the service is never stopped by controld
  Millis taskTimeout = 10min;
  Millis pollInterval = 2s;
  std::string machineId;             // sent as machine_id and limit; defaults to the service's `machine`
  std::string extraVarsJson = "{}";  // a JSON object, merged into the task's environment
};

struct ServiceConfig {
  std::string name;
  SourceLocation where;  // where the service is defined, for messages at run time

  std::string baseUrl;    // informational (status pages)
  std::string healthUrl;  // empty: readiness is warmup only
  Millis warmup = 0ms;    // wait after the start driver before declaring warm (no health_url), or extra delay
  Millis startTimeout = 10min;
  Millis idleTimeout = 15min;  // 0 = never stop
  Millis failureBackoff = 30s;
  Millis healthInterval = 250ms;    // steady health polling interval (fast polls come first)
  Millis healthTimeout = 2s;        // one health probe
  Millis stopTimeout = 5min;        // a stop command or stop task may take this long
  Millis waitHint = 0ms;            // Hestia's request_timeout_seconds; nginx's ondemand_wait does the job
  std::string machine;              // operations of services on one machine run one at a time
  std::vector<std::string> models;  // names clients may ask for (a JSON body's "model"), besides the service's

  // Shared machines: what the service holds of its machine's resources from
  // its start until its stop has finished (empty: nothing), and whether it
  // may be stopped to make room for another (never while in use).
  std::map<std::string, double> needs;
  bool evictable = true;

  std::vector<std::string> startCommand;  // argv, empty = none
  std::vector<std::string> stopCommand;
  // What start and stop commands find in their environment besides PATH,
  // HOME, LANG, TZ and the like: nothing else of controld's is passed on.
  std::map<std::string, std::string> environment;
  std::optional<SemaphoreServiceSettings> semaphore;

  enum class DriverKind { None, Command, Semaphore };
  DriverKind driverKind() const {
    if (semaphore) return DriverKind::Semaphore;
    if (!startCommand.empty() || !stopCommand.empty()) return DriverKind::Command;
    return DriverKind::None;
  }
};

// "command", "semaphore" or "none".
const char* driverName(const ServiceConfig& config);

// "host:port" of an http(s) URL, the port defaulted from the scheme
// ("http://10.0.0.5/x" -> "10.0.0.5:80"); empty for an empty URL. What
// workers get as $ondemand_upstream.
std::string upstreamOf(const std::string& baseUrl);

// `machines.NAME`: a box several services share, with what it has.
struct MachineConfig {
  std::string name;
  SourceLocation where;
  std::map<std::string, double> resources;  // "vram_gb" -> 24
  // The thrash guard: a service warm for less than this is not stopped to
  // make room; the wake that wants the room waits until it may be.
  Millis minWarm = 30s;
};

// Which file format a Config was read from: messages use that format's key names.
enum class ConfigFormat { Native, Hestia };

// `statsd:` (or `serve --statsd-host/--statsd-port/--statsd-namespace`).
struct StatsdSettings {
  std::string host;
  int port = 8125;
  std::string prefix = "ondemand";  // `namespace`: every metric name starts with it and a dot
};

struct Config {
  std::string sourceFile;
  ConfigFormat format = ConfigFormat::Native;
  std::string socketPath = "/run/controld/controld.sock";
  std::optional<mode_t> socketMode;  // e.g. 0660; unset = leave the umask's choice
  std::string socketGroup;           // empty = leave the group
  std::string stateDir = "/var/lib/controld";
  // Who may start and stop services over the socket (besides root and
  // controld's own user); everyone else who can connect may only watch,
  // wake and report requests, as nginx workers do.
  std::vector<std::string> adminUsers;
  std::vector<std::string> adminGroups;
  std::size_t historySize = 20;  // transitions kept per service for `controld status`
  std::optional<SemaphoreSettings> semaphore;
  std::string metricsListen;             // "HOST:PORT" serving GET /metrics; empty = none
  std::optional<StatsdSettings> statsd;  // unset = nothing is sent
  std::optional<ClusterSettings> cluster;
  std::map<std::string, ServiceConfig> services;  // by name
  std::map<std::string, MachineConfig> machines;  // by name; empty: no resources are tracked

  // Dotted key -> the line that sets it, for every key the file sets. Lets
  // later checks point at the right line; a key missing here was defaulted.
  std::map<std::string, int> lines;
};

struct ConfigProblem {
  SourceLocation where;
  std::string key;  // dotted path: "services.comfyui.idle_timeout"
  std::string message;
};

// The "user:password" of a URL ("" when it has none), and the URL with it
// replaced by "***", for everything that shows a URL.
std::string urlUserinfo(std::string_view url);
std::string withoutCredentials(std::string_view url);

// "controld.yaml:12: services.comfyui.idle_timeout: expected a duration like 30s, 5m, 250ms; got \"5 minutes\""
std::string formatProblem(const ConfigProblem& problem);

// Lookup of environment variables, injectable for tests.
using Environment = std::map<std::string, std::string>;
Environment processEnvironment();

struct ConfigLoadResult {
  std::optional<Config> config;  // set only when there are no errors
  std::vector<ConfigProblem> errors;
  std::vector<ConfigProblem> warnings;
};

// Reads a whole file (the config itself, api_token_file); injectable for tests.
// nullopt with `error` set to the reason ("No such file or directory") when it
// cannot be read.
using FileReader = std::function<std::optional<std::string>(const std::string& path, std::string& error)>;
std::optional<std::string> readWholeFile(const std::string& path, std::string& error);

// Loads a controld.yaml or a hestia_config.yml (recognised by its keys).
// Never throws. Relative paths in the file are relative to the file's directory.
ConfigLoadResult loadConfig(const std::string& path, const Environment& env,
                            const FileReader& readFile = readWholeFile);

struct ConfigProblems {
  std::vector<ConfigProblem> errors;
  std::vector<ConfigProblem> warnings;
};

// Facts that hold between keys and between services, whatever the format: one
// driver per service, a way to tell readiness, Semaphore settings present and
// complete when a service uses Semaphore. loadConfig runs it; call it again on
// a Config built or changed in code.
ConfigProblems validateConfig(const Config& config);

}  // namespace ondemand::controld
