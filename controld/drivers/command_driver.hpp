#pragma once
// The driver for services started and stopped by local commands
// (start_command / stop_command in controld.yaml).
//
// A command runs without a shell, argv exactly as configured (the program is
// looked up in PATH), stdin on /dev/null, stdout and stderr both appended to
// the service's output file, `<state_dir>/<service>.command.log`, and no other
// descriptor of controld's (no connection of its stays open in a server the
// command leaves running). Each run empties the file first, so it holds the
// last operation's output; the last lines of it become the failure reason. A
// file rather than a pipe to controld: a command that outlives controld (left
// running by a restart, or a daemon it started) still has somewhere to write,
// where a pipe nobody reads any more would kill it with SIGPIPE.
//
// It runs in a session and process group of its own, so a timeout or a
// cancel kills whatever it started too (SIGTERM to the group, SIGKILL after a
// grace). It starts with every signal at its default action and none blocked,
// whatever controld's own settings (controld ignores SIGPIPE). A command that
// exits normally is left alone, and so is anything it left behind on purpose
// (a daemon it started, like `systemctl start` does).
//
// Spawning uses posix_spawn (no copy of controld's page tables, unlike a
// fork), on libuv's thread pool: it waits for the exec, which takes
// milliseconds on some machines, and a burst of hundreds of starts must not
// hold the event loop for seconds. Its exit is watched with a pidfd; it is
// reaped once the pidfd says it has exited, so nothing ever waits.
//
// Outcomes, as users read them ("start" or "stop" as the case may be):
//   exit 0                 -> ok
//   exit N                 -> "start command exited with status N: <last output lines>"
//   killed by a signal     -> "start command was killed by signal 9 (SIGKILL): <last output lines>"
//   cannot be run          -> "start command \"/usr/bin/foo\" could not be run: no such file or directory"
//   no output file         -> "start command \"/usr/bin/foo\" could not be run: cannot write its output to
//                              /var/lib/controld/notes.command.log: permission denied"
//   ran past its timeout   -> "start command did not finish within 10m: <last output lines>"

#include <uv.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "controld/core/driver.hpp"
#include "controld/io/lifetime.hpp"
#include "controld/io/uv.hpp"
#include "shared/duration.hpp"

namespace ondemand::controld {

// The environment of a service's start and stop commands: PATH, HOME, USER,
// LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR and TERM of controld's,
// ONDEMAND_SERVICE (the service's name), then what the configuration names
// (a service's `environment:`), and nothing else.
std::vector<std::string> commandEnvironment(const std::string& service,
                                            const std::map<std::string, std::string>& configured);

class CommandDriver : public Driver {
 public:
  // `outputPath` is the file commands write to (StateStore::commandOutputPath).
  // `environment` is added to what commands get of controld's own
  // (commandEnvironment).
  CommandDriver(uv_loop_t* loop, std::vector<std::string> startCommand, std::vector<std::string> stopCommand,
                Millis startTimeout, Millis stopTimeout, std::string serviceName, std::string outputPath,
                const std::map<std::string, std::string>& environment = {}, Millis killGrace = std::chrono::seconds(5));
  ~CommandDriver() override;  // kills a command still running, like cancel()
  CommandDriver(const CommandDriver&) = delete;
  CommandDriver& operator=(const CommandDriver&) = delete;

  bool supports(OperationKind kind) const override;

  // Spawns the command. `progress` is called twice: synchronously before the
  // spawn (pid 0), and from the loop once the command runs, with its pid.
  // `done` always runs later, on the loop. Running an operation while another
  // one is in progress cancels the other one (no callback for it).
  void run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) override;

  // Follows a command a previous controld process spawned. That process is
  // gone, so the command is not our child and its exit status cannot be known:
  // when it exits (watched with a pidfd, no polling), or if it is already gone,
  // the outcome is ok, meaning only "the command phase is over"; readiness is
  // then judged by the health check. A pid now used by a process that started
  // after the record was written is not the command and counts as gone. The
  // timeout still applies, counted from the record's startedAtMs, and its
  // reason ends with the last lines of the output file as usual.
  void resume(const OperationRecord& record, ProgressCallback progress, DoneCallback done) override;

  // The command is killed (its whole group). It is reaped when it has exited,
  // even if the driver is gone by then.
  void cancel() override;
  // controld is shutting down, or the service was removed: the command keeps
  // running (no signal, its output still goes to the file), and no callback
  // comes.
  void detach() override;

  // Frees what still follows commands of drivers that are gone (a kill under
  // way, a child to reap), for a loop about to be closed: those commands are
  // left to run and to be reaped by whoever inherits them.
  static void forgetOrphans(uv_loop_t* loop);

 private:
  struct Operation;

  const std::vector<std::string>& commandFor(OperationKind kind) const;
  Millis timeoutFor(OperationKind kind) const;
  void finishLater(OperationOutcome outcome);
  void finish(OperationOutcome outcome);
  void onSpawned(int error);
  void onTimeout();
  void onExit();
  std::string cannotRun(OperationKind kind) const;

  uv_loop_t* loop_;
  std::vector<std::string> startCommand_;
  std::vector<std::string> stopCommand_;
  Millis startTimeout_;
  Millis stopTimeout_;
  std::string serviceName_;
  std::string outputPath_;
  std::vector<std::string> environment_;  // "NAME=value", what every command gets
  Millis killGrace_;

  std::unique_ptr<Operation> op_;
  Lifetime lifetime_;
};

}  // namespace ondemand::controld
