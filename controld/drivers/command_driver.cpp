#include "controld/drivers/command_driver.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "controld/drivers/process_facts.hpp"
#include "controld/io/clock.hpp"
#include "controld/io/fd.hpp"

namespace ondemand::controld {

namespace {

// How much of a command's output a failure reason keeps.
constexpr std::size_t kTailBytes = 4096;
constexpr std::size_t kTailLines = 20;

// A process found at a recorded pid that started this much later than the
// record is another process that got the same pid. The slack covers the
// coarse clocks involved (boot time is known to the second).
constexpr std::int64_t kStartTimeSlackMs = 5000;

// How often a child is looked at when no pidfd can watch it.
constexpr Millis kExitPollInterval{100};

// The last lines of the output file open at `fd`: at most kTailLines
// non-blank lines out of its last kTailBytes, without a line cut in half at
// the front.
std::string outputTail(int fd) {
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size <= 0) return {};
  const auto size = static_cast<std::size_t>(st.st_size);
  const std::size_t want = std::min(size, kTailBytes);
  std::string raw(want, '\0');
  std::size_t got = 0;
  while (got < want) {
    const ssize_t n = ::pread(fd, raw.data() + got, want - got, static_cast<off_t>(size - want + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  raw.resize(got);

  std::string_view view(raw);
  if (size > want) {
    const auto nl = view.find('\n');
    if (nl != std::string_view::npos) view.remove_prefix(nl + 1);
  }
  std::deque<std::string> lines;
  while (!view.empty()) {
    const auto nl = view.find('\n');
    std::string line(view.substr(0, nl));
    view.remove_prefix(nl == std::string_view::npos ? view.size() : nl + 1);
    std::erase(line, '\r');
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t'))
      line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    lines.push_back(std::move(line));
    if (lines.size() > kTailLines) lines.pop_front();
  }
  std::string out;
  for (const auto& line : lines) {
    if (!out.empty()) out += '\n';
    out += line;
  }
  return out;
}

// libuv's wording for an errno ("no such file or directory"), which reasons
// have always used.
std::string errorText(int err) {
  return uv_strerror(uv_translate_sys_error(err));
}

// Opens the output file for a new run, emptied: it holds the last operation's
// output. O_APPEND because others may still write to it: a daemon an earlier
// command left behind writes at the current end too, instead of at its own
// offset past the new end (which would leave a hole of NUL bytes).
// On failure, `error` is the errno.
ScopedFd openOutputForWriting(const std::string& path, int& error) {
  ScopedFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0640));
  if (!fd) {
    error = errno;
    return fd;
  }
  if (fd.get() <= STDERR_FILENO) {
    // controld was started without some of fds 0-2: the spawn sets those up
    // and would overwrite this one first.
    ScopedFd higher(::fcntl(fd.get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1));
    if (!higher) {
      error = errno;
      return higher;
    }
    fd = std::move(higher);
  }
  error = 0;
  return fd;
}

// posix_spawn's settings, released on every path.
class SpawnSettings {
 public:
  SpawnSettings() {
    posix_spawnattr_init(&attr_);
    posix_spawn_file_actions_init(&actions_);
  }
  ~SpawnSettings() {
    posix_spawn_file_actions_destroy(&actions_);
    posix_spawnattr_destroy(&attr_);
  }
  SpawnSettings(const SpawnSettings&) = delete;
  SpawnSettings& operator=(const SpawnSettings&) = delete;

  posix_spawnattr_t* attr() { return &attr_; }
  posix_spawn_file_actions_t* actions() { return &actions_; }

 private:
  posix_spawnattr_t attr_;
  posix_spawn_file_actions_t actions_;
};

// Spawns argv with stdin on /dev/null, stdout and stderr on `output` (an fd
// above 2) and no other descriptor. Returns 0 and the pid, or an errno.
int spawnCommand(const std::vector<std::string>& argv, const std::vector<std::string>& environment, int output,
                 pid_t& pid) {
  SpawnSettings s;
  sigset_t all;
  sigset_t none;
  sigfillset(&all);
  sigemptyset(&none);
  int rc = posix_spawn_file_actions_addopen(s.actions(), STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(s.actions(), output, STDOUT_FILENO);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(s.actions(), output, STDERR_FILENO);
  // Nothing else: the spawn runs on another thread than the loop, so a
  // descriptor the loop has just opened may not be close-on-exec yet (curl
  // marks its sockets so only after creating them), and a command, or a
  // server it leaves running, must not hold controld's connections open.
  if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(s.actions(), STDERR_FILENO + 1);
  // Default actions and an empty mask for every signal: the command must not
  // inherit controld's SIG_IGN for SIGPIPE, nor the mask of the thread that
  // spawns it.
  if (rc == 0) rc = posix_spawnattr_setsigdefault(s.attr(), &all);
  if (rc == 0) rc = posix_spawnattr_setsigmask(s.attr(), &none);
  // setsid(): the command leads a process group of its own that a timeout can
  // kill as a whole; nothing is killed when it exits normally.
  if (rc == 0) {
    rc = posix_spawnattr_setflags(s.attr(), POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  }
  if (rc != 0) return rc;

  std::vector<char*> args;
  for (const auto& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::vector<char*> env;
  for (const auto& entry : environment)
    env.push_back(const_cast<char*>(entry.c_str()));
  env.push_back(nullptr);
  // posix_spawnp looks the program up in controld's PATH as execvp does (but
  // runs no /bin/sh for a script without a #! line).
  return posix_spawnp(&pid, args[0], s.actions(), s.attr(), args.data(), env.data());
}

OperationOutcome succeeded() {
  OperationOutcome outcome;
  outcome.ok = true;
  return outcome;
}

OperationOutcome failed(std::string reason) {
  OperationOutcome outcome;
  outcome.reason = std::move(reason);
  return outcome;
}

}  // namespace

// One command being run, or followed after a restart: its process (our
// child, or someone else's), the pidfd watching it, its output file, its
// deadline and kill timers. Owned by the driver. When the driver lets go of
// it before the command has exited (cancel, driver destroyed, detach), it
// becomes an orphan that owns itself: it finishes killing the command if that
// is why, reaps it if it is our child (nothing else would: a zombie would stay
// for as long as controld runs) and frees itself when the command is gone.
struct CommandDriver::Operation {
  // A spawn under way on libuv's thread pool: the vfork-style clone waits for
  // the exec, milliseconds each on slow machines, which the loop must not.
  struct Spawn {
    uv_work_t work{};
    std::vector<std::string> argv;
    std::vector<std::string> environment;  // "NAME=value"
    ScopedFd output;                       // the command's stdout and stderr; ours closed once it runs
    pid_t pid = 0;
    int error = 0;
    Operation* op = nullptr;  // nullptr when the operation went first
  };

  Operation(uv_loop_t* l, CommandDriver* owner, OperationKind k, Millis t, Millis g, DoneCallback d)
      : loop(l),
        driver(owner),
        kind(k),
        timeout(t),
        killGrace(g),
        done(std::move(d)),
        deadline(l),
        grace(l),
        deferred(l),
        exitPoll(l) {}
  ~Operation() {
    if (spawning) spawning->op = nullptr;
  }
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;

  void startSpawn(const std::vector<std::string>& argv, const std::vector<std::string>& environment, ScopedFd output) {
    auto* job = new Spawn;
    job->work.data = job;
    job->argv = argv;
    job->environment = environment;
    job->output = std::move(output);
    job->op = this;
    spawning = job;
    child = true;
    ownGroup = true;
    uv_queue_work(
        loop, &job->work,
        [](uv_work_t* w) {
          auto* j = static_cast<Spawn*>(w->data);
          j->error = spawnCommand(j->argv, j->environment, j->output.get(), j->pid);
          j->output.reset();
        },
        [](uv_work_t* w, int) {
          std::unique_ptr<Spawn> j(static_cast<Spawn*>(w->data));
          // Nobody follows a command whose operation is gone (controld is
          // ending): it runs on, like any command a shutdown leaves running.
          if (j->op) j->op->onSpawned(j->error, j->pid);
        });
  }

  void onSpawned(int error, pid_t spawned) {
    spawning = nullptr;
    if (error != 0) {
      if (driver) {
        driver->onSpawned(error);
      } else {
        release();
      }
      return;
    }
    pid = spawned;
    // Not reaped yet, so the pid is still the child's; a pidfd can be opened
    // on it even if it has exited already.
    watch(openPidfd(pid));
    if (killed || timedOut) {
      // Cancelled or timed out while it was being spawned: the SIGTERM sent
      // then reached nobody.
      signal(SIGTERM);
      grace.start(killGrace, [this] { signal(SIGKILL); });
    }
    if (driver) driver->onSpawned(0);  // last: may cancel or destroy the driver
  }

  // Orphans by loop, so that the end of a loop can free those still there.
  static std::map<uv_loop_t*, std::set<Operation*>>& orphans() {
    static std::map<uv_loop_t*, std::set<Operation*>> byLoop;
    return byLoop;
  }

  // Lets go of `op`: it becomes an orphan while its command runs. Returns it
  // then, nullptr when it is already gone.
  static Operation* orphan(std::unique_ptr<Operation> op) {
    op->driver = nullptr;
    op->done = nullptr;
    op->progress = nullptr;
    op->deadline.stop();
    op->deferred.stop();
    op->output.reset();
    if (!op->running()) return nullptr;
    Operation* self = op.release();
    orphans()[self->loop].insert(self);
    return self;
  }

  // cancel(): SIGTERM to the command's group, SIGKILL after the grace.
  static void cancel(std::unique_ptr<Operation> op) {
    Operation* self = orphan(std::move(op));
    if (!self) return;  // nothing left to kill
    self->killed = true;
    self->signal(SIGTERM);
    self->grace.start(self->killGrace, [self] { self->signal(SIGKILL); });
  }

  // An orphan whose command is gone.
  void release() {
    auto& mine = orphans()[loop];
    mine.erase(this);
    if (mine.empty()) orphans().erase(loop);
    delete this;
  }

  bool running() const { return spawning || (watching && !exited); }

  // The whole process group when the command leads one (it always does when
  // we spawned it), so helpers it started go too. Never after our child was
  // reaped: its pid, the group's id, may be another process's by then.
  void signal(int sig) const {
    if (pid <= 0 || reaped) return;
    if (ownGroup) {
      ::kill(-pid, sig);
    } else if (!exited) {
      ::kill(pid, sig);
    }
  }

  // Starts watching for the command's exit. A pidfd tells at once; without
  // one (kernels before 5.3, no fd left) our own child is looked at every
  // kExitPollInterval instead. False when it cannot be watched at all.
  bool watch(ScopedFd fd) {
    if (fd) {
      auto* poll = new uv_poll_t;
      if (uv_poll_init(loop, poll, fd.get()) == 0) {
        poll->data = this;
        pidWatch.adopt(poll);
        pidfd = std::move(fd);
        uv_poll_start(poll, UV_READABLE, &Operation::onPidfdReadable);
        return watching = true;
      }
      delete poll;
    }
    if (!child) return false;
    exitPoll.start(kExitPollInterval, [this] { onExitSignalled(); });
    return watching = true;
  }

  static void onPidfdReadable(uv_poll_t* handle, int, int) {
    if (auto* op = static_cast<Operation*>(handle->data)) op->onExitSignalled();
  }

  // The pidfd turned readable (the process has exited), or it is time to look
  // at a child watched without one.
  void onExitSignalled() {
    if (child && !childExited()) {
      if (!pidWatch) exitPoll.start(kExitPollInterval, [this] { onExitSignalled(); });
      return;
    }
    if (pidWatch) uv_poll_stop(pidWatch.get());  // a pidfd stays readable once the process has exited
    if (child) {
      // An unreaped child keeps its pid, so the group is still safe to
      // signal: helpers that outlived the SIGTERM of a timeout or a cancel go.
      if (timedOut || killed) signal(SIGKILL);
      reap();
    }
    exited = true;
    if (driver) {
      driver->onExit();
      return;
    }
    if (killed) signal(SIGKILL);  // a resumed command's group: whatever of it survived
    release();
  }

  // Whether our child has exited, without reaping it. A child that is not
  // there to wait for (only if SIGCHLD were ignored) has exited too.
  bool childExited() const {
    siginfo_t info{};
    int rc;
    do {
      rc = ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    } while (rc != 0 && errno == EINTR);
    return rc != 0 || info.si_pid == pid;
  }

  void reap() {
    int status = 0;
    pid_t rc;
    do {
      rc = ::waitpid(pid, &status, WNOHANG);
    } while (rc < 0 && errno == EINTR);
    reaped = true;
    if (rc != pid) {
      statusKnown = false;  // reaped by someone else: only SIGCHLD set to SIG_IGN does that
    } else if (WIFSIGNALED(status)) {
      termSignal = WTERMSIG(status);
    } else if (WIFEXITED(status)) {
      exitStatus = WEXITSTATUS(status);
    }
  }

  uv_loop_t* loop;
  CommandDriver* driver;  // nullptr for an orphan
  OperationKind kind;
  Millis timeout;
  Millis killGrace;
  DoneCallback done;
  ProgressCallback progress;  // run(): told the pid once the command runs
  OperationRecord record;     // run(): what `progress` is told
  Spawn* spawning = nullptr;
  pid_t pid = 0;
  bool child = false;  // run(): we spawned it, and reap it
  bool ownGroup = false;
  bool watching = false;
  bool exited = false;
  bool reaped = false;
  bool timedOut = false;
  bool killed = false;  // by a cancel
  bool statusKnown = true;
  int exitStatus = 0;
  int termSignal = 0;

  ScopedFd output;               // the output file, read-only: the failure reason's tail
  ScopedFd pidfd;                // the process's exit
  UvHandle<uv_poll_t> pidWatch;  // closed before pidfd (declared after it)

  Timer deadline;
  Timer grace;     // SIGTERM was sent; SIGKILL when this fires
  Timer deferred;  // outcomes known at once still reach `done` from the loop
  Timer exitPoll;  // a child without a pidfd
};

CommandDriver::CommandDriver(uv_loop_t* loop, std::vector<std::string> startCommand,
                             std::vector<std::string> stopCommand, Millis startTimeout, Millis stopTimeout,
                             std::string serviceName, std::string outputPath,
                             const std::map<std::string, std::string>& environment, Millis killGrace)
    : loop_(loop),
      startCommand_(std::move(startCommand)),
      stopCommand_(std::move(stopCommand)),
      startTimeout_(startTimeout),
      stopTimeout_(stopTimeout),
      serviceName_(std::move(serviceName)),
      outputPath_(std::move(outputPath)),
      environment_(commandEnvironment(serviceName_, environment)),
      killGrace_(killGrace) {}

std::vector<std::string> commandEnvironment(const std::string& service,
                                            const std::map<std::string, std::string>& configured) {
  // What a program needs to run as it would from a login shell, and no
  // more: controld's own secrets (SEMAPHORE_API_TOKEN, whatever its unit's
  // EnvironmentFile holds) stay with controld.
  static constexpr std::string_view kKept[] = {"PATH", "HOME", "USER",   "LOGNAME",  "SHELL",
                                               "LANG", "TZ",   "TMPDIR", "LANGUAGE", "TERM"};
  std::map<std::string, std::string> vars;
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string_view text(*entry);
    const auto eq = text.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view name = text.substr(0, eq);
    const bool kept =
        std::find(std::begin(kKept), std::end(kKept), name) != std::end(kKept) || name.substr(0, 3) == "LC_";
    if (kept) vars[std::string(name)] = std::string(text.substr(eq + 1));
  }
  if (!vars.count("PATH")) vars["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  vars["ONDEMAND_SERVICE"] = service;
  for (const auto& [name, value] : configured)
    vars[name] = value;
  std::vector<std::string> out;
  for (const auto& [name, value] : vars)
    out.push_back(name + "=" + value);
  return out;
}

CommandDriver::~CommandDriver() {
  lifetime_.end();
  cancel();
}

bool CommandDriver::supports(OperationKind kind) const {
  return !commandFor(kind).empty();
}

const std::vector<std::string>& CommandDriver::commandFor(OperationKind kind) const {
  return kind == OperationKind::Start ? startCommand_ : stopCommand_;
}

Millis CommandDriver::timeoutFor(OperationKind kind) const {
  return kind == OperationKind::Start ? startTimeout_ : stopTimeout_;
}

void CommandDriver::cancel() {
  if (op_) Operation::cancel(std::move(op_));
}

void CommandDriver::detach() {
  if (!op_) return;
  // The command runs in a session of its own and is sent no signal: it
  // survives us, and the next controld follows its pid from the persisted
  // OperationRecord. Our own child is still reaped when it exits, should
  // controld run on (a service removed by a reload); a command we only
  // followed is not ours to reap.
  if (op_->child) {
    Operation::orphan(std::move(op_));
  } else {
    op_.reset();
  }
}

void CommandDriver::forgetOrphans(uv_loop_t* loop) {
  auto& orphans = Operation::orphans();
  const auto it = orphans.find(loop);
  if (it == orphans.end()) return;
  const std::set<Operation*> mine = std::move(it->second);
  orphans.erase(it);
  for (Operation* op : mine)
    delete op;
}

void CommandDriver::run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) {
  cancel();
  const auto& argv = commandFor(request.kind);
  const std::string what = std::string(toString(request.kind)) + " command";
  op_ = std::make_unique<Operation>(loop_, this, request.kind, timeoutFor(request.kind), killGrace_, std::move(done));
  Operation* op = op_.get();
  if (argv.empty()) {
    finishLater(failed("no " + what + " is configured for service " + serviceName_));
    return;
  }

  op->record.kind = request.kind;
  op->record.driver = "command";
  op->record.startedAtMs = clockMillisNow();
  const auto life = lifetime_.token();
  if (progress) {
    progress(op->record);
    if (!life.alive() || op_.get() != op) return;  // cancelled or destroyed from the callback
  }
  op->progress = std::move(progress);

  int error = 0;
  ScopedFd outputForCommand = openOutputForWriting(outputPath_, error);
  if (!outputForCommand) {
    finishLater(
        failed(cannotRun(request.kind) + "cannot write its output to " + outputPath_ + ": " + errorText(error)));
    return;
  }
  // Opened by name again rather than O_RDWR, so that the command's stdout and
  // stderr are write-only as usual.
  op->output.reset(::open(outputPath_.c_str(), O_RDONLY | O_CLOEXEC));
  // The record reported above may reach the disk before the spawn has run:
  // after a crash in between, the next controld takes the command for one
  // that has ended (pid 0) and judges readiness as usual, so a health check
  // waits in vain until start_timeout. Never a second run, which is what the
  // record is for.
  op->startSpawn(argv, environment_, std::move(outputForCommand));

  uv_update_time(loop_);  // timers count from the loop's cached time, which may be stale here
  op->deadline.start(op->timeout, [this] { onTimeout(); });
}

void CommandDriver::onSpawned(int error) {
  Operation& op = *op_;
  if (error != 0) {
    finish(failed(cannotRun(op.kind) + errorText(error)));
    return;
  }
  op.record.pid = op.pid;
  if (op.progress) op.progress(op.record);  // last: may cancel or destroy the driver
}

std::string CommandDriver::cannotRun(OperationKind kind) const {
  return std::string(toString(kind)) + " command \"" + commandFor(kind)[0] + "\" could not be run: ";
}

void CommandDriver::resume(const OperationRecord& record, ProgressCallback, DoneCallback done) {
  cancel();
  op_ = std::make_unique<Operation>(loop_, this, record.kind, timeoutFor(record.kind), killGrace_, std::move(done));
  Operation* op = op_.get();
  const auto pid = static_cast<pid_t>(record.pid);
  if (pid <= 0) {
    finishLater(succeeded());  // it had not been spawned yet
    return;
  }
  if (const auto started = processStartUnixMs(pid);
      started && record.startedAtMs > 0 && *started > record.startedAtMs + kStartTimeSlackMs) {
    finishLater(succeeded());  // the pid was reused: the command is gone
    return;
  }
  op->pid = pid;
  op->ownGroup = ::getpgid(pid) == pid;
  // ESRCH: already gone. Without pidfds (kernels before 5.3) a command that
  // is not our child cannot be watched without polling; the health check
  // takes over.
  if (!op->watch(openPidfd(pid))) {
    finishLater(succeeded());
    return;
  }
  // The command still writes to the file the previous controld opened for it.
  op->output.reset(::open(outputPath_.c_str(), O_RDONLY | O_CLOEXEC));

  uv_update_time(loop_);
  const auto elapsed = Millis(record.startedAtMs > 0 ? clockMillisNow() - record.startedAtMs : 0);
  op->deadline.start(op->timeout - elapsed, [this] { onTimeout(); });
}

void CommandDriver::onTimeout() {
  Operation* op = op_.get();
  op->timedOut = true;
  op->signal(SIGTERM);
  op->grace.start(killGrace_, [op] { op->signal(SIGKILL); });
  // The outcome is reported when the command has exited, so nothing of it
  // outlives the report.
}

void CommandDriver::onExit() {
  Operation& op = *op_;
  op.deadline.stop();
  op.grace.stop();
  if (op.timedOut && !op.child) op.signal(SIGKILL);  // a resumed command's helpers (ours went before the reap)

  const std::string what = std::string(toString(op.kind)) + " command";
  OperationOutcome outcome;
  if (op.timedOut) {
    outcome.reason = what + " did not finish within " + formatDuration(op.timeout);
  } else if (!op.child || !op.statusKnown) {
    // Its exit status went to the controld that spawned it (or, for our own
    // child, to nobody: SIGCHLD ignored). The health check judges.
    outcome.ok = true;
  } else if (op.termSignal != 0) {
    outcome.reason =
        what + " was killed by signal " + std::to_string(op.termSignal) + " (" + signalName(op.termSignal) + ")";
  } else if (op.exitStatus != 0) {
    outcome.reason = what + " exited with status " + std::to_string(op.exitStatus);
  } else {
    outcome.ok = true;
  }
  if (!outcome.ok) {
    const std::string tail = outputTail(op.output.get());
    if (!tail.empty()) outcome.reason += ": " + tail;
  }
  finish(std::move(outcome));
}

void CommandDriver::finishLater(OperationOutcome outcome) {
  op_->deferred.start(Millis(0), [this, outcome = std::move(outcome)]() mutable { finish(std::move(outcome)); });
}

void CommandDriver::finish(OperationOutcome outcome) {
  // The driver is idle before `done` runs: it may start the next operation
  // or destroy the driver.
  auto op = std::move(op_);
  auto done = std::move(op->done);
  op.reset();
  if (done) done(std::move(outcome));
}

}  // namespace ondemand::controld
