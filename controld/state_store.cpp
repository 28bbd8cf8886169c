#include "controld/state_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "controld/fd.hpp"
#include "controld/log.hpp"

namespace ondemand::controld {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void writeString(Writer& w, const char* key, const std::string& value) {
  w.Key(key);
  w.String(value.c_str(), static_cast<rapidjson::SizeType>(value.size()));
}

void writeOperation(Writer& w, const OperationRecord& op) {
  w.StartObject();
  writeString(w, "kind", toString(op.kind));
  writeString(w, "driver", op.driver);
  w.Key("task_id");
  w.Int64(op.taskId);
  w.Key("pid");
  w.Int64(op.pid);
  w.Key("started_at");
  w.Int64(op.startedAtMs);
  writeString(w, "operation_id", op.operationId);
  w.EndObject();
}

std::string errnoText(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

const rapidjson::Value* member(const rapidjson::Value& o, const char* key) {
  if (!o.IsObject()) return nullptr;
  auto it = o.FindMember(key);
  return it == o.MemberEnd() ? nullptr : &it->value;
}

std::int64_t int64Of(const rapidjson::Value& o, const char* key) {
  const auto* v = member(o, key);
  return v && v->IsInt64() ? v->GetInt64() : 0;
}

std::string stringOf(const rapidjson::Value& o, const char* key) {
  const auto* v = member(o, key);
  return v && v->IsString() ? std::string(v->GetString(), v->GetStringLength()) : std::string();
}

OperationKind kindOf(const rapidjson::Value& o) {
  return stringOf(o, "kind") == "stop" ? OperationKind::Stop : OperationKind::Start;
}

}  // namespace

std::string snapshotToJson(const MachineSnapshot& s) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("format");
  w.Int(1);
  writeString(w, "state", std::string(toString(s.state)));
  writeString(w, "phase", toString(s.phase));
  w.Key("epoch");
  w.Uint64(s.epoch);
  w.Key("since");
  w.Int64(s.sinceMs);
  w.Key("starting_since");
  w.Int64(s.startingSinceMs);
  w.Key("failed_at");
  w.Int64(s.failedAtMs);
  w.Key("last_activity");
  w.Int64(s.lastActivityMs);
  writeString(w, "cause", toString(s.cause));
  writeString(w, "reason", s.reason);
  w.Key("restart_after_stop");
  w.Bool(s.restartAfterStop);
  w.Key("starts_ok");
  w.Uint64(s.startsOk);
  w.Key("starts_failed");
  w.Uint64(s.startsFailed);
  w.Key("last_start_ms");
  w.Int64(s.lastStartMs);
  if (s.operation) {
    w.Key("operation");
    writeOperation(w, *s.operation);
  }
  if (s.lastOperation) {
    const auto& op = *s.lastOperation;
    w.Key("last_operation");
    w.StartObject();
    writeString(w, "kind", toString(op.kind));
    w.Key("started_at");
    w.Int64(op.startedAtMs);
    w.Key("ended_at");
    w.Int64(op.endedAtMs);
    w.Key("ok");
    w.Bool(op.ok);
    writeString(w, "reason", op.reason);
    w.Key("task_id");
    w.Int64(op.taskId);
    writeString(w, "task_status", op.taskStatus);
    w.EndObject();
  }
  w.Key("history");
  w.StartArray();
  for (const auto& t : s.history) {
    w.StartObject();
    w.Key("at");
    w.Int64(t.atMs);
    writeString(w, "from", std::string(toString(t.from)));
    writeString(w, "to", std::string(toString(t.to)));
    writeString(w, "cause", toString(t.cause));
    writeString(w, "detail", t.detail);
    w.Key("task_id");
    w.Int64(t.taskId);
    writeString(w, "task_status", t.taskStatus);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

std::optional<MachineSnapshot> snapshotFromJson(const std::string& text, std::string& error) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    error = "not a JSON object";
    return std::nullopt;
  }
  MachineSnapshot s;
  const auto state = parseServiceState(stringOf(doc, "state"));
  const auto phase = parsePhase(stringOf(doc, "phase"));
  if (!state || !phase) {
    error = "unknown state or phase";
    return std::nullopt;
  }
  s.state = *state;
  s.phase = *phase;
  const auto* epoch = member(doc, "epoch");
  s.epoch = epoch && epoch->IsUint64() ? epoch->GetUint64() : 0;
  s.sinceMs = int64Of(doc, "since");
  s.startingSinceMs = int64Of(doc, "starting_since");
  s.failedAtMs = int64Of(doc, "failed_at");
  s.lastActivityMs = int64Of(doc, "last_activity");
  s.cause = parseCause(stringOf(doc, "cause")).value_or(Cause::Recovery);
  s.reason = stringOf(doc, "reason");
  const auto* restart = member(doc, "restart_after_stop");
  s.restartAfterStop = restart && restart->IsBool() && restart->GetBool();
  s.startsOk = static_cast<std::uint64_t>(std::max<std::int64_t>(0, int64Of(doc, "starts_ok")));
  s.startsFailed = static_cast<std::uint64_t>(std::max<std::int64_t>(0, int64Of(doc, "starts_failed")));
  s.lastStartMs = int64Of(doc, "last_start_ms");
  if (const auto* op = member(doc, "operation"); op && op->IsObject()) {
    OperationRecord r;
    r.kind = kindOf(*op);
    r.driver = stringOf(*op, "driver");
    r.taskId = int64Of(*op, "task_id");
    r.pid = int64Of(*op, "pid");
    r.startedAtMs = int64Of(*op, "started_at");
    r.operationId = stringOf(*op, "operation_id");  // absent in files of an older controld
    s.operation = r;
  }
  if (const auto* op = member(doc, "last_operation"); op && op->IsObject()) {
    OperationSummary o;
    o.kind = kindOf(*op);
    o.startedAtMs = int64Of(*op, "started_at");
    o.endedAtMs = int64Of(*op, "ended_at");
    const auto* okv = member(*op, "ok");
    o.ok = okv && okv->IsBool() && okv->GetBool();
    o.reason = stringOf(*op, "reason");
    o.taskId = int64Of(*op, "task_id");
    o.taskStatus = stringOf(*op, "task_status");
    s.lastOperation = o;
  }
  if (const auto* h = member(doc, "history"); h && h->IsArray()) {
    for (const auto& item : h->GetArray()) {
      Transition t;
      t.atMs = int64Of(item, "at");
      t.from = parseServiceState(stringOf(item, "from")).value_or(ServiceState::Cold);
      t.to = parseServiceState(stringOf(item, "to")).value_or(ServiceState::Cold);
      t.cause = parseCause(stringOf(item, "cause")).value_or(Cause::Recovery);
      t.detail = stringOf(item, "detail");
      t.taskId = int64Of(item, "task_id");
      t.taskStatus = stringOf(item, "task_status");
      s.history.push_back(std::move(t));
    }
  }
  return s;
}

StateStore::StateStore(std::string stateDir) : dir_(std::move(stateDir)) {}

std::optional<std::string> StateStore::prepare() {
  for (const std::string& d : {dir_, servicesDir()}) {
    if (::mkdir(d.c_str(), 0750) != 0 && errno != EEXIST) return errnoText("cannot create", d);
  }
  return std::nullopt;
}

std::optional<std::string> StateStore::save(const std::string& service, const MachineSnapshot& snapshot) {
  return writeText(service, snapshotToJson(snapshot) + "\n");
}

std::optional<std::string> StateStore::writeText(const std::string& service, const std::string& text) const {
  const std::string finalPath = servicesDir() + "/" + service + ".json";
  const std::string tempPath = finalPath + ".tmp";
  {
    ScopedFd fd(::open(tempPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
    if (!fd) return errnoText("cannot write", tempPath);
    std::size_t written = 0;
    while (written < text.size()) {
      const ssize_t n = ::write(fd.get(), text.data() + written, text.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return errnoText("cannot write", tempPath);
      written += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) return errnoText("cannot fsync", tempPath);
  }
  if (::rename(tempPath.c_str(), finalPath.c_str()) != 0) return errnoText("cannot rename onto", finalPath);
  ScopedFd dir(::open(servicesDir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  return std::nullopt;
}

void StateStore::remove(const std::string& service) {
  const std::string path = servicesDir() + "/" + service + ".json";
  ::unlink(path.c_str());
}

StateStore::Loaded StateStore::loadAll() const {
  Loaded loaded;
  DIR* dir = ::opendir(servicesDir().c_str());
  if (!dir) return loaded;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string file = entry->d_name;
    constexpr std::string_view suffix = ".json";
    if (file.size() <= suffix.size() || file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string path = servicesDir() + "/" + file;
    std::ifstream in(path);
    std::stringstream content;
    content << in.rdbuf();
    std::string error;
    if (auto snapshot = snapshotFromJson(content.str(), error)) {
      loaded.services.emplace(file.substr(0, file.size() - suffix.size()), std::move(*snapshot));
    } else {
      loaded.errors.emplace(path, error);
    }
  }
  ::closedir(dir);
  return loaded;
}

}  // namespace ondemand::controld

namespace ondemand::controld {

// What is waiting to be written for one service, and who waits for it.
struct StateWriter::Pending {
  bool writing = false;
  std::optional<std::string> text;             // the newest snapshot not yet handed to a job
  std::vector<std::function<void()>> waiters;  // run when `text` is durable
};

struct StateWriter::Job {
  uv_work_t work{};
  StateWriter* writer = nullptr;
  std::string service;
  std::string text;
  std::vector<std::function<void()>> waiters;
  std::optional<std::string> error;
};

StateWriter::StateWriter(uv_loop_t* loop, const StateStore& store) : loop_(loop), store_(store) {}

StateWriter::~StateWriter() {
  // Jobs reference this writer: let them finish. Only the loop's thread pool
  // work is left by now, so this does not run anything else.
  while (running_ > 0)
    uv_run(loop_, UV_RUN_ONCE);
}

bool StateWriter::idle() const {
  return running_ == 0;
}

void StateWriter::save(const std::string& service, const MachineSnapshot& snapshot, std::function<void()> durable) {
  auto& pending = services_[service];
  if (!pending) pending = std::make_unique<Pending>();
  pending->text = snapshotToJson(snapshot) + "\n";
  if (durable) pending->waiters.push_back(std::move(durable));
  if (!pending->writing) launch(service);
}

void StateWriter::launch(const std::string& service) {
  auto& pending = *services_[service];
  auto* job = new Job;
  job->work.data = job;
  job->writer = this;
  job->service = service;
  job->text = std::move(*pending.text);
  pending.text.reset();
  job->waiters.swap(pending.waiters);
  pending.writing = true;
  ++running_;
  uv_queue_work(
      loop_, &job->work,
      [](uv_work_t* w) {
        auto* j = static_cast<Job*>(w->data);
        j->error = j->writer->store_.writeText(j->service, j->text);
      },
      [](uv_work_t* w, int) {
        auto* j = static_cast<Job*>(w->data);
        j->writer->finished(j);
      });
}

void StateWriter::finished(Job* job) {
  std::unique_ptr<Job> owned(job);
  --running_;
  if (job->error) LogLine(LogLevel::Error, "state_not_saved").kv("service", job->service).kv("why", *job->error);
  auto& pending = *services_[job->service];
  pending.writing = false;
  if (pending.text) launch(job->service);
  for (auto& waiter : job->waiters)
    waiter();
}

}  // namespace ondemand::controld
