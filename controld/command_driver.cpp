#include "controld/command_driver.hpp"

#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <array>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace ondemand::controld {

namespace {
// One buffer for every driver: reads happen on the loop's thread and are
// consumed before the callback returns, so a buffer per service (1,000
// services, 16 KiB each) would only cost memory.
thread_local std::array<char, 16384> stderrReadBuffer;
}  // namespace

namespace {

// How much of a command's stderr a failure reason keeps.
constexpr std::size_t kTailBytes = 4096;
constexpr std::size_t kTailLines = 20;

// A process found at a recorded pid that started this much later than the
// record is another process that got the same pid. The slack covers the
// coarse clocks involved (boot time is known to the second).
constexpr std::int64_t kStartTimeSlackMs = 5000;

// The last few KiB a command wrote to stderr.
class OutputTail {
 public:
  void append(const char* data, std::size_t n) {
    raw_.append(data, n);
    if (raw_.size() > 2 * kTailBytes) {
      raw_.erase(0, raw_.size() - kTailBytes);
      cut_ = true;
    }
  }

  // At most kTailLines non-blank lines, without a line cut in half at the front.
  std::string text() const {
    std::string_view view(raw_);
    bool cut = cut_;
    if (view.size() > kTailBytes) {
      view.remove_prefix(view.size() - kTailBytes);
      cut = true;
    }
    if (cut) {
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

 private:
  std::string raw_;
  bool cut_ = false;
};

class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

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
// or a pidfd (someone else's), its stderr, its deadline and kill timers.
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
    op->stderrPipe.reset();
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
  UvHandle<uv_pipe_t> stderrPipe;
  OutputTail stderrTail;
  ScopedFd pidfd;                // resume(): a process we did not spawn
  UvHandle<uv_poll_t> pidWatch;  // closed before pidfd (declared after it)

  Timer deadline;
  Timer grace;     // SIGTERM was sent; SIGKILL when this fires
  Timer deferred;  // outcomes known at once still reach `done` from the loop
};

CommandDriver::CommandDriver(uv_loop_t* loop, std::vector<std::string> startCommand,
                             std::vector<std::string> stopCommand, Millis startTimeout, Millis stopTimeout,
                             std::string serviceName, Millis killGrace)
    : loop_(loop),
      startCommand_(std::move(startCommand)),
      stopCommand_(std::move(stopCommand)),
      startTimeout_(startTimeout),
      stopTimeout_(stopTimeout),
      serviceName_(std::move(serviceName)),
      killGrace_(killGrace) {}

CommandDriver::~CommandDriver() {
  *alive_ = false;
  cancel();
  drains_.clear();
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

  std::vector<char*> args;
  for (const auto& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);

  auto* pipe = new uv_pipe_t;
  uv_pipe_init(loop_, pipe, 0);
  op->stderrPipe.adopt(pipe);

  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;  // libuv points ignored stdio at /dev/null
  stdio[1].flags = UV_IGNORE;
  stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(pipe);

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
    op->stderrPipe.reset();
    finishLater(failed(what + " \"" + argv[0] + "\" could not be run: " + uv_strerror(rc)));
    return;
  }
  process->data = op;
  op->pid = process->pid;
  op->ownGroup = true;

  pipe->data = op;
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(pipe),
      [](uv_handle_t* h, size_t, uv_buf_t* buf) {
        static thread_local char buffer[4096];
        (void)h;
        *buf = uv_buf_init(buffer, sizeof buffer);
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
        auto* o = static_cast<Operation*>(s->data);
        if (!o) return;
        if (nread > 0) {
          o->stderrTail.append(buf->base, static_cast<std::size_t>(nread));
        } else if (nread < 0) {
          uv_read_stop(s);  // EOF: everything holding the write end is gone
        }
      });

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
  drainStderrNow();

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
    const std::string tail = op.stderrTail.text();
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
  } else {
    outcome.ok = true;  // its exit status went to the controld that spawned it
  }
  finish(std::move(outcome));
}

// The child has exited; what it wrote before that is in the pipe. Read it now
// rather than waiting for EOF, which never comes while something it left
// behind keeps the write end.
void CommandDriver::drainStderrNow() {
  Operation& op = *op_;
  if (!op.stderrPipe) return;
  uv_os_fd_t fd = -1;
  bool eof = uv_fileno(reinterpret_cast<uv_handle_t*>(op.stderrPipe.get()), &fd) != 0 ||
             !uv_is_active(reinterpret_cast<uv_handle_t*>(op.stderrPipe.get()));
  while (!eof) {
    const ssize_t n = ::read(fd, stderrReadBuffer.data(), stderrReadBuffer.size());
    if (n > 0) {
      op.stderrTail.append(stderrReadBuffer.data(), static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      eof = n == 0 || errno != EAGAIN;
      break;
    }
  }
  if (eof) {
    op.stderrPipe.reset();
  } else {
    keepDraining(std::move(op.stderrPipe));
  }
}

void CommandDriver::keepDraining(UvHandle<uv_pipe_t> pipe) {
  auto* stream = reinterpret_cast<uv_stream_t*>(pipe.get());
  uv_read_stop(stream);
  stream->data = this;
  uv_read_start(
      stream,
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        *buf = uv_buf_init(stderrReadBuffer.data(), static_cast<unsigned>(stderrReadBuffer.size()));
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
        auto* self = static_cast<CommandDriver*>(s->data);
        if (self && nread < 0) self->drains_.erase(reinterpret_cast<uv_pipe_t*>(s));
      });
  drains_.emplace(pipe.get(), std::move(pipe));
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
