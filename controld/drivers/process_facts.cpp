#include "controld/drivers/process_facts.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>  // sigabbrev_np
#include <fstream>
#include <sstream>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace ondemand::controld {

std::string signalName(int sig) {
  if (const char* abbrev = sigabbrev_np(sig)) return std::string("SIG") + abbrev;
  return "unknown signal";
}

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

ScopedFd openPidfd(pid_t pid) {
  return ScopedFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

}  // namespace ondemand::controld
