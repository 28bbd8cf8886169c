// Hestia's hestia_config.yml: its keys, its environment overrides
// (<SERVICE_ID>_<FIELD>), and the keys that are nginx's job here (warnings
// that say what to write instead).

#include "controld/config/loader.hpp"

namespace ondemand::controld::config_detail {

void Loader::applyEnvironment(const std::vector<KeyHandler>& handlers, const std::string& prefix,
                              const std::string& path, int line) {
  // Hestia reads these from the file only.
  static constexpr std::string_view kFileOnly[] = {"services", "instances", "strategy", "routing"};
  for (const KeyHandler& h : handlers) {
    if (contains(kFileOnly, h.key)) continue;
    const std::string name = prefix + toUpper(h.key);
    const std::string* value = envValue(name);
    if (!value) continue;
    const std::string dotted = path.empty() ? std::string(h.key) : path + "." + std::string(h.key);
    const auto fileLine = problems_.lines.find(dotted);
    h.handle(Setting{dotted, fileLine != problems_.lines.end() ? fileLine->second : line, YAML::Node(*value), name});
  }
}

void Loader::warnNginxSide(const Setting& s, std::string message) {
  problems_.warning(s.line, s.key,
                    (s.envVar.empty() ? "" : "from environment variable " + s.envVar + ": ") +
                        "ignored by controld: " + std::move(message));
}

void Loader::loadHestia(const YAML::Node& root, const FormatGuess& guess, Config& config) {
  config.format = ConfigFormat::Hestia;
  SemaphoreSettings sem;
  const auto optionalText = [&](std::string& out, std::string_view what) {
    return [&out, what, this](const Setting& s) {
      if (s.isNull())
        out.clear();
      else
        read_.text(s, out, what);
    };
  };
  const std::vector<KeyHandler> handlers = {
      {"semaphore_base_url",
       [&](const Setting& s) {
         sem.baseUrl.clear();
         if (s.isNull()) return;
         if (read_.serverUrl(s, sem.baseUrl)) sem.baseUrl = withoutTrailingSlashes(sem.baseUrl);
       }},
      {"semaphore_timeout", [&](const Setting& s) { read_.duration(s, sem.httpTimeout, DefaultUnit::Seconds, false); }},
      {"semaphore_username", optionalText(sem.username, "a user name or e-mail address")},
      {"semaphore_password", optionalText(sem.password, "a password")},
      {"semaphore_api_key", optionalText(sem.apiToken, "an API token")},
      {"services",
       [&](const Setting& s) {
         readServices(
             s, [&](const std::string& name, const Setting& svc) { readHestiaService(name, svc, guess, config); });
       }},
  };
  readMapping(problems_, root, "", handlers, [&](std::string_view key) { return otherFormatNote(guess, key, true); });
  applyEnvironment(handlers, "", "", 0);
  tokenFallback(sem);
  // Without a server there are no Semaphore settings; a service that enables
  // Semaphore is then reported by validateConfig.
  if (!sem.baseUrl.empty()) config.semaphore = std::move(sem);
  warnAboutUnusedOverrides();
}

void Loader::claimEnvironmentPrefix(const std::string& prefix, const Setting& s) {
  if (!hestiaPrefixesUsed_.insert(prefix).second) {
    // Only a problem once a variable is actually set for that prefix.
    for (std::string_view field : kHestiaEnvFields) {
      const std::string var = prefix + "_" + std::string(field);
      if (envValue(var)) {
        problems_.error(s.line, s.key,
                        "another service has the same environment prefix " + prefix + "_, so environment variable " +
                            var + " could belong to either; rename one of them");
        break;
      }
    }
  }
}

// Hestia proxies requests itself; here nginx does, so these keys are nginx's:
// read and checked, and answered with a warning that says what to write.
std::vector<KeyHandler> Loader::nginxSideHandlers() {
  return {
      {"retry_count",
       [&](const Setting& v) {
         std::int64_t n = 0;
         if (!read_.integer(v, n, 0, 1000, "a whole number, 0 or more")) return;
         warnNginxSide(v,
                       "retries are nginx's job: \"proxy_next_upstream error timeout;\" and "
                       "\"proxy_next_upstream_tries " +
                           std::to_string(n + 1) + ";\" in the location");
       }},
      {"retry_delay_ms",
       [&](const Setting& v) {
         Millis d{};
         if (!read_.duration(v, d, DefaultUnit::Milliseconds, true)) return;
         warnNginxSide(v,
                       "nginx retries the next server at once, without a delay; "
                       "\"proxy_next_upstream_timeout\" bounds how long it keeps trying");
       }},
      {"fallback_url",
       [&](const Setting& v) {
         std::string url;
         if (v.isNull() || !read_.url(v, url)) return;
         warnNginxSide(v, "a fallback is nginx's job: add \"server " + hostPort(url) +
                              " backup;\" to the service's upstream block and proxy_pass to that upstream");
       }},
      {"queue_size",
       [&](const Setting& v) {
         std::int64_t n = 0;
         if (!read_.integer(v, n, 1, INT64_MAX, "a whole number, 1 or more")) return;
         warnNginxSide(v, "how many requests may wait is nginx's job: \"ondemand_max_waiting " + std::to_string(n) +
                              ";\" in the location");
       }},
      {"instances",
       [&](const Setting& v) {
         if (!v.node.IsSequence()) {
           read_.expected(v, "a list of instances");
           return;
         }
         warnNginxSide(v,
                       "several instances are nginx's job: list them as \"server\" lines of an upstream block "
                       "and proxy_pass to it");
       }},
      {"strategy",
       [&](const Setting& v) {
         if (v.isNull()) return;
         std::string name;
         if (!read_.text(v, name, "a strategy name")) return;
         warnNginxSide(v,
                       "choosing an instance is nginx's job: pick the upstream block's load-balancing method "
                       "(round-robin by default, \"least_conn;\", \"hash $key;\", \"random;\")");
       }},
      {"routing",
       [&](const Setting& v) {
         if (!v.node.IsMap()) {
           read_.expected(v, "a mapping");
           return;
         }
         warnNginxSide(v,
                       "routing is nginx's job: a \"map\" on a header or argument choosing the upstream, or one "
                       "location per route with its own proxy_pass");
       }},
  };
}

// Semaphore settings once it is known whether semaphore_enabled is on.
void Loader::applyHestiaSemaphore(const HestiaSemaphore& sem, const std::string& prefix, const Setting& s,
                                  ServiceConfig& svc) {
  if (sem.enabled && sem.machineId.empty()) {
    const std::string key = s.key + ".semaphore_enabled";
    const auto line = problems_.lines.find(key);
    problems_.error(line != problems_.lines.end() ? line->second : s.line, s.key + ".semaphore_machine_id",
                    "missing: Semaphore is enabled, and the task needs the machine to run on (Hestia requires it "
                    "too); set semaphore_machine_id or " +
                        prefix + "_SEMAPHORE_MACHINE_ID");
  }
  if (sem.enabled) {
    SemaphoreServiceSettings out;
    out.startTemplateId = sem.startTemplateId;
    out.stopTemplateId = sem.stopTemplateId;
    out.taskTimeout = sem.taskTimeout;
    out.pollInterval = sem.pollInterval;
    out.machineId = sem.machineId;
    svc.semaphore = std::move(out);
    svc.machine = sem.machineId;
    // Hestia has no start timeout of its own: the task may use all of its
    // timeout and the service still gets the usual time to become healthy.
    svc.startTimeout = sem.taskTimeout + kNativeStartTimeout;
  }
}

void Loader::readHestiaService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config) {
  ServiceConfig svc;
  svc.name = name;
  svc.where = {problems_.file(), s.line};
  svc.idleTimeout = 0ms;  // Hestia's default: never stop
  HestiaSemaphore sem;

  const std::string prefix = environmentPrefix(name);
  claimEnvironmentPrefix(prefix, s);

  const auto ms = [&](Millis& out, bool allowZero) {
    return [&out, allowZero, this](const Setting& v) { read_.duration(v, out, DefaultUnit::Milliseconds, allowZero); };
  };
  const auto seconds = [&](Millis& out) {
    return [&out, this](const Setting& v) { read_.duration(v, out, DefaultUnit::Seconds, false); };
  };
  const auto optionalUrl = [&](std::string& out) {
    return [&out, this](const Setting& v) {
      if (v.isNull())
        out.clear();
      else
        read_.url(v, out);
    };
  };
  const auto templateId = [&](std::int64_t& out) {
    return [&out, this](const Setting& v) { read_.integer(v, out, 1, INT64_MAX, "a task template id (1 or more)"); };
  };
  std::vector<KeyHandler> handlers = {
      {"base_url", [&](const Setting& v) { read_.url(v, svc.baseUrl); }},
      {"health_url", optionalUrl(svc.healthUrl)},
      {"warmup_ms", ms(svc.warmup, true)},
      {"idle_timeout_ms", ms(svc.idleTimeout, true)},
      {"request_timeout_seconds",
       [&](const Setting& v) {
         if (!read_.duration(v, svc.waitHint, DefaultUnit::Seconds, false)) return;
         problems_.warning(v.line, v.key,
                           (v.envVar.empty() ? "" : "from environment variable " + v.envVar + ": ") +
                               "shown by controld status, but how long a request waits is nginx's job: set "
                               "\"ondemand_wait " +
                               formatDuration(svc.waitHint) + ";\" where the service's location is (default 60s)");
       }},
      {"semaphore_enabled", [&](const Setting& v) { read_.boolean(v, sem.enabled); }},
      {"semaphore_machine_id",
       [&](const Setting& v) {
         if (v.isNull())
           sem.machineId.clear();
         else
           read_.text(v, sem.machineId, "a machine id");
       }},
      {"semaphore_start_template_id", templateId(sem.startTemplateId)},
      {"semaphore_stop_template_id", templateId(sem.stopTemplateId)},
      {"semaphore_task_timeout", seconds(sem.taskTimeout)},
      {"semaphore_poll_interval", seconds(sem.pollInterval)},
  };
  for (auto& h : nginxSideHandlers())
    handlers.push_back(std::move(h));
  readMapping(problems_, s.node, s.key, handlers,
              [&](std::string_view key) { return otherFormatNote(guess, key, false); });
  applyEnvironment(handlers, prefix + "_", s.key, s.line);

  applyHestiaSemaphore(sem, prefix, s, svc);
  config.services[name] = std::move(svc);
}

// Hestia created services from the environment alone; controld takes them
// only from the file, so a variable for a service the file lacks is reported.
void Loader::warnAboutUnusedOverrides() {
  for (const auto& [var, value] : env_) {
    if (contains(kHestiaTopKeys, toLower(var))) continue;  // SEMAPHORE_BASE_URL and friends
    for (std::string_view field : kHestiaEnvFields) {
      if (var.size() <= field.size() + 1 || !endsWith(var, "_" + std::string(field))) continue;
      const std::string prefix = var.substr(0, var.size() - field.size() - 1);
      if (hestiaPrefixesUsed_.count(prefix)) break;
      std::string guess = toLower(prefix);
      std::replace(guess.begin(), guess.end(), '_', '-');
      problems_.warning(0, "services",
                        "environment variable " + var + " is not used: no service in this file has the prefix " +
                            prefix + "_ (controld takes services only from the file; add \"" + guess +
                            ":\" under services: to use it)");
      break;
    }
  }
}

}  // namespace ondemand::controld::config_detail
