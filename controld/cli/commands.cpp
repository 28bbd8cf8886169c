#include "controld/cli/commands.hpp"

#include <functional>
#include <iostream>
#include <map>
#include <variant>

#include "controld/cli/cluster_cli.hpp"
#include "controld/cli/metrics.hpp"
#include "controld/cli/render.hpp"
#include "shared/duration.hpp"
#include "shared/json_writer.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld::cli {

int printProblems(const ConfigLoadResult& result) {
  for (const auto& e : result.errors)
    std::cerr << formatProblem(e) << "\n";
  for (const auto& w : result.warnings)
    std::cerr << "warning: " << formatProblem(w) << "\n";
  return result.errors.empty() ? kExitOk : kExitUsage;
}

namespace {

using StatusService = protocol::StatusReply::Service;

// controld answered something this CLI cannot read (another version?).
int unreadable(const std::string& verb, const std::string& error) {
  std::cerr << "controld " << verb << ": unreadable answer: " << error << "\n";
  return kExitFailed;
}

// The status of `service` (empty: all), or nullopt with `exitCode` set
// (controld unreachable, an error it answered, an answer this CLI cannot read).
std::optional<protocol::StatusReply> askStatus(const SocketChoice& socket, ControlClient& client,
                                               const std::string& verb, const std::string& service, int& exitCode) {
  auto answer = client.command("status", service);
  if (!answer) {
    exitCode = unreachable(socket, client.error(), client.peerPid());
    return std::nullopt;
  }
  if (!answer->envelope.ok) {
    std::cerr << "controld " << verb << ": " << answer->envelope.error << "\n";
    exitCode = kExitUsage;
    return std::nullopt;
  }
  auto reply = protocol::decodeStatusReply(answer->line);
  if (!reply.value) exitCode = unreadable(verb, reply.error);
  return std::move(reply.value);
}

// Where a start or stop stands: from its reply, then from the pushes.
struct Outcome {
  std::string state;
  std::string reason;
  std::uint64_t epoch = 0;
};

// start/stop --wait: follows the service's pushes until it is finished,
// printing its progress to stderr whenever it changes (and every 10 s).
// Returns an exit code when controld cannot be reached.
std::optional<int> follow(const SocketChoice& socket, ControlClient& client, const std::string& service,
                          const std::function<bool(const std::string&)>& finished, Outcome& outcome) {
  std::string lastWhat = "-";
  std::string lastState;
  auto lastPrinted = std::chrono::steady_clock::now();
  // Asks for the service's status: progress, and proof that controld answers.
  auto progress = [&]() -> bool {
    auto answer = client.command("status", service);
    if (!answer) return false;
    const auto st = protocol::decodeStatusReply(answer->line);
    if (!st.value || st.value->services.empty()) return true;
    const StatusService& s = st.value->services[0];
    const std::string state(toString(s.state));
    if (finished(state)) return true;  // the push says it, next
    std::string what;
    const std::string line = progressLine(s, st.value->nowMs, what);
    const auto now = std::chrono::steady_clock::now();
    if (what != lastWhat || state != lastState || now - lastPrinted >= std::chrono::seconds(10)) {
      std::cerr << line << "\n";
      lastWhat = what;
      lastState = state;
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
          socket,
          ClientError{Unreachable::Closed, "it closed the connection while " + service + " was " + outcome.state},
          client.peerPid());
    }
    if (r == ControlClient::Read::Timeout) {
      if (!progress()) return unreachable(socket, client.error(), client.peerPid());
      continue;
    }
    const auto decoded = protocol::decode(line);
    const auto* push = decoded.message ? std::get_if<protocol::StatePush>(&*decoded.message) : nullptr;
    if (!push || push->service != service) continue;
    // The subscription's first burst can be older than the reply.
    if (push->epoch < outcome.epoch) continue;
    outcome.epoch = push->epoch;
    const std::string state(toString(push->state));
    const bool changed = state != outcome.state;
    outcome.state = state;
    outcome.reason = push->reason;
    if (finished(state)) return std::nullopt;
    if (changed && !progress()) return unreachable(socket, client.error(), client.peerPid());
  }
}

}  // namespace

// start/stop, optionally waiting for the outcome. While it waits, what the
// service is doing goes to stderr whenever it changes (and every 10 s); the
// outcome goes to stdout once.
int startOrStop(const SocketChoice& socket, const std::string& verb, const std::string& service, bool wait, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  if (wait && !client.send(protocol::encode(protocol::Subscribe{}))) {
    return unreachable(socket, client.error(), client.peerPid());
  }
  auto answer = client.command(verb, service);
  if (!answer) return unreachable(socket, client.error(), client.peerPid());
  if (!answer->envelope.ok) {
    const std::string& error = answer->envelope.error;
    std::cerr << "controld " << verb << ": " << error << "\n";
    return error.rfind("unknown service", 0) == 0 ? kExitUsage : kExitFailed;
  }
  const auto reply = protocol::decodeReply(answer->line);
  if (!reply.value) return unreadable(verb, reply.error);
  Outcome outcome;
  if (const auto& s = reply.value->service) outcome = Outcome{std::string(toString(s->state)), s->reason, s->epoch};
  const bool isStart = verb == "start";
  const std::function<bool(const std::string&)> finished = [&](const std::string& s) {
    return isStart ? (s == "warm" || s == "failed") : (s == "cold" || s == "warm");
  };
  if (wait && !finished(outcome.state)) {
    if (auto rc = follow(socket, client, service, finished, outcome)) return *rc;
  }
  if (!isStart && wait && outcome.state == "warm") {
    // The stop failed: its reason is in the last operation.
    auto status = client.command("status", service);
    const auto st = status ? protocol::decodeStatusReply(status->line) : protocol::Parsed<protocol::StatusReply>{};
    if (st.value && !st.value->services.empty()) {
      const auto& last = st.value->services[0].lastOperation;
      outcome.reason = last ? last->reason : "";
    }
  }
  if (json) {
    JsonWriter w;
    w.startObject().str("service", service).str("state", outcome.state);
    if (!outcome.reason.empty()) w.str("reason", outcome.reason);
    std::cout << w.endObject().text() << "\n";
  } else {
    std::cout << service << ": " << outcome.state << (outcome.reason.empty() ? "" : " — " + outcome.reason) << "\n";
  }
  if (!wait) return kExitOk;
  if (isStart) return outcome.state == "warm" ? kExitOk : kExitFailed;
  return outcome.state == "cold" ? kExitOk : kExitFailed;
}

int status(const SocketChoice& socket, const std::string& service, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  int rc = kExitOk;
  const auto reply = askStatus(socket, client, "status", service, rc);
  if (!reply) return rc;
  if (json) {
    // Stable output: the reply without the envelope fields (docs/PROTOCOL.md).
    std::cout << protocol::statusJson(*reply) << "\n";
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
  int rc = kExitOk;
  const auto reply = askStatus(socket, client, "cluster", "", rc);
  if (!reply) return rc;
  if (json) {
    std::cout << (reply->clusterJson.empty() ? std::string("null") : reply->clusterJson) << "\n";
  } else {
    printClusterMembers(std::cout, *reply);
  }
  return kExitOk;
}

int metrics(const SocketChoice& socket) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  int rc = kExitOk;
  const auto reply = askStatus(socket, client, "metrics", "", rc);
  if (!reply) return rc;
  std::cout << prometheusText(*reply);
  return kExitOk;
}

namespace {

// The transition column fits the longest one ("stopping -> starting").
constexpr std::size_t kTransitionWidth = 22;

// `events`' first lines: where each service stands now.
void printCurrent(const std::vector<StatusService>& services, std::int64_t now, std::size_t nameWidth, bool json) {
  for (const auto& s : services) {
    if (json) {
      JsonWriter w;
      w.startObject().str("type", "current").str("service", s.name).str("state", toString(s.state));
      w.i64("since", s.sinceMs).str("cause", s.cause).str("reason", s.reason).u64("epoch", s.epoch);
      std::cout << w.endObject().text() << "\n";
      continue;
    }
    std::string what;
    std::string line = clockTime(now) + "  " + padRight(s.name, nameWidth) +
                       padRight("now " + std::string(toString(s.state)), kTransitionWidth) + "(";
    line += s.sinceMs > 0 ? "since " + clockTime(s.sinceMs) + ", " + ago(now, s.sinceMs) + " ago" : "never changed";
    progressLine(s, now, what);
    if (!what.empty()) line += "; " + what;
    line += ")";
    std::cout << line << "\n";
    if (!s.reason.empty()) std::cout << std::string(21 + nameWidth + kTransitionWidth, ' ') << s.reason << "\n";
  }
}

void printEvent(const protocol::Event& ev, std::size_t nameWidth) {
  std::cout << clockTime(ev.atMs) << "  " << padRight(ev.service, nameWidth)
            << padRight(std::string(toString(ev.from)) + " -> " + std::string(toString(ev.to)), kTransitionWidth) << "("
            << ev.cause << (ev.detail.empty() ? "" : ": " + ev.detail) << ")"
            << (ev.taskId ? " task " + std::to_string(ev.taskId) : "") << "\n";
}

}  // namespace

// `events`: the current state of every service first, then each transition
// as it happens, in aligned columns (or JSON lines).
int events(const SocketChoice& socket, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  // Subscribed first, then the picture: a transition in between arrives
  // after it and is printed unless the picture has it already (epochs).
  if (!client.command("events", "")) return unreachable(socket, client.error(), client.peerPid());
  auto status = client.command("status", "");
  if (!status) return unreachable(socket, client.error(), client.peerPid());
  std::cout.setf(std::ios::unitbuf);
  std::map<std::string, std::uint64_t> seenEpoch;
  std::size_t nameWidth = 16;
  if (auto picture = protocol::decodeStatusReply(status->line); picture.value) {
    for (const auto& s : picture.value->services) {
      nameWidth = std::max(nameWidth, s.name.size() + 1);
      seenEpoch[s.name] = s.epoch;
    }
    printCurrent(picture.value->services, picture.value->nowMs, nameWidth, json);
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
    const auto event = protocol::decodeEvent(line);
    if (!event.value) continue;
    const auto seen = seenEpoch.find(event.value->service);
    if (seen != seenEpoch.end() && event.value->epoch <= seen->second) continue;
    if (json) {
      std::cout << line << "\n";
    } else {
      printEvent(*event.value, nameWidth);
    }
  }
  return unreachable(socket, ClientError{Unreachable::Closed, "it closed the connection"}, client.peerPid());
}

}  // namespace ondemand::controld::cli
