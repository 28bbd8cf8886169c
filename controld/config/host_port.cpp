#include "controld/config/host_port.hpp"

#include <charconv>

namespace ondemand::controld {

std::optional<int> parsePort(std::string_view text) {
  int port = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, port);
  if (text.empty() || ec != std::errc() || ptr != end || port < 1 || port > 65535) return std::nullopt;
  return port;
}

std::optional<HostPort> parseHostPort(std::string_view text, std::string& error) {
  error = "expected HOST:PORT like 127.0.0.1:9464 or [::1]:9464";
  HostPort out;
  std::string_view rest;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
    out.host = std::string(text.substr(1, close - 1));
    rest = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    out.host = std::string(text.substr(0, colon));
    if (out.host.find(':') != std::string::npos) return std::nullopt;  // IPv6 needs brackets
    rest = text.substr(colon + 1);
  }
  if (out.host.empty()) return std::nullopt;
  const auto port = parsePort(rest);
  if (!port) {
    error = "the port must be a number from 1 to 65535";
    return std::nullopt;
  }
  out.port = *port;
  error.clear();
  return out;
}

}  // namespace ondemand::controld
