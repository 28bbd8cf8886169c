#include "shared/service_name.hpp"

#include <cctype>

namespace ondemand {

bool isValidServiceName(std::string_view name) {
  if (name.empty() || name.size() > kMaxServiceNameLength || name.front() == '.') return false;
  for (char c : name) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

bool isValidModelName(std::string_view name) {
  if (name.empty() || name.size() > kMaxModelNameLength || name.front() == '.') return false;
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f || c == '"' || c == '\\') return false;
  }
  return true;
}

std::string environmentPrefix(std::string_view name) {
  std::string out;
  out.reserve(name.size());
  for (char c : name) {
    out.push_back(c == '-' || c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return out;
}

}  // namespace ondemand
