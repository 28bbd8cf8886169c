#pragma once
// controld under systemd, beyond READY/RELOADING/STOPPING (signals.hpp):
// - socket activation: the control socket handed over by controld.socket
//   (LISTEN_FDS/LISTEN_PID, sd_listen_fds), so nginx workers are never
//   refused while controld restarts: the kernel queues their connections;
// - the watchdog: WATCHDOG=1 from a timer on the loop at half WatchdogSec,
//   so a wedged loop stops the pings and systemd restarts controld.
// Without libsystemd neither happens (the socket is bound as before).

#include <uv.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "controld/io/uv.hpp"

namespace ondemand::controld {

// The listening Unix stream socket systemd passed for `path`. nullopt when
// systemd passed none; `error` set when it passed sockets but none for this
// path (the socket unit and controld.yaml disagree).
std::optional<int> systemdSocketFor(const std::string& path, std::string& error);

class Watchdog {
 public:
  explicit Watchdog(uv_loop_t* loop) : loop_(loop) {}
  // Starts pinging when systemd asks for it (WATCHDOG_USEC for this pid).
  // Returns the interval in ms, 0 when there is no watchdog.
  std::uint64_t start();
  void stop() { timer_.reset(); }

 private:
  void ping();
  uv_loop_t* loop_;
  std::unique_ptr<Timer> timer_;  // made in start(): the loop may not be initialised before
  std::uint64_t intervalMs_ = 0;
};

}  // namespace ondemand::controld
