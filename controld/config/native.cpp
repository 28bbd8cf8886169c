// The native controld.yaml: top-level keys, the semaphore: section and each
// service's keys (docs/CONFIGURATION.md).

#include <sys/un.h>

#include <charconv>

#include "controld/config/host_port.hpp"
#include "controld/config/loader.hpp"
#include "controld/config/yaml_json.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::controld::config_detail {

namespace {

constexpr std::string_view kReservedExtraVars[] = {"service_id", "machine_id", "action", "ondemand_operation"};

}  // namespace

void Loader::loadNative(const YAML::Node& root, const FormatGuess& guess, Config& config) {
  config.format = ConfigFormat::Native;
  readMapping(problems_, root, "",
              {
                  {"socket",
                   [&](const Setting& s) {
                     if (path(s, config.socketPath) && config.socketPath.size() >= sizeof(sockaddr_un::sun_path)) {
                       read_.error(s, "the socket path is " + std::to_string(config.socketPath.size()) +
                                          " bytes long; a Unix socket path must be shorter than " +
                                          std::to_string(sizeof(sockaddr_un::sun_path)));
                     }
                   }},
                  {"socket_mode",
                   [&](const Setting& s) {
                     constexpr std::string_view what = "an octal file mode like \"0660\"";
                     auto v = read_.scalar(s, what);
                     if (!v) return;
                     std::string digits = trim(*v);
                     if (digits.rfind("0o", 0) == 0) digits = digits.substr(2);
                     unsigned mode = 0;
                     const char* end = digits.data() + digits.size();
                     const auto [ptr, ec] = std::from_chars(digits.data(), end, mode, 8);
                     if (digits.empty() || ec != std::errc() || ptr != end || mode > 07777) {
                       read_.expected(s, what);
                       return;
                     }
                     config.socketMode = static_cast<mode_t>(mode);
                   }},
                  {"socket_group", [&](const Setting& s) { read_.text(s, config.socketGroup, "a group name"); }},
                  {"state_dir", [&](const Setting& s) { path(s, config.stateDir); }},
                  {"admin_users",
                   [&](const Setting& s) { read_.names(s, config.adminUsers, "a user name or a list of them"); }},
                  {"admin_groups",
                   [&](const Setting& s) { read_.names(s, config.adminGroups, "a group name or a list of them"); }},
                  {"history_size",
                   [&](const Setting& s) {
                     std::int64_t n = 0;
                     if (read_.integer(s, n, 1, 100000, "a whole number from 1 to 100000")) {
                       config.historySize = static_cast<std::size_t>(n);
                     }
                   }},
                  {"semaphore", [&](const Setting& s) { readNativeSemaphore(s, config); }},
                  {"metrics_listen",
                   [&](const Setting& s) {
                     std::string text;
                     if (!read_.text(s, text, "HOST:PORT like 127.0.0.1:9464")) return;
                     std::string why;
                     if (parseHostPort(text, why)) {
                       config.metricsListen = text;
                     } else {
                       read_.error(s, why + "; got " + quote(text));
                     }
                   }},
                  {"statsd", [&](const Setting& s) { readNativeStatsd(s, config); }},
                  {"cluster", [&](const Setting& s) { readCluster(s, config); }},
                  {"machines", [&](const Setting& s) { readMachines(s, config); }},
                  {"services",
                   [&](const Setting& s) {
                     readServices(s, [&](const std::string& name, const Setting& svc) {
                       readNativeService(name, svc, guess, config);
                     });
                   }},
              },
              [&](std::string_view key) { return otherFormatNote(guess, key, true); });
}

void Loader::readNativeStatsd(const Setting& s, Config& config) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping with host, and optionally port and namespace");
    return;
  }
  StatsdSettings statsd;
  readMapping(problems_, s.node, s.key,
              {
                  {"host", [&](const Setting& v) { read_.text(v, statsd.host, "a host name or address"); }},
                  {"port",
                   [&](const Setting& v) {
                     std::int64_t port = 0;
                     if (read_.integer(v, port, 1, 65535, "a port number from 1 to 65535")) {
                       statsd.port = static_cast<int>(port);
                     }
                   }},
                  {"namespace", [&](const Setting& v) { read_.text(v, statsd.prefix, "a metric name prefix"); }},
              });
  if (statsd.host.empty() && !problems_.lines.count(s.key + ".host")) {
    problems_.error(s.line, s.key + ".host", "missing: where StatsD listens (host, and port if not 8125)");
  }
  config.statsd = std::move(statsd);
}

void Loader::readMachines(const Setting& s, Config& config) {
  if (s.isNull()) return;
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping of machine names to their resources");
    return;
  }
  forEachEntry(problems_, s.node, s.key,
               [&](const std::string& name, const std::string& dotted, int line, const YAML::Node& value) {
                 const Setting machine{dotted, line, value, {}};
                 if (!value.IsMap()) {
                   read_.expected(machine, "a mapping with resources (and min_warm)");
                   return;
                 }
                 MachineConfig m;
                 m.name = name;
                 m.where = {problems_.file(), line};
                 readMapping(problems_, value, dotted,
                             {
                                 {"resources",
                                  [&](const Setting& v) {
                                    read_.amounts(v, m.resources,
                                                  "a mapping of resource names to amounts, e.g. "
                                                  "{ vram_gb: 24, gpu_slots: 2 }");
                                  }},
                                 {"min_warm",
                                  [&](const Setting& v) { read_.duration(v, m.minWarm, DefaultUnit::Seconds, true); }},
                             });
                 if (!problems_.lines.count(dotted + ".resources")) {
                   problems_.error(line, dotted + ".resources",
                                   "missing: expected what the machine has, e.g. resources: { vram_gb: 24 }");
                 }
                 config.machines[name] = std::move(m);
               });
}

void Loader::readNativeSemaphore(const Setting& s, Config& config) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping with base_url, project_id and the credentials");
    return;
  }
  SemaphoreSettings sem;
  readMapping(
      problems_, s.node, s.key,
      {
          {"base_url",
           [&](const Setting& v) {
             if (read_.serverUrl(v, sem.baseUrl)) sem.baseUrl = withoutTrailingSlashes(sem.baseUrl);
           }},
          {"project_id",
           [&](const Setting& v) { read_.integer(v, sem.projectId, 1, INT64_MAX, "a project id (1 or more)"); }},
          {"api_token", [&](const Setting& v) { read_.text(v, sem.apiToken, "an API token"); }},
          {"api_token_file", [&](const Setting& v) { secretFile(v, "token", sem.apiToken); }},
          {"username", [&](const Setting& v) { read_.text(v, sem.username, "a user name or e-mail address"); }},
          {"password", [&](const Setting& v) { read_.text(v, sem.password, "a password"); }},
          {"http_timeout", [&](const Setting& v) { read_.duration(v, sem.httpTimeout, DefaultUnit::Seconds, false); }},
      });
  if (problems_.lines.count(s.key + ".api_token") && problems_.lines.count(s.key + ".api_token_file")) {
    problems_.error(problems_.lines[s.key + ".api_token_file"], s.key + ".api_token_file",
                    "api_token is given too; keep one of them");
  }
  tokenFallback(sem);
  config.semaphore = std::move(sem);
}

void Loader::readNativeService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config) {
  ServiceConfig svc;
  svc.name = name;
  svc.where = {problems_.file(), s.line};
  const auto duration = [&](Millis& out, DefaultUnit unit, bool allowZero) {
    return [&out, unit, allowZero, this](const Setting& v) { read_.duration(v, out, unit, allowZero); };
  };
  static const std::vector<std::string_view> kServiceSemaphoreKeys = {
      "start_template_id", "stop_template_id", "task_timeout", "poll_interval", "machine_id", "extra_vars"};
  readMapping(problems_, s.node, s.key,
              {
                  {"base_url", [&](const Setting& v) { read_.url(v, svc.baseUrl); }},
                  {"health_url", [&](const Setting& v) { read_.url(v, svc.healthUrl); }},
                  {"warmup_ms", duration(svc.warmup, DefaultUnit::Milliseconds, true)},
                  {"warmup", duration(svc.warmup, DefaultUnit::Seconds, true)},
                  {"start_timeout", duration(svc.startTimeout, DefaultUnit::Seconds, false)},
                  {"idle_timeout", duration(svc.idleTimeout, DefaultUnit::Seconds, true)},
                  {"failure_backoff", duration(svc.failureBackoff, DefaultUnit::Seconds, true)},
                  {"health_interval", duration(svc.healthInterval, DefaultUnit::Seconds, false)},
                  {"health_timeout", duration(svc.healthTimeout, DefaultUnit::Seconds, false)},
                  {"stop_timeout", duration(svc.stopTimeout, DefaultUnit::Seconds, false)},
                  {"machine", [&](const Setting& v) { read_.text(v, svc.machine, "a machine name"); }},
                  {"models", [&](const Setting& v) { read_.models(v, svc.models); }},
                  {"needs",
                   [&](const Setting& v) {
                     read_.amounts(v, svc.needs,
                                   "a mapping of the machine's resource names to amounts, e.g. { vram_gb: 16 }");
                   }},
                  {"evictable", [&](const Setting& v) { read_.boolean(v, svc.evictable); }},
                  {"start_command", [&](const Setting& v) { read_.argv(v, svc.startCommand); }},
                  {"stop_command", [&](const Setting& v) { read_.argv(v, svc.stopCommand); }},
                  {"environment", [&](const Setting& v) { read_.environment(v, svc.environment); }},
                  {"semaphore",
                   [&](const Setting& v) {
                     SemaphoreServiceSettings sem;
                     readServiceSemaphore(v, sem);
                     svc.semaphore = std::move(sem);
                   }},
              },
              [&](std::string_view key) {
                const auto it = std::find(kServiceSemaphoreKeys.begin(), kServiceSemaphoreKeys.end(), key);
                if (it != kServiceSemaphoreKeys.end()) return std::string("it belongs under \"semaphore:\"");
                return otherFormatNote(guess, key, false);
              });
  if (problems_.lines.count(s.key + ".warmup") && problems_.lines.count(s.key + ".warmup_ms")) {
    problems_.error(problems_.lines[s.key + ".warmup"], s.key + ".warmup", "warmup_ms is given too; keep one of them");
  }
  if (svc.semaphore) {
    if (svc.semaphore->machineId.empty()) svc.semaphore->machineId = svc.machine;
    if (svc.machine.empty()) svc.machine = svc.semaphore->machineId;
  }
  config.services[name] = std::move(svc);
}

void Loader::readServiceSemaphore(const Setting& s, SemaphoreServiceSettings& sem) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping with start_template_id (and stop_template_id, task_timeout, extra_vars…)");
    return;
  }
  constexpr std::string_view templateId = "a task template id (1 or more)";
  readMapping(
      problems_, s.node, s.key,
      {
          {"start_template_id",
           [&](const Setting& v) { read_.integer(v, sem.startTemplateId, 1, INT64_MAX, templateId); }},
          {"stop_template_id",
           [&](const Setting& v) { read_.integer(v, sem.stopTemplateId, 1, INT64_MAX, templateId); }},
          {"task_timeout", [&](const Setting& v) { read_.duration(v, sem.taskTimeout, DefaultUnit::Seconds, false); }},
          {"poll_interval",
           [&](const Setting& v) { read_.duration(v, sem.pollInterval, DefaultUnit::Seconds, false); }},
          {"machine_id", [&](const Setting& v) { read_.text(v, sem.machineId, "a machine id"); }},
          {"extra_vars", [&](const Setting& v) { readExtraVars(v, sem.extraVarsJson); }},
      });
}

void Loader::readExtraVars(const Setting& s, std::string& out) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping of variable names to values, e.g. { model_name: sdxl }");
    return;
  }
  bool reserved = false;
  for (auto it = s.node.begin(); it != s.node.end(); ++it) {
    if (it->first.IsScalar() && contains(kReservedExtraVars, it->first.Scalar())) {
      problems_.error(keyLine(it->first), s.key + "." + it->first.Scalar(),
                      "controld sets " + it->first.Scalar() +
                          " itself (service_id, machine_id, action and ondemand_operation are reserved)");
      reserved = true;
    }
  }
  rapidjson::Document doc;
  if (!yamlToJson(s.node, doc, doc.GetAllocator(), s.key, s.line, problems_) || reserved) return;
  JsonWriter writer;
  doc.Accept(writer.raw());
  out = writer.text();
}

}  // namespace ondemand::controld::config_detail
