#pragma once
// The driver for services started and stopped by local commands
// (start_command / stop_command in controld.yaml).
//
// A command runs without a shell, argv exactly as configured, stdin and stdout
// on /dev/null, stderr captured (its last lines become the failure reason). It
// runs in a session and process group of its own, so a timeout or a cancel
// kills whatever it started too (SIGTERM to the group, SIGKILL after a grace).
// A command that exits normally is left alone, and so is anything it left
// behind on purpose (a daemon it started, like `systemctl start` does).
//
// A daemon left behind should not keep the command's stderr open: controld
// keeps reading (and discarding) it while the driver exists, but once
// controld stops the daemon's writes to it fail (EPIPE/SIGPIPE). Redirect its
// output (`nohup server >server.log 2>&1 &`) or use a service manager.
//
// Outcomes, as users read them ("start" or "stop" as the case may be):
//   exit 0                 -> ok
//   exit N                 -> "start command exited with status N: <last stderr lines>"
//   killed by a signal     -> "start command was killed by signal 9 (SIGKILL): <last stderr lines>"
//   cannot be run          -> "start command \"/usr/bin/foo\" could not be run: no such file or directory"
//   ran past its timeout   -> "start command did not finish within 10m: <last stderr lines>"

#include <uv.h>

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "controld/driver.hpp"
#include "controld/uv.hpp"
#include "shared/duration.hpp"

namespace ondemand::controld {

class CommandDriver : public Driver {
 public:
  CommandDriver(uv_loop_t* loop, std::vector<std::string> startCommand, std::vector<std::string> stopCommand,
                Millis startTimeout, Millis stopTimeout, std::string serviceName,
                Millis killGrace = std::chrono::seconds(5));
  ~CommandDriver() override;  // kills a command still running, like cancel()
  CommandDriver(const CommandDriver&) = delete;
  CommandDriver& operator=(const CommandDriver&) = delete;

  bool supports(OperationKind kind) const override;

  // Spawns the command. `progress` is called twice, synchronously: before the
  // spawn (pid 0) and right after it with the child's pid. `done` always runs
  // later, on the loop. Running an operation while another one is in progress
  // cancels the other one (no callback for it).
  void run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) override;

  // Follows a command a previous controld process spawned. That process is
  // gone, so the command is not our child and its exit status cannot be known:
  // when it exits (watched with a pidfd, no polling), or if it is already gone,
  // the outcome is ok, meaning only "the command phase is over"; readiness is
  // then judged by the health check. A pid now used by a process that started
  // after the record was written is not the command and counts as gone. The
  // timeout still applies, counted from the record's startedAtMs.
  void resume(const OperationRecord& record, ProgressCallback progress, DoneCallback done) override;

  void cancel() override;
  // controld is shutting down: the command keeps running (no signal), and no
  // callback comes. Its stderr is no longer read, so a command that keeps
  // writing to it after controld has gone gets EPIPE.
  void detach() override;

 private:
  struct Operation;

  const std::vector<std::string>& commandFor(OperationKind kind) const;
  Millis timeoutFor(OperationKind kind) const;
  void finishLater(OperationOutcome outcome);
  void finish(OperationOutcome outcome);
  void onTimeout();
  void onChildExit(std::int64_t exitStatus, int termSignal);
  void onResumedExit();
  void readStderr(uv_pipe_t* pipe, ssize_t nread, const uv_buf_t* buf);
  void drainStderrNow();
  void keepDraining(UvHandle<uv_pipe_t> pipe);

  uv_loop_t* loop_;
  std::vector<std::string> startCommand_;
  std::vector<std::string> stopCommand_;
  Millis startTimeout_;
  Millis stopTimeout_;
  std::string serviceName_;
  Millis killGrace_;

  std::unique_ptr<Operation> op_;
  // stderr pipes of commands that exited while something they left behind
  // still holds the write end: read and discarded until EOF.
  std::map<uv_pipe_t*, UvHandle<uv_pipe_t>> drains_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ondemand::controld
