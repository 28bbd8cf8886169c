#pragma once
// How a service is started and stopped. One interface, one implementation per
// kind of automation: CommandDriver (start_command/stop_command) and
// SemaphoreDriver (task templates). A service without either has no driver:
// it is managed elsewhere and controld only watches its health.
//
// A driver runs at most one operation at a time, on controld's event loop, and
// never blocks it. Callbacks are never called after cancel() or after the
// driver is destroyed.

#include <cstdint>
#include <functional>
#include <string>

namespace ondemand::controld {

enum class OperationKind { Start, Stop };

inline const char* toString(OperationKind k) {
  return k == OperationKind::Start ? "start" : "stop";
}

// What a driver needs persisted so a restarted controld can follow the same
// operation instead of starting a second one. Written to state_dir before the
// driver does anything that cannot be undone, and again when it learns more
// (e.g. the Semaphore task id).
struct OperationRecord {
  OperationKind kind = OperationKind::Start;
  std::string driver;            // "command" | "semaphore"
  std::int64_t taskId = 0;       // Semaphore task id, 0 until the task exists
  std::int64_t pid = 0;          // command driver: the child's pid
  std::int64_t startedAtMs = 0;  // unix ms
  // Semaphore: unique to this operation and sent with its task, so that a
  // restarted controld can find a task whose id it never learnt. Empty in
  // records written by an older controld.
  std::string operationId;
};

struct OperationOutcome {
  bool ok = false;
  std::string reason;       // on failure: what a user reads ("start command exited with status 1: <output tail>")
  std::int64_t taskId = 0;  // Semaphore: the task that ran
  std::string taskStatus;   // Semaphore: its final status ("success", "error", "stopped")
};

struct OperationRequest {
  OperationKind kind = OperationKind::Start;
  std::string why;  // "GET /api/generate", "controld start (cli)", "idle for 15m" — logs and task messages
  // The operation's id, already on disk in its record when run() is called
  // (the daemon assigns it); a driver makes one up when it is empty.
  std::string operationId;
};

// "<service>-<unix ms>-<8 hex digits>". The random part tells apart two
// operations begun in the same millisecond, and the services of two controlds
// that share a Semaphore project and a service name.
std::string newOperationId(const std::string& service, std::int64_t nowMs);

class Driver {
 public:
  using ProgressCallback = std::function<void(const OperationRecord&)>;
  using DoneCallback = std::function<void(OperationOutcome)>;

  virtual ~Driver() = default;

  // Whether the driver can perform this kind of operation at all (a service
  // with only a start_command cannot be stopped by controld).
  virtual bool supports(OperationKind kind) const = 0;

  // Begins an operation. `progress` is called (synchronously at least once,
  // before any side effect) with what must be persisted; `done` exactly once
  // at the end unless cancelled.
  virtual void run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) = 0;

  // Follows an operation a previous controld process began (after a crash or
  // restart). Must not repeat its side effect.
  virtual void resume(const OperationRecord& record, ProgressCallback progress, DoneCallback done) = 0;

  // Abandons the current operation (e.g. start_timeout passed): the driver
  // stops what it can (kills the command, stops the Semaphore task) and calls
  // no callback afterwards.
  virtual void cancel() = 0;

  // controld is shutting down cleanly: leave the operation running (the next
  // controld process resumes it from its OperationRecord) and call no
  // callback afterwards. Drivers with nothing of their own to leave running
  // may treat it as cancel().
  virtual void detach() { cancel(); }
};

}  // namespace ondemand::controld
