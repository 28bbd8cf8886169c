#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "controld/drivers/command_driver.hpp"
#include "uv_test_support.hpp"

using namespace ondemand::controld;
using namespace ondemand::testing;

namespace {

using Argv = std::vector<std::string>;

struct Observed {
  std::vector<OperationRecord> progress;
  std::optional<OperationOutcome> outcome;
  std::optional<Millis> doneAt;
  SteadyClock::time_point started = SteadyClock::now();

  Driver::ProgressCallback onProgress() {
    return [this](const OperationRecord& r) { progress.push_back(r); };
  }
  Driver::DoneCallback onDone() {
    return [this](OperationOutcome o) {
      REQUIRE_FALSE(outcome);  // exactly once
      doneAt = millisSince(started);
      outcome = std::move(o);
    };
  }
  pid_t pid() const { return progress.empty() ? 0 : static_cast<pid_t>(progress.back().pid); }
  // The command's pid, reported from the loop once it runs.
  pid_t waitForPid(TestLoop& loop) {
    loop.runUntil([this] { return pid() > 0 || outcome; }, 5000ms);
    return pid();
  }
};

// A directory for the commands' output files, removed when the tests end.
class OutputDirectory {
 public:
  OutputDirectory() {
    char name[] = "/tmp/ondemand-test-output-XXXXXX";
    if (::mkdtemp(name)) path_ = name;
  }
  ~OutputDirectory() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  // A path no other driver of these tests writes to.
  std::string fresh() { return path_ + "/notes-app-" + std::to_string(++count_) + ".command.log"; }

 private:
  std::string path_;
  int count_ = 0;
};

std::string freshOutputPath() {
  static OutputDirectory directory;
  return directory.fresh();
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

std::unique_ptr<CommandDriver> startDriver(TestLoop& loop, Argv start, Millis timeout = 10000ms, Millis grace = 5000ms,
                                           Argv stop = {}, const std::string& output = freshOutputPath()) {
  return std::make_unique<CommandDriver>(loop.get(), std::move(start), std::move(stop), timeout, 10000ms, "notes-app",
                                         output, std::map<std::string, std::string>{}, grace);
}

OperationRequest startRequest() {
  return {OperationKind::Start, "GET /notes", {}};
}

// A file for a shell command to leave a pid in.
class TempFile {
 public:
  TempFile() {
    char name[] = "/tmp/ondemand-test-XXXXXX";
    const int fd = mkstemp(name);
    ::close(fd);
    path_ = name;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }
  pid_t readPid() const {
    std::ifstream in(path_);
    long pid = 0;
    in >> pid;
    return static_cast<pid_t>(pid);
  }

 private:
  std::string path_;
};

// Starts `sleep SECONDS` as an orphan (its parent shell exits at once), the
// way a command looks to a controld that restarted after spawning it.
pid_t spawnOrphanSleep(const std::string& seconds) {
  const std::string command = "sh -c 'sleep " + seconds + " >/dev/null 2>&1 & echo $!'";
  FILE* out = popen(command.c_str(), "r");
  long pid = 0;
  if (out) {
    if (std::fscanf(out, "%ld", &pid) != 1) pid = 0;
    pclose(out);
  }
  return static_cast<pid_t>(pid);
}

// Whether `pid` has been reaped (a zombie still exists as far as kill() knows).
bool reaped(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

// What a previous controld recorded for a command it spawned.
OperationRecord recordOf(pid_t pid, std::int64_t startedAtMs = unixMillisNow()) {
  OperationRecord record;
  record.driver = "command";
  record.pid = pid;
  record.startedAtMs = startedAtMs;
  return record;
}

}  // namespace

TEST_CASE("a start command that exits 0 succeeds, and its pid is reported once it runs, before the outcome") {
  TestLoop loop;
  auto driver = startDriver(loop, {"true"});
  Observed seen;
  std::size_t progressAtDone = 0;
  const auto before = unixMillisNow();
  driver->run(startRequest(), seen.onProgress(), [&](OperationOutcome o) {
    progressAtDone = seen.progress.size();
    seen.onDone()(std::move(o));
  });
  const auto after = unixMillisNow();

  CHECK_FALSE(seen.outcome);  // never from inside run()
  REQUIRE(seen.progress.size() == 1);
  CHECK(seen.progress[0].pid == 0);  // persisted before anything happens
  CHECK(seen.progress[0].driver == "command");

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK(seen.outcome->ok);
  CHECK(seen.outcome->reason.empty());
  REQUIRE(seen.progress.size() == 2);
  CHECK(progressAtDone == 2);
  const OperationRecord& record = seen.progress[1];
  CHECK(record.kind == OperationKind::Start);
  CHECK(record.driver == "command");
  CHECK(record.pid > 0);
  CHECK(record.startedAtMs >= before);
  CHECK(record.startedAtMs <= after);
}

TEST_CASE("a failing start command reports its status and the last lines of its stderr") {
  TestLoop loop;
  auto driver = startDriver(loop, {"sh", "-c", "echo starting >&2; echo boom >&2; exit 3"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "start command exited with status 3: starting\nboom");
}

TEST_CASE("only the last 20 lines of a long stderr are kept, and a flood of output never blocks the command") {
  TestLoop loop;
  // 200 KB would be more than a pipe holds: the output file takes it all.
  auto driver = startDriver(loop, {"sh", "-c",
                                   "head -c 200000 /dev/zero | tr '\\0' x >&2; echo >&2; i=0; "
                                   "while [ $i -lt 100 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  const std::string& reason = seen.outcome->reason;
  CHECK(reason.rfind("start command exited with status 1: line80\nline81\n", 0) == 0);
  CHECK(reason.find("line79") == std::string::npos);
  CHECK(reason.find("xxx") == std::string::npos);
  CHECK(reason.size() < 300);
  CHECK(reason.substr(reason.size() - 7) == "\nline99");
}

TEST_CASE("a start command killed by a signal says which signal") {
  TestLoop loop;
  auto driver = startDriver(loop, {"sh", "-c", "echo about to die >&2; kill -KILL $$"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "start command was killed by signal 9 (SIGKILL): about to die");
}

TEST_CASE("a start command that cannot be run names the program and the error") {
  TestLoop loop;
  auto driver = startDriver(loop, {"ondemand-no-such-program", "--flag"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  CHECK_FALSE(seen.outcome);

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason ==
        "start command \"ondemand-no-such-program\" could not be run: no such file or directory");
}

TEST_CASE("a start command past its timeout is killed with everything it started") {
  TestLoop loop;
  TempFile helperPid;
  // The shell starts a helper and waits for it: both must go.
  auto driver = startDriver(loop, {"sh", "-c", "sleep 30 & echo $! > " + helperPid.path() + "; wait"}, 300ms);
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  const pid_t pid = seen.waitForPid(loop);
  REQUIRE(pid > 0);

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 3000ms));
  CHECK(*seen.doneAt >= 300ms);
  CHECK(*seen.doneAt < 1000ms);
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "start command did not finish within 300ms");
  CHECK_FALSE(processRunning(pid));  // reaped before the report
  const pid_t helper = helperPid.readPid();
  REQUIRE(helper > 0);
  CHECK(loop.runUntil([&] { return !processRunning(helper); }, 1000ms));
}

TEST_CASE("a command that ignores SIGTERM is killed with SIGKILL after the grace") {
  TestLoop loop;
  auto driver = startDriver(loop, {"sh", "-c", "trap '' TERM; echo stubborn >&2; sleep 30"}, 200ms, 300ms);
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  const pid_t pid = seen.waitForPid(loop);
  REQUIRE(pid > 0);

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 3000ms));
  CHECK(*seen.doneAt >= 500ms);  // timeout + grace
  CHECK(*seen.doneAt < 1500ms);
  CHECK(seen.outcome->reason == "start command did not finish within 200ms: stubborn");
  CHECK_FALSE(processRunning(pid));
}

TEST_CASE("a start command may leave a daemon behind: it is not killed and does not delay the outcome") {
  TestLoop loop;
  TempFile daemonPid;
  // The daemon even keeps the command's stderr open.
  auto driver = startDriver(loop, {"sh", "-c", "sleep 30 & echo $! > " + daemonPid.path()});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK(seen.outcome->ok);
  CHECK(*seen.doneAt < 1000ms);
  const pid_t daemon = daemonPid.readPid();
  REQUIRE(daemon > 0);
  loop.runFor(200ms);
  CHECK(processRunning(daemon));

  ::kill(daemon, SIGKILL);
  REQUIRE(loop.runUntil([&] { return !processRunning(daemon); }, 2000ms));
  driver.reset();
}

TEST_CASE("a cancelled command is killed and never calls back") {
  TestLoop loop;
  auto driver = startDriver(loop, {"sleep", "0.3"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  const pid_t pid = seen.waitForPid(loop);
  REQUIRE(pid > 0);
  loop.runFor(50ms);
  REQUIRE(processRunning(pid));

  driver->cancel();
  CHECK(loop.runUntil([&] { return !processRunning(pid); }, 200ms));  // well before it would have exited
  loop.runFor(400ms);                                                 // past the moment it would have
  CHECK_FALSE(seen.outcome);

  // The driver runs the next operation as usual.
  driver->run(startRequest(), {}, seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK(seen.outcome->ok);
}

TEST_CASE("a command cancelled while it is being spawned is killed once it runs") {
  TestLoop loop;
  TempFile marker;
  std::remove(marker.path().c_str());
  auto driver = startDriver(loop, {"sh", "-c", "sleep 0.3; : > " + marker.path()});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(seen.pid() == 0);  // the spawn is under way
  driver->cancel();

  loop.runFor(500ms);  // past the moment it would have written the marker
  CHECK_FALSE(std::filesystem::exists(marker.path()));
  CHECK(loop.close());                           // it was killed and reaped
  CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);  // no child left, running or not
  CHECK(seen.progress.size() == 1);              // nothing after the cancel
  CHECK_FALSE(seen.outcome);
}

TEST_CASE("a command detached while it is being spawned runs to its end and is reaped") {
  TestLoop loop;
  TempFile pidFile;
  auto driver = startDriver(loop, {"sh", "-c", "echo $$ > " + pidFile.path() + "; sleep 0.3"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(seen.pid() == 0);  // the spawn is under way
  driver->detach();
  driver.reset();

  pid_t pid = 0;
  REQUIRE(loop.runUntil([&] { return (pid = pidFile.readPid()) > 0; }, 5000ms));
  loop.runFor(100ms);
  CHECK(processRunning(pid));  // not killed
  CHECK(loop.close());         // once it has exited
  CHECK(reaped(pid));
  CHECK(seen.progress.size() == 1);
  CHECK_FALSE(seen.outcome);
}

TEST_CASE("destroying the driver kills a running command without a callback") {
  TestLoop loop;
  auto driver = startDriver(loop, {"sleep", "30"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  const pid_t pid = seen.waitForPid(loop);
  REQUIRE(pid > 0);
  driver.reset();
  CHECK(loop.runUntil([&] { return !processRunning(pid); }, 2000ms));
  CHECK_FALSE(seen.outcome);
  CHECK(loop.close());  // the killed command was reaped and its handles closed
  CHECK(reaped(pid));
}

TEST_CASE("the done callback may start the next operation or destroy the driver") {
  TestLoop loop;
  auto driver = startDriver(loop, {"true"}, 10000ms, 5000ms, {"sh", "-c", "exit 4"});
  std::optional<OperationOutcome> stopOutcome;
  driver->run(startRequest(), {}, [&](OperationOutcome start) {
    CHECK(start.ok);
    driver->run({OperationKind::Stop, "idle for 15m", {}}, {}, [&](OperationOutcome stop) {
      stopOutcome = std::move(stop);
      driver.reset();
    });
  });
  REQUIRE(loop.runUntil([&] { return stopOutcome.has_value(); }, 5000ms));
  CHECK(stopOutcome->reason == "stop command exited with status 4");
  CHECK_FALSE(driver);
}

TEST_CASE("stopping needs a stop command") {
  TestLoop loop;
  auto startOnly = startDriver(loop, {"true"});
  CHECK(startOnly->supports(OperationKind::Start));
  CHECK_FALSE(startOnly->supports(OperationKind::Stop));
  auto both = startDriver(loop, {"true"}, 10000ms, 5000ms, {"true"});
  CHECK(both->supports(OperationKind::Stop));

  Observed seen;
  startOnly->run({OperationKind::Stop, "idle", {}}, seen.onProgress(), seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 1000ms));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "no stop command is configured for service notes-app");
}

TEST_CASE("resuming a command that still runs reports when it has exited") {
  TestLoop loop;
  const pid_t pid = spawnOrphanSleep("0.5");
  REQUIRE(pid > 0);
  REQUIRE(processRunning(pid));
  const OperationRecord record = recordOf(pid);

  auto driver = startDriver(loop, {"true"});
  Observed seen;
  driver->resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 3000ms));
  CHECK(seen.outcome->ok);
  CHECK(*seen.doneAt >= 300ms);
  CHECK_FALSE(processRunning(pid));  // not before it exited
}

TEST_CASE("resuming a command that is gone reports ok at once, from the loop") {
  TestLoop loop;
  const pid_t pid = fork();
  if (pid == 0) _exit(0);
  REQUIRE(pid > 0);
  ::waitpid(pid, nullptr, 0);
  const OperationRecord record = recordOf(pid);

  auto driver = startDriver(loop, {"true"});
  Observed seen;
  driver->resume(record, seen.onProgress(), seen.onDone());
  CHECK_FALSE(seen.outcome);
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 1000ms));
  CHECK(seen.outcome->ok);
  CHECK(*seen.doneAt < 100ms);
}

TEST_CASE("a recorded pid now used by a newer process is not mistaken for the command") {
  TestLoop loop;
  // Alive, but started long after this record was written.
  const OperationRecord record = recordOf(getpid(), unixMillisNow() - 3'600'000);

  auto driver = startDriver(loop, {"true"});
  Observed seen;
  driver->resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 1000ms));
  CHECK(seen.outcome->ok);
  CHECK(*seen.doneAt < 100ms);
}

TEST_CASE("a resumed command is still bound by the timeout, counted from its start") {
  TestLoop loop;
  const pid_t pid = spawnOrphanSleep("30");
  REQUIRE(pid > 0);
  const OperationRecord record = recordOf(pid, unixMillisNow() - 200);

  auto driver = startDriver(loop, {"true"}, 500ms);
  Observed seen;
  driver->resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 3000ms));
  const auto sinceRecordedStart = unixMillisNow() - record.startedAtMs;
  CHECK(sinceRecordedStart >= 500);
  CHECK(sinceRecordedStart < 1300);
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "start command did not finish within 500ms");
  CHECK(loop.runUntil([&] { return !processRunning(pid); }, 1000ms));
}

TEST_CASE("cancelling a resumed command kills it and never calls back") {
  TestLoop loop;
  const pid_t pid = spawnOrphanSleep("30");
  REQUIRE(pid > 0);
  const OperationRecord record = recordOf(pid);

  auto driver = startDriver(loop, {"true"});
  Observed seen;
  driver->resume(record, seen.onProgress(), seen.onDone());
  loop.runFor(50ms);
  driver->cancel();
  CHECK(loop.runUntil([&] { return !processRunning(pid); }, 2000ms));
  loop.runFor(100ms);
  CHECK_FALSE(seen.outcome);
}

TEST_CASE("a command's stdout and stderr both go to its output file, and the reason's last lines come from it") {
  TestLoop loop;
  const std::string output = freshOutputPath();
  auto driver =
      startDriver(loop, {"sh", "-c", "echo out1; echo err1 >&2; echo out2; exit 2"}, 10000ms, 5000ms, {}, output);
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  CHECK(seen.outcome->reason == "start command exited with status 2: out1\nerr1\nout2");
  CHECK(readFile(output) == "out1\nerr1\nout2\n");
  CHECK((std::filesystem::status(output).permissions() & std::filesystem::perms::others_all) ==
        std::filesystem::perms::none);
}

TEST_CASE("each run empties the output file first: it holds the last operation's output") {
  TestLoop loop;
  const std::string output = freshOutputPath();
  auto driver = startDriver(loop, {"sh", "-c", "echo first run; echo more of it >&2"}, 10000ms, 5000ms,
                            {"sh", "-c", "echo stopping"}, output);
  std::optional<OperationOutcome> outcome;
  driver->run(startRequest(), {}, [&](OperationOutcome o) { outcome = std::move(o); });
  REQUIRE(loop.runUntil([&] { return outcome.has_value(); }, 5000ms));
  CHECK(readFile(output) == "first run\nmore of it\n");

  outcome.reset();
  driver->run({OperationKind::Stop, "idle", {}}, {}, [&](OperationOutcome o) { outcome = std::move(o); });
  REQUIRE(loop.runUntil([&] { return outcome.has_value(); }, 5000ms));
  CHECK(outcome->ok);
  CHECK(readFile(output) == "stopping\n");
}

TEST_CASE("a daemon an earlier command left behind writes at the end of the emptied file, leaving no hole") {
  TestLoop loop;
  const std::string output = freshOutputPath();
  TempFile daemonPid;
  auto driver = startDriver(loop,
                            {"sh", "-c",
                             "(sleep 0.5; echo late from the daemon) & echo $! > " + daemonPid.path() +
                                 "; echo a first start that says rather a lot"},
                            10000ms, 5000ms, {"sh", "-c", "echo second"}, output);
  std::optional<OperationOutcome> outcome;
  driver->run(startRequest(), {}, [&](OperationOutcome o) { outcome = std::move(o); });
  REQUIRE(loop.runUntil([&] { return outcome.has_value(); }, 5000ms));
  outcome.reset();
  driver->run({OperationKind::Stop, "idle", {}}, {}, [&](OperationOutcome o) { outcome = std::move(o); });
  REQUIRE(loop.runUntil([&] { return outcome.has_value(); }, 5000ms));
  REQUIRE(readFile(output) == "second\n");  // before the daemon's line

  const pid_t daemon = daemonPid.readPid();
  REQUIRE(daemon > 0);
  CHECK(loop.runUntil([&] { return !processRunning(daemon); }, 3000ms));
  CHECK(readFile(output) == "second\nlate from the daemon\n");
}

TEST_CASE("an output file that cannot be written fails the run with a reason that names it") {
  TestLoop loop;
  auto driver = startDriver(loop, {"true"}, 10000ms, 5000ms, {}, "/nonexistent-ondemand-dir/notes-app.command.log");
  Observed seen;
  driver->run(startRequest(), {}, seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 1000ms));
  CHECK(seen.outcome->reason ==
        "start command \"true\" could not be run: cannot write its output to "
        "/nonexistent-ondemand-dir/notes-app.command.log: no such file or directory");
}

TEST_CASE("a command detached from the driver keeps writing its output, and is still reaped when it exits") {
  TestLoop loop;
  const std::string output = freshOutputPath();
  TempFile marker;
  std::remove(marker.path().c_str());
  // More than a pipe would hold, all of it written after the detach: nobody
  // reads a pipe any more by then, and a write to one would kill the command.
  auto driver = startDriver(loop,
                            {"sh", "-c",
                             "sleep 0.3; i=0; while [ $i -lt 20000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; "
                             "echo done; : > " +
                                 marker.path()},
                            10000ms, 5000ms, {}, output);
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  const pid_t pid = seen.waitForPid(loop);
  REQUIRE(pid > 0);
  driver->detach();
  driver.reset();  // and no kill from the destructor either

  REQUIRE(loop.runUntil([&] { return std::filesystem::exists(marker.path()); }, 10000ms));
  const std::string text = readFile(output);
  CHECK(text.find("line 0\n") == 0);
  CHECK(text.size() > 64 * 1024);
  CHECK(text.ends_with("line 19999\ndone\n"));
  CHECK_FALSE(seen.outcome);
  CHECK(loop.close());  // the watch on the child ends with it
  CHECK(reaped(pid));
}

TEST_CASE("a command starts with every signal at its default action and none blocked") {
  TestLoop loop;
  // controld ignores SIGPIPE; a thread may block signals.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction previous {};
  ::sigaction(SIGPIPE, &ignore, &previous);
  sigset_t block;
  sigset_t previousMask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  ::pthread_sigmask(SIG_BLOCK, &block, &previousMask);

  // The shell reads its own status with builtins only: a shell waiting for a
  // child (grep) blocks every signal for a moment, which a child could see.
  auto driver = startDriver(loop, {"sh", "-c",
                                   "while read -r line; do case $line in SigBlk:*|SigIgn:*) printf '%s\\n' \"$line\";; "
                                   "esac; done < /proc/$$/status; exit 1"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  ::sigaction(SIGPIPE, &previous, nullptr);
  ::pthread_sigmask(SIG_SETMASK, &previousMask, nullptr);

  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  const std::string& reason = seen.outcome->reason;
  const std::string prefix = "start command exited with status 1: SigBlk:\t";
  REQUIRE(reason.rfind(prefix, 0) == 0);
  const auto ignoredAt = reason.find("\nSigIgn:\t");
  REQUIRE(ignoredAt != std::string::npos);
  CHECK(std::stoull(reason.substr(prefix.size(), ignoredAt - prefix.size()), nullptr, 16) == 0);
  // Signals 1 to 31. glibc's posix_spawn leaves its two internal signals (32
  // and 33) ignored; programs that use them install their own handlers.
  CHECK((std::stoull(reason.substr(ignoredAt + 9), nullptr, 16) & 0x7fffffffULL) == 0);
}

TEST_CASE("a command gets stdin, stdout and stderr, and no other descriptor of controld") {
  TestLoop loop;
  const int leaked = ::open("/dev/null", O_RDONLY);  // not close-on-exec
  REQUIRE(leaked > 2);
  const std::string fd = std::to_string(leaked);
  auto driver = startDriver(loop, {"sh", "-c",
                                   "ls -l /proc/$$/fd/0 >/dev/null && [ -e /proc/$$/fd/1 ] && [ -e /proc/$$/fd/2 ] && "
                                   "echo has 0-2; [ -e /proc/$$/fd/" +
                                       fd + " ] && echo has " + fd + "; exit 1"});
  Observed seen;
  driver->run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 5000ms));
  ::close(leaked);
  CHECK(seen.outcome->reason == "start command exited with status 1: has 0-2");
}

TEST_CASE("a resumed command past its timeout ends its reason with the last lines of its output file") {
  TestLoop loop;
  const std::string output = freshOutputPath();
  {
    std::ofstream out(output);
    out << "loading the model\nstill loading\n";
  }
  const pid_t pid = spawnOrphanSleep("30");
  REQUIRE(pid > 0);
  const OperationRecord record = recordOf(pid);

  auto driver = startDriver(loop, {"true"}, 300ms, 5000ms, {}, output);
  Observed seen;
  driver->resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(loop.runUntil([&] { return seen.outcome.has_value(); }, 3000ms));
  CHECK(seen.outcome->reason == "start command did not finish within 300ms: loading the model\nstill loading");
  CHECK(loop.runUntil([&] { return !processRunning(pid); }, 1000ms));
}
