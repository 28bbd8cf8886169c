#include "controld/daemon/daemon.hpp"

#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "controld/drivers/command_driver.hpp"
#include "controld/io/log.hpp"
#include "controld/version.hpp"

#ifdef ONDEMAND_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace ondemand::controld {

namespace {

void notifySystemd([[maybe_unused]] const char* state) {
#ifdef ONDEMAND_HAVE_SYSTEMD
  sd_notify(0, state);
#endif
}

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

void key(JsonWriter& w, const char* k) {
  w.Key(k);
}
void str(JsonWriter& w, const std::string& v) {
  w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

const char* driverName(const ServiceConfig& c) {
  switch (c.driverKind()) {
    case ServiceConfig::DriverKind::Command:
      return "command";
    case ServiceConfig::DriverKind::Semaphore:
      return "semaphore";
    case ServiceConfig::DriverKind::None:
      return "none";
  }
  return "none";
}

Config withOverrides(Config config, const ServeOverrides& overrides) {
  if (!overrides.socketPath.empty()) config.socketPath = overrides.socketPath;
  if (!overrides.stateDir.empty()) config.stateDir = overrides.stateDir;
  return config;
}

}  // namespace

struct Daemon::Service {
  Service(uv_loop_t* loop, const ServiceConfig& c, MachineSettings settings, std::size_t historySize)
      : config(c), machine(c.name, settings, historySize), timer(loop) {}

  ServiceConfig config;
  ServiceMachine machine;
  std::unique_ptr<Driver> driver;
  std::unique_ptr<HealthChecker> health;
  Timer timer;
  std::set<std::uint64_t> awaitingAcks;        // workers asked about `stopping` that have not answered
  bool holdsMachine = false;                   // an operation runs or waits for this service's machine
  std::uint64_t startedTotal = 0;              // requests started, as reported by workers
  std::optional<ServiceConfig> pendingConfig;  // a reload that waits for the operation under way
  std::uint64_t eventEpoch = 0;                // the epoch whose transition was last logged and sent as an event
};

// --- construction -----------------------------------------------------------

Daemon::Daemon(Config config, Environment environment, ServeOverrides overrides)
    : loop_(&loopStorage_),
      config_(withOverrides(std::move(config), overrides)),
      environment_(std::move(environment)),
      overrides_(std::move(overrides)),
      store_(config_.stateDir) {
  uv_loop_init(loop_);
  http_ = std::make_unique<HttpClient>(loop_);
  writer_ = std::make_unique<StateWriter>(loop_, store_);
  server_ = std::make_unique<ControlServer>(loop_, *this, versionString());
}

Daemon::~Daemon() {
  shuttingDown_ = true;
  writer_.reset();  // every state write finishes before anything goes
  services_.clear();
  CommandDriver::forgetOrphans(loop_);  // commands still followed go on without us
  semaphore_.reset();                   // its live-updates thread and handles go while the loop is still open
  server_.reset();
  http_.reset();
  sigterm_.reset();
  sigint_.reset();
  sighup_.reset();
  // Let the close callbacks of every handle run before the loop goes.
  uv_run(loop_, UV_RUN_NOWAIT);
  uv_walk(
      loop_,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(loop_, UV_RUN_DEFAULT);
  uv_loop_close(loop_);
}

std::unique_ptr<Driver> Daemon::makeDriver(const ServiceConfig& c) {
  switch (c.driverKind()) {
    case ServiceConfig::DriverKind::Command:
      return std::make_unique<CommandDriver>(loop_, c.startCommand, c.stopCommand, c.startTimeout, c.stopTimeout,
                                             c.name, store_.commandOutputPath(c.name));
    case ServiceConfig::DriverKind::Semaphore:
      return makeSemaphoreDriver(c);
    case ServiceConfig::DriverKind::None:
      return nullptr;
  }
  return nullptr;
}

MachineSettings Daemon::machineSettings(const ServiceConfig& c, const Driver* driver) const {
  MachineSettings s;
  s.startTimeout = c.startTimeout;
  s.idleTimeout = c.idleTimeout;
  s.failureBackoff = c.failureBackoff;
  s.warmup = c.warmup;
  s.hasStartDriver = driver && driver->supports(OperationKind::Start);
  s.hasStopDriver = driver && driver->supports(OperationKind::Stop);
  s.hasHealthCheck = !c.healthUrl.empty();
  return s;
}

void Daemon::addService(const ServiceConfig& c) {
  auto driver = makeDriver(c);
  auto service = std::make_unique<Service>(loop_, c, machineSettings(c, driver.get()), config_.historySize);
  service->driver = std::move(driver);
  if (!c.healthUrl.empty()) {
    service->health = std::make_unique<HealthChecker>(*http_, loop_, c.healthUrl, c.healthInterval, c.healthTimeout);
  }
  services_[c.name] = std::move(service);
}

void Daemon::restoreFromDisk() {
  auto loaded = store_.loadAll();
  for (const auto& [file, error] : loaded.errors) {
    LogLine(LogLevel::Warning, "state_file_ignored").kv("file", file).kv("why", error);
  }
  const auto now = unixMillisNow();
  for (auto& [name, snapshot] : loaded.services) {
    auto it = services_.find(name);
    if (it == services_.end()) {
      LogLine(LogLevel::Info, "state_file_unused").kv("service", name).kv("why", "not in the configuration");
      continue;
    }
    Service& s = *it->second;
    LogLine(LogLevel::Info, "recovered")
        .kv("service", name)
        .kv("state", std::string(toString(snapshot.state)))
        .kv("phase", toString(snapshot.phase))
        .kv("task_id", snapshot.operation ? snapshot.operation->taskId : 0);
    s.eventEpoch = snapshot.epoch;  // that transition was reported by the previous process
    apply(s, s.machine.restore(now, std::move(snapshot)));
  }
}

// --- effects ----------------------------------------------------------------

void Daemon::apply(Service& s, Effects e, const std::string& why) {
  const std::string& name = s.config.name;
  if (e.cancelDriver && s.driver) {
    s.driver->cancel();
    if (s.holdsMachine) {
      s.holdsMachine = false;
      machineQueue_.release(s.config.machine, name);
    }
  }
  if (e.stopReadiness && s.health) s.health->stop();
  // Workers learn first (no disk on that path); the driver is launched only
  // once the record of its operation is on disk, so a crash in between can
  // never make a restarted controld launch it a second time.
  if (e.stateChanged) publish(s);
  const bool launch = e.runStartDriver || e.runStopDriver || e.resumeDriver;
  if ((e.runStartDriver || e.runStopDriver) && s.machine.snapshot().operation) {
    // The operation's id goes into the record that must be on disk before
    // the driver runs: a restarted controld can then always find what a
    // driver sent under it (a Semaphore task whose creation was never
    // confirmed), however early the crash.
    OperationRecord record = *s.machine.snapshot().operation;
    if (record.operationId.empty()) {
      record.operationId = newOperationId(name, record.startedAtMs);
      s.machine.operationProgress(record);
    }
  }
  if (e.persist || launch) {
    std::function<void()> whenDurable;
    if (launch) {
      whenDurable = [this, service = &s, epoch = s.machine.epoch(), e, why] {
        auto it = services_.find(service->config.name);
        if (shuttingDown_ || it == services_.end() || it->second.get() != service) return;
        if (service->machine.epoch() != epoch || service->machine.phase() != Phase::Driver) return;
        if (e.runStartDriver) runOperation(*service, OperationKind::Start, why);
        if (e.runStopDriver) runOperation(*service, OperationKind::Stop, why);
        if (e.resumeDriver) resumeOperation(*service);
      };
    }
    writer_->save(name, s.machine.snapshot(), std::move(whenDurable));
  }
  if (e.beginReadiness && s.health) {
    s.health->start([this, &s] { apply(s, s.machine.healthy(unixMillisNow())); });
  }
  if (e.confirmHealth && s.health) {
    s.health->probeOnce([this, &s](bool healthy, std::string detail) {
      if (healthy) {
        LogLine(LogLevel::Info, "recovered_warm").kv("service", s.config.name).kv("health", "answering");
      } else {
        apply(s, s.machine.unhealthy(unixMillisNow(), detail));
      }
    });
  }
  if (e.announceStopping) beginDrain(s);
  // A reload that waited for the operation under way applies once things are still.
  if (s.pendingConfig && s.machine.phase() == Phase::None) {
    ServiceConfig next = std::move(*s.pendingConfig);
    s.pendingConfig.reset();
    s.config = next;
    s.driver = makeDriver(next);
    s.health.reset();
    if (!next.healthUrl.empty()) {
      s.health =
          std::make_unique<HealthChecker>(*http_, loop_, next.healthUrl, next.healthInterval, next.healthTimeout);
    }
    s.machine.updateSettings(machineSettings(next, s.driver.get()));
  }
  reschedule(s);
}

void Daemon::runOperation(Service& s, OperationKind kind, const std::string& why) {
  if (!s.driver) return;
  const auto& history = s.machine.snapshot().history;
  OperationRequest request;
  request.kind = kind;
  request.why = !why.empty() ? why : (history.empty() ? std::string() : history.back().detail);
  if (const auto& op = s.machine.snapshot().operation) request.operationId = op->operationId;
  s.holdsMachine = true;
  machineQueue_.enqueue(s.config.machine, s.config.name, [this, &s, request] {
    LogLine(LogLevel::Info, "operation_begin")
        .kv("service", s.config.name)
        .kv("operation", toString(request.kind))
        .kv("driver", driverName(s.config))
        .kv("why", request.why);
    s.driver->run(
        request, [this, &s](const OperationRecord& record) { apply(s, s.machine.operationProgress(record)); },
        [this, &s](OperationOutcome outcome) { operationFinished(s, std::move(outcome)); });
  });
  if (machineQueue_.waiting(s.config.machine, s.config.name)) {
    LogLine(LogLevel::Info, "operation_queued")
        .kv("service", s.config.name)
        .kv("operation", toString(kind))
        .kv("machine", s.config.machine);
  }
}

void Daemon::resumeOperation(Service& s) {
  const auto& op = s.machine.snapshot().operation;
  if (!s.driver || !op) return;
  const OperationRecord record = *op;
  s.holdsMachine = true;
  machineQueue_.enqueue(s.config.machine, s.config.name, [this, &s, record] {
    LogLine(LogLevel::Info, "operation_resumed")
        .kv("service", s.config.name)
        .kv("operation", toString(record.kind))
        .kv("task_id", record.taskId)
        .kv("pid", record.pid);
    s.driver->resume(
        record, [this, &s](const OperationRecord& r) { apply(s, s.machine.operationProgress(r)); },
        [this, &s](OperationOutcome outcome) { operationFinished(s, std::move(outcome)); });
  });
}

void Daemon::operationFinished(Service& s, OperationOutcome outcome) {
  const auto& op = s.machine.snapshot().operation;
  LogLine(outcome.ok ? LogLevel::Info : LogLevel::Warning, "operation_end")
      .kv("service", s.config.name)
      .kv("operation", op ? toString(op->kind) : "?")
      .kv("ok", outcome.ok ? "true" : "false")
      .kv("task_id", outcome.taskId)
      .kv("task_status", outcome.taskStatus)
      .kv("reason", outcome.reason);
  if (s.holdsMachine) {
    s.holdsMachine = false;
    machineQueue_.release(s.config.machine, s.config.name);
  }
  apply(s, s.machine.operationDone(unixMillisNow(), outcome));
}

void Daemon::beginDrain(Service& s) {
  s.awaitingAcks.clear();
  server_->forEach([&](ControlConnection& c) {
    if (c.subscribed && c.role() == "worker") s.awaitingAcks.insert(c.id());
  });
  maybeFinishDrain(s);
}

void Daemon::maybeFinishDrain(Service& s) {
  if (s.machine.state() != ServiceState::Stopping || s.machine.phase() != Phase::Draining) return;
  if (!s.awaitingAcks.empty()) return;
  apply(s, s.machine.drainFinished(unixMillisNow(), totalInFlight(s.config.name)));
}

void Daemon::reschedule(Service& s) {
  const auto deadline = s.machine.nextDeadlineMs();
  if (!deadline) {
    s.timer.stop();
    return;
  }
  const auto delay = std::max<std::int64_t>(0, *deadline - unixMillisNow());
  s.timer.start(Millis(delay), [this, &s] { apply(s, s.machine.tick(unixMillisNow())); });
}

protocol::StatePush Daemon::statePush(const Service& s) const {
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

void Daemon::publish(Service& s) {
  const auto& snap = s.machine.snapshot();
  // A push within the same epoch (the operation learnt its task id) is no
  // new transition: workers get the state again, event followers nothing.
  const bool newTransition = !snap.history.empty() && snap.epoch != s.eventEpoch;
  s.eventEpoch = snap.epoch;
  if (newTransition) {
    const Transition& t = snap.history.back();
    LogLine(t.to == ServiceState::Failed ? LogLevel::Warning : LogLevel::Info, "transition")
        .kv("service", s.config.name)
        .kv("from", std::string(toString(t.from)))
        .kv("to", std::string(toString(t.to)))
        .kv("cause", toString(t.cause))
        .kv("epoch", snap.epoch)
        .kv("task_id", t.taskId)
        .kv("detail", t.detail);
  }
  const std::string line = protocol::encode(statePush(s));
  std::string event;
  if (newTransition) {
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
    event.assign(buffer.GetString(), buffer.GetSize());
    event.push_back('\n');
  }
  server_->forEach([&](ControlConnection& c) {
    if (c.subscribed) c.send(line);
    if (c.wantsEvents && !event.empty()) c.send(event);
  });
}

// --- messages ---------------------------------------------------------------

void Daemon::onHello(ControlConnection&) {}

void Daemon::onMessage(ControlConnection& c, protocol::Message&& message) {
  if (std::holds_alternative<protocol::Subscribe>(message)) {
    c.subscribed = true;
    for (auto& [name, s] : services_)
      c.send(protocol::encode(statePush(*s)));
    c.send(protocol::encode(protocol::Synced{}));
  } else if (const auto* wake = std::get_if<protocol::Wake>(&message)) {
    handleWake(c, *wake);
  } else if (const auto* activity = std::get_if<protocol::Activity>(&message)) {
    handleActivity(c, *activity);
  } else if (const auto* ack = std::get_if<protocol::StoppingAck>(&message)) {
    handleStoppingAck(c, *ack);
  } else if (const auto* command = std::get_if<protocol::Command>(&message)) {
    handleCommand(c, *command);
  } else {
    const std::string type(protocol::typeName(message));
    c.send(protocol::encode(protocol::Error{"unexpected message \"" + type + "\""}));
    c.close("unexpected message \"" + type + "\" from a client");
  }
}

void Daemon::onClosed(ControlConnection& c) {
  const auto now = unixMillisNow();
  for (auto& [name, count] : c.inFlight) {
    if (count == 0) continue;
    count = 0;
    if (auto it = services_.find(name); it != services_.end()) {
      apply(*it->second, it->second->machine.activity(now, totalInFlight(name), false));
    }
  }
  for (auto& [name, s] : services_) {
    if (s->awaitingAcks.erase(c.id())) maybeFinishDrain(*s);
  }
}

void Daemon::handleWake(ControlConnection&, const protocol::Wake& wake) {
  auto it = services_.find(wake.service);
  if (it == services_.end()) {
    if (unknownWakes_[wake.service]++ == 0) {
      LogLine(LogLevel::Warning, "unknown_service").kv("service", wake.service).kv("why", "a wake names it");
    }
    return;
  }
  Service& s = *it->second;
  apply(s, s.machine.wake(unixMillisNow(), Cause::Request, wake.reason), wake.reason);
}

std::uint64_t Daemon::totalInFlight(const std::string& service) {
  std::uint64_t total = 0;
  server_->forEach([&](ControlConnection& c) {
    if (auto it = c.inFlight.find(service); it != c.inFlight.end()) total += it->second;
  });
  return total;
}

void Daemon::handleActivity(ControlConnection& c, const protocol::Activity& activity) {
  const auto now = unixMillisNow();
  for (const auto& entry : activity.entries) {
    auto it = services_.find(entry.service);
    if (it == services_.end()) continue;
    Service& s = *it->second;
    c.inFlight[entry.service] = entry.inFlight;
    s.startedTotal += entry.started;
    apply(s, s.machine.activity(now, totalInFlight(entry.service), entry.started > 0));
  }
}

void Daemon::handleStoppingAck(ControlConnection& c, const protocol::StoppingAck& ack) {
  auto it = services_.find(ack.service);
  if (it == services_.end()) return;
  Service& s = *it->second;
  if (ack.epoch != s.machine.epoch()) return;  // an answer to an older announcement
  c.inFlight[ack.service] = ack.inFlight;
  s.awaitingAcks.erase(c.id());
  maybeFinishDrain(s);
}

void Daemon::handleCommand(ControlConnection& c, const protocol::Command& command) {
  auto reply = [&](bool ok, const std::string& error, const Service* s) {
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    key(w, "type");
    w.String("reply");
    key(w, "id");
    w.Int64(command.id);
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
    std::string line(buffer.GetString(), buffer.GetSize());
    line.push_back('\n');
    c.send(std::move(line));
  };

  if (command.verb == "status") {
    std::string error;
    std::string line = statusReply(command.id, command.service, error);
    if (!error.empty()) return reply(false, error, nullptr);
    c.send(std::move(line));
    return;
  }
  if (command.verb == "events") {
    c.wantsEvents = true;
    return reply(true, "", nullptr);
  }
  if (command.verb != "start" && command.verb != "stop") {
    return reply(false, "unknown command \"" + command.verb + "\"", nullptr);
  }
  auto it = services_.find(command.service);
  if (it == services_.end()) return reply(false, "unknown service \"" + command.service + "\"", nullptr);
  Service& s = *it->second;
  const auto now = unixMillisNow();
  if (command.verb == "start") {
    apply(s, s.machine.wake(now, Cause::Cli, "controld start"), "controld start (cli)");
    return reply(true, "", &s);
  }
  if (!s.driver || !s.driver->supports(OperationKind::Stop)) {
    return reply(false,
                 "service \"" + s.config.name + "\" has no stop_command or stop template: controld cannot stop it", &s);
  }
  apply(s, s.machine.stopRequested(now), "controld stop (cli)");
  return reply(true, "", &s);
}

std::string Daemon::statusReply(std::int64_t id, const std::string& only, std::string& error) const {
  if (!only.empty() && !services_.count(only)) {
    error = "unknown service \"" + only + "\"";
    return {};
  }
  const auto now = unixMillisNow();
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
  w.Int64(now);

  key(w, "daemon");
  w.StartObject();
  key(w, "version");
  w.String(versionString());
  key(w, "pid");
  w.Int64(::getpid());
  key(w, "started_at");
  w.Int64(startedAtMs_);
  key(w, "config");
  str(w, config_.sourceFile);
  key(w, "connections");
  w.StartObject();
  key(w, "worker");
  w.Uint64(server_->connectionCount("worker"));
  key(w, "cli");
  w.Uint64(server_->connectionCount("cli"));
  w.EndObject();
  key(w, "messages_received");
  w.StartObject();
  for (const auto& [type, count] : server_->messagesReceived()) {
    str(w, type);
    w.Uint64(count);
  }
  w.EndObject();
  w.EndObject();

  key(w, "services");
  w.StartArray();
  for (const auto& [name, sp] : services_) {
    if (!only.empty() && name != only) continue;
    const Service& s = *sp;
    const auto& snap = s.machine.snapshot();
    w.StartObject();
    key(w, "name");
    str(w, name);
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
    w.Bool(machineQueue_.waiting(s.config.machine, name));
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
  w.EndArray();
  w.EndObject();
  std::string line(buffer.GetString(), buffer.GetSize());
  line.push_back('\n');
  return line;
}

// --- lifecycle --------------------------------------------------------------

int Daemon::run() {
  startedAtMs_ = unixMillisNow();
  if (auto error = store_.prepare()) {
    LogLine(LogLevel::Error, "startup_failed").kv("why", *error);
    return 1;
  }
  for (const auto& [name, c] : config_.services)
    addService(c);
  // Signals first: once the socket exists, clients (and systemd) may signal us.
  auto makeSignal = [this](UvHandle<uv_signal_t>& holder, int signum, uv_signal_cb cb) {
    auto* h = new uv_signal_t;
    uv_signal_init(loop_, h);
    h->data = this;
    holder.adopt(h);
    uv_signal_start(h, cb, signum);
  };
  makeSignal(sigterm_, SIGTERM, [](uv_signal_t* h, int) {
    if (h->data) static_cast<Daemon*>(h->data)->shutdown();
  });
  makeSignal(sigint_, SIGINT, [](uv_signal_t* h, int) {
    if (h->data) static_cast<Daemon*>(h->data)->shutdown();
  });
  makeSignal(sighup_, SIGHUP, [](uv_signal_t* h, int) {
    if (h->data) static_cast<Daemon*>(h->data)->reload();
  });
  ::signal(SIGPIPE, SIG_IGN);
  // An ignored SIGCHLD, inherited from whoever started us, would have the
  // kernel reap start commands before their exit status is read.
  ::signal(SIGCHLD, SIG_DFL);
  if (auto error = server_->listen(config_.socketPath, config_.socketMode, config_.socketGroup)) {
    LogLine(LogLevel::Error, "startup_failed").kv("why", *error);
    return 1;
  }

  restoreFromDisk();
  LogLine(LogLevel::Info, "ready")
      .kv("version", versionString())
      .kv("socket", config_.socketPath)
      .kv("services", static_cast<std::uint64_t>(services_.size()))
      .kv("state_dir", config_.stateDir);
  notifySystemd("READY=1");
  uv_run(loop_, UV_RUN_DEFAULT);
  return exitCode_;
}

void Daemon::shutdown() {
  shuttingDown_ = true;
  notifySystemd("STOPPING=1");
  LogLine(LogLevel::Info, "shutdown").kv("why", "signal");
  // Operations under way keep running; the next controld resumes them from
  // the state files, which are already up to date.
  for (auto& [name, s] : services_) {
    if (s->driver) s->driver->detach();
    if (s->health) s->health->stop();
    s->timer.stop();
  }
  server_->closeAll();
  sigterm_.reset();
  sigint_.reset();
  sighup_.reset();
  uv_stop(loop_);
}

void Daemon::reload() {
  notifySystemd("RELOADING=1");
  auto result = loadConfig(config_.sourceFile, processEnvironment());
  for (const auto& w : result.warnings)
    LogLine(LogLevel::Warning, "config_warning").kv("problem", formatProblem(w));
  if (!result.config) {
    for (const auto& e : result.errors)
      LogLine(LogLevel::Error, "config_error").kv("problem", formatProblem(e));
    LogLine(LogLevel::Error, "reload_rejected")
        .kv("errors", static_cast<std::uint64_t>(result.errors.size()))
        .kv("why", "keeping the running configuration");
    notifySystemd("READY=1");
    return;
  }
  Config next = withOverrides(std::move(*result.config), overrides_);
  if (next.socketPath != config_.socketPath || next.stateDir != config_.stateDir) {
    LogLine(LogLevel::Warning, "reload_partial").kv("why", "socket and state_dir changes need a restart");
    next.socketPath = config_.socketPath;
    next.stateDir = config_.stateDir;
  }
  // Removed services: forgotten (whatever runs keeps running), workers told.
  for (auto it = services_.begin(); it != services_.end();) {
    if (next.services.count(it->first)) {
      ++it;
      continue;
    }
    Service& s = *it->second;
    if (s.driver) s.driver->detach();
    if (s.holdsMachine) machineQueue_.release(s.config.machine, s.config.name);
    LogLine(LogLevel::Info, "service_removed").kv("service", it->first);
    const std::string line = protocol::encode(protocol::Removed{it->first});
    server_->forEach([&](ControlConnection& c) {
      if (c.subscribed) c.send(line);
    });
    it = services_.erase(it);
  }
  config_ = std::move(next);
  for (const auto& [name, c] : config_.services) {
    auto it = services_.find(name);
    if (it == services_.end()) {
      addService(c);
      LogLine(LogLevel::Info, "service_added").kv("service", name);
      Service& s = *services_[name];
      publish(s);
      continue;
    }
    Service& s = *it->second;
    s.pendingConfig = c;
    apply(s, Effects{});  // applies now unless an operation or readiness check is under way
  }
  LogLine(LogLevel::Info, "reloaded").kv("services", static_cast<std::uint64_t>(services_.size()));
  notifySystemd("READY=1");
}

}  // namespace ondemand::controld
