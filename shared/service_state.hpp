#pragma once
// The five states a service can be in, as controld owns them and as they travel
// on the wire. One definition so the daemon, the CLI and the module agree.

#include <optional>
#include <string_view>

namespace ondemand {

enum class ServiceState { Cold, Starting, Warm, Stopping, Failed };

constexpr std::string_view toString(ServiceState s) {
  switch (s) {
    case ServiceState::Cold:
      return "cold";
    case ServiceState::Starting:
      return "starting";
    case ServiceState::Warm:
      return "warm";
    case ServiceState::Stopping:
      return "stopping";
    case ServiceState::Failed:
      return "failed";
  }
  return "unknown";
}

constexpr std::optional<ServiceState> parseServiceState(std::string_view s) {
  if (s == "cold") return ServiceState::Cold;
  if (s == "starting") return ServiceState::Starting;
  if (s == "warm") return ServiceState::Warm;
  if (s == "stopping") return ServiceState::Stopping;
  if (s == "failed") return ServiceState::Failed;
  return std::nullopt;
}

}  // namespace ondemand
