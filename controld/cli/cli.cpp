// The client side of `controld`: status, start, stop, events, check-config,
// version, and serve (which hands over to the Daemon). Client commands talk to
// the daemon over the control socket with the same protocol as nginx workers.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iostream>

#include "controld/config/config.hpp"
#include "controld/daemon/daemon.hpp"
#include "controld/io/fd.hpp"
#include "controld/io/json_fields.hpp"
#include "controld/io/log.hpp"
#include "controld/cli/metrics.hpp"
#include "controld/drivers/semaphore/semaphore_check.hpp"
#include "controld/io/uv.hpp"
#include "controld/version.hpp"
#include "shared/duration.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr const char* kDefaultSocket = "/run/controld/controld.sock";

// A blocking connection to the daemon: fine for a command-line tool.
class ControlClient {
 public:
  // Returns an error text when the daemon cannot be reached.
  std::optional<std::string> connect(const std::string& path) {
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) return "socket path too long: " + path;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return "cannot connect to " + path + ": " + std::strerror(errno);
    }
    send(protocol::encode(protocol::Hello{protocol::kVersion, "cli", ::getpid()}));
    auto welcome = readLine(5000);
    if (!welcome) return "no answer from controld on " + path;
    rapidjson::Document doc;
    doc.Parse(welcome->c_str());
    if (!doc.IsObject() || !doc.HasMember("type") || std::string(doc["type"].GetString()) != "welcome") {
      return "unexpected answer from " + path + ": " + *welcome;
    }
    return std::nullopt;
  }

  void send(const std::string& line) {
    std::size_t sent = 0;
    while (sent < line.size()) {
      const ssize_t n = ::write(fd_.get(), line.data() + sent, line.size() - sent);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      sent += static_cast<std::size_t>(n);
    }
  }

  // The next line, or nullopt on EOF or after timeoutMs (-1 = no timeout).
  std::optional<std::string> readLine(int timeoutMs = -1) {
    for (;;) {
      if (auto line = framer_.next()) return std::string(*line);
      pollfd p{fd_.get(), POLLIN, 0};
      const int rc = ::poll(&p, 1, timeoutMs);
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) return std::nullopt;
      char buf[65536];
      const ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      if (!framer_.append(std::string_view(buf, static_cast<std::size_t>(n)))) return std::nullopt;
    }
  }

  // Sends a command and returns its reply (other lines are handed to onOther).
  std::optional<rapidjson::Document> command(const std::string& verb, const std::string& service,
                                             const std::function<void(const rapidjson::Document&)>& onOther = {}) {
    const std::int64_t id = nextId_++;
    send(protocol::encode(protocol::Command{id, verb, service}));
    while (auto line = readLine()) {
      rapidjson::Document doc;
      doc.Parse(line->c_str());
      if (!doc.IsObject() || !doc.HasMember("type") || !doc["type"].IsString()) continue;
      const std::string type = doc["type"].GetString();
      if (type == "reply" && doc.HasMember("id") && doc["id"].IsInt64() && doc["id"].GetInt64() == id) return doc;
      if (type == "error") {
        std::cerr << "controld: " << (doc.HasMember("message") ? doc["message"].GetString() : "error") << "\n";
        return std::nullopt;
      }
      if (onOther) onOther(doc);
    }
    return std::nullopt;
  }

 private:
  ScopedFd fd_;
  protocol::LineFramer framer_;
  std::int64_t nextId_ = 1;
};

std::string clockTime(std::int64_t unixMs) {
  const std::time_t secs = unixMs / 1000;
  std::tm tm{};
  localtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string ago(std::int64_t now, std::int64_t then) {
  if (then <= 0) return "-";
  return formatDuration(Millis(std::max<std::int64_t>(0, now - then)));
}

std::string padRight(const std::string& s, std::size_t width) {
  return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' ');
}

std::string describeOperation(const rapidjson::Value& service, std::int64_t now) {
  const auto it = service.FindMember("operation");
  if (it != service.MemberEnd() && it->value.IsObject()) {
    const auto& op = it->value;
    std::string out = jsonString(op, "kind") + " running for " + ago(now, jsonInt64(op, "started_at"));
    if (jsonInt64(op, "task_id")) out += " (task " + std::to_string(jsonInt64(op, "task_id")) + ")";
    return out;
  }
  const auto last = service.FindMember("last_operation");
  if (last == service.MemberEnd() || !last->value.IsObject()) return "-";
  const auto& op = last->value;
  const bool ok = op.HasMember("ok") && op["ok"].IsBool() && op["ok"].GetBool();
  std::string out = jsonString(op, "kind") + (ok ? " ok" : " failed");
  if (jsonInt64(op, "task_id")) {
    out += " (task " + std::to_string(jsonInt64(op, "task_id"));
    if (!jsonString(op, "task_status").empty()) out += " " + jsonString(op, "task_status");
    out += ")";
  }
  out += ", " + ago(now, jsonInt64(op, "ended_at")) + " ago";
  return out;
}

void printTable(const rapidjson::Document& reply) {
  const std::int64_t now = jsonInt64(reply, "now");
  std::cout << padRight("SERVICE", 20) << padRight("STATE", 10) << padRight("SINCE", 10) << padRight("IDLE-STOP IN", 14)
            << padRight("IN FLIGHT", 11) << "LAST OPERATION\n";
  std::vector<std::string> reasons;
  for (const auto& s : reply["services"].GetArray()) {
    std::string idle = "-";
    if (s.HasMember("idle_stop_at") && s["idle_stop_at"].IsInt64()) {
      idle = formatDuration(Millis(std::max<std::int64_t>(0, s["idle_stop_at"].GetInt64() - now)));
    }
    std::string state = jsonString(s, "state");
    if (s.HasMember("queued") && s["queued"].IsBool() && s["queued"].GetBool()) state += "*";
    std::cout << padRight(jsonString(s, "name"), 20) << padRight(state, 10)
              << padRight(ago(now, jsonInt64(s, "since")), 10) << padRight(idle, 14)
              << padRight(std::to_string(jsonInt64(s, "in_flight")), 11) << describeOperation(s, now) << "\n";
    if (!jsonString(s, "reason").empty()) reasons.push_back(jsonString(s, "name") + ": " + jsonString(s, "reason"));
  }
  for (const auto& r : reasons)
    std::cout << "\n" << r << "\n";
}

void printDetail(const rapidjson::Document& reply) {
  const std::int64_t now = jsonInt64(reply, "now");
  for (const auto& s : reply["services"].GetArray()) {
    std::cout << "service:        " << jsonString(s, "name") << "\n"
              << "state:          " << jsonString(s, "state") << " since " << clockTime(jsonInt64(s, "since")) << " ("
              << ago(now, jsonInt64(s, "since")) << " ago, cause " << jsonString(s, "cause") << ")\n";
    if (!jsonString(s, "reason").empty()) std::cout << "reason:         " << jsonString(s, "reason") << "\n";
    if (jsonInt64(s, "starting_since"))
      std::cout << "starting for:   " << ago(now, jsonInt64(s, "starting_since")) << "\n";
    if (jsonInt64(s, "retry_at") > now) {
      std::cout << "next try:       requests wait " << formatDuration(Millis(jsonInt64(s, "retry_at") - now))
                << " (failure_backoff) before waking it again\n";
    }
    if (jsonInt64(s, "starts_ok") + jsonInt64(s, "starts_failed") > 0) {
      std::cout << "starts:         " << jsonInt64(s, "starts_ok") << " ok, " << jsonInt64(s, "starts_failed")
                << " failed";
      if (jsonInt64(s, "starts_ok") > 0)
        std::cout << "; the last took " << formatDuration(Millis(jsonInt64(s, "last_start_ms")));
      std::cout << "\n";
    }
    std::cout << "driver:         " << jsonString(s, "driver") << "\n";
    if (!jsonString(s, "machine").empty()) std::cout << "machine:        " << jsonString(s, "machine") << "\n";
    if (!jsonString(s, "health_url").empty()) std::cout << "health:         " << jsonString(s, "health_url") << "\n";
    std::cout << "in flight:      " << jsonInt64(s, "in_flight")
              << " (requests started: " << jsonInt64(s, "started_total") << ")\n";
    if (s.HasMember("idle_stop_at") && s["idle_stop_at"].IsInt64()) {
      std::cout << "idle stop in:   "
                << formatDuration(Millis(std::max<std::int64_t>(0, s["idle_stop_at"].GetInt64() - now))) << "\n";
    }
    std::cout << "operation:      " << describeOperation(s, now) << "\n";
    const auto& last = s["last_operation"];
    if (last.IsObject() && !jsonString(last, "reason").empty())
      std::cout << "last reason:    " << jsonString(last, "reason") << "\n";
    std::cout << "history:\n";
    if (s["history"].IsArray()) {
      const auto& history = s["history"].GetArray();
      for (auto it = history.End(); it != history.Begin();) {
        --it;
        std::string line = "  " + clockTime(jsonInt64(*it, "at")) + "  " + jsonString(*it, "from") + " -> " +
                           jsonString(*it, "to") + "  (" + jsonString(*it, "cause");
        if (!jsonString(*it, "detail").empty()) line += ": " + jsonString(*it, "detail");
        line += ")";
        if (jsonInt64(*it, "task_id")) line += " task " + std::to_string(jsonInt64(*it, "task_id"));
        std::cout << line << "\n";
      }
    }
  }
}

std::string resolveSocket(const std::string& socketOption, const std::string& configOption) {
  if (!socketOption.empty()) return socketOption;
  if (!configOption.empty()) {
    auto loaded = loadConfig(configOption, processEnvironment());
    if (loaded.config) return loaded.config->socketPath;
  }
  if (const char* env = std::getenv("CONTROLD_SOCKET")) return env;
  return kDefaultSocket;
}

int unreachable(const std::string& socket, const std::string& error) {
  std::cerr << "controld is not running or not reachable (" << error << ")\n"
            << "start it with: controld serve --config /etc/controld/controld.yaml\n";
  (void)socket;
  return kExitUnreachable;
}

int printProblems(const ConfigLoadResult& result) {
  for (const auto& e : result.errors)
    std::cerr << formatProblem(e) << "\n";
  for (const auto& w : result.warnings)
    std::cerr << "warning: " << formatProblem(w) << "\n";
  return result.errors.empty() ? kExitOk : kExitUsage;
}

// start/stop, optionally waiting for the outcome.
int startOrStop(const std::string& socket, const std::string& verb, const std::string& service, bool wait, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket)) return unreachable(socket, *error);
  if (wait) {
    client.send(protocol::encode(protocol::Subscribe{}));
  }
  auto reply = client.command(verb, service);
  if (!reply) return unreachable(socket, "connection closed");
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld " << verb << ": " << jsonString(*reply, "error") << "\n";
    return jsonString(*reply, "error").rfind("unknown service", 0) == 0 ? kExitUsage : kExitFailed;
  }
  std::string state = jsonString(*reply, "state");
  std::string reason = jsonString(*reply, "reason");
  const bool isStart = verb == "start";
  auto finished = [&](const std::string& s) {
    return isStart ? (s == "warm" || s == "failed") : (s == "cold" || s == "warm");
  };
  if (wait && !finished(state)) {
    // States arrive in order on this connection, after the reply's.
    while (auto line = client.readLine()) {
      rapidjson::Document doc;
      doc.Parse(line->c_str());
      if (!doc.IsObject() || jsonString(doc, "type") != "state" || jsonString(doc, "service") != service) continue;
      const std::string s = jsonString(doc, "state");
      if (s != state)
        std::cerr << service << ": " << s
                  << (jsonInt64(doc, "task_id") ? " (task " + std::to_string(jsonInt64(doc, "task_id")) + ")" : "")
                  << "\n";
      state = s;
      reason = jsonString(doc, "reason");
      if (finished(state)) break;
    }
  }
  if (!isStart && wait && state == "warm") {
    // The stop failed: its reason is in the last operation.
    auto status = client.command("status", service);
    if (status && (*status)["services"].IsArray() && !(*status)["services"].Empty()) {
      const auto& last = (*status)["services"][0]["last_operation"];
      reason = last.IsObject() ? jsonString(last, "reason") : "";
    }
  }
  if (json) {
    std::cout << "{\"service\":\"" << service << "\",\"state\":\"" << state << "\"}\n";
  } else {
    std::cout << service << ": " << state << (reason.empty() ? "" : " — " + reason) << "\n";
  }
  if (!wait) return kExitOk;
  if (isStart) return state == "warm" ? kExitOk : kExitFailed;
  return state == "cold" ? kExitOk : kExitFailed;
}

int status(const std::string& socket, const std::string& service, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket)) return unreachable(socket, *error);
  auto reply = client.command("status", service);
  if (!reply) return unreachable(socket, "connection closed");
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld status: " << jsonString(*reply, "error") << "\n";
    return kExitUsage;
  }
  if (json) {
    // Stable output: the reply without the envelope fields.
    reply->RemoveMember("type");
    reply->RemoveMember("id");
    reply->RemoveMember("ok");
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    reply->Accept(w);
    std::cout << buffer.GetString() << "\n";
  } else if (service.empty()) {
    printTable(*reply);
  } else {
    printDetail(*reply);
  }
  return kExitOk;
}

int metrics(const std::string& socket) {
  ControlClient client;
  if (auto error = client.connect(socket)) return unreachable(socket, *error);
  auto reply = client.command("status", "");
  if (!reply) return unreachable(socket, "connection closed");
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld metrics: " << jsonString(*reply, "error") << "\n";
    return kExitUsage;
  }
  std::cout << prometheusText(*reply);
  return kExitOk;
}

int events(const std::string& socket, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket)) return unreachable(socket, *error);
  auto reply = client.command("events", "");
  if (!reply) return unreachable(socket, "connection closed");
  std::cout.setf(std::ios::unitbuf);
  while (auto line = client.readLine()) {
    rapidjson::Document doc;
    doc.Parse(line->c_str());
    if (!doc.IsObject() || jsonString(doc, "type") != "event") continue;
    if (json) {
      std::cout << *line << "\n";
      continue;
    }
    std::cout << clockTime(jsonInt64(doc, "at")) << "  " << padRight(jsonString(doc, "service"), 16)
              << jsonString(doc, "from") << " -> " << padRight(jsonString(doc, "to"), 9) << " ("
              << jsonString(doc, "cause") << (jsonString(doc, "detail").empty() ? "" : ": " + jsonString(doc, "detail"))
              << ")" << (jsonInt64(doc, "task_id") ? " task " + std::to_string(jsonInt64(doc, "task_id")) : "") << "\n";
  }
  std::cerr << "controld closed the connection\n";
  return kExitUnreachable;
}

}  // namespace

int cliMain(int argc, char** argv) {
  CLI::App app{"controld: wakes services behind nginx on request and stops them when idle"};
  app.require_subcommand(1);
  std::string socketOption;
  std::string configOption;
  bool json = false;
  bool wait = false;
  bool online = false;
  std::string service;

  auto* serve = app.add_subcommand("serve", "run the daemon in the foreground (logs to stderr)");
  serve->add_option("--config,-c", configOption, "controld.yaml or hestia_config.yml")->required();
  std::string serveSocket;
  std::string serveStateDir;
  serve->add_option("--socket,-s", serveSocket, "listen here instead of the configuration's socket");
  serve->add_option("--state-dir", serveStateDir, "keep state here instead of the configuration's state_dir");

  auto* statusCmd = app.add_subcommand("status", "show services: state, since, idle-stop in, in flight, last task");
  statusCmd->add_option("service", service, "one service, in detail with its history");
  statusCmd->add_flag("--json", json, "machine-readable output (docs/PROTOCOL.md)");

  auto* startCmd = app.add_subcommand("start", "wake a service by hand");
  startCmd->add_option("service", service)->required();
  startCmd->add_flag("--wait", wait, "return when it is warm (exit 0) or failed (exit 1)");
  startCmd->add_flag("--json", json);

  auto* stopCmd = app.add_subcommand("stop", "stop a service now, requests in flight or not");
  stopCmd->add_option("service", service)->required();
  stopCmd->add_flag("--wait", wait, "return when it is cold (exit 0) or the stop failed (exit 1)");
  stopCmd->add_flag("--json", json);

  auto* eventsCmd = app.add_subcommand("events", "follow state changes live");
  eventsCmd->add_flag("--json", json, "one JSON object per line");

  auto* metricsCmd =
      app.add_subcommand("metrics", "the status in Prometheus' text format (for node_exporter's textfile collector)");

  auto* check = app.add_subcommand("check-config", "validate a configuration: every problem with file:line and key");
  check->add_option("--config,-c", configOption, "the file to check")->required();
  check->add_flag("--online", online, "also ask Semaphore: reachable, token accepted, templates exist");

  app.add_subcommand("version", "print the version");

  for (auto* sub : {statusCmd, startCmd, stopCmd, eventsCmd, metricsCmd}) {
    sub->add_option(
        "--socket,-s", socketOption,
        "control socket (default: from --config, $CONTROLD_SOCKET, or " + std::string(kDefaultSocket) + ")");
    sub->add_option("--config,-c", configOption, "read the socket path from this configuration");
  }

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
  if (*check) {
    auto result = loadConfig(configOption, processEnvironment());
    const int rc = printProblems(result);
    if (rc != kExitOk) return rc;
    if (online) {
      const int onlineRc = checkSemaphoreOnline(*result.config, std::cout, std::cerr);
      if (onlineRc != kExitOk) return onlineRc;
    }
    std::cout << configOption << ": ok (" << result.config->services.size() << " services)\n";
    return kExitOk;
  }
  if (*serve) {
    auto result = loadConfig(configOption, processEnvironment());
    for (const auto& w : result.warnings)
      LogLine(LogLevel::Warning, "config_warning").kv("problem", formatProblem(w));
    if (!result.config) {
      for (const auto& e : result.errors)
        std::cerr << formatProblem(e) << "\n";
      return kExitUsage;
    }
    Daemon daemon(std::move(*result.config), processEnvironment(), ServeOverrides{serveSocket, serveStateDir});
    return daemon.run();
  }
  const std::string socket = resolveSocket(socketOption, configOption);
  if (*statusCmd) return status(socket, service, json);
  if (*startCmd) return startOrStop(socket, "start", service, wait, json);
  if (*stopCmd) return startOrStop(socket, "stop", service, wait, json);
  if (*eventsCmd) return events(socket, json);
  if (*metricsCmd) return metrics(socket);
  return kExitUsage;
}

}  // namespace ondemand::controld
