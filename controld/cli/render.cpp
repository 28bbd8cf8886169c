#include "controld/cli/render.hpp"
#include "controld/cli/cluster_cli.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <vector>

#include "controld/io/json_fields.hpp"
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

std::string amount(const rapidjson::Value& v) {
  if (!v.IsNumber()) return "?";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v.GetDouble());
  return buf;
}

// Shared machines: per resource used and free, who holds it, who waits.
void printMachines(const rapidjson::Document& reply) {
  const auto it = reply.FindMember("machines");
  if (it == reply.MemberEnd() || !it->value.IsArray() || it->value.Empty()) return;
  const std::int64_t now = jsonInt64(reply, "now");
  std::cout << "\n"
            << padRight("MACHINE", 20) << padRight("RESOURCE", 14) << padRight("USED", 8) << padRight("FREE", 8)
            << "TOTAL\n";
  for (const auto& m : it->value.GetArray()) {
    const std::string name = jsonString(m, "name");
    if (m.HasMember("resources") && m["resources"].IsObject()) {
      for (const auto& r : m["resources"].GetObject()) {
        std::cout << padRight(name, 20) << padRight(r.name.GetString(), 14) << padRight(amount(r.value["used"]), 8)
                  << padRight(amount(r.value["free"]), 8) << amount(r.value["total"]) << "\n";
      }
    }
    std::string holders;
    if (m.HasMember("holders") && m["holders"].IsArray()) {
      for (const auto& h : m["holders"].GetArray()) {
        std::string needs;
        if (h.HasMember("needs") && h["needs"].IsObject()) {
          for (const auto& n : h["needs"].GetObject())
            needs += (needs.empty() ? "" : " ") + std::string(n.name.GetString()) + " " + amount(n.value);
        }
        holders += (holders.empty() ? "" : ", ") + jsonString(h, "service") + " (" + jsonString(h, "state") +
                   (needs.empty() ? "" : ", " + needs) + ")";
      }
    }
    std::cout << "  " << name << " held by: " << (holders.empty() ? "nobody" : holders) << "\n";
    if (m.HasMember("queue") && m["queue"].IsArray()) {
      for (const auto& q : m["queue"].GetArray()) {
        std::cout << "  waiting " << ago(now, jsonInt64(q, "since")) << ": " << jsonString(q, "service") << " — "
                  << jsonString(q, "reason") << "\n";
      }
    }
  }
}

void printTable(const rapidjson::Document& reply) {
  const std::int64_t now = jsonInt64(reply, "now");
  std::cout << padRight("SERVICE", 20) << padRight("STATE", 10) << padRight("SINCE", 10) << padRight("IDLE-STOP IN", 14)
            << padRight("IN FLIGHT", 11) << "LAST OPERATION\n";
  std::vector<std::string> reasons;
  for (const auto& s : jsonServices(reply)) {
    if (!s.IsObject()) continue;
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
  printClusterSummary(std::cout, reply);
  printMachines(reply);
}

void printDetail(const rapidjson::Document& reply) {
  const std::int64_t now = jsonInt64(reply, "now");
  for (const auto& s : jsonServices(reply)) {
    if (!s.IsObject()) continue;
    std::cout << "service:        " << jsonString(s, "name") << "\n"
              << "state:          " << jsonString(s, "state") << " since " << clockTime(jsonInt64(s, "since")) << " ("
              << ago(now, jsonInt64(s, "since")) << " ago, cause " << jsonString(s, "cause") << ")\n";
    if (!jsonString(s, "reason").empty()) std::cout << "reason:         " << jsonString(s, "reason") << "\n";
    if (!jsonString(s, "waiting_for").empty()) std::cout << "waiting:        " << jsonString(s, "waiting_for") << "\n";
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
    const auto& last = jsonMemberOrNull(s, "last_operation");
    if (last.IsObject() && !jsonString(last, "reason").empty())
      std::cout << "last reason:    " << jsonString(last, "reason") << "\n";
    std::cout << "history:\n";
    if (const auto& h = jsonMemberOrNull(s, "history"); h.IsArray()) {
      const auto& history = h.GetArray();
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

std::string timeOfDay(std::int64_t unixMs) {
  return clockTime(unixMs).substr(11);
}

std::string progressLine(const rapidjson::Value& s, std::int64_t now, std::string& what) {
  const std::string state = jsonString(s, "state");
  const std::string phase = jsonString(s, "phase");
  const auto* op = jsonMember(s, "operation");
  const std::int64_t taskId = op && op->IsObject() ? jsonInt64(*op, "task_id") : 0;
  const bool semaphore = jsonString(s, "driver") == "semaphore";
  const auto* queued = jsonMember(s, "queued");
  if (queued && queued->IsBool() && queued->GetBool()) {
    what = "queued: another operation on machine " + jsonString(s, "machine") + " runs first";
  } else if (state == "starting" && phase == "driver") {
    what = semaphore
               ? (taskId ? "Semaphore task " + std::to_string(taskId) + " running" : "creating its Semaphore task")
               : "start command running";
  } else if (state == "starting" && phase == "readiness") {
    what = jsonString(s, "health_url").empty() ? "warming up (warmup)"
                                               : "waiting for health: " + jsonString(s, "health_url");
    if (taskId) what = "task " + std::to_string(taskId) + " done, " + what;
  } else if (state == "stopping" && phase == "draining") {
    what = "waiting for nginx workers to confirm";
  } else if (state == "stopping") {
    what = semaphore
               ? (taskId ? "Semaphore task " + std::to_string(taskId) + " running" : "creating its Semaphore task")
               : "stop command running";
  } else {
    what.clear();
  }
  const std::int64_t since =
      state == "starting" && jsonInt64(s, "starting_since") ? jsonInt64(s, "starting_since") : jsonInt64(s, "since");
  std::string line = jsonString(s, "name") + ": " + state;
  if (since > 0) line += " since " + timeOfDay(since) + " (" + ago(now, since) + ")";
  if (!what.empty()) line += ", " + what;
  return line;
}

}  // namespace ondemand::controld::cli
