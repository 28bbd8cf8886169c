#include "controld/daemon/status_render.hpp"

#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "controld/io/state_store.hpp"
#include "controld/version.hpp"

namespace ondemand::controld {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

void key(JsonWriter& w, const char* k) {
  w.Key(k);
}
void str(JsonWriter& w, const std::string& v) {
  w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

std::string line(const rapidjson::StringBuffer& buffer) {
  std::string text(buffer.GetString(), buffer.GetSize());
  text.push_back('\n');
  return text;
}

void writeDaemon(JsonWriter& w, const StatusSources& src) {
  w.StartObject();
  key(w, "version");
  w.String(versionString());
  key(w, "pid");
  w.Int64(::getpid());
  key(w, "started_at");
  w.Int64(src.startedAtMs);
  key(w, "config");
  str(w, src.config.sourceFile);
  key(w, "connections");
  w.StartObject();
  key(w, "worker");
  w.Uint64(src.server.connectionCount("worker"));
  key(w, "cli");
  w.Uint64(src.server.connectionCount("cli"));
  w.EndObject();
  key(w, "messages_received");
  w.StartObject();
  for (const auto& [type, count] : src.server.messagesReceived()) {
    str(w, type);
    w.Uint64(count);
  }
  w.EndObject();
  w.EndObject();
}

void writeService(JsonWriter& w, const Service& s, const StatusSources& src) {
  const auto& snap = s.machine.snapshot();
  w.StartObject();
  key(w, "name");
  str(w, s.config.name);
  key(w, "state");
  w.String(toString(snap.state).data());
  key(w, "phase");
  w.String(toString(snap.phase));
  key(w, "epoch");
  w.Uint64(snap.epoch);
  key(w, "since");
  w.Int64(snap.sinceMs);
  key(w, "cause");
  w.String(toString(snap.cause));
  key(w, "reason");
  str(w, snap.reason);
  key(w, "starting_since");
  w.Int64(snap.startingSinceMs);
  key(w, "retry_at");
  w.Int64(snap.state == ServiceState::Failed ? snap.failedAtMs + s.config.failureBackoff.count() : 0);
  key(w, "starts_ok");
  w.Uint64(snap.startsOk);
  key(w, "starts_failed");
  w.Uint64(snap.startsFailed);
  key(w, "last_start_ms");
  w.Int64(snap.lastStartMs);
  key(w, "in_flight");
  w.Uint64(s.machine.inFlight());
  key(w, "started_total");
  w.Uint64(s.startedTotal);
  key(w, "idle_stop_at");
  if (auto at = s.machine.idleStopAtMs()) {
    w.Int64(*at);
  } else {
    w.Null();
  }
  key(w, "driver");
  w.String(driverName(s.config));
  key(w, "machine");
  str(w, s.config.machine);
  key(w, "health_url");
  str(w, s.config.healthUrl);
  key(w, "base_url");
  str(w, s.config.baseUrl);
  key(w, "idle_timeout_ms");
  w.Int64(s.config.idleTimeout.count());
  key(w, "queued");
  w.Bool(src.machineQueue.waiting(s.config.machine, s.config.name));
  // The persisted record: operation under way, last operation, history.
  rapidjson::Document persisted;
  const std::string json = snapshotToJson(snap);
  persisted.Parse(json.c_str(), json.size());
  for (const char* field : {"operation", "last_operation", "history"}) {
    key(w, field);
    auto m = persisted.FindMember(field);
    if (m == persisted.MemberEnd()) {
      w.Null();
    } else {
      m->value.Accept(w);
    }
  }
  w.EndObject();
}

}  // namespace

protocol::StatePush statePush(const Service& s) {
  const auto& snap = s.machine.snapshot();
  protocol::StatePush p;
  p.service = s.config.name;
  p.state = snap.state;
  p.epoch = snap.epoch;
  p.sinceMs = snap.sinceMs;
  p.startingSinceMs = snap.startingSinceMs;
  p.cause = toString(snap.cause);
  p.reason = snap.reason;
  if (snap.operation && snap.operation->taskId) {
    p.taskId = snap.operation->taskId;
  } else if (snap.lastOperation) {
    p.taskId = snap.lastOperation->taskId;
  }
  if (snap.state == ServiceState::Failed) p.retryAtMs = snap.failedAtMs + s.config.failureBackoff.count();
  if (snap.startsOk > 0) p.lastStartMs = snap.lastStartMs;
  return p;
}

std::string eventLine(const Service& s) {
  const auto& snap = s.machine.snapshot();
  const Transition& t = snap.history.back();
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  key(w, "type");
  w.String("event");
  key(w, "service");
  str(w, s.config.name);
  key(w, "at");
  w.Int64(t.atMs);
  key(w, "from");
  w.String(toString(t.from).data());
  key(w, "to");
  w.String(toString(t.to).data());
  key(w, "cause");
  w.String(toString(t.cause));
  key(w, "detail");
  str(w, t.detail);
  key(w, "task_id");
  w.Int64(t.taskId);
  key(w, "epoch");
  w.Uint64(snap.epoch);
  w.EndObject();
  return line(buffer);
}

std::string replyLine(std::int64_t id, bool ok, const std::string& error, const Service* s) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  key(w, "type");
  w.String("reply");
  key(w, "id");
  w.Int64(id);
  key(w, "ok");
  w.Bool(ok);
  if (!error.empty()) {
    key(w, "error");
    str(w, error);
  }
  if (s) {
    key(w, "state");
    w.String(toString(s->machine.state()).data());
    key(w, "epoch");
    w.Uint64(s->machine.epoch());
    key(w, "reason");
    str(w, s->machine.snapshot().reason);
  }
  w.EndObject();
  return line(buffer);
}

std::string statusReplyLine(std::int64_t id, const std::string& only, const StatusSources& src, std::string& error) {
  if (!only.empty() && !src.services.contains(only)) {
    error = "unknown service \"" + only + "\"";
    return {};
  }
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  key(w, "type");
  w.String("reply");
  key(w, "id");
  w.Int64(id);
  key(w, "ok");
  w.Bool(true);
  key(w, "now");
  w.Int64(unixMillisNow());
  key(w, "daemon");
  writeDaemon(w, src);
  key(w, "services");
  w.StartArray();
  for (const auto& [name, s] : src.services) {
    if (only.empty() || name == only) writeService(w, *s, src);
  }
  w.EndArray();
  w.EndObject();
  return line(buffer);
}

}  // namespace ondemand::controld
