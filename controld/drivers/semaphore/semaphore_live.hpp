#pragma once
// Semaphore's live updates: GET /api/ws upgrades to a WebSocket on which
// Semaphore announces every status change of every task in the user's
// projects ({"type":"update","task_id":42,"status":"success",...}). controld
// takes an announcement as a hint to poll that task at once instead of at its
// next poll_interval, so a finished task releases the waiting requests within
// milliseconds. The poll stays the truth and the fallback: nothing is replayed
// after a reconnect, and a proxy in front of Semaphore may not pass WebSockets.
//
// The connection lives on a thread of its own (libcurl connects, TLS included,
// and moves the bytes); what it learns reaches the loop through a uv_async_t.
// It is open while wanted (setWanted) and reconnects with a back-off while it
// is wanted and failing.

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "controld/config/config.hpp"
#include "controld/io/lifetime.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

class SemaphoreLiveUpdates {
 public:
  struct Event {
    enum class Kind { Connected, Disconnected, Update };
    Kind kind = Kind::Update;
    std::int64_t taskId = 0;     // Update
    std::int64_t projectId = 0;  // Update; 0 when Semaphore did not say
    std::string status;          // Update
    std::string problem;         // Disconnected: why, for the log
  };
  using Callback = std::function<void(const Event&)>;

  // The callback runs on the loop.
  SemaphoreLiveUpdates(uv_loop_t* loop, const SemaphoreSettings& settings, Callback callback);
  ~SemaphoreLiveUpdates();  // closes the connection and ends the thread; no callback afterwards
  SemaphoreLiveUpdates(const SemaphoreLiveUpdates&) = delete;
  SemaphoreLiveUpdates& operator=(const SemaphoreLiveUpdates&) = delete;

  void setWanted(bool wanted);
  // The session cookie ("semaphore=…") for username/password logins; used
  // from the next connection on.
  void setCookie(std::string cookie);

  struct Shared;

 private:
  void deliver();

  std::shared_ptr<Shared> shared_;
  std::thread thread_;
  UvHandle<uv_async_t> async_;
  Callback callback_;
  Lifetime lifetime_;
};

}  // namespace ondemand::controld
