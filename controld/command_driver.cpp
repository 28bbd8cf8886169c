#include "controld/command_driver.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>  // sigabbrev_np
#include <deque>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "controld/fd.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace ondemand::controld {

namespace {

// How much of a command's output a failure reason keeps.
constexpr std::size_t kTailBytes = 4096;
constexpr std::size_t kTailLines = 20;

// A process found at a recorded pid that started this much later than the
// record is another process that got the same pid. The slack covers the
// coarse clocks involved (boot time is known to the second).
constexpr std::int64_t kStartTimeSlackMs = 5000;

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

std::string signalName(int sig) {
  if (const char* abbrev = sigabbrev_np(sig)) return std::string("SIG") + abbrev;
  return "unknown signal";
}

// When the process now at `pid` started, in unix ms; nullopt when /proc cannot tell.
std::optional<std::int64_t> processStartUnixMs(pid_t pid) {
  std::ifstream statFile("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(statFile, stat)) return std::nullopt;
  // The command name (field 2) may contain spaces and parentheses: fields are
  // counted after its closing parenthesis, which starts with field 3.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  for (int index = 3; index <= 22 && fields >> field; ++index) {
    if (index != 22) continue;
    std::ifstream procStat("/proc/stat");
    std::string key;
    std::int64_t bootTime = -1;
    while (procStat >> key) {
      if (key == "btime") {
        procStat >> bootTime;
        break;
      }
    }
    const long ticks = sysconf(_SC_CLK_TCK);
    if (bootTime < 0 || ticks <= 0) return std::nullopt;
    const auto startTicks = std::stoll(field);
    return bootTime * 1000 + startTicks * 1000 / ticks;
  }
  return std::nullopt;
}

}  // namespace

// One command being run, or followed after a restart: its process (our child)
// or a pidfd (someone else's), its output file, its deadline and kill timers.
// Owned by the driver; once abandoned (cancel, driver destroyed) it finishes
// killing the command on its own and frees itself when the command is gone.
struct CommandDriver::Operation {
  Operation(uv_loop_t* loop, CommandDriver* owner, OperationKind k, Millis t, DoneCallback d)
      : driver(owner), kind(k), timeout(t), done(std::move(d)), deadline(loop), grace(loop), deferred(loop) {}

  static void abandon(std::unique_ptr<Operation> op, Millis killGrace) {
    op->driver = nullptr;
    op->done = nullptr;
    op->deadline.stop();
    op->deferred.stop();
    op->output.reset();
    if (!op->running()) return;  // nothing left to kill
    op->signal(SIGTERM);
    Operation* self = op.release();
    self->grace.start(killGrace, [self] { self->signal(SIGKILL); });
  }

  bool running() const { return !exited && (process || pidWatch); }

  // The whole process group when the command leads one (it always does when
  // we spawned it), so helpers it started go too.
  void signal(int sig) const {
    if (pid <= 0) return;
    if (ownGroup) {
      ::kill(-pid, sig);
    } else if (!exited) {
      ::kill(pid, sig);
    }
  }

  // Abandoned and now gone: take whatever of its group survived with it.
  void reaped() {
    signal(SIGKILL);
    delete this;
  }

  static void onProcessExit(uv_process_t* handle, std::int64_t exitStatus, int termSignal) {
    auto* op = static_cast<Operation*>(handle->data);
    if (!op) return;
    op->exited = true;
    if (op->driver) {
      op->driver->onChildExit(exitStatus, termSignal);
    } else {
      op->reaped();
    }
  }

  static void onPidfdReadable(uv_poll_t* handle, int, int) {
    auto* op = static_cast<Operation*>(handle->data);
    if (!op) return;
    uv_poll_stop(handle);  // a pidfd stays readable once the process has exited
    op->exited = true;
    if (op->driver) {
      op->driver->onResumedExit();
    } else {
      op->reaped();
    }
  }

  CommandDriver* driver;  // nullptr once abandoned
  OperationKind kind;
  Millis timeout;
  DoneCallback done;
  pid_t pid = 0;
  bool ownGroup = false;
  bool exited = false;
  bool timedOut = false;

  UvHandle<uv_process_t> process;  // run(): our child
  ScopedFd output;                 // the output file, read-only: the failure reason's tail
  ScopedFd pidfd;                  // resume(): a process we did not spawn
  UvHandle<uv_poll_t> pidWatch;    // closed before pidfd (declared after it)

  Timer deadline;
  Timer grace;     // SIGTERM was sent; SIGKILL when this fires
  Timer deferred;  // outcomes known at once still reach `done` from the loop
};

CommandDriver::CommandDriver(uv_loop_t* loop, std::vector<std::string> startCommand,
                             std::vector<std::string> stopCommand, Millis startTimeout, Millis stopTimeout,
                             std::string serviceName, std::string outputPath, Millis killGrace)
    : loop_(loop),
      startCommand_(std::move(startCommand)),
      stopCommand_(std::move(stopCommand)),
      startTimeout_(startTimeout),
      stopTimeout_(stopTimeout),
      serviceName_(std::move(serviceName)),
      outputPath_(std::move(outputPath)),
      killGrace_(killGrace) {}

CommandDriver::~CommandDriver() {
  *alive_ = false;
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
  if (op_) Operation::abandon(std::move(op_), killGrace_);
}

void CommandDriver::detach() {
  if (!op_) return;
  // The command runs in a session of its own, so it survives us; closing our
  // handles neither signals nor waits for it. The next controld follows its
  // pid from the persisted OperationRecord.
  op_->driver = nullptr;
  op_->done = nullptr;
  op_.reset();
}

void CommandDriver::run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) {
  cancel();
  const auto& argv = commandFor(request.kind);
  const std::string what = std::string(toString(request.kind)) + " command";
  op_ = std::make_unique<Operation>(loop_, this, request.kind, timeoutFor(request.kind), std::move(done));
  Operation* op = op_.get();
  if (argv.empty()) {
    finishLater(failed("no " + what + " is configured for service " + serviceName_));
    return;
  }

  OperationRecord record;
  record.kind = request.kind;
  record.driver = "command";
  record.startedAtMs = unixMillisNow();
  const auto alive = alive_;
  if (progress) {
    progress(record);
    if (!*alive || op_.get() != op) return;  // cancelled or destroyed from the callback
  }

  const std::string cannotRun = what + " \"" + argv[0] + "\" could not be run: ";
  int error = 0;
  const ScopedFd outputForCommand = openOutputForWriting(outputPath_, error);
  if (!outputForCommand) {
    finishLater(failed(cannotRun + "cannot write its output to " + outputPath_ + ": " + errorText(error)));
    return;
  }
  // Opened by name again rather than O_RDWR, so that the command's stdout and
  // stderr are write-only as usual.
  op->output.reset(::open(outputPath_.c_str(), O_RDONLY | O_CLOEXEC));

  std::vector<char*> args;
  for (const auto& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);

  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;  // libuv points ignored stdio at /dev/null
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = outputForCommand.get();
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = outputForCommand.get();

  uv_process_options_t options{};
  options.exit_cb = &Operation::onProcessExit;
  options.file = args[0];
  options.args = args.data();
  options.stdio_count = 3;
  options.stdio = stdio;
  // setsid(): the command leads a process group of its own that a timeout can
  // kill as a whole; nothing is killed when it exits normally.
  options.flags = UV_PROCESS_DETACHED;

  auto* process = new uv_process_t;
  const int rc = uv_spawn(loop_, process, &options);
  op->process.adopt(process);  // closed even when the spawn failed, as libuv requires
  if (rc != 0) {
    op->process.reset();
    finishLater(failed(cannotRun + uv_strerror(rc)));
    return;
  }
  process->data = op;
  op->pid = process->pid;
  op->ownGroup = true;

  uv_update_time(loop_);  // timers count from the loop's cached time, which may be stale here
  op->deadline.start(op->timeout, [this] { onTimeout(); });

  record.pid = op->pid;
  if (progress) progress(record);  // last: may cancel or destroy the driver
}

void CommandDriver::resume(const OperationRecord& record, ProgressCallback, DoneCallback done) {
  cancel();
  op_ = std::make_unique<Operation>(loop_, this, record.kind, timeoutFor(record.kind), std::move(done));
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
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    // ESRCH: already gone. Without pidfds (kernels before 5.3) the command
    // cannot be watched without polling; the health check takes over.
    finishLater(succeeded());
    return;
  }
  op->pidfd.reset(fd);
  op->pid = pid;
  // The command still writes to the file the previous controld opened for it.
  op->output.reset(::open(outputPath_.c_str(), O_RDONLY | O_CLOEXEC));
  op->ownGroup = ::getpgid(pid) == pid;

  auto* poll = new uv_poll_t;
  if (uv_poll_init(loop_, poll, fd) != 0) {
    delete poll;
    finishLater(succeeded());
    return;
  }
  poll->data = op;
  op->pidWatch.adopt(poll);
  uv_poll_start(poll, UV_READABLE, &Operation::onPidfdReadable);

  uv_update_time(loop_);
  const auto elapsed = Millis(record.startedAtMs > 0 ? unixMillisNow() - record.startedAtMs : 0);
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

void CommandDriver::onChildExit(std::int64_t exitStatus, int termSignal) {
  Operation& op = *op_;
  op.deadline.stop();
  op.grace.stop();
  if (op.timedOut) op.signal(SIGKILL);  // helpers that outlived the SIGTERM

  const std::string what = std::string(toString(op.kind)) + " command";
  OperationOutcome outcome;
  if (op.timedOut) {
    outcome.reason = what + " did not finish within " + formatDuration(op.timeout);
  } else if (termSignal != 0) {
    outcome.reason = what + " was killed by signal " + std::to_string(termSignal) + " (" + signalName(termSignal) + ")";
  } else if (exitStatus != 0) {
    outcome.reason = what + " exited with status " + std::to_string(exitStatus);
  } else {
    outcome.ok = true;
  }
  if (!outcome.ok) {
    const std::string tail = outputTail(op.output.get());
    if (!tail.empty()) outcome.reason += ": " + tail;
  }
  finish(std::move(outcome));
}

void CommandDriver::onResumedExit() {
  Operation& op = *op_;
  op.deadline.stop();
  op.grace.stop();
  OperationOutcome outcome;
  if (op.timedOut) {
    op.signal(SIGKILL);
    outcome.reason = std::string(toString(op.kind)) + " command did not finish within " + formatDuration(op.timeout);
    const std::string tail = outputTail(op.output.get());
    if (!tail.empty()) outcome.reason += ": " + tail;
  } else {
    outcome.ok = true;  // its exit status went to the controld that spawned it
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
