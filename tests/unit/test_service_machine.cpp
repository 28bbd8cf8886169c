// The service state machine, driven by hand with a fake clock: each test is
// one story a user would recognise.
#include <catch2/catch.hpp>

#include <limits>

#include "controld/core/service_machine.hpp"

using namespace ondemand;
using namespace ondemand::controld;

namespace {

MachineSettings commandSettings() {
  MachineSettings s;
  s.startTimeout = Millis(60'000);
  s.idleTimeout = Millis(10'000);
  s.failureBackoff = Millis(30'000);
  s.drainTimeout = Millis(2'000);
  s.hasStartDriver = true;
  s.hasStopDriver = true;
  s.hasHealthCheck = true;
  return s;
}

OperationOutcome ok() {
  return OperationOutcome{true, "", 0, ""};
}
OperationOutcome failed(std::string reason) {
  return OperationOutcome{false, std::move(reason), 0, ""};
}

// Brings a machine to warm at t=1000 (wake at 0, driver done at 500, healthy at 1000).
ServiceMachine warmMachine(MachineSettings settings = commandSettings()) {
  ServiceMachine m("svc", settings);
  m.wake(0, Cause::Request, "GET /");
  m.operationDone(500, ok());
  m.healthy(1000);
  REQUIRE(m.state() == ServiceState::Warm);
  return m;
}

}  // namespace

TEST_CASE("a request wakes a cold service: start driver, then health, then warm") {
  ServiceMachine m("svc", commandSettings());
  CHECK(m.state() == ServiceState::Cold);

  Effects e = m.wake(0, Cause::Request, "GET /api");
  CHECK(e.runStartDriver);
  CHECK(e.stateChanged);
  CHECK(m.state() == ServiceState::Starting);
  CHECK(m.phase() == Phase::Driver);
  CHECK(m.snapshot().startingSinceMs == 0);
  const auto epochStarting = m.epoch();

  SECTION("more wakes while starting change nothing") {
    Effects again = m.wake(100, Cause::Request, "GET /other");
    CHECK_FALSE(again.runStartDriver);
    CHECK_FALSE(again.stateChanged);
    CHECK(m.epoch() == epochStarting);
  }

  e = m.operationDone(400, ok());
  CHECK(e.beginReadiness);
  CHECK(m.state() == ServiceState::Starting);
  CHECK(m.phase() == Phase::Readiness);

  e = m.healthy(900);
  CHECK(e.stateChanged);
  CHECK(m.state() == ServiceState::Warm);
  CHECK(m.epoch() == epochStarting + 1);

  const auto& history = m.snapshot().history;
  REQUIRE(history.size() == 2);
  CHECK(history[0].from == ServiceState::Cold);
  CHECK(history[0].to == ServiceState::Starting);
  CHECK(history[0].cause == Cause::Request);
  CHECK(history[0].detail == "GET /api");
  CHECK(history[1].to == ServiceState::Warm);
  CHECK(history[1].cause == Cause::Health);
  CHECK(history[1].atMs == 900);
}

TEST_CASE("cold starts are counted, and the last good one timed from the wake to warm") {
  ServiceMachine m("svc", commandSettings());
  const std::int64_t t0 = 1'700'000'000'000;
  m.wake(t0, Cause::Request, "GET /");
  m.operationDone(t0 + 400, ok());
  m.healthy(t0 + 2'500);
  CHECK(m.snapshot().startsOk == 1);
  CHECK(m.snapshot().lastStartMs == 2'500);
  CHECK(m.snapshot().startsFailed == 0);

  // Stopped, woken again, and this start fails: the last good start's time stays.
  m.stopRequested(t0 + 10'000);
  m.operationDone(t0 + 10'100, ok());
  REQUIRE(m.state() == ServiceState::Cold);
  m.wake(t0 + 20'000, Cause::Request, "GET /");
  m.operationDone(t0 + 20'300, failed("start command exited with status 1"));
  REQUIRE(m.state() == ServiceState::Failed);
  CHECK(m.snapshot().startsOk == 1);
  CHECK(m.snapshot().startsFailed == 1);
  CHECK(m.snapshot().lastStartMs == 2'500);
}

TEST_CASE("without a health check the service is warm after warmup") {
  MachineSettings s = commandSettings();
  s.hasHealthCheck = false;
  s.warmup = Millis(3000);
  ServiceMachine m("svc", s);
  m.wake(0, Cause::Request, "GET /");
  Effects e = m.operationDone(1000, ok());
  CHECK_FALSE(e.beginReadiness);
  CHECK(m.nextDeadlineMs() == 4000);
  m.tick(3999);
  CHECK(m.state() == ServiceState::Starting);
  m.tick(4000);
  CHECK(m.state() == ServiceState::Warm);
}

TEST_CASE("an externally managed service only waits for its health check") {
  MachineSettings s = commandSettings();
  s.hasStartDriver = false;
  s.hasStopDriver = false;
  ServiceMachine m("svc", s);
  Effects e = m.wake(0, Cause::Request, "GET /");
  CHECK_FALSE(e.runStartDriver);
  CHECK(e.beginReadiness);
  m.healthy(50);
  CHECK(m.state() == ServiceState::Warm);
  SECTION("and is never stopped for idleness") {
    CHECK_FALSE(m.nextDeadlineMs());
    m.tick(10'000'000);
    CHECK(m.state() == ServiceState::Warm);
  }
}

TEST_CASE("a failing start driver leaves the service failed with the reason") {
  ServiceMachine m("svc", commandSettings());
  m.wake(0, Cause::Request, "GET /");
  Effects e = m.operationDone(200, failed("start command exited with status 1: boom"));
  CHECK(e.stateChanged);
  CHECK(m.state() == ServiceState::Failed);
  CHECK(m.snapshot().reason == "start command exited with status 1: boom");
  REQUIRE(m.snapshot().lastOperation);
  CHECK_FALSE(m.snapshot().lastOperation->ok);
}

TEST_CASE("failure_backoff: fast answers, then the next request tries again, never on its own") {
  ServiceMachine m("svc", commandSettings());
  m.wake(0, Cause::Request, "GET /");
  m.operationDone(1000, failed("boom"));
  REQUIRE(m.state() == ServiceState::Failed);

  // Nothing is scheduled: controld never retries by itself.
  CHECK_FALSE(m.nextDeadlineMs());
  m.tick(1'000'000);
  CHECK(m.state() == ServiceState::Failed);

  // Within 30 s of the failure a request changes nothing.
  ServiceMachine again = m;
  Effects e = again.wake(30'999, Cause::Request, "GET /");
  CHECK_FALSE(e.runStartDriver);
  CHECK(again.state() == ServiceState::Failed);
  CHECK(again.inFailureBackoff(30'999));

  // The first request after the backoff starts it again.
  e = again.wake(31'000, Cause::Request, "GET /");
  CHECK(e.runStartDriver);
  CHECK(again.state() == ServiceState::Starting);

  // A person at the CLI may retry at once.
  e = m.wake(2000, Cause::Cli, "controld start");
  CHECK(e.runStartDriver);
}

TEST_CASE("start_timeout fails a start that takes too long and abandons the driver") {
  ServiceMachine m("svc", commandSettings());
  m.wake(0, Cause::Request, "GET /");
  CHECK(m.nextDeadlineMs() == 60'000);

  SECTION("while the driver runs") {
    Effects e = m.tick(60'000);
    CHECK(e.cancelDriver);
    CHECK(m.state() == ServiceState::Failed);
    CHECK(m.snapshot().reason == "did not finish starting within start_timeout 1m");
    // A late answer from the abandoned driver is ignored.
    m.operationDone(61'000, ok());
    CHECK(m.state() == ServiceState::Failed);
  }
  SECTION("while waiting for health") {
    m.operationDone(1000, ok());
    m.tick(59'999);
    CHECK(m.state() == ServiceState::Starting);
    Effects e = m.tick(60'000);
    CHECK(e.stopReadiness);
    CHECK(m.state() == ServiceState::Failed);
    CHECK(m.snapshot().reason == "did not answer its health check within start_timeout 1m");
    CHECK(m.snapshot().history.back().cause == Cause::Timeout);
  }
}

TEST_CASE("idle: stopped after idle_timeout with nothing in flight, never with requests in flight") {
  ServiceMachine m = warmMachine();
  CHECK(m.idleStopAtMs() == 11'000);

  SECTION("requests in flight keep it warm however long") {
    m.activity(2000, 1, true);
    CHECK_FALSE(m.nextDeadlineMs());
    m.tick(1'000'000);
    CHECK(m.state() == ServiceState::Warm);
    // When the last one ends, the idle clock starts from then.
    m.activity(1'000'000, 0, false);
    CHECK(m.idleStopAtMs() == 1'010'000);
  }
  SECTION("a request started pushes the stop back") {
    m.activity(5000, 0, true);
    CHECK(m.idleStopAtMs() == 15'000);
  }
  SECTION("idle: announce, drain, then run the stop driver") {
    Effects e = m.tick(11'000);
    CHECK(e.announceStopping);
    CHECK_FALSE(e.runStopDriver);
    CHECK(m.state() == ServiceState::Stopping);
    CHECK(m.phase() == Phase::Draining);

    e = m.drainFinished(11'050, 0);
    CHECK(e.runStopDriver);
    CHECK(m.phase() == Phase::Driver);

    e = m.operationDone(12'000, ok());
    CHECK(m.state() == ServiceState::Cold);
    CHECK(m.snapshot().history.back().cause == Cause::Idle);
  }
}

TEST_CASE("a request that slips in while workers are asked calls the stop off") {
  ServiceMachine m = warmMachine();
  m.tick(11'000);
  REQUIRE(m.phase() == Phase::Draining);

  SECTION("a worker acknowledges with a request in flight") {
    Effects e = m.drainFinished(11'010, 1);
    CHECK_FALSE(e.runStopDriver);
    CHECK(m.state() == ServiceState::Warm);
  }
  SECTION("a wake arrives") {
    Effects e = m.wake(11'010, Cause::Request, "GET /late");
    CHECK_FALSE(e.runStopDriver);
    CHECK(m.state() == ServiceState::Warm);
  }
  SECTION("activity arrives") {
    m.activity(11'010, 1, true);
    CHECK(m.state() == ServiceState::Warm);
  }
  SECTION("no answer at all: after drainTimeout the last known count decides") {
    CHECK(m.nextDeadlineMs() == 13'000);
    Effects e = m.tick(13'000);
    CHECK(e.runStopDriver);
  }
}

TEST_CASE("a wake while the stop driver runs restarts the service after the stop") {
  ServiceMachine m = warmMachine();
  m.tick(11'000);
  m.drainFinished(11'000, 0);
  REQUIRE(m.phase() == Phase::Driver);

  Effects e = m.wake(11'500, Cause::Request, "GET /again");
  CHECK_FALSE(e.runStartDriver);
  CHECK(m.state() == ServiceState::Stopping);

  e = m.operationDone(12'000, ok());
  CHECK(e.runStartDriver);
  CHECK(m.state() == ServiceState::Starting);
  // The wait is measured from the request, not from the end of the stop.
  CHECK(m.snapshot().startingSinceMs == 11'500);
  const auto& h = m.snapshot().history;
  CHECK(h[h.size() - 2].to == ServiceState::Cold);
}

TEST_CASE("a failed stop leaves the service warm and tries again after another idle period") {
  ServiceMachine m = warmMachine();
  m.tick(11'000);
  m.drainFinished(11'000, 0);
  Effects e = m.operationDone(12'000, failed("stop command exited with status 2"));
  CHECK(e.stateChanged);
  CHECK(m.state() == ServiceState::Warm);
  CHECK(m.snapshot().history.back().detail == "stop failed: stop command exited with status 2");
  REQUIRE(m.snapshot().lastOperation);
  CHECK(m.snapshot().lastOperation->kind == OperationKind::Stop);
  CHECK_FALSE(m.snapshot().lastOperation->ok);
  CHECK(m.idleStopAtMs() == 22'000);
}

TEST_CASE("controld stop stops at once, even with requests in flight") {
  ServiceMachine m = warmMachine();
  m.activity(2000, 3, true);
  Effects e = m.stopRequested(2500);
  CHECK(e.runStopDriver);
  CHECK(m.state() == ServiceState::Stopping);
  CHECK(m.snapshot().history.back().cause == Cause::Cli);

  SECTION("stopping a starting service abandons the start") {
    ServiceMachine s("svc", commandSettings());
    s.wake(0, Cause::Request, "GET /");
    Effects st = s.stopRequested(10);
    CHECK(st.cancelDriver);
    CHECK(st.runStopDriver);
  }
  SECTION("stopping a failed service clears the failure") {
    ServiceMachine f("svc", commandSettings());
    f.wake(0, Cause::Request, "GET /");
    f.operationDone(1, failed("x"));
    f.stopRequested(2);
    CHECK(f.state() == ServiceState::Cold);
  }
}

TEST_CASE("the Semaphore task id is recorded as soon as it is known") {
  ServiceMachine m("svc", commandSettings());
  m.wake(0, Cause::Request, "GET /");
  OperationRecord r = *m.snapshot().operation;
  r.driver = "semaphore";
  r.taskId = 42;
  Effects e = m.operationProgress(r);
  CHECK(e.persist);
  CHECK(e.stateChanged);
  CHECK(m.snapshot().operation->taskId == 42);
  m.operationDone(100, OperationOutcome{false, "Semaphore task 42 ended with status error", 42, "error"});
  CHECK(m.snapshot().history.back().taskId == 42);
  CHECK(m.snapshot().history.back().taskStatus == "error");
}

TEST_CASE("after a restart the machine continues instead of starting again") {
  ServiceMachine before("svc", commandSettings());
  before.wake(0, Cause::Request, "GET /");

  SECTION("a start whose driver was running is resumed, not repeated") {
    OperationRecord r = *before.snapshot().operation;
    r.driver = "command";
    r.pid = 4242;
    before.operationProgress(r);
    ServiceMachine after("svc", commandSettings());
    Effects e = after.restore(5000, before.snapshot());
    CHECK(e.resumeDriver);
    CHECK_FALSE(e.runStartDriver);
    CHECK(after.state() == ServiceState::Starting);
    CHECK(after.snapshot().operation->pid == 4242);
    // start_timeout still counts from the original start.
    CHECK(after.nextDeadlineMs() == 60'000);
  }
  SECTION("a start that had launched nothing is launched") {
    ServiceMachine after("svc", commandSettings());
    Effects e = after.restore(5000, before.snapshot());
    CHECK(e.runStartDriver);
  }
  SECTION("a start whose driver had begun but had no task id yet is resumed, not launched again") {
    // The Semaphore POST may have created a task whose id never came back.
    OperationRecord r = *before.snapshot().operation;
    r.driver = "semaphore";
    before.operationProgress(r);
    ServiceMachine after("svc", commandSettings());
    Effects e = after.restore(5000, before.snapshot());
    CHECK(e.resumeDriver);
    CHECK_FALSE(e.runStartDriver);
    CHECK(after.snapshot().operation->driver == "semaphore");
  }
  SECTION("a start whose record has its operation id but no report from the driver") {
    // The daemon puts the operation id on disk before it runs the driver;
    // the Semaphore driver POSTs at once and its first report may not have
    // reached the disk when controld is killed.
    OperationRecord r = *before.snapshot().operation;
    r.operationId = "svc-1-0badf00d";
    before.operationProgress(r);
    SECTION("is resumed when the driver can look its task up by that id") {
      MachineSettings settings = commandSettings();
      settings.driverFindsUnconfirmed = true;
      ServiceMachine after("svc", settings);
      Effects e = after.restore(5000, before.snapshot());
      CHECK(e.resumeDriver);
      CHECK_FALSE(e.runStartDriver);
      CHECK(after.snapshot().operation->operationId == "svc-1-0badf00d");
    }
    SECTION("is launched when it cannot (a command that never reported a pid)") {
      ServiceMachine after("svc", commandSettings());
      Effects e = after.restore(5000, before.snapshot());
      CHECK(e.runStartDriver);
    }
  }
  SECTION("a start waiting for health waits again") {
    before.operationDone(100, ok());
    ServiceMachine after("svc", commandSettings());
    Effects e = after.restore(5000, before.snapshot());
    CHECK(e.beginReadiness);
    CHECK_FALSE(e.runStartDriver);
  }
  SECTION("a warm service is confirmed by its health check") {
    before.operationDone(100, ok());
    before.healthy(200);
    ServiceMachine after("svc", commandSettings());
    Effects e = after.restore(5000, before.snapshot());
    CHECK(e.confirmHealth);
    CHECK_FALSE(e.runStartDriver);
    CHECK(after.state() == ServiceState::Warm);
    // The idle clock restarts, so a restart never causes an early stop.
    CHECK(after.idleStopAtMs() == 15'000);
    SECTION("and goes cold if it does not answer") {
      after.unhealthy(5100, "connection refused");
      CHECK(after.state() == ServiceState::Cold);
      CHECK(after.snapshot().history.back().cause == Cause::Recovery);
    }
  }
  SECTION("an interrupted drain goes back to warm") {
    before.operationDone(100, ok());
    before.healthy(200);
    before.tick(20'000);
    REQUIRE(before.phase() == Phase::Draining);
    ServiceMachine after("svc", commandSettings());
    after.restore(21'000, before.snapshot());
    CHECK(after.state() == ServiceState::Warm);
  }
  SECTION("a stop whose driver had not begun is run; one that had begun is resumed") {
    before.operationDone(100, ok());
    before.healthy(200);
    before.stopRequested(300);
    REQUIRE(before.phase() == Phase::Driver);
    SECTION("not begun") {
      ServiceMachine after("svc", commandSettings());
      Effects e = after.restore(5000, before.snapshot());
      CHECK(e.runStopDriver);
      CHECK_FALSE(e.resumeDriver);
      CHECK(after.state() == ServiceState::Stopping);
    }
    SECTION("begun") {
      OperationRecord r = *before.snapshot().operation;
      r.driver = "semaphore";
      before.operationProgress(r);
      ServiceMachine after("svc", commandSettings());
      Effects e = after.restore(5000, before.snapshot());
      CHECK(e.resumeDriver);
      CHECK_FALSE(e.runStopDriver);
    }
  }
  SECTION("epochs keep increasing across a restart") {
    const auto epoch = before.epoch();
    ServiceMachine after("svc", commandSettings());
    after.restore(5000, before.snapshot());
    after.operationDone(5100, failed("x"));
    CHECK(after.epoch() == epoch + 1);
  }
}

TEST_CASE("history keeps only the last N transitions") {
  ServiceMachine m("svc", commandSettings(), 3);
  for (int i = 0; i < 5; ++i) {
    m.wake(i * 100'000, Cause::Cli, "controld start");
    m.operationDone(i * 100'000 + 1, failed("x"));
  }
  CHECK(m.snapshot().history.size() == 3);
  CHECK(m.snapshot().history.back().to == ServiceState::Failed);
}

TEST_CASE("with a health check, warmup is waited for after the first healthy answer") {
  auto settings = commandSettings();
  settings.warmup = Millis(5'000);
  ServiceMachine m("svc", settings);
  m.wake(0, Cause::Request, "GET /");
  CHECK(m.operationDone(500, ok()).beginReadiness);
  CHECK(m.nextDeadlineMs() == 60'000);  // only start_timeout until health answers
  CHECK_FALSE(m.tick(5'500).stateChanged);
  const Effects healthy = m.healthy(8'000);
  CHECK_FALSE(healthy.stateChanged);
  CHECK(m.state() == ServiceState::Starting);
  CHECK(m.nextDeadlineMs() == 13'000);
  CHECK_FALSE(m.healthy(9'000).stateChanged);  // a second answer does not restart the wait
  CHECK_FALSE(m.tick(12'999).stateChanged);
  CHECK(m.tick(13'000).stateChanged);
  CHECK(m.state() == ServiceState::Warm);
  CHECK(m.snapshot().history.back().detail == "health check answered, then warmup 5s elapsed");
}

TEST_CASE("numbers from a state file at their limits neither wrap nor overflow") {
  MachineSnapshot failedForever;
  failedForever.state = ServiceState::Failed;
  failedForever.failedAtMs = std::numeric_limits<std::int64_t>::max();
  ServiceMachine m("svc", commandSettings());
  m.restore(1'000, failedForever);
  CHECK(m.retryAtMs() == std::numeric_limits<std::int64_t>::max());
  CHECK(m.inFailureBackoff(1'000));

  MachineSnapshot starting;
  starting.state = ServiceState::Starting;
  starting.phase = Phase::Readiness;
  starting.startingSinceMs = std::numeric_limits<std::int64_t>::max() - 5;
  ServiceMachine s("svc", commandSettings());
  s.restore(1'000, starting);
  CHECK(s.nextDeadlineMs() == std::numeric_limits<std::int64_t>::max());
  CHECK_FALSE(s.tick(2'000).stateChanged);
}

TEST_CASE("a renewed epoch pushes the same state again, with no transition") {
  ServiceMachine m("svc", commandSettings());
  const auto before = m.snapshot();
  Effects e = m.renewEpoch();
  CHECK(e.stateChanged);
  CHECK(e.persist);
  CHECK_FALSE(e.runStartDriver);
  CHECK_FALSE(e.runStopDriver);
  CHECK(m.epoch() == before.epoch + 1);
  CHECK(m.state() == ServiceState::Cold);
  CHECK(m.snapshot().history.size() == before.history.size());
  CHECK(m.snapshot().sinceMs == before.sinceMs);
}
