#include "shared/duration.hpp"

#include <cmath>
#include <cstdlib>

namespace ondemand {

std::optional<Millis> parseDuration(std::string_view text, DefaultUnit plainUnit) {
  while (!text.empty() && text.front() == ' ')
    text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ')
    text.remove_suffix(1);
  if (text.empty()) return std::nullopt;

  std::size_t numberEnd = 0;
  bool seenDot = false;
  while (numberEnd < text.size()) {
    const char c = text[numberEnd];
    if (c >= '0' && c <= '9') {
      ++numberEnd;
    } else if (c == '.' && !seenDot) {
      seenDot = true;
      ++numberEnd;
    } else {
      break;
    }
  }
  if (numberEnd == 0 || (numberEnd == 1 && seenDot)) return std::nullopt;
  const std::string number(text.substr(0, numberEnd));
  const double value = std::strtod(number.c_str(), nullptr);
  const std::string_view unit = text.substr(numberEnd);

  double factorMs = 0;
  if (unit.empty()) {
    factorMs = plainUnit == DefaultUnit::Milliseconds ? 1.0 : 1000.0;
  } else if (unit == "ms") {
    factorMs = 1.0;
  } else if (unit == "s") {
    factorMs = 1000.0;
  } else if (unit == "m") {
    factorMs = 60'000.0;
  } else if (unit == "h") {
    factorMs = 3'600'000.0;
  } else if (unit == "d") {
    factorMs = 86'400'000.0;
  } else {
    return std::nullopt;
  }
  const double ms = std::round(value * factorMs);
  if (!std::isfinite(ms) || ms > 1e15) return std::nullopt;
  return Millis(static_cast<long long>(ms));
}

namespace {

std::string formatMagnitude(unsigned long long ms) {
  if (ms < 1000) return std::to_string(ms) + "ms";
  if (ms < 60'000) {
    const unsigned long long whole = ms / 1000;
    const unsigned long long tenths = (ms % 1000) / 100;
    return std::to_string(whole) + (tenths ? "." + std::to_string(tenths) : "") + "s";
  }
  const unsigned long long totalSeconds = ms / 1000;
  const unsigned long long hours = totalSeconds / 3600;
  const unsigned long long minutes = (totalSeconds % 3600) / 60;
  const unsigned long long seconds = totalSeconds % 60;
  std::string out;
  if (hours) out += std::to_string(hours) + "h";
  if (minutes) out += std::to_string(minutes) + "m";
  if (seconds || out.empty()) out += std::to_string(seconds) + "s";
  return out;
}

}  // namespace

std::string formatDuration(Millis d) {
  const long long ms = d.count();
  // INT64_MIN has no positive counterpart: the magnitude is taken unsigned.
  if (ms < 0) return "-" + formatMagnitude(0ULL - static_cast<unsigned long long>(ms));
  return formatMagnitude(static_cast<unsigned long long>(ms));
}

}  // namespace ondemand
