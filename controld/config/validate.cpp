// validateConfig: the facts that hold between keys and between services,
// whatever the format.

#include <algorithm>
#include <cctype>
#include <map>

#include "controld/config/config.hpp"
#include "controld/config/reader.hpp"
#include "controld/core/placement.hpp"

namespace ondemand::controld {

namespace {

// The name a key has in the format the config was read from.
std::string keyName(const Config& config, const std::string& service, std::string_view nativeKey) {
  static const std::map<std::string_view, std::string_view> kServiceKeys = {
      {"semaphore", "semaphore_enabled"},
      {"semaphore.start_template_id", "semaphore_start_template_id"},
      {"semaphore.task_timeout", "semaphore_task_timeout"},
      {"idle_timeout", "idle_timeout_ms"},
  };
  static const std::map<std::string_view, std::string_view> kGlobalKeys = {
      {"semaphore", "semaphore_base_url"},          {"semaphore.base_url", "semaphore_base_url"},
      {"semaphore.username", "semaphore_username"}, {"semaphore.password", "semaphore_password"},
      {"semaphore.api_token", "semaphore_api_key"},
  };
  std::string_view key = nativeKey;
  if (config.format == ConfigFormat::Hestia) {
    const auto& table = service.empty() ? kGlobalKeys : kServiceKeys;
    if (const auto it = table.find(nativeKey); it != table.end()) key = it->second;
  }
  return service.empty() ? std::string(key) : "services." + service + "." + std::string(key);
}

int lineOf(const Config& config, const std::string& key, int fallback) {
  const auto it = config.lines.find(key);
  return it != config.lines.end() ? it->second : fallback;
}

// "http://Semaphore.internal/x" -> "http://semaphore.internal:80": who answers
// a URL, to tell whether two URLs reach the same server.
std::string originOf(std::string_view url) {
  const auto schemeEnd = url.find("://");
  if (schemeEnd == std::string_view::npos) return {};
  std::string scheme(url.substr(0, schemeEnd));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  std::string_view rest = url.substr(schemeEnd + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
  std::string host(rest);
  std::string port = scheme == "https" ? "443" : "80";
  const auto colon = host.rfind(':');
  if (colon != std::string::npos && host.find(']', colon) == std::string::npos) {
    port = host.substr(colon + 1);
    host.resize(colon);
  }
  std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
  if (host == "localhost" || host == "[::1]") host = "127.0.0.1";
  return scheme + "://" + host + ":" + port;
}

// needs name a declared machine's declared resources, within what it has.
template <typename Error>
void validateMachines(const Config& config, const Error& error) {
  // Placement decides for a whole machine at once, from what every service
  // on it holds; in a cluster those services may have different owners, each
  // seeing only its own. Refused rather than placed wrongly.
  if (config.cluster && !config.machines.empty()) {
    error(lineOf(config, "machines", config.machines.begin()->second.where.line), "machines",
          "machines: and cluster: cannot be used together yet: placement needs one controld that owns every "
          "service of a machine (docs/CLUSTER.md); run the machine's services on a controld without cluster:");
  }
  for (const auto& [name, svc] : config.services) {
    const std::string needsKey = "services." + name + ".needs";
    const int needsLine = lineOf(config, needsKey, svc.where.line);
    const bool hasNeeds = !svc.needs.empty() || config.lines.count(needsKey) > 0;
    if (!hasNeeds) continue;
    if (svc.machine.empty()) {
      error(needsLine, needsKey,
            "needs without a machine: set machine: to the machine (under machines:) whose resources it uses");
      continue;
    }
    const auto m = config.machines.find(svc.machine);
    if (m == config.machines.end()) {
      std::string known;
      for (const auto& [machineName, machine] : config.machines)
        known += (known.empty() ? "" : ", ") + machineName;
      error(lineOf(config, "services." + name + ".machine", needsLine), "services." + name + ".machine",
            "machine " + ("\"" + svc.machine + "\"") +
                " is not declared under machines:, so its resources are unknown" +
                (known.empty() ? std::string(" (there is no machines: section)") : " (declared: " + known + ")"));
      continue;
    }
    if (svc.driverKind() == ServiceConfig::DriverKind::None) {
      error(needsLine, needsKey,
            "controld can only make room for services it starts and stops: add a start_command and stop_command "
            "or a semaphore: section, or drop needs");
    }
    for (const auto& [resource, amount] : svc.needs) {
      const std::string key = needsKey + "." + resource;
      const int line = lineOf(config, key, needsLine);
      const auto has = m->second.resources.find(resource);
      if (has == m->second.resources.end()) {
        std::string declared;
        for (const auto& [r, v] : m->second.resources)
          declared += (declared.empty() ? "" : ", ") + r + ": " + formatAmount(v);
        error(line, key,
              "machine " + ("\"" + svc.machine + "\"") + " declares no resource " + ("\"" + resource + "\"") +
                  (declared.empty() ? std::string(" (it declares none)") : " (it has " + declared + ")"));
      } else if (amount > has->second) {
        error(line, key,
              "needs " + formatAmount(amount) + ", more than machine " + ("\"" + svc.machine + "\"") + " has (" +
                  resource + ": " + formatAmount(has->second) + "): it could never start");
      }
    }
  }
}

}  // namespace

ConfigProblems validateConfig(const Config& config) {
  ConfigProblems out;
  const auto error = [&](int line, std::string key, std::string message) {
    out.errors.push_back({{config.sourceFile, line}, std::move(key), std::move(message)});
  };
  const auto warning = [&](int line, std::string key, std::string message) {
    out.warnings.push_back({{config.sourceFile, line}, std::move(key), std::move(message)});
  };
  const bool hestia = config.format == ConfigFormat::Hestia;

  bool anySemaphore = false;
  for (const auto& [name, svc] : config.services) {
    const int serviceLine = svc.where.line;
    // (a named reference: clang before 16 cannot capture structured bindings)
    const auto key = [&config, &service = name](std::string_view k) { return keyName(config, service, k); };
    const auto line = [&](std::string_view k) { return lineOf(config, key(k), serviceLine); };
    const bool commands = !svc.startCommand.empty() || !svc.stopCommand.empty();

    if (svc.semaphore) {
      anySemaphore = true;
      if (commands) {
        const std::string_view which = svc.startCommand.empty() ? "stop_command" : "start_command";
        error(line(which), key(which),
              "a service has one driver, but this one has both semaphore and " + std::string(which) +
                  "; keep one of them");
      }
      if (!config.semaphore) {
        error(line("semaphore"), key("semaphore"),
              hestia ? "Semaphore is enabled, but there is no semaphore_base_url (nor SEMAPHORE_BASE_URL)"
                     : "this service uses Semaphore, but there is no top-level \"semaphore:\" section "
                       "(base_url, credentials)");
      }
      if (config.semaphore && !svc.baseUrl.empty() && originOf(svc.baseUrl) == originOf(config.semaphore->baseUrl)) {
        const std::string semaphoreKey = keyName(config, "", "semaphore.base_url");
        error(line("base_url"), key("base_url"),
              svc.baseUrl + " is the Semaphore server controld uses (" + semaphoreKey + " " +
                  config.semaphore->baseUrl + ", line " +
                  std::to_string(lineOf(config, semaphoreKey, lineOf(config, keyName(config, "", "semaphore"), 0))) +
                  "): Semaphore cannot start itself, so once stopped this service could never come back; manage "
                  "Semaphore outside controld");
      }
      if (svc.semaphore->startTemplateId <= 0) {
        error(line("semaphore"), key("semaphore"),
              "start_template_id is missing: expected the id of the task template that starts the service");
      }
      if (svc.semaphore->taskTimeout > svc.startTimeout) {
        warning(line("semaphore.task_timeout"), key("semaphore.task_timeout"),
                "longer than start_timeout (" + formatDuration(svc.startTimeout) +
                    "): the start is abandoned before the task's own timeout applies");
      }
    }
    if (!svc.stopCommand.empty() && svc.startCommand.empty()) {
      error(line("stop_command"), key("stop_command"),
            "there is no start_command: controld could stop this service but never start it again");
    }
    if (svc.driverKind() == ServiceConfig::DriverKind::None && svc.healthUrl.empty()) {
      if (hestia) {
        warning(serviceLine, "services." + name,
                "neither semaphore_enabled nor health_url: controld has nothing to start or watch, so it always "
                "counts this service as warm; leave ondemand_service off for its location");
      } else {
        error(serviceLine, "services." + name,
              "no driver and no health_url: controld could neither start this service nor tell when it is ready; "
              "add health_url, or a driver (semaphore:, or start_command/stop_command)");
      }
    }
    const bool canStop = (svc.semaphore && svc.semaphore->stopTemplateId > 0) || !svc.stopCommand.empty();
    if (svc.idleTimeout.count() > 0 && !canStop && config.lines.count(key("idle_timeout"))) {
      warning(line("idle_timeout"), key("idle_timeout"),
              "controld has no way to stop this service (no stop_command or stop_template_id), so the idle "
              "timeout does nothing");
    }
  }

  validateMachines(config, error);

  if (config.semaphore) {
    const SemaphoreSettings& sem = *config.semaphore;
    const int sectionLine = lineOf(config, keyName(config, "", "semaphore"), 0);
    const auto line = [&](std::string_view k) { return lineOf(config, keyName(config, "", k), sectionLine); };
    if (sem.baseUrl.empty() && (!hestia || anySemaphore)) {
      error(line("semaphore.base_url"), keyName(config, "", "semaphore.base_url"),
            hestia ? "missing: expected the Semaphore server's URL, e.g. http://semaphore.internal:3000 "
                     "(or set SEMAPHORE_BASE_URL)"
                   : "base_url is missing: expected the Semaphore server's URL, e.g. http://semaphore.internal:3000");
    }
    if (sem.username.empty() != sem.password.empty()) {
      const std::string_view given = sem.username.empty() ? "semaphore.password" : "semaphore.username";
      error(line(given), keyName(config, "", given),
            sem.username.empty() ? "a password without a username" : "a username without a password");
    } else if (!sem.apiToken.empty() && !sem.username.empty()) {
      warning(line("semaphore.username"), keyName(config, "", "semaphore.username"),
              "not used: an API token is given, and controld uses the token");
    }
    if (anySemaphore && sem.apiToken.empty() && sem.username.empty() && sem.password.empty()) {
      error(sectionLine, keyName(config, "", "semaphore"),
            hestia ? "no credentials for Semaphore: expected semaphore_api_key, or semaphore_username and "
                     "semaphore_password (or the environment variable SEMAPHORE_API_TOKEN)"
                   : "no credentials: expected api_token, api_token_file, or username and password (or the "
                     "environment variable SEMAPHORE_API_TOKEN)");
    }
  }

  // A name a client may ask for leads to one service: models are unique
  // across services and no model is another service's name.
  std::map<std::string, std::string> claimedBy;  // model -> service
  for (const auto& [name, svc] : config.services) {
    const std::string key = "services." + name + ".models";
    for (const std::string& model : svc.models) {
      const int line = lineOf(config, key, svc.where.line);
      if (model != name && config.services.count(model)) {
        error(line, key,
              config_detail::quote(model) + " is the name of service " + config_detail::quote(model) +
                  "; a client asking for it could mean either " + config_detail::quote(model) + " or " +
                  config_detail::quote(name));
        continue;
      }
      const auto [it, fresh] = claimedBy.emplace(model, name);
      if (!fresh) {
        error(line, key,
              "model " + config_detail::quote(model) + " is claimed by two services, " +
                  config_detail::quote(it->second) + " and " + config_detail::quote(name) + "; give it to one of them");
      }
    }
  }

  if (config.services.empty()) {
    warning(lineOf(config, "services", 0), "services", "no services are defined: controld has nothing to do");
  }
  return out;
}

}  // namespace ondemand::controld
