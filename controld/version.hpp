#pragma once

namespace ondemand::controld {

// "controld 0.1.0": printed by `controld version` and sent in the protocol's welcome.
const char* versionString();

}  // namespace ondemand::controld
