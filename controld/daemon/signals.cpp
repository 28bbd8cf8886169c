#include "controld/daemon/signals.hpp"

#include <csignal>

#ifdef ONDEMAND_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace ondemand::controld {

void notifySystemd([[maybe_unused]] const char* state) {
#ifdef ONDEMAND_HAVE_SYSTEMD
  sd_notify(0, state);
#endif
}

DaemonSignals::DaemonSignals(uv_loop_t* loop, std::function<void()> onStop, std::function<void()> onReload)
    : loop_(loop), onStop_(std::move(onStop)), onReload_(std::move(onReload)) {}

void DaemonSignals::watch(UvHandle<uv_signal_t>& holder, int signum, bool reload) {
  auto* h = new uv_signal_t;
  uv_signal_init(loop_, h);
  h->data = this;
  holder.adopt(h);
  uv_signal_start(
      h,
      reload ?
          [](uv_signal_t* s, int) {
            if (s->data) static_cast<DaemonSignals*>(s->data)->onReload_();
          } :
          [](uv_signal_t* s, int) {
            if (s->data) static_cast<DaemonSignals*>(s->data)->onStop_();
          },
      signum);
}

void DaemonSignals::start() {
  watch(sigterm_, SIGTERM, false);
  watch(sigint_, SIGINT, false);
  watch(sighup_, SIGHUP, true);
  ::signal(SIGPIPE, SIG_IGN);
  // An ignored SIGCHLD, inherited from whoever started us, would have the
  // kernel reap start commands before their exit status is read.
  ::signal(SIGCHLD, SIG_DFL);
}

void DaemonSignals::stop() {
  sigterm_.reset();
  sigint_.reset();
  sighup_.reset();
}

}  // namespace ondemand::controld
