#include "controld/version.hpp"

namespace ondemand::controld {

const char* versionString() {
  return "controld " ONDEMAND_VERSION;
}

}  // namespace ondemand::controld
