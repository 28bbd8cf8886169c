#pragma once
// The process's side of being a daemon: SIGTERM/SIGINT stop it, SIGHUP
// reloads it, SIGPIPE is ignored and SIGCHLD is left to its default; systemd
// hears READY/RELOADING/STOPPING (sd_notify, when built with libsystemd).

#include <uv.h>

#include <functional>

#include "controld/io/uv.hpp"

namespace ondemand::controld {

// Tells systemd about the daemon's state ("READY=1", ...); nothing without libsystemd.
void notifySystemd(const char* state);

class DaemonSignals {
 public:
  // Handlers run on the loop; they may call stop().
  DaemonSignals(uv_loop_t* loop, std::function<void()> onStop, std::function<void()> onReload);
  DaemonSignals(const DaemonSignals&) = delete;
  DaemonSignals& operator=(const DaemonSignals&) = delete;

  // Installs the handlers and the process-wide dispositions.
  void start();
  // Stops listening (the handles close; no handler runs afterwards).
  void stop();

 private:
  void watch(UvHandle<uv_signal_t>& holder, int signum, bool reload);

  uv_loop_t* loop_;
  std::function<void()> onStop_, onReload_;
  UvHandle<uv_signal_t> sigterm_, sigint_, sighup_;
};

}  // namespace ondemand::controld
