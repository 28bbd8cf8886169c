#pragma once
// Service names appear in nginx.conf, controld.yaml, URLs, file names under
// state_dir and environment variable prefixes, so they are kept to a safe
// alphabet: letters, digits, '-', '_' and '.', 1..64 characters, not starting
// with '.'.

#include <string>
#include <string_view>

namespace ondemand {

inline constexpr std::size_t kMaxServiceNameLength = 64;

bool isValidServiceName(std::string_view name);

// Model names (`models:` of a service, what clients send in a JSON body's
// "model") are freer: "llama3:8b", "Qwen/Qwen2.5-7B-Instruct". 1..256 bytes,
// no space, no control character, no quote or backslash, not starting with '.'.
inline constexpr std::size_t kMaxModelNameLength = 256;
bool isValidModelName(std::string_view name);

// "comfy-ui" -> "COMFY_UI": the prefix of Hestia-style environment overrides.
std::string environmentPrefix(std::string_view name);

}  // namespace ondemand
