#pragma once
// The five states a service can be in, as controld owns them and as they travel
// on the wire. One definition so the daemon, the CLI and the module agree.

#include <optional>
#include <string_view>

#include "shared/enum_names.hpp"

namespace ondemand {

enum class ServiceState { Cold, Starting, Warm, Stopping, Failed };

inline constexpr EnumName<ServiceState> kServiceStateNames[] = {{ServiceState::Cold, "cold"},
                                                                {ServiceState::Starting, "starting"},
                                                                {ServiceState::Warm, "warm"},
                                                                {ServiceState::Stopping, "stopping"},
                                                                {ServiceState::Failed, "failed"}};

constexpr std::string_view toString(ServiceState s) {
  return nameOf(kServiceStateNames, s, "unknown");
}

constexpr std::optional<ServiceState> parseServiceState(std::string_view s) {
  return valueOf(kServiceStateNames, s);
}

}  // namespace ondemand
