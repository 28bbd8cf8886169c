#include "controld/cli/commands.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <iostream>
#include <map>

#include "controld/cli/cluster_cli.hpp"
#include "controld/cli/metrics.hpp"
#include "controld/cli/render.hpp"
#include "controld/io/json_fields.hpp"
#include "shared/duration.hpp"
#include "shared/json_read.hpp"

namespace ondemand::controld::cli {

int printProblems(const ConfigLoadResult& result) {
  for (const auto& e : result.errors)
    std::cerr << formatProblem(e) << "\n";
  for (const auto& w : result.warnings)
    std::cerr << "warning: " << formatProblem(w) << "\n";
  return result.errors.empty() ? kExitOk : kExitUsage;
}

// start/stop, optionally waiting for the outcome. While it waits, what the
// service is doing goes to stderr whenever it changes (and every 10 s); the
// outcome goes to stdout once.
int startOrStop(const SocketChoice& socket, const std::string& verb, const std::string& service, bool wait, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  if (wait && !client.send(protocol::encode(protocol::Subscribe{}))) {
    return unreachable(socket, client.error(), client.peerPid());
  }
  auto reply = client.command(verb, service);
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!jsonReplyOk(*reply)) {
    std::cerr << "controld " << verb << ": " << jsonString(*reply, "error") << "\n";
    return jsonString(*reply, "error").rfind("unknown service", 0) == 0 ? kExitUsage : kExitFailed;
  }
  std::string state = jsonString(*reply, "state");
  std::string reason = jsonString(*reply, "reason");
  std::int64_t epoch = jsonInt64(*reply, "epoch");
  const bool isStart = verb == "start";
  auto finished = [&](const std::string& s) {
    return isStart ? (s == "warm" || s == "failed") : (s == "cold" || s == "warm");
  };
  if (wait && !finished(state)) {
    std::string lastWhat = "-";
    std::string lastState;
    auto lastPrinted = std::chrono::steady_clock::now();
    // Asks for the service's status: progress, and proof that controld answers.
    auto progress = [&]() -> bool {
      auto st = client.command("status", service);
      if (!st) return false;
      const auto* services = jsonMember(*st, "services");
      if (!services || !services->IsArray() || services->Empty()) return true;
      const auto& s = (*services)[0];
      if (finished(jsonString(s, "state"))) return true;  // the push says it, next
      std::string what;
      const std::string line = progressLine(s, jsonInt64(*st, "now"), what);
      const auto now = std::chrono::steady_clock::now();
      if (what != lastWhat || jsonString(s, "state") != lastState || now - lastPrinted >= std::chrono::seconds(10)) {
        std::cerr << line << "\n";
        lastWhat = what;
        lastState = jsonString(s, "state");
        lastPrinted = now;
      }
      return true;
    };
    if (!progress()) return unreachable(socket, client.error(), client.peerPid());
    for (;;) {
      std::string line;
      const auto r = client.readLine(line, kFollowCheckMs);
      if (r == ControlClient::Read::Closed) {
        return unreachable(
            socket, ClientError{Unreachable::Closed, "it closed the connection while " + service + " was " + state},
            client.peerPid());
      }
      if (r == ControlClient::Read::Timeout) {
        if (!progress()) return unreachable(socket, client.error(), client.peerPid());
        continue;
      }
      rapidjson::Document doc;
      if (!parseJson(doc, line).empty() || !doc.IsObject() || jsonString(doc, "type") != "state" ||
          jsonString(doc, "service") != service)
        continue;
      // The subscription's first burst can be older than the reply.
      if (jsonInt64(doc, "epoch") < epoch) continue;
      epoch = jsonInt64(doc, "epoch");
      const std::string s = jsonString(doc, "state");
      const bool changed = s != state;
      state = s;
      reason = jsonString(doc, "reason");
      if (finished(state)) break;
      if (changed && !progress()) return unreachable(socket, client.error(), client.peerPid());
    }
  }
  if (!isStart && wait && state == "warm") {
    // The stop failed: its reason is in the last operation.
    auto status = client.command("status", service);
    if (status && !jsonServices(*status).Empty()) {
      const auto& last = jsonMemberOrNull(jsonServices(*status)[0], "last_operation");
      reason = last.IsObject() ? jsonString(last, "reason") : "";
    }
  }
  if (json) {
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    w.StartObject();
    w.Key("service");
    w.String(service.c_str());
    w.Key("state");
    w.String(state.c_str());
    if (!reason.empty()) {
      w.Key("reason");
      w.String(reason.c_str());
    }
    w.EndObject();
    std::cout << buffer.GetString() << "\n";
  } else {
    std::cout << service << ": " << state << (reason.empty() ? "" : " — " + reason) << "\n";
  }
  if (!wait) return kExitOk;
  if (isStart) return state == "warm" ? kExitOk : kExitFailed;
  return state == "cold" ? kExitOk : kExitFailed;
}

int status(const SocketChoice& socket, const std::string& service, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  auto reply = client.command("status", service);
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!jsonReplyOk(*reply)) {
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

int cluster(const SocketChoice& socket, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  auto reply = client.command("status", "");
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld cluster: " << jsonString(*reply, "error") << "\n";
    return kExitUsage;
  }
  if (json) {
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    if (reply->HasMember("cluster")) {
      (*reply)["cluster"].Accept(w);
    } else {
      w.Null();
    }
    std::cout << buffer.GetString() << "\n";
  } else {
    printClusterMembers(std::cout, *reply);
  }
  return kExitOk;
}

int metrics(const SocketChoice& socket) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  auto reply = client.command("status", "");
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!jsonReplyOk(*reply)) {
    std::cerr << "controld metrics: " << jsonString(*reply, "error") << "\n";
    return kExitUsage;
  }
  std::cout << prometheusText(*reply);
  return kExitOk;
}

// The transition column fits the longest one ("stopping -> starting").
constexpr std::size_t kTransitionWidth = 22;

// `events`: the current state of every service first, then each transition
// as it happens, in aligned columns (or JSON lines).
int events(const SocketChoice& socket, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  // Subscribed first, then the picture: a transition in between arrives
  // after it and is printed unless the picture has it already (epochs).
  auto reply = client.command("events", "");
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  auto status = client.command("status", "");
  if (!status) return unreachable(socket, client.error(), client.peerPid());
  std::cout.setf(std::ios::unitbuf);
  std::map<std::string, std::int64_t> seenEpoch;
  std::size_t nameWidth = 16;
  const auto* services = jsonMember(*status, "services");
  if (services && services->IsArray()) {
    for (const auto& s : services->GetArray())
      nameWidth = std::max(nameWidth, jsonString(s, "name").size() + 1);
    const std::int64_t now = jsonInt64(*status, "now");
    for (const auto& s : services->GetArray()) {
      const std::string name = jsonString(s, "name");
      seenEpoch[name] = jsonInt64(s, "epoch");
      if (json) {
        rapidjson::StringBuffer buffer;
        rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
        w.StartObject();
        w.Key("type");
        w.String("current");
        w.Key("service");
        w.String(name.c_str());
        w.Key("state");
        w.String(jsonString(s, "state").c_str());
        w.Key("since");
        w.Int64(jsonInt64(s, "since"));
        w.Key("cause");
        w.String(jsonString(s, "cause").c_str());
        w.Key("reason");
        w.String(jsonString(s, "reason").c_str());
        w.Key("epoch");
        w.Int64(jsonInt64(s, "epoch"));
        w.EndObject();
        std::cout << buffer.GetString() << "\n";
        continue;
      }
      std::string what;
      std::string line = clockTime(now) + "  " + padRight(name, nameWidth) +
                         padRight("now " + jsonString(s, "state"), kTransitionWidth) + "(";
      const std::int64_t since = jsonInt64(s, "since");
      line += since > 0 ? "since " + clockTime(since) + ", " + ago(now, since) + " ago" : "never changed";
      progressLine(s, now, what);
      if (!what.empty()) line += "; " + what;
      line += ")";
      std::cout << line << "\n";
      if (!jsonString(s, "reason").empty()) {
        std::cout << std::string(21 + nameWidth + kTransitionWidth, ' ') << jsonString(s, "reason") << "\n";
      }
    }
  }
  for (;;) {
    std::string line;
    const auto r = client.readLine(line, kEventsCheckMs);
    if (r == ControlClient::Read::Closed) break;
    if (r == ControlClient::Read::Timeout) {
      // Quiet for a while: is controld still there? (An `events` command
      // is harmless to repeat.)
      if (!client.command("events", "")) return unreachable(socket, client.error(), client.peerPid());
      continue;
    }
    rapidjson::Document doc;
    if (!parseJson(doc, line).empty() || !doc.IsObject() || jsonString(doc, "type") != "event") continue;
    const std::string service = jsonString(doc, "service");
    const auto seen = seenEpoch.find(service);
    if (seen != seenEpoch.end() && jsonInt64(doc, "epoch") <= seen->second) continue;
    if (json) {
      std::cout << line << "\n";
      continue;
    }
    const std::string detail = jsonString(doc, "detail");
    std::cout << clockTime(jsonInt64(doc, "at")) << "  " << padRight(service, nameWidth)
              << padRight(jsonString(doc, "from") + " -> " + jsonString(doc, "to"), kTransitionWidth) << "("
              << jsonString(doc, "cause") << (detail.empty() ? "" : ": " + detail) << ")"
              << (jsonInt64(doc, "task_id") ? " task " + std::to_string(jsonInt64(doc, "task_id")) : "") << "\n";
  }
  return unreachable(socket, ClientError{Unreachable::Closed, "it closed the connection"}, client.peerPid());
}

}  // namespace ondemand::controld::cli
