#pragma once
// Helpers for tests that run a real libuv loop: every wait is bounded by a
// deadline, and a test fails when it leaves a handle open on the loop.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <exception>
#include <fstream>
#include <functional>
#include <string>

#include "controld/io/uv.hpp"

namespace ondemand::testing {

using namespace std::chrono_literals;
using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

inline Millis millisSince(SteadyClock::time_point start) {
  return std::chrono::duration_cast<Millis>(SteadyClock::now() - start);
}

class TestLoop {
 public:
  TestLoop() { uv_loop_init(&loop_); }
  TestLoop(const TestLoop&) = delete;
  TestLoop& operator=(const TestLoop&) = delete;
  ~TestLoop() {
    const bool clean = close();
    if (!clean && std::uncaught_exceptions() == 0) FAIL_CHECK("the test left handles open on the loop");
  }

  uv_loop_t* get() { return &loop_; }

  // Runs the loop until `done()` holds or `limit` has passed; returns done().
  // A 10 ms tick re-checks conditions that change outside the loop (another
  // process exiting, a server thread answering); loop events wake it at once.
  bool runUntil(const std::function<bool()>& done, Millis limit) {
    bool expired = false;
    controld::Timer deadline(&loop_);
    deadline.start(limit, [&] { expired = true; });
    controld::Timer tick(&loop_);
    std::function<void()> rearm = [&] { tick.start(10ms, rearm); };
    rearm();
    while (!done() && !expired)
      uv_run(&loop_, UV_RUN_ONCE);
    return done();
  }

  // Runs the loop for a while: only for showing that something does NOT happen.
  void runFor(Millis d) {
    runUntil([] { return false; }, d);
  }

  // Runs the loop until nothing is left on it (up to 5 s: a killed command may
  // take a moment to be reaped) and closes it. False if handles stayed open.
  bool close() {
    if (closed_) return true;
    runUntil([this] { return openHandles() == 0; }, 5000ms);
    uv_run(&loop_, UV_RUN_NOWAIT);  // the helper timers' close callbacks
    if (uv_loop_close(&loop_) == 0) {
      closed_ = true;
      return true;
    }
    // Close what was leaked so the loop can still be freed.
    closed_ = controld::closeLoop(&loop_);
    return false;
  }

 private:
  // Handles other than the two helper timers runUntil() itself keeps open.
  int openHandles() {
    int count = 0;
    uv_walk(
        &loop_, [](uv_handle_t*, void* arg) { ++*static_cast<int*>(arg); }, &count);
    return count - 2;
  }

  uv_loop_t loop_{};
  bool closed_ = false;
};

// A loopback port nothing listens on (at the time of the call).
inline int freeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Whether a process still runs (a zombie has exited: it only waits to be reaped).
inline bool processRunning(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z' && line[close + 2] != 'X';
}

}  // namespace ondemand::testing
