#pragma once
// "HOST:PORT" as written in controld.yaml (metrics_listen) and on the command
// line: a name or IPv4 address, or an IPv6 address in brackets ("[::1]:9464").

#include <optional>
#include <string>
#include <string_view>

namespace ondemand::controld {

struct HostPort {
  std::string host;  // without brackets
  int port = 0;
};

// nullopt with `error` set ("expected HOST:PORT like 127.0.0.1:9464") when malformed.
std::optional<HostPort> parseHostPort(std::string_view text, std::string& error);
// A port number 1-65535 written in decimal.
std::optional<int> parsePort(std::string_view text);

}  // namespace ondemand::controld
