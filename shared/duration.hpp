#pragma once
// Durations as people write them in config files: "250ms", "30s", "5m", "1h",
// or a plain number in the unit the key's name says (idle_timeout_ms: 500).

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace ondemand {

using Millis = std::chrono::milliseconds;

enum class DefaultUnit { Milliseconds, Seconds };

// nullopt when the text is not a duration. Negative values are rejected;
// fractions are allowed ("1.5s", and plain "2.0" for Hestia's poll interval).
std::optional<Millis> parseDuration(std::string_view text, DefaultUnit plainUnit);

// 1500ms -> "1.5s", 90000ms -> "1m30s", 0 -> "0s": for logs and the CLI.
std::string formatDuration(Millis d);

}  // namespace ondemand
