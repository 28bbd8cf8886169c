#include "controld/daemon/daemon.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "controld/cli/metrics.hpp"
#include "controld/daemon/status_render.hpp"
#include "controld/drivers/command_driver.hpp"
#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"
#include "controld/io/systemd.hpp"
#include "controld/version.hpp"
#include "shared/utf8.hpp"

namespace ondemand::controld {

// --- construction -----------------------------------------------------------

Daemon::Daemon(Config config, Environment environment, ServeOverrides overrides)
    : loop_(&loopStorage_),
      config_(withOverrides(std::move(config), overrides)),
      environment_(std::move(environment)),
      overrides_(std::move(overrides)),
      store_(config_.stateDir),
      signals_(
          loop_, [this] { shutdown(); }, [this] { reload(); }),
      watchdog_(loop_) {
  uv_loop_init(loop_);
  http_ = std::make_unique<HttpClient>(loop_);
  writer_ = std::make_unique<StateWriter>(loop_, store_);
  services_ = std::make_unique<ServiceRegistry>(loop_, *http_, store_);
  services_->useConfig(config_);
  server_ = std::make_unique<ControlServer>(loop_, *this, versionString());
  telemetry_ = std::make_unique<Telemetry>(loop_);
}

Daemon::~Daemon() {
  shuttingDown_ = true;
  cluster_.reset();
  writer_.reset();  // every state write finishes before anything goes
  services_->clear();
  CommandDriver::forgetOrphans(loop_);  // commands still followed go on without us
  services_.reset();  // the Semaphore client's live-updates thread and handles go while the loop is open
  telemetry_.reset();
  server_.reset();
  http_.reset();
  machineTimers_.clear();  // timers' handles are freed by the loop's last turn
  forwardedStopTimer_.reset();
  signals_.stop();
  closeLoop(loop_);
}

void Daemon::restoreFromDisk() {
  auto loaded = store_.loadAll();
  for (const auto& [file, error] : loaded.errors) {
    LogLine(LogLevel::Warning, "state_file_ignored").kv("file", file).kv("why", error);
  }
  const auto now = clockMillisNow();
  for (auto& [name, snapshot] : loaded.services) {
    Service* s = services_->find(name);
    if (!s) {
      LogLine(LogLevel::Info, "state_file_unused").kv("service", name).kv("why", "not in the configuration");
      continue;
    }
    LogLine(LogLevel::Info, "recovered")
        .kv("service", name)
        .kv("state", std::string(toString(snapshot.state)))
        .kv("phase", toString(snapshot.phase))
        .kv("task_id", snapshot.operation ? snapshot.operation->taskId : 0);
    // Transitions a previous process made but could not save (state_dir
    // full) are lost with it: the floor keeps epochs from going back anyway.
    snapshot.epoch = std::max(snapshot.epoch, services_->epochFloor());
    s->eventEpoch = snapshot.epoch;  // that transition was reported by the previous process
    apply(*s, s->machine.restore(now, withTimes(std::move(snapshot), fromWallMs)));
  }
}

// --- effects ----------------------------------------------------------------

void Daemon::apply(Service& s, Effects e, const std::string& why) {
  const std::string& name = s.config.name;
  if (!acting(s)) {  // a cluster node that does not own it (or cannot reach etcd) acts on nothing
    s.timer.stop();
    return;
  }
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
  launchWhenDurable(s, e, why);
  if (e.beginReadiness && s.health) {
    s.health->start([this, &s] { apply(s, s.machine.healthy(clockMillisNow())); });
  }
  if (e.confirmHealth && s.health) {
    s.health->probeOnce([this, &s](bool healthy, std::string detail) {
      if (healthy) {
        LogLine(LogLevel::Info, "recovered_warm").kv("service", s.config.name).kv("health", "answering");
      } else {
        apply(s, s.machine.unhealthy(clockMillisNow(), detail));
      }
    });
  }
  if (e.announceStopping) beginDrain(s);
  // A reload that waited for the operation under way applies once things are
  // still. A new failure_backoff moves retry_at: workers must know, or they
  // keep parking requests on the old one while controld ignores their wakes.
  const auto retryBefore = s.machine.retryAtMs();
  if (services_->applyPendingConfig(s) && s.machine.retryAtMs() != retryBefore) publish(s);
  reschedule(s);
  placementAfter(s);
}

void Daemon::launchWhenDurable(Service& s, const Effects& e, const std::string& why) {
  const bool launch = e.runStartDriver || e.runStopDriver || e.resumeDriver;
  if ((e.runStartDriver || e.runStopDriver) && s.machine.snapshot().operation) {
    // The operation's id goes into the record that must be on disk before
    // the driver runs: a restarted controld can then always find what a
    // driver sent under it (a Semaphore task whose creation was never
    // confirmed), however early the crash.
    OperationRecord record = *s.machine.snapshot().operation;
    if (record.operationId.empty()) {
      record.operationId = newOperationId(s.config.name, record.startedAtMs);
      s.machine.operationProgress(record);
    }
  }
  if (!e.persist && !launch) return;
  StateWriter::Durable whenDurable;
  if (launch) {
    whenDurable = [this, service = &s, epoch = s.machine.epoch(), e, why](const std::string& error) {
      if (shuttingDown_ || !services_->holds(service)) return;
      if (service->machine.epoch() != epoch || service->machine.phase() != Phase::Driver) return;
      if (!error.empty() && (e.runStartDriver || e.runStopDriver)) {
        // Without its record on disk a crash would forget the operation
        // (and a restarted controld could launch it a second time): refused.
        OperationOutcome refused;
        refused.reason = std::string("not ") + (e.runStartDriver ? "started" : "stopped") +
                         ": the record of the operation could not be saved in state_dir (" + error + ")";
        LogLine(LogLevel::Error, "operation_refused")
            .kv("service", service->config.name)
            .kv("operation", e.runStartDriver ? "start" : "stop")
            .kv("why", refused.reason);
        apply(*service, service->machine.operationDone(clockMillisNow(), refused));
        return;
      }
      if (e.runStartDriver) runOperation(*service, OperationKind::Start, why);
      if (e.runStopDriver) runOperation(*service, OperationKind::Stop, why);
      if (e.resumeDriver) resumeOperation(*service);
    };
  }
  if (cluster_) {
    // In a cluster the operation's record must be in etcd too (fenced by
    // ownership) before the driver runs: the next owner follows it.
    if (whenDurable) {
      whenDurable = [this, service = &s, launch = std::move(whenDurable)](const std::string& error) {
        if (shuttingDown_ || !services_->holds(service)) return;
        if (!error.empty()) return launch(error);  // not on disk: refused, nothing for etcd
        publishToCluster(*service, [launch] { launch(std::string()); });
      };
    } else {
      publishToCluster(s, {});
    }
  }
  writer_->save(s.config.name, withTimes(s.machine.snapshot(), toWallMs), std::move(whenDurable));
}

void Daemon::runOperation(Service& s, OperationKind kind, const std::string& why) {
  if (!s.driver) return;
  if (kind == OperationKind::Start && !startGoesAhead(s, why)) return;
  launchOperation(s, kind, why);
}

void Daemon::launchOperation(Service& s, OperationKind kind, const std::string& why) {
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
  const bool evictionStop = op && op->kind == OperationKind::Stop && s.machine.state() == ServiceState::Stopping &&
                            s.machine.snapshot().cause == Cause::Evicted;
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
  if (evictionStop && !outcome.ok) {
    // Before the service counts as warm again, so it is not evicted anew.
    placement_.stopFailed(s.config.name, outcome.reason);
    const std::string forService = s.evictedFor;
    apply(s, s.machine.operationDone(clockMillisNow(), outcome));
    evictionStopFailed(s, forService, outcome.reason);
    return;
  }
  apply(s, s.machine.operationDone(clockMillisNow(), outcome));
}

void Daemon::beginDrain(Service& s) {
  std::set<ActivityLedger::ConnectionId> workers;
  server_->forEach([&](ControlConnection& c) {
    if (c.subscribed && c.role() == "worker") workers.insert(c.id());
  });
  ledger_.beginDrain(s.config.name, std::move(workers));
  maybeFinishDrain(s);
}

void Daemon::maybeFinishDrain(Service& s) {
  if (s.machine.state() != ServiceState::Stopping || s.machine.phase() != Phase::Draining) return;
  if (!ledger_.drained(s.config.name)) return;
  if (cluster_ && !acting(s)) {  // this node's workers answered; the owner decides
    cluster_->reportAck(s.config.name, s.machine.epoch(), ledger_.inFlight(s.config.name));
    return;
  }
  if (cluster_ && !cluster_->remoteAcked(s.config.name, s.machine.epoch())) return;
  apply(s, s.machine.drainFinished(clockMillisNow(), inFlight(s.config.name)));
}

void Daemon::reschedule(Service& s) {
  const auto deadline = s.machine.nextDeadlineMs();
  if (!deadline || !acting(s)) {
    s.timer.stop();
    return;
  }
  const auto delay = std::max<std::int64_t>(0, *deadline - clockMillisNow());
  s.timer.start(Millis(delay), [this, &s] {
    if (acting(s)) apply(s, s.machine.tick(clockMillisNow()));
  });
}

void Daemon::publish(Service& s) {
  const auto& snap = s.machine.snapshot();
  // A push within the same epoch (the operation learnt its task id) is no
  // new transition: workers get the state again, event followers nothing.
  // One input may have made several (stopping -> cold -> starting): each is
  // logged and sent, oldest first; every transition adds one to the epoch.
  std::size_t fresh = 0;
  if (snap.epoch > s.eventEpoch) {
    fresh = static_cast<std::size_t>(std::min<std::uint64_t>(snap.epoch - s.eventEpoch, snap.history.size()));
  }
  s.eventEpoch = snap.epoch;
  std::string events;
  for (std::size_t i = snap.history.size() - fresh; i < snap.history.size(); ++i) {
    const Transition& t = snap.history[i];
    const std::uint64_t epoch = snap.epoch - (snap.history.size() - 1 - i);
    LogLine(t.to == ServiceState::Failed ? LogLevel::Warning : LogLevel::Info, "transition")
        .kv("service", s.config.name)
        .kv("from", std::string(toString(t.from)))
        .kv("to", std::string(toString(t.to)))
        .kv("cause", toString(t.cause))
        .kv("epoch", epoch)
        .kv("task_id", t.taskId)
        .kv("detail", t.detail);
    events += eventLine(s, t, epoch);
    telemetry_->transition(s.config.name, t, snap);
  }
  const std::string line = protocol::encode(statePush(s, etcdUnreachableSinceMs()));
  server_->forEach([&](ControlConnection& c) {
    if (c.subscribed) c.send(line);
    if (c.wantsEvents && !events.empty()) c.send(events);
  });
}

void Daemon::sendToSubscribers(const std::string& line) {
  server_->forEach([&](ControlConnection& c) {
    if (c.subscribed) c.send(line);
  });
}

// --- messages ---------------------------------------------------------------

void Daemon::onHello(ControlConnection&) {}

void Daemon::onMessage(ControlConnection& c, protocol::Message&& message) {
  if (std::holds_alternative<protocol::Subscribe>(message)) {
    c.subscribed = true;
    for (auto& [name, s] : *services_)
      c.send(protocol::encode(statePush(*s, etcdUnreachableSinceMs())));
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
  const auto now = clockMillisNow();
  const auto dropped = ledger_.dropConnection(c.id());
  for (const auto& name : dropped.inFlightChanged) {
    Service* s = services_->find(name);
    if (!s) continue;
    if (cluster_) cluster_->reportLocal(name, ledger_.inFlight(name), s->startedTotal);
    if (acting(*s)) apply(*s, s->machine.activity(now, inFlight(name), false));
  }
  for (const auto& name : dropped.acknowledged) {
    if (Service* s = services_->find(name)) maybeFinishDrain(*s);
  }
}

void Daemon::handleWake(ControlConnection&, const protocol::Wake& wake) {
  Service* s = services_->find(wake.service);
  if (!s) {
    // Names a client chooses: remembered (and logged once each) up to a
    // limit, then only counted, so they cannot grow memory or the log.
    constexpr std::size_t kMaxUnknownNames = 1000;
    auto known = unknownWakes_.find(wake.service);
    if (known != unknownWakes_.end()) {
      ++known->second;
    } else if (unknownWakes_.size() < kMaxUnknownNames) {
      unknownWakes_.emplace(wake.service, 1);
      LogLine(LogLevel::Warning, "unknown_service")
          .kv("service", protocol::truncateUtf8(validUtf8(wake.service), 200))
          .kv("why", "a wake names it");
    } else if (unknownWakesOther_++ == 0) {
      LogLine(LogLevel::Warning, "unknown_service")
          .kv("why", "wakes name more than " + std::to_string(kMaxUnknownNames) +
                         " unknown services; further names are only counted");
    }
    return;
  }
  if (!acting(*s)) {
    if (cluster_) cluster_->forwardWake(wake.service, validUtf8(wake.reason));
    return;
  }
  const std::string reason = validUtf8(wake.reason);  // a path from anyone: "GET /x/%ff"
  apply(*s, s->machine.wake(clockMillisNow(), Cause::Request, reason), reason);
}

void Daemon::handleActivity(ControlConnection& c, const protocol::Activity& activity) {
  const auto now = clockMillisNow();
  for (const auto& entry : activity.entries) {
    Service* s = services_->find(entry.service);
    if (!s) continue;
    ledger_.report(c.id(), entry.service, entry.inFlight);
    ledger_.reportHeld(c.id(), entry.service, entry.held);
    telemetry_->waitsEnded(entry.service, entry.waited);
    s->startedTotal += entry.started;
    if (cluster_) cluster_->reportLocal(entry.service, ledger_.inFlight(entry.service), s->startedTotal);
    if (!acting(*s)) continue;
    apply(*s, s->machine.activity(now, inFlight(entry.service), entry.started > 0));
  }
}

void Daemon::handleStoppingAck(ControlConnection& c, const protocol::StoppingAck& ack) {
  Service* s = services_->find(ack.service);
  if (!s) return;
  if (ack.epoch != s->machine.epoch()) return;  // an answer to an older announcement
  ledger_.report(c.id(), ack.service, ack.inFlight);
  ledger_.acknowledge(ack.service, c.id());
  maybeFinishDrain(*s);
}

void Daemon::handleCommand(ControlConnection& c, const protocol::Command& command) {
  auto reply = [&](bool ok, const std::string& error, const Service* s) {
    c.send(replyLine(command.id, ok, error, s));
  };
  if (command.verb == "status") {
    std::string error;
    std::string line = statusReplyLine(command.id, command.service, statusSources(), error);
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
  if (!isAdmin(c)) {
    LogLine(LogLevel::Warning, "command_refused")
        .kv("verb", command.verb)
        .kv("service", command.service)
        .kv("uid", static_cast<std::int64_t>(c.peerUid()))
        .kv("pid", c.peerPid());
    return reply(false,
                 "permission denied: controld " + command.verb + " is for root, controld's own user and the " +
                     "admin_users and admin_groups of its configuration; uid " + std::to_string(c.peerUid()) +
                     " is none of them",
                 nullptr);
  }
  Service* s = services_->find(command.service);
  if (!s) return reply(false, "unknown service \"" + command.service + "\"", nullptr);
  const auto now = clockMillisNow();
  if (command.verb == "stop" && (!s->driver || !s->driver->supports(OperationKind::Stop))) {
    return reply(false,
                 "service \"" + s->config.name + "\" has no stop_command or stop template: controld cannot stop it", s);
  }
  if (!acting(*s)) {  // in a cluster, on a node that does not own it: the owner acts, through etcd
    if (command.verb == "stop") return forwardStop(c, command, *s);
    cluster_->forwardWake(s->config.name, "controld start (cli)");
    return reply(true, "", s);
  }
  if (command.verb == "start") {
    apply(*s, s->machine.wake(now, Cause::Cli, "controld start"), "controld start (cli)");
    return reply(true, "", s);
  }
  apply(*s, s->machine.stopRequested(now), "controld stop (cli)");
  return reply(true, "", s);
}

StatusSources Daemon::statusSources() const {
  return StatusSources{config_,      *services_, *server_,    machineQueue_, placement_,
                       startedAtMs_, ledger_,    *telemetry_, cluster_.get()};
}

// GET /metrics: the status reply in Prometheus' text format, exactly what
// `controld metrics` prints.
std::string Daemon::metricsPage() const {
  std::string error;
  const auto status = statusReply(0, "", statusSources(), error);
  return status ? prometheusText(*status) : std::string();
}

// --- lifecycle --------------------------------------------------------------

void Daemon::resolveAdmins() {
  adminUids_.clear();
  adminGids_.clear();
  for (const auto& name : config_.adminUsers) {
    if (const passwd* pw = ::getpwnam(name.c_str())) {
      adminUids_.insert(pw->pw_uid);
    } else {
      LogLine(LogLevel::Warning, "config_warning").kv("problem", "admin_users: there is no user \"" + name + "\"");
    }
  }
  for (const auto& name : config_.adminGroups) {
    if (const group* gr = ::getgrnam(name.c_str())) {
      adminGids_.insert(gr->gr_gid);
    } else {
      LogLine(LogLevel::Warning, "config_warning").kv("problem", "admin_groups: there is no group \"" + name + "\"");
    }
  }
}

bool Daemon::isAdmin(const ControlConnection& c) const {
  const uid_t uid = c.peerUid();
  if (uid == static_cast<uid_t>(-1)) return false;
  if (uid == 0 || uid == ::geteuid() || adminUids_.count(uid)) return true;
  if (adminGids_.empty()) return false;
  if (adminGids_.count(c.peerGid())) return true;
  // Supplementary groups: the kernel only tells the primary one.
  const passwd* pw = ::getpwuid(uid);
  if (!pw) return false;
  int count = 64;
  std::vector<gid_t> groups(static_cast<std::size_t>(count));
  if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &count) < 0) {
    groups.resize(static_cast<std::size_t>(count));
    if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &count) < 0) return false;
  }
  groups.resize(static_cast<std::size_t>(count));
  return std::any_of(groups.begin(), groups.end(), [&](gid_t g) { return adminGids_.count(g) > 0; });
}

ControlServer::Limits Daemon::connectionLimits() {
  ControlServer::Limits limits;
  // Clients may take all descriptors but a reserve for state files, health
  // probes, Semaphore and commands; never more than the default.
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    const auto usable = files.rlim_cur > 128 ? files.rlim_cur - 64 : files.rlim_cur / 2;
    limits.maxConnections = std::clamp<std::size_t>(usable, 16, limits.maxConnections);
  }
  return limits;
}

int Daemon::run() {
  startedAtMs_ = clockMillisNow();
  // Epochs of this process start above any a previous one can have reached
  // (which would need more than 1,024 transitions a millisecond), saved or
  // not; still below 2^53 (kMaxEpoch) until the year 2248.
  services_->setEpochFloor(static_cast<std::uint64_t>(std::max<std::int64_t>(unixMillisNow(), 0)) * 1024);
  if (auto error = store_.prepare()) {
    LogLine(LogLevel::Error, "startup_failed").kv("why", *error);
    return 1;
  }
  warnIfStateDirNotWritable();
  for (const auto& [name, c] : config_.services)
    services_->add(c);
  configurePlacement();
  // Signals first: once the socket exists, clients (and systemd) may signal us.
  signals_.start();
  server_->setLimits(connectionLimits());
  resolveAdmins();
  std::string activationError;
  const auto inherited = systemdSocketFor(config_.socketPath, activationError);
  if (!activationError.empty()) {
    LogLine(LogLevel::Error, "startup_failed").kv("why", activationError);
    return 1;
  }
  if (auto error = inherited ? server_->adopt(*inherited)
                             : server_->listen(config_.socketPath, config_.socketMode, config_.socketGroup)) {
    LogLine(LogLevel::Error, "startup_failed").kv("why", *error);
    return 1;
  }

  if (auto error = telemetry_->listen(config_.metricsListen, [this] { return metricsPage(); })) {
    LogLine(LogLevel::Error, "startup_failed").kv("why", *error);
    return 1;
  }
  telemetry_->configureStatsd(config_.statsd);

  if (config_.cluster) {
    startCluster();  // etcd, not the state files, holds the truth of a cluster
  } else {
    restoring_ = true;
    restoreFromDisk();
    restoring_ = false;
  }
  for (const auto& machine : placement_.machineNames())
    pumpMachine(machine);
  LogLine(LogLevel::Info, "ready")
      .kv("version", versionString())
      .kv("socket", config_.socketPath)
      .kv("socket_from", inherited ? "systemd" : "bound")
      .kv("services", static_cast<std::uint64_t>(services_->size()))
      .kv("state_dir", config_.stateDir);
  notifySystemd("READY=1");
  watchdog_.start();
  uv_run(loop_, UV_RUN_DEFAULT);
  return exitCode_;
}

// Said once, now, rather than as a failed write at every state change.
void Daemon::warnIfStateDirNotWritable() const {
  std::string user = std::to_string(::geteuid());
  if (const passwd* pw = ::getpwuid(::geteuid())) user = pw->pw_name;
  struct stat st {};
  if (::geteuid() == 0 && ::stat(config_.stateDir.c_str(), &st) == 0 && st.st_uid != 0) {
    // root in the packaged daemon's directory: what it writes now is
    // root's, and the daemon of that user can no longer replace it.
    const passwd* owner = ::getpwuid(st.st_uid);
    const std::string name = owner ? owner->pw_name : std::to_string(st.st_uid);
    LogLine(LogLevel::Warning, "state_dir_of_another_user")
        .kv("path", config_.stateDir)
        .kv("owner", name)
        .kv("user", user)
        .kv("why", "files controld writes now belong to root, and a controld running as " + name +
                       " cannot replace them later; run it as " + name + " (systemctl start controld)");
  }
  const auto problems = store_.notWritable();
  for (const auto& p : problems) {
    LogLine(LogLevel::Warning, "state_dir_not_writable")
        .kv("path", p.path)
        .kv("owner", p.owner)
        .kv("mode", p.mode)
        .kv("user", user)
        .kv("why",
            "controld cannot write there: state changes stay in memory and are lost on a restart, start "
            "commands cannot log their output; give it to controld's user: chown -R " +
                user + ": " + config_.stateDir);
  }
}

void Daemon::shutdown() {
  shuttingDown_ = true;
  notifySystemd("STOPPING=1");
  LogLine(LogLevel::Info, "shutdown").kv("why", "signal");
  // Operations under way keep running; the next controld resumes them from
  // the state files, which are already up to date.
  for (auto& [name, s] : *services_) {
    if (s->driver) s->driver->detach();
    if (s->health) s->health->stop();
    s->timer.stop();
  }
  server_->closeAll();
  watchdog_.stop();
  signals_.stop();
  if (cluster_) {
    // The next owner takes over now, from the newest state, not after lease_ttl.
    const auto bound = std::min<Millis>(config_.cluster->requestTimeout, Millis(3000));
    cluster_->leave(bound, [this] { uv_stop(loop_); });
    return;
  }
  uv_stop(loop_);
}

void Daemon::reload() {
  notifySystemd("RELOADING=1");
  auto next = reloadConfig(config_, overrides_);
  if (!next) {
    notifySystemd("READY=1");
    return;
  }
  // Removed services: forgotten (whatever runs keeps running), workers told.
  const auto changes = services_->reload(*next, [this](Service& s) {
    if (s.driver) s.driver->detach();
    if (s.holdsMachine) machineQueue_.release(s.config.machine, s.config.name);
    ledger_.forgetDrain(s.config.name);
    telemetry_->forget(s.config.name);
    LogLine(LogLevel::Info, "service_removed").kv("service", s.config.name);
    sendToSubscribers(protocol::encode(protocol::Removed{s.config.name}));
  });
  if (config_.cluster.has_value() != next->cluster.has_value()) {
    LogLine(LogLevel::Warning, "reload_partial").kv("why", "adding or removing cluster: needs a restart");
  }
  next->cluster = config_.cluster;
  config_ = std::move(*next);
  telemetry_->configureStatsd(config_.statsd);
  resolveAdmins();
  if (cluster_) clusterServices();
  configurePlacement();
  for (const auto& change : changes) {
    if (change.added) {
      LogLine(LogLevel::Info, "service_added").kv("service", change.service->config.name);
      publish(*change.service);
    } else {
      // Where requests go (models, base_url) is pushed at once, even while an
      // operation is under way: workers route by it, nothing else needs it.
      if (change.routingChanged) publish(*change.service);
      apply(*change.service, Effects{});  // applies now unless an operation or readiness check is under way
    }
  }
  for (const auto& machine : placement_.machineNames())
    pumpMachine(machine);
  LogLine(LogLevel::Info, "reloaded").kv("services", static_cast<std::uint64_t>(services_->size()));
  notifySystemd("READY=1");
}

}  // namespace ondemand::controld
