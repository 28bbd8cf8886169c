#pragma once
// Reading a config file into a Config: which format the file is in (native
// controld.yaml or Hestia's hestia_config.yml, by the keys it uses), and the
// Loader that reads either (native.cpp, hestia.cpp). Internal to
// controld/config/.

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "controld/config/reader.hpp"
#include "shared/service_name.hpp"

namespace ondemand::controld::config_detail {

// What controld.yaml allows a start by default; Hestia's starts get it on top of their task timeout.
inline const Millis kNativeStartTimeout = ServiceConfig{}.startTimeout;

// Keys only one of the two formats has; a file is read in the format whose
// keys it uses most. On a tie (only keys both have, such as health_url) a file
// named hestia_config.yml is Hestia's, so its environment overrides apply.
inline constexpr std::string_view kHestiaTopKeys[] = {"semaphore_base_url", "semaphore_timeout", "semaphore_username",
                                                      "semaphore_password", "semaphore_api_key"};
inline constexpr std::string_view kHestiaServiceKeys[] = {"idle_timeout_ms", "request_timeout_seconds",
                                                          "queue_size",      "retry_count",
                                                          "retry_delay_ms",  "fallback_url",
                                                          "instances",       "strategy",
                                                          "routing"};
inline constexpr std::string_view kNativeTopKeys[] = {"socket",         "socket_mode", "socket_group", "state_dir",
                                                      "history_size",   "semaphore",   "admin_users",  "admin_groups",
                                                      "metrics_listen", "statsd",      "cluster",      "machines"};
inline constexpr std::string_view kNativeServiceKeys[] = {
    "warmup",         "start_timeout", "idle_timeout", "failure_backoff", "health_interval",
    "health_timeout", "stop_timeout",  "machine",      "start_command",   "stop_command",
    "semaphore",      "environment",   "models",       "needs",           "evictable"};

template <std::size_t N>
bool contains(const std::string_view (&list)[N], std::string_view key) {
  return std::find(std::begin(list), std::end(list), key) != std::end(list);
}

bool isHestiaServiceKey(std::string_view key);

struct FormatGuess {
  ConfigFormat format = ConfigFormat::Native;
  std::string key;  // the first key that speaks for that format, for messages
  int line = 0;
};

// The format whose keys the file uses most (see above).
FormatGuess guessFormat(const YAML::Node& root, const std::string& path);

// "…: use one format per file" for a key of the other format; empty for others.
std::string otherFormatNote(const FormatGuess& guess, std::string_view key, bool topLevel);

// The per-service keys Hestia reads from <SERVICE_ID>_<FIELD> variables.
inline constexpr std::string_view kHestiaEnvFields[] = {"BASE_URL",
                                                        "HEALTH_URL",
                                                        "WARMUP_MS",
                                                        "IDLE_TIMEOUT_MS",
                                                        "REQUEST_TIMEOUT_SECONDS",
                                                        "QUEUE_SIZE",
                                                        "RETRY_COUNT",
                                                        "RETRY_DELAY_MS",
                                                        "FALLBACK_URL",
                                                        "SEMAPHORE_ENABLED",
                                                        "SEMAPHORE_MACHINE_ID",
                                                        "SEMAPHORE_START_TEMPLATE_ID",
                                                        "SEMAPHORE_STOP_TEMPLATE_ID",
                                                        "SEMAPHORE_TASK_TIMEOUT",
                                                        "SEMAPHORE_POLL_INTERVAL"};

// Hestia's per-service Semaphore settings, with Hestia's defaults, until it is
// known whether semaphore_enabled is on.
struct HestiaSemaphore {
  bool enabled = false;
  std::string machineId;
  std::int64_t startTemplateId = 1;
  std::int64_t stopTemplateId = 2;
  Millis taskTimeout = 300s;
  Millis pollInterval = 2s;
};

class Loader {
 public:
  Loader(Problems& problems, const Environment& env, const FileReader& readFile, std::filesystem::path dir)
      : problems_(problems), read_(problems), env_(env), readFile_(readFile), dir_(std::move(dir)) {}

  void loadNative(const YAML::Node& root, const FormatGuess& guess, Config& config);
  void loadHestia(const YAML::Node& root, const FormatGuess& guess, Config& config);

 private:
  // Native controld.yaml
  void readNativeSemaphore(const Setting& s, Config& config);
  void readNativeStatsd(const Setting& s, Config& config);
  void readCluster(const Setting& s, Config& config);  // cluster.cpp
  void readMachines(const Setting& s, Config& config);
  void readNativeService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config);
  void readServiceSemaphore(const Setting& s, SemaphoreServiceSettings& out);
  void readExtraVars(const Setting& s, std::string& out);

  // Hestia
  void readHestiaService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config);
  void claimEnvironmentPrefix(const std::string& prefix, const Setting& s);
  std::vector<KeyHandler> nginxSideHandlers();
  void applyHestiaSemaphore(const HestiaSemaphore& sem, const std::string& prefix, const Setting& s,
                            ServiceConfig& svc);
  void warnNginxSide(const Setting& s, std::string message);
  void warnAboutUnusedOverrides();

  // Both
  template <typename ReadService>
  void readServices(const Setting& s, ReadService readService);
  bool path(const Setting& s, std::string& out);
  void secretFile(const Setting& s, const char* what, std::string& out);  // cluster.cpp
  const std::string* envValue(const std::string& name) const;
  void applyEnvironment(const std::vector<KeyHandler>& handlers, const std::string& prefix, const std::string& path,
                        int line);
  void tokenFallback(SemaphoreSettings& sem) const;

  Problems& problems_;
  Reader read_;
  const Environment& env_;
  const FileReader& readFile_;
  std::filesystem::path dir_;
  std::set<std::string> hestiaPrefixesUsed_;
};

template <typename ReadService>
void Loader::readServices(const Setting& s, ReadService readService) {
  if (s.isNull()) return;  // "services:" with nothing under it: reported as "no services" later
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping of service names to their settings");
    return;
  }
  forEachEntry(problems_, s.node, s.key,
               [&](const std::string& name, const std::string& dotted, int line, const YAML::Node& value) {
                 if (!isValidServiceName(name)) {
                   problems_.error(line, dotted,
                                   "invalid service name " + quote(name) + ": expected 1 to " +
                                       std::to_string(kMaxServiceNameLength) +
                                       " letters, digits, '-', '_' or '.', not starting with '.'");
                   return;
                 }
                 const Setting service{dotted, line, value, {}};
                 if (!value.IsMap()) {
                   read_.expected(service, "a mapping of the service's settings");
                   return;
                 }
                 readService(name, service);
               });
}

}  // namespace ondemand::controld::config_detail
