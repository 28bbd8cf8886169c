// The messages controld answers a CLI with (replies, events, the status
// reply), encoded and decoded; docs/PROTOCOL.md describes them.
#include <rapidjson/reader.h>

#include "shared/json_read.hpp"
#include "shared/json_writer.hpp"
#include "shared/protocol.hpp"
#include "shared/protocol_json.hpp"

namespace ondemand::protocol {

using detail::line;

// --- encoding ---------------------------------------------------------------

std::string encode(const Reply& m) {
  return line("reply", [&](JsonWriter& w) {
    w.i64("id", m.id).flag("ok", m.ok);
    if (!m.error.empty()) w.str("error", m.error);
    if (m.service)
      w.str("state", toString(m.service->state)).u64("epoch", m.service->epoch).str("reason", m.service->reason);
  });
}

std::string encode(const Event& m) {
  return line("event", [&](JsonWriter& w) {
    w.str("service", m.service).i64("at", m.atMs).str("from", toString(m.from)).str("to", toString(m.to));
    w.str("cause", m.cause).str("detail", m.detail).i64("task_id", m.taskId).u64("epoch", m.epoch);
    if (!m.machine.empty()) w.str("machine", m.machine);
  });
}

namespace {

void writeDaemon(JsonWriter& w, const StatusReply::Daemon& d) {
  w.startObject();
  w.str("version", d.version).i64("pid", d.pid).i64("started_at", d.startedAtMs).str("config", d.config);
  w.key("connections").startObject().u64("worker", d.workerConnections).u64("cli", d.cliConnections).endObject();
  w.key("messages_received").startObject();
  for (const auto& [type, count] : d.messagesReceived)
    w.u64(type, count);
  w.endObject();
  w.endObject();
}

void writeOperations(JsonWriter& w, const StatusReply::Service& s) {
  w.key("operation");
  if (const auto& op = s.operation) {
    w.startObject().str("kind", op->kind).str("driver", op->driver).i64("task_id", op->taskId).i64("pid", op->pid);
    w.i64("started_at", op->startedAtMs).str("operation_id", op->operationId).endObject();
  } else {
    w.null();
  }
  w.key("last_operation");
  if (const auto& op = s.lastOperation) {
    w.startObject().str("kind", op->kind).i64("started_at", op->startedAtMs).i64("ended_at", op->endedAtMs);
    w.flag("ok", op->ok).str("reason", op->reason).i64("task_id", op->taskId).str("task_status", op->taskStatus);
    w.endObject();
  } else {
    w.null();
  }
  w.key("history").startArray();
  for (const auto& t : s.history) {
    w.startObject().i64("at", t.atMs).str("from", toString(t.from)).str("to", toString(t.to)).str("cause", t.cause);
    w.str("detail", t.detail).i64("task_id", t.taskId).str("task_status", t.taskStatus).endObject();
  }
  w.endArray();
}

void writeHistogram(JsonWriter& w, std::string_view key, const StatusReply::Histogram& h) {
  w.key(key).startObject().key("bounds_ms").startArray();
  for (std::uint64_t b : h.boundsMs)
    w.uint64(b);
  w.endArray().key("counts").startArray();
  for (std::uint64_t c : h.counts)
    w.uint64(c);
  w.endArray().u64("sum_ms", h.sumMs).endObject();
}

void writeAmounts(JsonWriter& w, const std::vector<std::pair<std::string, double>>& amounts) {
  w.startObject();
  for (const auto& [resource, amount] : amounts)
    w.key(resource).number(amount);
  w.endObject();
}

void writeMachine(JsonWriter& w, const StatusReply::Machine& m) {
  w.startObject().str("name", m.name).i64("min_warm_ms", m.minWarmMs);
  w.key("resources").startObject();
  for (const auto& r : m.resources) {
    w.key(r.name).startObject().key("total").number(r.total).key("used").number(r.used);
    w.key("free").number(r.total - r.used).endObject();
  }
  w.endObject();
  w.key("holders").startArray();
  for (const auto& h : m.holders) {
    w.startObject().str("service", h.service).str("state", toString(h.state)).key("needs");
    writeAmounts(w, h.needs);
    w.endObject();
  }
  w.endArray();
  w.key("queue").startArray();
  for (const auto& q : m.queue)
    w.startObject().str("service", q.service).i64("since", q.sinceMs).str("reason", q.reason).endObject();
  w.endArray();
  w.endObject();
}

void writeService(JsonWriter& w, const StatusReply::Service& s) {
  w.startObject();
  w.str("name", s.name).str("state", toString(s.state)).str("phase", s.phase).u64("epoch", s.epoch);
  w.i64("since", s.sinceMs).str("cause", s.cause).str("reason", s.reason).i64("starting_since", s.startingSinceMs);
  w.i64("retry_at", s.retryAtMs).u64("starts_ok", s.startsOk).u64("starts_failed", s.startsFailed);
  w.i64("last_start_ms", s.lastStartMs).u64("in_flight", s.inFlight).u64("started_total", s.startedTotal);
  w.u64("requests_waiting", s.requestsWaiting);
  w.key("stops").startObject();
  for (const auto& [reason, count] : s.stops)
    w.u64(reason, count);
  w.endObject();
  writeHistogram(w, "cold_start_histogram", s.coldStart);
  writeHistogram(w, "wait_histogram", s.wait);
  w.key("idle_stop_at");
  if (s.idleStopAtMs) {
    w.int64(*s.idleStopAtMs);
  } else {
    w.null();
  }
  w.str("driver", s.driver).str("machine", s.machine).str("health_url", s.healthUrl).str("base_url", s.baseUrl);
  w.i64("idle_timeout_ms", s.idleTimeoutMs).flag("queued", s.queued);
  if (s.owner) w.str("owner", *s.owner);
  if (!s.needs.empty()) {
    w.key("needs");
    writeAmounts(w, s.needs);
    w.flag("evictable", s.evictable);
  }
  w.str("waiting_for", s.waitingFor);
  writeOperations(w, s);
  w.endObject();
}

// Everything after the envelope (type, id, ok).
void writeStatus(JsonWriter& w, const StatusReply& m) {
  w.i64("now", m.nowMs);
  w.key("daemon");
  writeDaemon(w, m.daemon);
  if (!m.clusterJson.empty()) {
    w.key("cluster");
    w.json(m.clusterJson);
  }
  w.key("services").startArray();
  for (const auto& s : m.services)
    writeService(w, s);
  w.endArray();
  w.key("machines").startArray();
  for (const auto& machine : m.machines)
    writeMachine(w, machine);
  w.endArray();
}

}  // namespace

std::string encode(const StatusReply& m) {
  return line("reply", [&](JsonWriter& w) {
    w.i64("id", m.id).flag("ok", true);
    writeStatus(w, m);
  });
}

std::string statusJson(const StatusReply& m) {
  JsonWriter w;
  w.startObject();
  writeStatus(w, m);
  return w.endObject().text();
}

// --- decoding ---------------------------------------------------------------

namespace {

using detail::Fields;
using rapidjson::Value;

template <typename T>
Parsed<T> failed(std::string error) {
  return Parsed<T>{std::nullopt, std::move(error)};
}

std::string_view withoutNewline(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// Parses one object; with `type`, it must say so (optional when typeOptional).
std::string parseObject(rapidjson::Document& doc, std::string_view line, const char* type, bool typeOptional = false) {
  if (auto error = parseJson(doc, withoutNewline(line)); !error.empty()) return error;
  if (!doc.IsObject()) return "not a JSON object";
  std::string actual;
  Fields f(doc);
  if (!f.string("type", actual, !typeOptional)) return f.error();
  if (!actual.empty() && actual != type) return "a \"" + actual + "\" message, not \"" + type + "\"";
  return {};
}

std::string where(const std::string& path, const std::string& error) {
  return path + ": " + error;
}

// A state name; when not required, a missing field leaves out as it is.
std::string readState(Fields& f, const char* key, ServiceState& out, bool required = true) {
  std::string name = std::string(toString(out));
  if (!f.string(key, name, required)) return f.error();
  const auto parsed = parseServiceState(name);
  if (!parsed) return std::string("field \"") + key + "\": unknown state \"" + name + "\"";
  out = *parsed;
  return {};
}

std::string nameOf(const Value::Member& m) {
  return std::string(m.name.GetString(), m.name.GetStringLength());
}

// {"NAME": count, ...} in the order written.
std::string readCounts(Fields& f, const char* key, std::vector<std::pair<std::string, std::uint64_t>>& out) {
  const Value* object = nullptr;
  if (!f.object(key, object)) return f.error();
  if (!object) return {};
  for (const auto& m : object->GetObject()) {
    if (!m.value.IsUint64()) return where(key, "\"" + nameOf(m) + "\" must be a non-negative integer");
    out.emplace_back(nameOf(m), m.value.GetUint64());
  }
  return {};
}

// {"RESOURCE": amount, ...}.
std::string readAmounts(Fields& f, const char* key, std::vector<std::pair<std::string, double>>& out) {
  const Value* object = nullptr;
  if (!f.object(key, object)) return f.error();
  if (!object) return {};
  for (const auto& m : object->GetObject()) {
    if (!m.value.IsNumber()) return where(key, "\"" + nameOf(m) + "\" must be a number");
    out.emplace_back(nameOf(m), m.value.GetDouble());
  }
  return {};
}

std::string readStrings(Fields& f, const char* key, std::vector<std::string>& out) {
  const Value* array = nullptr;
  if (!f.array(key, array)) return f.error();
  if (!array) return {};
  for (const auto& v : array->GetArray()) {
    if (!v.IsString()) return std::string("field \"") + key + "\" must be an array of strings";
    out.emplace_back(v.GetString(), v.GetStringLength());
  }
  return {};
}

// Each element of the array `key` (an object) read by fn(object, out), which
// returns an error or "".
template <typename T, typename Fn>
std::string readObjects(Fields& f, const char* key, std::vector<T>& out, Fn fn) {
  const Value* array = nullptr;
  if (!f.array(key, array)) return f.error();
  if (!array) return {};
  for (rapidjson::SizeType i = 0; i < array->Size(); ++i) {
    const std::string path = std::string(key) + "[" + std::to_string(i) + "]";
    if (!(*array)[i].IsObject()) return path + " must be an object";
    T item;
    if (auto error = fn((*array)[i], item); !error.empty()) return where(path, error);
    out.push_back(std::move(item));
  }
  return {};
}

std::string readHistogram(Fields& f, const char* key, StatusReply::Histogram& h) {
  const Value* object = nullptr;
  if (!f.object(key, object)) return f.error();
  if (!object) return {};
  Fields hf(*object);
  if (!hf.uint64("sum_ms", h.sumMs, false)) return where(key, hf.error());
  for (auto [name, list] : {std::pair{"bounds_ms", &h.boundsMs}, std::pair{"counts", &h.counts}}) {
    const Value* array = nullptr;
    if (!hf.array(name, array)) return where(key, hf.error());
    if (!array) continue;
    for (const auto& v : array->GetArray()) {
      if (!v.IsUint64()) return where(key, std::string("field \"") + name + "\" must hold non-negative integers");
      list->push_back(v.GetUint64());
    }
  }
  return {};
}

std::string readDaemon(const Value& object, StatusReply::Daemon& d) {
  Fields f(object);
  if (!f.string("version", d.version, false) || !f.int64("pid", d.pid, false) ||
      !f.int64("started_at", d.startedAtMs, false) || !f.string("config", d.config, false)) {
    return f.error();
  }
  const Value* connections = nullptr;
  if (!f.object("connections", connections)) return f.error();
  if (connections) {
    Fields c(*connections);
    if (!c.uint64("worker", d.workerConnections, false) || !c.uint64("cli", d.cliConnections, false)) {
      return where("connections", c.error());
    }
  }
  return readCounts(f, "messages_received", d.messagesReceived);
}

std::string readOperation(const Value& object, StatusReply::Operation& op) {
  Fields f(object);
  if (!f.string("kind", op.kind) || !f.string("driver", op.driver, false) || !f.int64("task_id", op.taskId, false) ||
      !f.int64("pid", op.pid, false) || !f.int64("started_at", op.startedAtMs, false) ||
      !f.string("operation_id", op.operationId, false)) {
    return f.error();
  }
  return {};
}

std::string readLastOperation(const Value& object, StatusReply::LastOperation& op) {
  Fields f(object);
  if (!f.string("kind", op.kind) || !f.int64("started_at", op.startedAtMs, false) ||
      !f.int64("ended_at", op.endedAtMs, false) || !f.boolean("ok", op.ok, false) ||
      !f.string("reason", op.reason, false) || !f.int64("task_id", op.taskId, false) ||
      !f.string("task_status", op.taskStatus, false)) {
    return f.error();
  }
  return {};
}

std::string readTransition(const Value& object, StatusReply::Transition& t) {
  Fields f(object);
  if (auto error = readState(f, "from", t.from); !error.empty()) return error;
  if (auto error = readState(f, "to", t.to); !error.empty()) return error;
  if (!f.int64("at", t.atMs) || !f.string("cause", t.cause, false) || !f.string("detail", t.detail, false) ||
      !f.int64("task_id", t.taskId, false) || !f.string("task_status", t.taskStatus, false)) {
    return f.error();
  }
  return {};
}

// The operation under way and the last one (each an object or null), and the history.
std::string readOperations(Fields& f, StatusReply::Service& s) {
  const Value* op = nullptr;
  if (!f.object("operation", op, false, true)) return f.error();
  if (op) {
    s.operation =
        StatusReply::Operation{};  // not emplace(): clang deems the nested type not default-constructible there
    if (auto error = readOperation(*op, *s.operation); !error.empty()) return where("operation", error);
  }
  if (!f.object("last_operation", op, false, true)) return f.error();
  if (op) {
    s.lastOperation = StatusReply::LastOperation{};
    if (auto error = readLastOperation(*op, *s.lastOperation); !error.empty()) return where("last_operation", error);
  }
  return readObjects(f, "history", s.history, readTransition);
}

std::string readServiceFigures(Fields& f, StatusReply::Service& s) {
  if (!f.string("phase", s.phase, false) || !f.uint64("epoch", s.epoch, false) || !f.int64("since", s.sinceMs, false) ||
      !f.string("cause", s.cause, false) || !f.string("reason", s.reason, false) ||
      !f.int64("starting_since", s.startingSinceMs, false) || !f.int64("retry_at", s.retryAtMs, false) ||
      !f.uint64("starts_ok", s.startsOk, false) || !f.uint64("starts_failed", s.startsFailed, false) ||
      !f.int64("last_start_ms", s.lastStartMs, false) || !f.uint64("in_flight", s.inFlight, false) ||
      !f.uint64("started_total", s.startedTotal, false) || !f.uint64("requests_waiting", s.requestsWaiting, false)) {
    return f.error();
  }
  if (auto error = readCounts(f, "stops", s.stops); !error.empty()) return error;
  if (auto error = readHistogram(f, "cold_start_histogram", s.coldStart); !error.empty()) return error;
  return readHistogram(f, "wait_histogram", s.wait);
}

std::string readServiceSetup(const Value& object, Fields& f, StatusReply::Service& s) {
  if (const auto it = object.FindMember("idle_stop_at"); it != object.MemberEnd() && !it->value.IsNull()) {
    if (!it->value.IsInt64()) return "field \"idle_stop_at\" must be an integer or null";
    s.idleStopAtMs = it->value.GetInt64();
  }
  if (!f.string("driver", s.driver, false) || !f.string("machine", s.machine, false) ||
      !f.string("health_url", s.healthUrl, false) || !f.string("base_url", s.baseUrl, false) ||
      !f.int64("idle_timeout_ms", s.idleTimeoutMs, false) || !f.boolean("queued", s.queued, false) ||
      !f.boolean("evictable", s.evictable, false) || !f.string("waiting_for", s.waitingFor, false)) {
    return f.error();
  }
  if (object.HasMember("owner")) {
    s.owner.emplace();
    if (!f.string("owner", *s.owner)) return f.error();
  }
  return readAmounts(f, "needs", s.needs);
}

std::string readService(const Value& object, StatusReply::Service& s) {
  Fields f(object);
  if (!f.string("name", s.name)) return f.error();
  for (auto* read : {readServiceFigures, readOperations}) {
    if (auto error = read(f, s); !error.empty()) return error;
  }
  if (auto error = readState(f, "state", s.state); !error.empty()) return error;
  return readServiceSetup(object, f, s);
}

std::string readHolder(const Value& object, StatusReply::Machine::Holder& h) {
  Fields f(object);
  if (!f.string("service", h.service)) return f.error();
  if (auto error = readState(f, "state", h.state, false); !error.empty()) return error;
  return readAmounts(f, "needs", h.needs);
}

std::string readWaiter(const Value& object, StatusReply::Machine::Waiter& q) {
  Fields f(object);
  if (!f.string("service", q.service) || !f.int64("since", q.sinceMs, false) || !f.string("reason", q.reason, false)) {
    return f.error();
  }
  return {};
}

std::string readMachine(const Value& object, StatusReply::Machine& m) {
  Fields f(object);
  if (!f.string("name", m.name) || !f.int64("min_warm_ms", m.minWarmMs, false)) return f.error();
  const Value* resources = nullptr;
  if (!f.object("resources", resources)) return f.error();
  if (resources) {
    for (const auto& r : resources->GetObject()) {
      const std::string path = "resources." + nameOf(r);
      if (!r.value.IsObject()) return where(path, "must be an object");
      StatusReply::Machine::Resource resource{nameOf(r), 0, 0};
      Fields rf(r.value);
      if (!rf.number("total", resource.total, false) || !rf.number("used", resource.used, false)) {
        return where(path, rf.error());
      }
      m.resources.push_back(std::move(resource));
    }
  }
  if (auto error = readObjects(f, "holders", m.holders, readHolder); !error.empty()) return error;
  return readObjects(f, "queue", m.queue, readWaiter);
}

std::string readStatus(const Value& doc, StatusReply& reply) {
  Fields f(doc);
  if (!f.int64("id", reply.id, false) || !f.int64("now", reply.nowMs, false)) return f.error();
  const Value* object = nullptr;
  if (!f.object("daemon", object)) return f.error();
  if (object) {
    if (auto error = readDaemon(*object, reply.daemon); !error.empty()) return where("daemon", error);
  }
  if (!f.object("cluster", object)) return f.error();
  if (object) {
    JsonWriter w;
    reply.clusterJson = w.value(*object).text();
  }
  if (auto error = readObjects(f, "services", reply.services, readService); !error.empty()) return error;
  return readObjects(f, "machines", reply.machines, readMachine);
}

// Reads the top-level members a client needs first and stops there.
class EnvelopeReader : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, EnvelopeReader> {
 public:
  Envelope envelope;
  bool haveType = false, haveId = false, haveOk = false, haveError = false;

  bool complete() const {
    if (!haveType) return false;
    if (envelope.type == "reply") return haveId && haveOk && (envelope.ok || haveError);
    if (envelope.type == "error") return haveError;
    return true;
  }

  bool Default() { return top(); }
  bool String(const char* s, rapidjson::SizeType length, bool) {
    if (depth_ == 1 && (key_ == "type" || key_ == (envelope.type == "error" ? "message" : "error"))) {
      (key_ == "type" ? envelope.type : envelope.error).assign(s, length);
      (key_ == "type" ? haveType : haveError) = true;
    }
    return top();
  }
  bool Bool(bool b) {
    if (depth_ == 1 && key_ == "ok") {
      envelope.ok = b;
      haveOk = true;
    }
    return top();
  }
  bool Int(int i) { return integer(i); }
  bool Int64(std::int64_t i) { return integer(i); }
  bool Uint(unsigned u) { return integer(u); }
  bool Key(const char* s, rapidjson::SizeType length, bool) {
    if (depth_ == 1) key_.assign(s, length);
    return true;
  }
  bool StartObject() { return ++depth_, true; }
  bool EndObject(rapidjson::SizeType) { return --depth_, top(); }
  bool StartArray() { return ++depth_, true; }
  bool EndArray(rapidjson::SizeType) { return --depth_, top(); }

 private:
  bool integer(std::int64_t i) {
    if (depth_ == 1 && key_ == "id") {
      envelope.id = i;
      haveId = true;
    }
    return top();
  }
  // After a value: go on unless the envelope is complete.
  bool top() { return depth_ != 1 || !complete(); }

  int depth_ = 0;
  std::string key_;
};

}  // namespace

Parsed<Envelope> decodeEnvelope(std::string_view line) {
  line = withoutNewline(line);
  // Only the first object level is looked at, so no depth limit is needed;
  // the iterative parse keeps the stack flat whatever the rest holds.
  const std::size_t start = line.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos || line[start] != '{') return failed<Envelope>("not a JSON object");
  EnvelopeReader handler;
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(line.data(), line.size());
  const auto result = reader.Parse<rapidjson::kParseIterativeFlag>(stream, handler);
  if (result.IsError() && result.Code() != rapidjson::kParseErrorTermination) {
    return failed<Envelope>("not JSON at offset " + std::to_string(result.Offset()));
  }
  if (!handler.haveType) return failed<Envelope>("missing field \"type\"");
  if (handler.envelope.type == "reply" && (!handler.haveId || !handler.haveOk)) {
    return failed<Envelope>(handler.haveId ? "missing field \"ok\"" : "missing field \"id\"");
  }
  return Parsed<Envelope>{std::move(handler.envelope), {}};
}

Parsed<Reply> decodeReply(std::string_view line) {
  rapidjson::Document doc;
  if (auto error = parseObject(doc, line, "reply"); !error.empty()) return failed<Reply>(std::move(error));
  Reply reply;
  Fields f(doc);
  if (!f.int64("id", reply.id) || !f.boolean("ok", reply.ok) || !f.string("error", reply.error, false)) {
    return failed<Reply>(f.error());
  }
  if (doc.HasMember("state")) {
    Reply::Service service;
    if (auto error = readState(f, "state", service.state); !error.empty()) return failed<Reply>(std::move(error));
    if (!f.uint64("epoch", service.epoch, false) || !f.string("reason", service.reason, false)) {
      return failed<Reply>(f.error());
    }
    reply.service = std::move(service);
  }
  return Parsed<Reply>{std::move(reply), {}};
}

Parsed<Event> decodeEvent(std::string_view line) {
  rapidjson::Document doc;
  if (auto error = parseObject(doc, line, "event"); !error.empty()) return failed<Event>(std::move(error));
  Event event;
  Fields f(doc);
  for (auto [key, state] : {std::pair{"from", &event.from}, std::pair{"to", &event.to}}) {
    if (auto error = readState(f, key, *state); !error.empty()) return failed<Event>(std::move(error));
  }
  if (!f.string("service", event.service) || !f.int64("at", event.atMs) || !f.uint64("epoch", event.epoch) ||
      !f.string("cause", event.cause, false) || !f.string("detail", event.detail, false) ||
      !f.int64("task_id", event.taskId, false) || !f.string("machine", event.machine, false)) {
    return failed<Event>(f.error());
  }
  return Parsed<Event>{std::move(event), {}};
}

Parsed<StatusReply> decodeStatusReply(std::string_view line) {
  rapidjson::Document doc;
  if (auto error = parseObject(doc, line, "reply", true); !error.empty()) return failed<StatusReply>(std::move(error));
  if (const auto ok = doc.FindMember("ok"); ok != doc.MemberEnd() && ok->value.IsFalse()) {
    Fields f(doc);
    std::string error;
    f.string("error", error, false);
    return failed<StatusReply>("controld answered: " + (error.empty() ? std::string("not ok") : error));
  }
  StatusReply reply;
  if (auto error = readStatus(doc, reply); !error.empty()) return failed<StatusReply>(std::move(error));
  return Parsed<StatusReply>{std::move(reply), {}};
}

namespace {

std::string readEtcd(const Value& object, ClusterStatus::Etcd& etcd) {
  Fields f(object);
  if (!f.boolean("reachable", etcd.reachable, false) || !f.string("endpoint", etcd.endpoint, false) ||
      !f.string("error", etcd.error, false) || !f.int64("revision", etcd.revision, false)) {
    return f.error();
  }
  return {};
}

std::string readMember(const Value& object, ClusterStatus::Member& m) {
  Fields f(object);
  if (!f.string("node", m.node) || !f.int64("lease", m.lease, false) || !f.int64("pid", m.pid, false) ||
      !f.string("version", m.version, false) || !f.uint64("services", m.services, false) ||
      !f.boolean("self", m.self, false)) {
    return f.error();
  }
  return {};
}

std::string readMismatch(const Value& object, ClusterStatus::Mismatch& m) {
  Fields f(object);
  if (!f.string("service", m.service)) return f.error();
  if (auto error = readStrings(f, "nodes", m.nodes); !error.empty()) return error;
  return readStrings(f, "keys", m.keys);
}

std::string readCluster(const Value& doc, ClusterStatus& c) {
  Fields f(doc);
  if (!f.string("node", c.node, false) || !f.string("prefix", c.prefix, false)) return f.error();
  const Value* object = nullptr;
  if (!f.object("etcd", object)) return f.error();
  if (auto error = readEtcd(object ? *object : doc, c.etcd); !error.empty()) return where("etcd", error);
  if (!f.object("lease", object)) return f.error();
  if (object) {
    Fields l(*object);
    c.lease = ClusterStatus::Lease{};
    if (!l.int64("id", c.lease->id, false) || !l.int64("ttl_s", c.lease->ttlS, false) ||
        !l.int64("renewed_ms_ago", c.lease->renewedMsAgo, false)) {
      return where("lease", l.error());
    }
  }
  if (auto error = readObjects(f, "members", c.members, readMember); !error.empty()) return error;
  if (!f.object("owners", object)) return f.error();
  if (object) {
    c.owners.emplace();
    for (const auto& o : object->GetObject()) {
      if (!o.value.IsString()) return where("owners", "\"" + nameOf(o) + "\" must be a node's name");
      c.owners->emplace_back(nameOf(o), std::string(o.value.GetString(), o.value.GetStringLength()));
    }
  }
  return readObjects(f, "mismatches", c.mismatches, readMismatch);
}

}  // namespace

Parsed<ClusterStatus> decodeClusterStatus(std::string_view json) {
  rapidjson::Document doc;
  if (auto error = parseJson(doc, withoutNewline(json)); !error.empty()) return failed<ClusterStatus>(std::move(error));
  if (!doc.IsObject()) return failed<ClusterStatus>("not a JSON object");
  ClusterStatus cluster;
  if (auto error = readCluster(doc, cluster); !error.empty()) return failed<ClusterStatus>(std::move(error));
  return Parsed<ClusterStatus>{std::move(cluster), {}};
}

}  // namespace ondemand::protocol
