#pragma once
// The life of one service: cold -> starting -> warm -> stopping -> cold, and
// starting -> failed. Pure logic: no I/O, no clock of its own. Every input
// carries the current time (unix ms), and the owner acts on the Effects each
// input returns (run a driver, begin health checks, persist, push the state).
// That makes every transition testable with a fake clock.

#include <algorithm>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "controld/core/driver.hpp"
#include "shared/duration.hpp"
#include "shared/service_state.hpp"

namespace ondemand::controld {

enum class Cause { Request, Idle, Cli, Recovery, Driver, Health, Timeout, Config, Evicted };
const char* toString(Cause cause);
std::optional<Cause> parseCause(std::string_view text);

// Where inside `starting` and `stopping` the service is.
enum class Phase {
  None,       // cold, warm, failed
  Driver,     // starting: the start driver runs; stopping: the stop driver runs
  Readiness,  // starting: the driver is done, waiting for health (or warmup)
  Draining,   // stopping: workers were told, waiting for their acknowledgements
};
const char* toString(Phase phase);
std::optional<Phase> parsePhase(std::string_view text);

struct MachineSettings {
  Millis startTimeout = Millis(600'000);
  Millis idleTimeout = Millis(900'000);  // 0 = never stop on idle
  Millis failureBackoff = Millis(30'000);
  Millis warmup = Millis(0);            // waited after readiness: the health check's first answer, or the driver's end
  Millis drainTimeout = Millis(2'000);  // longest wait for workers to acknowledge `stopping`
  bool hasStartDriver = false;
  bool hasStopDriver = false;
  bool hasHealthCheck = false;
  // The driver can tell from the operation's id alone whether an earlier run
  // of it sent anything (Semaphore: its task list). Then a record whose
  // driver never reported back is resumed after a restart, not launched
  // again: the driver may have sent its task before that report was on disk.
  bool driverFindsUnconfirmed = false;
};

struct Transition {
  std::int64_t atMs = 0;
  ServiceState from = ServiceState::Cold;
  ServiceState to = ServiceState::Cold;
  Cause cause = Cause::Request;
  std::string detail;  // why: "GET /x", the failure reason, "idle for 15m"
  std::int64_t taskId = 0;
  std::string taskStatus;
};

// The last start or stop operation and how it ended, for `controld status`.
struct OperationSummary {
  OperationKind kind = OperationKind::Start;
  std::int64_t startedAtMs = 0;
  std::int64_t endedAtMs = 0;  // 0 while running
  bool ok = false;
  std::string reason;
  std::int64_t taskId = 0;
  std::string taskStatus;
};

// Everything that must survive a restart of controld.
struct MachineSnapshot {
  ServiceState state = ServiceState::Cold;
  Phase phase = Phase::None;
  std::uint64_t epoch = 0;
  std::int64_t sinceMs = 0;
  std::int64_t startingSinceMs = 0;
  std::int64_t failedAtMs = 0;
  std::int64_t lastActivityMs = 0;
  Cause cause = Cause::Config;
  std::string reason;
  bool restartAfterStop = false;
  // Cold starts: how many reached warm and how many failed, and how long the
  // last good one took from the wake to warm (what a user waits).
  std::uint64_t startsOk = 0;
  std::uint64_t startsFailed = 0;
  std::int64_t lastStartMs = 0;
  std::optional<OperationRecord> operation;  // the driver operation under way
  std::optional<OperationSummary> lastOperation;
  std::deque<Transition> history;  // oldest first
};

// What the owner must do after an input. Several may be set at once; the
// owner does them in the order of the fields.
struct Effects {
  bool cancelDriver = false;      // abandon the running driver operation (no callback afterwards)
  bool stopReadiness = false;     // stop health checks
  bool runStartDriver = false;    // begin the start operation
  bool runStopDriver = false;     // begin the stop operation
  bool resumeDriver = false;      // follow the persisted operation a previous process began
  bool beginReadiness = false;    // begin health checks (the machine times warmup itself)
  bool confirmHealth = false;     // recovered as warm: probe health once, report healthy() or unhealthy()
  bool announceStopping = false;  // tell the workers `stopping` and collect their acknowledgements
  bool stateChanged = false;      // a transition happened: persist and push
  bool persist = false;           // something worth persisting changed (always set with stateChanged)

  Effects& operator|=(const Effects& o);
};

class ServiceMachine {
 public:
  ServiceMachine(std::string name, MachineSettings settings, std::size_t historySize = 20);

  // A request (or the CLI) wants the service.
  Effects wake(std::int64_t nowMs, Cause cause, const std::string& why);
  // `controld stop`: stop now, in-flight or not.
  Effects stopRequested(std::int64_t nowMs);
  // Shared machines: stop a warm service to make room for `forService`,
  // through the same two-phase stop as an idle stop (a request that slips in
  // calls it off). Cause `evicted`, detail "to make room for <forService>".
  Effects evict(std::int64_t nowMs, const std::string& forService);
  // A start still waiting for room (its driver has not begun) cannot have
  // it: the service fails with `reason`, holding nothing.
  Effects roomFailed(std::int64_t nowMs, const std::string& reason);
  // Whether a start is asked for but its driver has not begun (it may be
  // waiting for its machine or for its record to be on disk).
  bool startPending() const;

  // The driver reports what must be persisted (e.g. the Semaphore task id).
  Effects operationProgress(const OperationRecord& record);
  Effects operationDone(std::int64_t nowMs, const OperationOutcome& outcome);

  // Readiness.
  Effects healthy(std::int64_t nowMs);
  Effects unhealthy(std::int64_t nowMs, const std::string& detail);  // only after confirmHealth

  // Requests in flight in all workers together, and whether any started
  // since the last call.
  Effects activity(std::int64_t nowMs, std::uint64_t inFlight, bool requestsStarted);
  // All workers acknowledged `stopping` (or drainTimeout passed); inFlight is
  // the sum they reported.
  Effects drainFinished(std::int64_t nowMs, std::uint64_t inFlight);

  // Time passes: timeouts, idle, warmup.
  Effects tick(std::int64_t nowMs);
  // When tick() must be called next at the latest; nullopt = no timer needed.
  std::optional<std::int64_t> nextDeadlineMs() const;

  // After a restart: continue from what was persisted.
  Effects restore(std::int64_t nowMs, MachineSnapshot snapshot);
  // Epochs start from at least this (see Daemon: a floor taken from the
  // clock when controld starts, so that they never go back across restarts).
  void raiseEpoch(std::uint64_t floor) { s_.epoch = std::max(s_.epoch, floor); }
  // The same state under a new epoch, with no transition: workers take it
  // as news and send again the wakes of the requests they still hold (in a
  // cluster, for a node that has just come to own the service).
  Effects renewEpoch();
  // In a cluster, on a node that does not own the service: take the owner's
  // state as it is. No effects: the owner acts, this node only shows it.
  void mirror(MachineSnapshot snapshot) { s_ = std::move(snapshot); }
  // The config changed (SIGHUP): new timeouts and drivers apply from now on.
  void updateSettings(MachineSettings settings) { settings_ = settings; }

  const std::string& name() const { return name_; }
  ServiceState state() const { return s_.state; }
  Phase phase() const { return s_.phase; }
  std::uint64_t epoch() const { return s_.epoch; }
  std::uint64_t inFlight() const { return inFlight_; }
  const MachineSnapshot& snapshot() const { return s_; }
  const MachineSettings& settings() const { return settings_; }
  // Unix ms at which the service will be stopped for idleness, if it stays idle.
  std::optional<std::int64_t> idleStopAtMs() const;
  // Whether a wake now would be answered with the last failure (backoff).
  bool inFailureBackoff(std::int64_t nowMs) const;
  // Failed: from when a request may wake it again (failure_backoff after the failure).
  std::optional<std::int64_t> retryAtMs() const;

 private:
  // restore(): whether the recorded operation's driver may have sent or
  // spawned anything before the restart.
  bool mayHaveBegun() const;
  Effects transition(std::int64_t nowMs, ServiceState to, Phase phase, Cause cause, std::string detail);
  Effects beginStart(std::int64_t nowMs, Cause cause, const std::string& why);
  void beginOperation(OperationKind kind, std::int64_t nowMs);  // a new record in s_.operation
  Effects enterReadiness(std::int64_t nowMs);
  Effects fail(std::int64_t nowMs, Cause cause, std::string reason);
  void finishOperation(std::int64_t nowMs, const OperationOutcome& outcome);
  std::int64_t startDeadlineMs() const;
  bool warmingUp() const;  // starting, ready but for warmup (no health check, or it answered)

  std::string name_;
  MachineSettings settings_;
  std::size_t historySize_;
  MachineSnapshot s_;
  std::uint64_t inFlight_ = 0;   // not persisted: workers report it again on reconnect
  std::int64_t readyAtMs_ = 0;   // warmup deadline while warmingUp()
  bool healthAnswered_ = false;  // readiness: the health check answered, warmup runs
  std::int64_t drainDeadlineMs_ = 0;
};

}  // namespace ondemand::controld
