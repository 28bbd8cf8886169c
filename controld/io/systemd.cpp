#include "controld/io/systemd.hpp"

#include <sys/socket.h>

#include "controld/io/log.hpp"

#ifdef ONDEMAND_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace ondemand::controld {

std::optional<int> systemdSocketFor([[maybe_unused]] const std::string& path, std::string& error) {
  error.clear();
#ifdef ONDEMAND_HAVE_SYSTEMD
  // 1: LISTEN_* are unset afterwards, so start commands do not inherit them.
  const int n = sd_listen_fds(1);
  if (n <= 0) return std::nullopt;
  for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, path.c_str(), 0) > 0) return fd;
  }
  error = "systemd passed " + std::to_string(n) + " socket(s), none a listening Unix stream socket at " + path +
          " (ListenStream= of controld.socket must be the socket: of controld.yaml)";
#endif
  return std::nullopt;
}

std::uint64_t Watchdog::start() {
#ifdef ONDEMAND_HAVE_SYSTEMD
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
  intervalMs_ = std::max<std::uint64_t>(1, usec / 2000);  // twice per WatchdogSec, as sd_watchdog_enabled(3) says
  LogLine(LogLevel::Info, "watchdog").kv("interval_ms", intervalMs_);
  timer_ = std::make_unique<Timer>(loop_);
  ping();
  return intervalMs_;
#else
  return 0;
#endif
}

void Watchdog::ping() {
#ifdef ONDEMAND_HAVE_SYSTEMD
  sd_notify(0, "WATCHDOG=1");
#endif
  if (timer_) timer_->start(std::chrono::milliseconds(intervalMs_), [this] { ping(); });
}

}  // namespace ondemand::controld
