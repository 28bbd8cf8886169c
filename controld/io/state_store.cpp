#include "controld/io/state_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "controld/io/fd.hpp"
#include "controld/io/json_fields.hpp"
#include "controld/io/log.hpp"
#include "shared/json_read.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::controld {

namespace {

void writeOperation(JsonWriter& w, const OperationRecord& op) {
  w.startObject().str("kind", toString(op.kind)).str("driver", op.driver).i64("task_id", op.taskId);
  w.i64("pid", op.pid).i64("started_at", op.startedAtMs).str("operation_id", op.operationId).endObject();
}

void writeLastOperation(JsonWriter& w, const OperationSummary& op) {
  w.startObject().str("kind", toString(op.kind)).i64("started_at", op.startedAtMs).i64("ended_at", op.endedAtMs);
  w.flag("ok", op.ok).str("reason", op.reason).i64("task_id", op.taskId).str("task_status", op.taskStatus);
  w.endObject();
}

void writeTransition(JsonWriter& w, const Transition& t) {
  w.startObject().i64("at", t.atMs).str("from", toString(t.from)).str("to", toString(t.to));
  w.str("cause", toString(t.cause)).str("detail", t.detail).i64("task_id", t.taskId).str("task_status", t.taskStatus);
  w.endObject();
}

std::string errnoText(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

OperationKind kindOf(const rapidjson::Value& o) {
  return jsonString(o, "kind") == "stop" ? OperationKind::Stop : OperationKind::Start;
}

}  // namespace

std::string snapshotToJson(const MachineSnapshot& s) {
  JsonWriter w;
  w.startObject().i64("format", 1).str("state", toString(s.state)).str("phase", toString(s.phase));
  w.u64("epoch", s.epoch).i64("since", s.sinceMs).i64("starting_since", s.startingSinceMs);
  w.i64("failed_at", s.failedAtMs).i64("last_activity", s.lastActivityMs);
  w.str("cause", toString(s.cause)).str("reason", s.reason).flag("restart_after_stop", s.restartAfterStop);
  w.u64("starts_ok", s.startsOk).u64("starts_failed", s.startsFailed).i64("last_start_ms", s.lastStartMs);
  if (s.operation) {
    w.key("operation");
    writeOperation(w, *s.operation);
  }
  if (s.lastOperation) {
    w.key("last_operation");
    writeLastOperation(w, *s.lastOperation);
  }
  w.key("history").startArray();
  for (const auto& t : s.history)
    writeTransition(w, t);
  w.endArray().endObject();
  return w.text();
}

MachineSnapshot withTimes(MachineSnapshot s, std::int64_t (*convert)(std::int64_t)) {
  for (std::int64_t* t : {&s.sinceMs, &s.startingSinceMs, &s.failedAtMs, &s.lastActivityMs})
    *t = convert(*t);
  if (s.operation) s.operation->startedAtMs = convert(s.operation->startedAtMs);
  if (s.lastOperation) {
    s.lastOperation->startedAtMs = convert(s.lastOperation->startedAtMs);
    s.lastOperation->endedAtMs = convert(s.lastOperation->endedAtMs);
  }
  for (auto& t : s.history)
    t.atMs = convert(t.atMs);
  return s;
}

std::optional<MachineSnapshot> snapshotFromJson(const std::string& text, std::string& error) {
  rapidjson::Document doc;
  if (!parseJson(doc, text).empty() || !doc.IsObject()) {
    error = "not a JSON object";
    return std::nullopt;
  }
  MachineSnapshot s;
  const auto state = parseServiceState(jsonString(doc, "state"));
  const auto phase = parsePhase(jsonString(doc, "phase"));
  if (!state || !phase) {
    error = "unknown state or phase";
    return std::nullopt;
  }
  s.state = *state;
  s.phase = *phase;
  const auto* epoch = jsonMember(doc, "epoch");
  s.epoch = epoch && epoch->IsUint64() ? epoch->GetUint64() : 0;
  if (s.epoch > kMaxEpoch) {
    // No controld makes that many transitions; going on would wrap it.
    error = "epoch " + std::to_string(s.epoch) + " out of range (at most " + std::to_string(kMaxEpoch) + ")";
    return std::nullopt;
  }
  s.sinceMs = jsonInt64(doc, "since");
  s.startingSinceMs = jsonInt64(doc, "starting_since");
  s.failedAtMs = jsonInt64(doc, "failed_at");
  s.lastActivityMs = jsonInt64(doc, "last_activity");
  s.cause = parseCause(jsonString(doc, "cause")).value_or(Cause::Recovery);
  s.reason = jsonString(doc, "reason");
  const auto* restart = jsonMember(doc, "restart_after_stop");
  s.restartAfterStop = restart && restart->IsBool() && restart->GetBool();
  s.startsOk = static_cast<std::uint64_t>(std::max<std::int64_t>(0, jsonInt64(doc, "starts_ok")));
  s.startsFailed = static_cast<std::uint64_t>(std::max<std::int64_t>(0, jsonInt64(doc, "starts_failed")));
  s.lastStartMs = jsonInt64(doc, "last_start_ms");
  if (const auto* op = jsonMember(doc, "operation"); op && op->IsObject()) {
    OperationRecord r;
    r.kind = kindOf(*op);
    r.driver = jsonString(*op, "driver");
    r.taskId = jsonInt64(*op, "task_id");
    r.pid = jsonInt64(*op, "pid");
    r.startedAtMs = jsonInt64(*op, "started_at");
    r.operationId = jsonString(*op, "operation_id");  // absent in files of an older controld
    s.operation = r;
  }
  if (const auto* op = jsonMember(doc, "last_operation"); op && op->IsObject()) {
    OperationSummary o;
    o.kind = kindOf(*op);
    o.startedAtMs = jsonInt64(*op, "started_at");
    o.endedAtMs = jsonInt64(*op, "ended_at");
    const auto* okv = jsonMember(*op, "ok");
    o.ok = okv && okv->IsBool() && okv->GetBool();
    o.reason = jsonString(*op, "reason");
    o.taskId = jsonInt64(*op, "task_id");
    o.taskStatus = jsonString(*op, "task_status");
    s.lastOperation = o;
  }
  if (const auto* h = jsonMember(doc, "history"); h && h->IsArray()) {
    for (const auto& item : h->GetArray()) {
      Transition t;
      t.atMs = jsonInt64(item, "at");
      t.from = parseServiceState(jsonString(item, "from")).value_or(ServiceState::Cold);
      t.to = parseServiceState(jsonString(item, "to")).value_or(ServiceState::Cold);
      t.cause = parseCause(jsonString(item, "cause")).value_or(Cause::Recovery);
      t.detail = jsonString(item, "detail");
      t.taskId = jsonInt64(item, "task_id");
      t.taskStatus = jsonString(item, "task_status");
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

std::vector<StateStore::NotWritable> StateStore::notWritable() const {
  std::vector<NotWritable> out;
  auto check = [&out](const std::string& path, bool dir) {
    if (::access(path.c_str(), dir ? (W_OK | X_OK) : W_OK) == 0) return;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return;
    std::string owner;
    if (const passwd* pw = ::getpwuid(st.st_uid))
      owner = pw->pw_name;
    else
      owner = std::to_string(st.st_uid);
    owner += ":";
    if (const group* gr = ::getgrgid(st.st_gid))
      owner += gr->gr_name;
    else
      owner += std::to_string(st.st_gid);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    out.push_back({path, owner, mode});
  };
  for (const std::string& d : {dir_, servicesDir()}) {
    check(d, true);
    DIR* dir = ::opendir(d.c_str());
    if (dir == nullptr) continue;
    while (const dirent* e = ::readdir(dir)) {
      const std::string name = e->d_name;
      const bool ours = (d == servicesDir() && name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) ||
                        (d == dir_ && name.size() > 12 && name.compare(name.size() - 12, 12, ".command.log") == 0);
      if (ours) check(d + "/" + name, false);
    }
    ::closedir(dir);
  }
  return out;
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
    // A half-written temp file only takes space a retry needs.
    auto failed = [&](const char* what) {
      std::string error = errnoText(what, tempPath);
      ::unlink(tempPath.c_str());
      return error;
    };
    std::size_t written = 0;
    while (written < text.size()) {
      const ssize_t n = ::write(fd.get(), text.data() + written, text.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) errno = ENOSPC;
      if (n <= 0) return failed("cannot write");
      written += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) return failed("cannot fsync");
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
  bool failed = false;                        // the last write failed; `text` waits for the retry
  std::optional<std::string> text;            // the newest snapshot not yet handed to a job
  std::vector<StateWriter::Durable> waiters;  // run when `text` is durable (or failed)
};

struct StateWriter::Job {
  uv_work_t work{};
  StateWriter* writer = nullptr;
  std::string service;
  std::string text;
  std::vector<StateWriter::Durable> waiters;
  std::optional<std::string> error;
};

StateWriter::StateWriter(uv_loop_t* loop, const StateStore& store, Millis retryEvery)
    : loop_(loop), store_(store), retryEvery_(retryEvery), retry_(std::make_unique<Timer>(loop)) {}

StateWriter::~StateWriter() {
  retry_.reset();
  // Jobs reference this writer: let them finish. Only the loop's thread pool
  // work is left by now, so this does not run anything else.
  while (running_ > 0)
    uv_run(loop_, UV_RUN_ONCE);
}

bool StateWriter::idle() const {
  return running_ == 0;
}

std::size_t StateWriter::failing() const {
  std::size_t n = 0;
  for (const auto& [name, pending] : services_)
    n += pending->failed;
  return n;
}

void StateWriter::save(const std::string& service, const MachineSnapshot& snapshot, Durable durable) {
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
  auto& pending = *services_[job->service];
  pending.writing = false;
  if (job->error) {
    if (!pending.failed) {
      LogLine(LogLevel::Error, "state_not_saved").kv("service", job->service).kv("why", *job->error);
    }
    pending.failed = true;
    // Kept for the retry unless a newer snapshot replaced it meanwhile.
    if (!pending.text) pending.text = std::move(job->text);
    if (retry_ && !retry_->active()) retry_->start(retryEvery_, [this] { retryFailed(); });
  } else {
    if (pending.failed) LogLine(LogLevel::Info, "state_saved_again").kv("service", job->service);
    pending.failed = false;
    if (pending.text) launch(job->service);
  }
  const std::string error = job->error.value_or(std::string());
  for (auto& waiter : job->waiters)
    waiter(error);
}

void StateWriter::retryFailed() {
  for (auto& [service, pending] : services_) {
    if (pending->failed && !pending->writing && pending->text) launch(service);
  }
}

}  // namespace ondemand::controld
