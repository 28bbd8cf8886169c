#pragma once
// What the kernel says about a process the command driver runs or follows:
// when it started (to tell a recorded pid from a reused one), a pidfd to
// watch its exit without polling, and the name of the signal that ended it.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "controld/io/fd.hpp"

namespace ondemand::controld {

std::string signalName(int sig);  // "SIGKILL"

// When the process now at `pid` started, in unix ms; nullopt when /proc cannot tell.
std::optional<std::int64_t> processStartUnixMs(pid_t pid);

// A pidfd for `pid` (pidfd_open); invalid where the kernel has none.
ScopedFd openPidfd(pid_t pid);

}  // namespace ondemand::controld
