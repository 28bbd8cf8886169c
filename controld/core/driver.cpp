#include "controld/core/driver.hpp"

#include <cstdio>
#include <random>

namespace ondemand::controld {

std::string newOperationId(const std::string& service, std::int64_t nowMs) {
  std::random_device random;
  char suffix[9];
  std::snprintf(suffix, sizeof suffix, "%08x", static_cast<unsigned>(random()));
  return service + "-" + std::to_string(nowMs) + "-" + suffix;
}

}  // namespace ondemand::controld
