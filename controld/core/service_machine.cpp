#include "controld/core/service_machine.hpp"

#include <algorithm>
#include <utility>

#include "shared/enum_names.hpp"
#include "shared/saturating.hpp"
#include "shared/utf8.hpp"

namespace ondemand::controld {

namespace {
constexpr EnumName<Cause> kCauseNames[] = {
    {Cause::Request, "request"},   {Cause::Idle, "idle"},     {Cause::Cli, "cli"},
    {Cause::Recovery, "recovery"}, {Cause::Driver, "driver"}, {Cause::Health, "health"},
    {Cause::Timeout, "timeout"},   {Cause::Config, "config"}, {Cause::Evicted, "evicted"}};
constexpr EnumName<Phase> kPhaseNames[] = {
    {Phase::None, "none"}, {Phase::Driver, "driver"}, {Phase::Readiness, "readiness"}, {Phase::Draining, "draining"}};
}  // namespace

const char* toString(Cause cause) {
  return nameOf(kCauseNames, cause, "unknown");
}

std::optional<Cause> parseCause(std::string_view text) {
  return valueOf(kCauseNames, text);
}

const char* toString(Phase phase) {
  return nameOf(kPhaseNames, phase, "unknown");
}

std::optional<Phase> parsePhase(std::string_view text) {
  return valueOf(kPhaseNames, text);
}

Effects& Effects::operator|=(const Effects& o) {
  cancelDriver |= o.cancelDriver;
  stopReadiness |= o.stopReadiness;
  runStartDriver |= o.runStartDriver;
  runStopDriver |= o.runStopDriver;
  resumeDriver |= o.resumeDriver;
  beginReadiness |= o.beginReadiness;
  confirmHealth |= o.confirmHealth;
  announceStopping |= o.announceStopping;
  stateChanged |= o.stateChanged;
  persist |= o.persist;
  return *this;
}

ServiceMachine::ServiceMachine(std::string name, MachineSettings settings, std::size_t historySize)
    : name_(std::move(name)), settings_(settings), historySize_(std::max<std::size_t>(historySize, 1)) {}

Effects ServiceMachine::transition(std::int64_t nowMs, ServiceState to, Phase phase, Cause cause, std::string detail) {
  Transition t;
  t.atMs = nowMs;
  t.from = s_.state;
  t.to = to;
  t.cause = cause;
  // Details carry text from outside (a request's path, a command's output):
  // made valid UTF-8 here, before a state file or a status answer holds it.
  detail = validUtf8(detail);
  t.detail = detail;
  if (s_.lastOperation) {
    t.taskId = s_.lastOperation->taskId;
    t.taskStatus = s_.lastOperation->taskStatus;
  }
  if (s_.operation && s_.operation->taskId) t.taskId = s_.operation->taskId;
  s_.history.push_back(std::move(t));
  while (s_.history.size() > historySize_)
    s_.history.pop_front();

  if (s_.state == ServiceState::Starting && s_.startingSinceMs > 0) {
    if (to == ServiceState::Warm) {
      ++s_.startsOk;
      s_.lastStartMs = saturatingSub(nowMs, s_.startingSinceMs);
    } else if (to == ServiceState::Failed) {
      ++s_.startsFailed;
    }
  }
  if (to != ServiceState::Starting) s_.startingSinceMs = 0;
  s_.state = to;
  s_.phase = phase;
  s_.cause = cause;
  s_.sinceMs = nowMs;
  s_.reason = to == ServiceState::Failed ? std::move(detail) : std::string();
  ++s_.epoch;

  Effects e;
  e.stateChanged = true;
  e.persist = true;
  return e;
}

void ServiceMachine::beginOperation(OperationKind kind, std::int64_t nowMs) {
  OperationRecord record;
  record.kind = kind;
  record.startedAtMs = nowMs;
  s_.operation = record;
}

Effects ServiceMachine::beginStart(std::int64_t nowMs, Cause cause, const std::string& why) {
  const std::int64_t startingSince = s_.startingSinceMs ? s_.startingSinceMs : nowMs;
  s_.lastActivityMs = nowMs;
  if (settings_.hasStartDriver) {
    Effects e = transition(nowMs, ServiceState::Starting, Phase::Driver, cause, why);
    s_.startingSinceMs = startingSince;
    beginOperation(OperationKind::Start, nowMs);
    e.runStartDriver = true;
    return e;
  }
  Effects e = transition(nowMs, ServiceState::Starting, Phase::Readiness, cause, why);
  s_.startingSinceMs = startingSince;
  e |= enterReadiness(nowMs);
  return e;
}

Effects ServiceMachine::enterReadiness(std::int64_t nowMs) {
  s_.phase = Phase::Readiness;
  healthAnswered_ = false;
  Effects e;
  e.persist = true;
  if (settings_.hasHealthCheck) {
    e.beginReadiness = true;
    return e;
  }
  readyAtMs_ = saturatingAdd(nowMs, settings_.warmup.count());
  if (settings_.warmup.count() == 0) e |= transition(nowMs, ServiceState::Warm, Phase::None, Cause::Health, "ready");
  return e;
}

Effects ServiceMachine::fail(std::int64_t nowMs, Cause cause, std::string reason) {
  s_.failedAtMs = nowMs;
  s_.operation.reset();
  return transition(nowMs, ServiceState::Failed, Phase::None, cause, std::move(reason));
}

void ServiceMachine::finishOperation(std::int64_t nowMs, const OperationOutcome& outcome) {
  OperationSummary summary;
  if (s_.operation) {
    summary.kind = s_.operation->kind;
    summary.startedAtMs = s_.operation->startedAtMs;
    summary.taskId = s_.operation->taskId;
  }
  summary.endedAtMs = nowMs;
  summary.ok = outcome.ok;
  summary.reason = validUtf8(outcome.reason);
  if (outcome.taskId) summary.taskId = outcome.taskId;
  summary.taskStatus = outcome.taskStatus;
  s_.lastOperation = summary;
  s_.operation.reset();
}

Effects ServiceMachine::wake(std::int64_t nowMs, Cause cause, const std::string& why) {
  switch (s_.state) {
    case ServiceState::Cold:
      return beginStart(nowMs, cause, why);
    case ServiceState::Failed:
      // Within the backoff a request gets the last failure at once; only a
      // person (the CLI) may try again sooner. Nothing retries on its own.
      if (cause != Cause::Cli && inFailureBackoff(nowMs)) return {};
      return beginStart(nowMs, cause, why);
    case ServiceState::Starting:
    case ServiceState::Warm:
      return {};
    case ServiceState::Stopping:
      if (s_.phase == Phase::Draining) {
        // A request slipped in while the workers were being asked: the
        // service is still running, so the stop is simply called off.
        s_.lastActivityMs = nowMs;
        return transition(nowMs, ServiceState::Warm, Phase::None, cause, "stop called off: " + why);
      }
      if (!s_.restartAfterStop) {
        s_.restartAfterStop = true;
        s_.startingSinceMs = nowMs;
        Effects e;
        e.persist = true;
        return e;
      }
      return {};
  }
  return {};
}

Effects ServiceMachine::stopRequested(std::int64_t nowMs) {
  if (!settings_.hasStopDriver) return {};
  Effects e;
  switch (s_.state) {
    case ServiceState::Cold:
      return {};
    case ServiceState::Failed:
      s_.operation.reset();
      return transition(nowMs, ServiceState::Cold, Phase::None, Cause::Cli, "failure cleared by controld stop");
    case ServiceState::Stopping:
      if (s_.phase == Phase::Driver) {
        s_.restartAfterStop = false;
        e.persist = true;
        return e;
      }
      break;
    case ServiceState::Starting:
      if (s_.phase == Phase::Driver) e.cancelDriver = true;
      if (s_.phase == Phase::Readiness) e.stopReadiness = true;
      s_.operation.reset();
      break;
    case ServiceState::Warm:
      break;
  }
  s_.restartAfterStop = false;
  e |= transition(nowMs, ServiceState::Stopping, Phase::Driver, Cause::Cli, "controld stop");
  beginOperation(OperationKind::Stop, nowMs);
  e.runStopDriver = true;
  return e;
}

Effects ServiceMachine::evict(std::int64_t nowMs, const std::string& forService) {
  if (s_.state != ServiceState::Warm || !settings_.hasStopDriver) return {};
  Effects e =
      transition(nowMs, ServiceState::Stopping, Phase::Draining, Cause::Evicted, "to make room for " + forService);
  drainDeadlineMs_ = nowMs + settings_.drainTimeout.count();
  e.announceStopping = true;
  return e;
}

Effects ServiceMachine::roomFailed(std::int64_t nowMs, const std::string& reason) {
  if (!startPending()) return {};
  Effects e;
  e.cancelDriver = true;  // nothing runs yet; the owner forgets the queued start
  e |= fail(nowMs, Cause::Driver, reason);
  return e;
}

bool ServiceMachine::startPending() const {
  return s_.state == ServiceState::Starting && s_.phase == Phase::Driver &&
         (!s_.operation || s_.operation->driver.empty());
}

Effects ServiceMachine::operationProgress(const OperationRecord& record) {
  if (s_.phase != Phase::Driver || !s_.operation || s_.operation->kind != record.kind) return {};
  const bool newTask = record.taskId != s_.operation->taskId;
  s_.operation = record;
  Effects e;
  e.persist = true;
  e.stateChanged = newTask;  // waiting users see the task id
  return e;
}

Effects ServiceMachine::operationDone(std::int64_t nowMs, const OperationOutcome& outcome) {
  if (s_.phase != Phase::Driver || !s_.operation) return {};
  const OperationKind kind = s_.operation->kind;
  if (kind == OperationKind::Start && s_.state == ServiceState::Starting) {
    finishOperation(nowMs, outcome);
    if (!outcome.ok) return fail(nowMs, Cause::Driver, outcome.reason);
    return enterReadiness(nowMs);
  }
  if (kind == OperationKind::Stop && s_.state == ServiceState::Stopping) {
    finishOperation(nowMs, outcome);
    if (!outcome.ok) {
      // The service is treated as still running; the idle stop is tried
      // again after another idle_timeout.
      s_.lastActivityMs = nowMs;
      s_.restartAfterStop = false;
      return transition(nowMs, ServiceState::Warm, Phase::None, Cause::Driver, "stop failed: " + outcome.reason);
    }
    const bool restart = s_.restartAfterStop;
    const std::int64_t wokenAt = s_.startingSinceMs;  // when the request that wants it arrived
    s_.restartAfterStop = false;
    Effects e = transition(nowMs, ServiceState::Cold, Phase::None, s_.cause, "stopped");
    if (restart) {
      s_.startingSinceMs = wokenAt;
      e |= beginStart(nowMs, Cause::Request, "woken while stopping");
    }
    return e;
  }
  return {};
}

Effects ServiceMachine::healthy(std::int64_t nowMs) {
  if (s_.state == ServiceState::Starting && s_.phase == Phase::Readiness && !healthAnswered_) {
    if (settings_.warmup.count() > 0) {
      // Model servers answer health before their models are loaded: warmup
      // is waited for after the first healthy answer (tick() ends it).
      healthAnswered_ = true;
      readyAtMs_ = saturatingAdd(nowMs, settings_.warmup.count());
      return {};
    }
    return transition(nowMs, ServiceState::Warm, Phase::None, Cause::Health, "health check answered");
  }
  return {};
}

Effects ServiceMachine::unhealthy(std::int64_t nowMs, const std::string& detail) {
  if (s_.state != ServiceState::Warm) return {};
  return transition(nowMs, ServiceState::Cold, Phase::None, Cause::Recovery,
                    "not answering its health check after a restart of controld: " + detail);
}

Effects ServiceMachine::activity(std::int64_t nowMs, std::uint64_t inFlight, bool requestsStarted) {
  if (requestsStarted || inFlight > 0 || inFlight_ > 0) s_.lastActivityMs = nowMs;
  inFlight_ = inFlight;
  if (s_.state == ServiceState::Stopping && s_.phase == Phase::Draining && inFlight > 0) {
    return transition(nowMs, ServiceState::Warm, Phase::None, Cause::Request, "stop called off: requests in flight");
  }
  return {};
}

Effects ServiceMachine::drainFinished(std::int64_t nowMs, std::uint64_t inFlight) {
  if (s_.state != ServiceState::Stopping || s_.phase != Phase::Draining) return {};
  if (inFlight > 0) {
    inFlight_ = inFlight;
    s_.lastActivityMs = nowMs;
    return transition(nowMs, ServiceState::Warm, Phase::None, Cause::Request,
                      "stop called off: " + std::to_string(inFlight) + " requests in flight");
  }
  s_.phase = Phase::Driver;
  beginOperation(OperationKind::Stop, nowMs);
  Effects e;
  e.persist = true;
  e.runStopDriver = true;
  return e;
}

std::optional<std::int64_t> ServiceMachine::idleStopAtMs() const {
  if (s_.state != ServiceState::Warm || settings_.idleTimeout.count() == 0 || !settings_.hasStopDriver ||
      inFlight_ > 0) {
    return std::nullopt;
  }
  return saturatingAdd(std::max(s_.lastActivityMs, s_.sinceMs), settings_.idleTimeout.count());
}

bool ServiceMachine::inFailureBackoff(std::int64_t nowMs) const {
  const auto retryAt = retryAtMs();
  return retryAt && nowMs < *retryAt;
}

std::optional<std::int64_t> ServiceMachine::retryAtMs() const {
  if (s_.state != ServiceState::Failed) return std::nullopt;
  return saturatingAdd(s_.failedAtMs, settings_.failureBackoff.count());
}

bool ServiceMachine::warmingUp() const {
  return s_.state == ServiceState::Starting && s_.phase == Phase::Readiness &&
         (!settings_.hasHealthCheck || healthAnswered_);
}

std::int64_t ServiceMachine::startDeadlineMs() const {
  return saturatingAdd(s_.startingSinceMs, settings_.startTimeout.count());
}

std::optional<std::int64_t> ServiceMachine::nextDeadlineMs() const {
  switch (s_.state) {
    case ServiceState::Starting: {
      std::int64_t deadline = startDeadlineMs();
      if (warmingUp()) deadline = std::min(deadline, readyAtMs_);
      return deadline;
    }
    case ServiceState::Warm:
      return idleStopAtMs();
    case ServiceState::Stopping:
      if (s_.phase == Phase::Draining) return drainDeadlineMs_;
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

Effects ServiceMachine::tick(std::int64_t nowMs) {
  switch (s_.state) {
    case ServiceState::Starting: {
      if (nowMs >= startDeadlineMs()) {
        Effects e;
        e.cancelDriver = s_.phase == Phase::Driver;
        e.stopReadiness = s_.phase == Phase::Readiness;
        const bool waitingForHealth = s_.phase == Phase::Readiness && settings_.hasHealthCheck;
        e |= fail(nowMs, Cause::Timeout,
                  std::string(waitingForHealth ? "did not answer its health check" : "did not finish starting") +
                      " within start_timeout " + formatDuration(settings_.startTimeout));
        return e;
      }
      if (warmingUp() && nowMs >= readyAtMs_) {
        return transition(nowMs, ServiceState::Warm, Phase::None, Cause::Health,
                          std::string(healthAnswered_ ? "health check answered, then " : "") + "warmup " +
                              formatDuration(settings_.warmup) + " elapsed");
      }
      return {};
    }
    case ServiceState::Warm: {
      const auto stopAt = idleStopAtMs();
      if (!stopAt || nowMs < *stopAt) return {};
      Effects e = transition(nowMs, ServiceState::Stopping, Phase::Draining, Cause::Idle,
                             "idle for " + formatDuration(settings_.idleTimeout));
      drainDeadlineMs_ = saturatingAdd(nowMs, settings_.drainTimeout.count());
      e.announceStopping = true;
      return e;
    }
    case ServiceState::Stopping:
      // Workers that never acknowledged count with what they last reported.
      if (s_.phase == Phase::Draining && nowMs >= drainDeadlineMs_) return drainFinished(nowMs, inFlight_);
      return {};
    default:
      return {};
  }
}

bool ServiceMachine::mayHaveBegun() const {
  if (!s_.operation) return false;
  if (!s_.operation->driver.empty()) return true;
  // The record with the operation's id is on disk before the driver runs; the
  // driver's own first report may not be (it is written while the driver
  // goes on). A driver that can find what it sent under that id decides.
  return settings_.driverFindsUnconfirmed && !s_.operation->operationId.empty();
}

Effects ServiceMachine::renewEpoch() {
  ++s_.epoch;
  Effects e;
  e.stateChanged = true;  // pushed to the workers, though nothing transitioned
  e.persist = true;
  return e;
}

Effects ServiceMachine::restore(std::int64_t nowMs, MachineSnapshot snapshot) {
  s_ = std::move(snapshot);
  inFlight_ = 0;
  // The idle clock restarts: a restart must never cause an early stop.
  s_.lastActivityMs = nowMs;
  Effects e;
  e.persist = true;
  switch (s_.state) {
    case ServiceState::Warm:
      e.confirmHealth = settings_.hasHealthCheck;
      break;
    case ServiceState::Starting:
      if (s_.phase == Phase::Driver) {
        if (!settings_.hasStartDriver) {
          e |= enterReadiness(nowMs);
        } else if (!mayHaveBegun()) {
          // No driver had begun (the start may have been queued behind
          // another operation on its machine): launching now is not a repeat.
          beginOperation(OperationKind::Start, nowMs);
          e.runStartDriver = true;
        } else {
          // The driver had begun, even if it had not reported a pid or a task
          // id yet (a Semaphore task may exist that it never heard of): the
          // driver decides what resuming means, never a blind second launch.
          e.resumeDriver = true;
        }
      } else {
        e |= enterReadiness(nowMs);
      }
      break;
    case ServiceState::Stopping:
      if (s_.phase == Phase::Driver && s_.operation && settings_.hasStopDriver) {
        if (!mayHaveBegun()) {  // as for a start: nothing had begun
          s_.operation->startedAtMs = nowMs;
          e.runStopDriver = true;
        } else {
          e.resumeDriver = true;
        }
      } else {
        s_.operation.reset();
        e |= transition(nowMs, ServiceState::Warm, Phase::None, Cause::Recovery,
                        "stop interrupted by a restart of controld");
      }
      break;
    case ServiceState::Cold:
    case ServiceState::Failed:
      s_.phase = Phase::None;
      s_.operation.reset();
      break;
  }
  return e;
}

}  // namespace ondemand::controld
