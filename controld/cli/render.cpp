#include "controld/cli/render.hpp"
#include "controld/cli/cluster_cli.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <vector>

#include "shared/duration.hpp"

namespace ondemand::controld::cli {

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

std::string describeOperation(const protocol::StatusReply::Service& service, std::int64_t now) {
  if (const auto& op = service.operation) {
    std::string out = op->kind + " running for " + ago(now, op->startedAtMs);
    if (op->taskId) out += " (task " + std::to_string(op->taskId) + ")";
    return out;
  }
  const auto& op = service.lastOperation;
  if (!op) return "-";
  std::string out = op->kind + (op->ok ? " ok" : " failed");
  if (op->taskId) {
    out += " (task " + std::to_string(op->taskId);
    if (!op->taskStatus.empty()) out += " " + op->taskStatus;
    out += ")";
  }
  out += ", " + ago(now, op->endedAtMs) + " ago";
  return out;
}

std::string amount(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Shared machines: per resource used and free, who holds it, who waits.
void printMachines(const protocol::StatusReply& reply) {
  if (reply.machines.empty()) return;
  const std::int64_t now = reply.nowMs;
  std::cout << "\n"
            << padRight("MACHINE", 20) << padRight("RESOURCE", 14) << padRight("USED", 8) << padRight("FREE", 8)
            << "TOTAL\n";
  for (const auto& m : reply.machines) {
    for (const auto& r : m.resources) {
      std::cout << padRight(m.name, 20) << padRight(r.name, 14) << padRight(amount(r.used), 8)
                << padRight(amount(r.total - r.used), 8) << amount(r.total) << "\n";
    }
    std::string holders;
    for (const auto& h : m.holders) {
      std::string needs;
      for (const auto& [resource, held] : h.needs)
        needs += (needs.empty() ? "" : " ") + resource + " " + amount(held);
      holders += (holders.empty() ? "" : ", ") + h.service + " (" + std::string(toString(h.state)) +
                 (needs.empty() ? "" : ", " + needs) + ")";
    }
    std::cout << "  " << m.name << " held by: " << (holders.empty() ? "nobody" : holders) << "\n";
    for (const auto& q : m.queue)
      std::cout << "  waiting " << ago(now, q.sinceMs) << ": " << q.service << " — " << q.reason << "\n";
  }
}

namespace {

std::string idleStopIn(const protocol::StatusReply::Service& s, std::int64_t now) {
  return formatDuration(Millis(std::max<std::int64_t>(0, *s.idleStopAtMs - now)));
}

}  // namespace

void printTable(const protocol::StatusReply& reply) {
  const std::int64_t now = reply.nowMs;
  std::cout << padRight("SERVICE", 20) << padRight("STATE", 10) << padRight("SINCE", 10) << padRight("IDLE-STOP IN", 14)
            << padRight("IN FLIGHT", 11) << "LAST OPERATION\n";
  std::vector<std::string> reasons;
  for (const auto& s : reply.services) {
    const std::string idle = s.idleStopAtMs ? idleStopIn(s, now) : "-";
    const std::string state = std::string(toString(s.state)) + (s.queued ? "*" : "");
    std::cout << padRight(s.name, 20) << padRight(state, 10) << padRight(ago(now, s.sinceMs), 10) << padRight(idle, 14)
              << padRight(std::to_string(s.inFlight), 11) << describeOperation(s, now) << "\n";
    if (!s.reason.empty()) reasons.push_back(s.name + ": " + s.reason);
  }
  for (const auto& r : reasons)
    std::cout << "\n" << r << "\n";
  printClusterSummary(std::cout, reply);
  printMachines(reply);
}

namespace {

// The history, newest first.
void printHistory(const protocol::StatusReply::Service& s) {
  std::cout << "history:\n";
  for (auto it = s.history.rbegin(); it != s.history.rend(); ++it) {
    std::string line = "  " + clockTime(it->atMs) + "  " + std::string(toString(it->from)) + " -> " +
                       std::string(toString(it->to)) + "  (" + it->cause;
    if (!it->detail.empty()) line += ": " + it->detail;
    line += ")";
    if (it->taskId) line += " task " + std::to_string(it->taskId);
    std::cout << line << "\n";
  }
}

}  // namespace

void printDetail(const protocol::StatusReply& reply) {
  const std::int64_t now = reply.nowMs;
  for (const auto& s : reply.services) {
    std::cout << "service:        " << s.name << "\n"
              << "state:          " << toString(s.state) << " since " << clockTime(s.sinceMs) << " ("
              << ago(now, s.sinceMs) << " ago, cause " << s.cause << ")\n";
    if (!s.reason.empty()) std::cout << "reason:         " << s.reason << "\n";
    if (!s.waitingFor.empty()) std::cout << "waiting:        " << s.waitingFor << "\n";
    if (s.startingSinceMs) std::cout << "starting for:   " << ago(now, s.startingSinceMs) << "\n";
    if (s.retryAtMs > now) {
      std::cout << "next try:       requests wait " << formatDuration(Millis(s.retryAtMs - now))
                << " (failure_backoff) before waking it again\n";
    }
    if (s.startsOk + s.startsFailed > 0) {
      std::cout << "starts:         " << s.startsOk << " ok, " << s.startsFailed << " failed";
      if (s.startsOk > 0) std::cout << "; the last took " << formatDuration(Millis(s.lastStartMs));
      std::cout << "\n";
    }
    std::cout << "driver:         " << s.driver << "\n";
    if (!s.machine.empty()) std::cout << "machine:        " << s.machine << "\n";
    if (!s.healthUrl.empty()) std::cout << "health:         " << s.healthUrl << "\n";
    std::cout << "in flight:      " << s.inFlight << " (requests started: " << s.startedTotal << ")\n";
    if (s.idleStopAtMs) std::cout << "idle stop in:   " << idleStopIn(s, now) << "\n";
    std::cout << "operation:      " << describeOperation(s, now) << "\n";
    if (s.lastOperation && !s.lastOperation->reason.empty())
      std::cout << "last reason:    " << s.lastOperation->reason << "\n";
    printHistory(s);
  }
}

std::string timeOfDay(std::int64_t unixMs) {
  return clockTime(unixMs).substr(11);
}

std::string progressLine(const protocol::StatusReply::Service& s, std::int64_t now, std::string& what) {
  const ServiceState state = s.state;
  const std::string& phase = s.phase;
  const std::int64_t taskId = s.operation ? s.operation->taskId : 0;
  const bool semaphore = s.driver == "semaphore";
  if (s.queued) {
    what = "queued: another operation on machine " + s.machine + " runs first";
  } else if (state == ServiceState::Starting && phase == "driver") {
    what = semaphore
               ? (taskId ? "Semaphore task " + std::to_string(taskId) + " running" : "creating its Semaphore task")
               : "start command running";
  } else if (state == ServiceState::Starting && phase == "readiness") {
    what = s.healthUrl.empty() ? "warming up (warmup)" : "waiting for health: " + s.healthUrl;
    if (taskId) what = "task " + std::to_string(taskId) + " done, " + what;
  } else if (state == ServiceState::Stopping && phase == "draining") {
    what = "waiting for nginx workers to confirm";
  } else if (state == ServiceState::Stopping) {
    what = semaphore
               ? (taskId ? "Semaphore task " + std::to_string(taskId) + " running" : "creating its Semaphore task")
               : "stop command running";
  } else {
    what.clear();
  }
  const std::int64_t since = state == ServiceState::Starting && s.startingSinceMs ? s.startingSinceMs : s.sinceMs;
  std::string line = s.name + ": " + std::string(toString(state));
  if (since > 0) line += " since " + timeOfDay(since) + " (" + ago(now, since) + ")";
  if (!what.empty()) line += ", " + what;
  return line;
}

}  // namespace ondemand::controld::cli
