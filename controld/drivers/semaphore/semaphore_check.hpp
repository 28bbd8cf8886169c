#pragma once
// `controld check-config --online`: asks Semaphore whether it is reachable,
// whether it accepts the configured credentials, and whether every configured
// template exists in the project.

#include <ostream>

#include "controld/config/config.hpp"

namespace ondemand::controld {

// Returns an exit code: 0 all good, 1 a check failed, 3 Semaphore unreachable.
int checkSemaphoreOnline(const Config& config, std::ostream& out, std::ostream& err);

}  // namespace ondemand::controld
