#include "controld/config/loader.hpp"

namespace ondemand::controld::config_detail {

bool isHestiaServiceKey(std::string_view key) {
  return contains(kHestiaServiceKeys, key) || key.substr(0, 10) == "semaphore_";
}

FormatGuess guessFormat(const YAML::Node& root, const std::string& path) {
  FormatGuess native{ConfigFormat::Native, {}, 0};
  FormatGuess hestia{ConfigFormat::Hestia, {}, 0};
  int nativeCount = 0;
  int hestiaCount = 0;
  const auto count = [](FormatGuess& guess, int& n, const std::string& key, const YAML::Node& keyNode) {
    if (n++ == 0) {
      guess.key = key;
      guess.line = keyLine(keyNode);
    }
  };
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!it->first.IsScalar()) continue;
    const std::string& key = it->first.Scalar();
    if (contains(kHestiaTopKeys, key)) count(hestia, hestiaCount, key, it->first);
    if (contains(kNativeTopKeys, key)) count(native, nativeCount, key, it->first);
    if (key != "services" || !it->second.IsMap()) continue;
    for (auto svc = it->second.begin(); svc != it->second.end(); ++svc) {
      if (!svc->second.IsMap()) continue;
      for (auto field = svc->second.begin(); field != svc->second.end(); ++field) {
        if (!field->first.IsScalar()) continue;
        const std::string& name = field->first.Scalar();
        const std::string dotted = "services." + svc->first.Scalar() + "." + name;
        if (isHestiaServiceKey(name)) count(hestia, hestiaCount, dotted, field->first);
        if (contains(kNativeServiceKeys, name)) count(native, nativeCount, dotted, field->first);
      }
    }
  }
  if (hestiaCount == nativeCount && std::filesystem::path(path).stem() == "hestia_config") {
    hestia.key = "hestia_config";
    hestia.line = 0;
    return hestia;
  }
  return hestiaCount > nativeCount ? hestia : native;
}

std::string otherFormatNote(const FormatGuess& guess, std::string_view key, bool topLevel) {
  const bool otherKey = guess.format == ConfigFormat::Native
                            ? (topLevel ? contains(kHestiaTopKeys, key) : isHestiaServiceKey(key))
                            : (topLevel ? contains(kNativeTopKeys, key) : contains(kNativeServiceKeys, key));
  if (!otherKey) return "";
  const bool native = guess.format == ConfigFormat::Native;
  const std::string because =
      guess.line > 0 ? quote(guess.key) + " at line " + std::to_string(guess.line) : std::string("its name");
  return std::string(native ? "that is a Hestia key, but" : "that is a controld.yaml key, but") +
         " this file is read as " + (native ? "a controld.yaml" : "a Hestia config") + " because of " + because +
         ": use one format per file";
}

const std::string* Loader::envValue(const std::string& name) const {
  const auto it = env_.find(name);
  return it == env_.end() ? nullptr : &it->second;
}

bool Loader::path(const Setting& s, std::string& out) {
  std::string text;
  if (!read_.text(s, text, "a path")) return false;
  std::filesystem::path p(text);
  if (p.is_relative()) p = dir_ / p;
  out = p.lexically_normal().string();
  return true;
}

void Loader::tokenFallback(SemaphoreSettings& sem) const {
  if (!sem.apiToken.empty() || !sem.username.empty() || !sem.password.empty()) return;
  if (const std::string* token = envValue("SEMAPHORE_API_TOKEN")) sem.apiToken = trim(*token);
}

}  // namespace ondemand::controld::config_detail
