#pragma once
// The YAML side of reading a config: text helpers, the problems found so far
// (each with its file and line), typed reads of one setting that say what was
// expected and what was found, and mappings read key by key (unknown keys with
// a suggestion, duplicates refused). Shared by the native and Hestia formats.
// Internal to controld/config/.

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "controld/config/config.hpp"
#include "shared/service_name.hpp"

namespace ondemand::controld::config_detail {

// ---------------------------------------------------------------- text helpers

std::string trim(std::string_view s);
std::string toUpper(std::string_view s);
std::string toLower(std::string_view s);
std::string quote(std::string_view s);
bool endsWith(std::string_view s, std::string_view suffix);
// The closest known key, if it is close enough to be a typo.
std::optional<std::string_view> suggestKey(std::string_view key, const std::vector<std::string_view>& known);
std::string joinKeys(const std::vector<std::string_view>& keys);
// "http://gpu-02:8188/x" -> "gpu-02:8188", for the nginx snippets in warnings.
std::string hostPort(std::string_view url);
bool looksLikeHttpUrl(std::string_view url);
std::optional<std::int64_t> parseInteger(std::string_view text);
// Booleans as YAML 1.1 (PyYAML, so Hestia and Ansible) and environment
// variables spell them.
std::optional<bool> parseBool(std::string_view text);
// A resource amount: a plain non-negative decimal number ("24", "7.5").
std::optional<double> parseAmount(std::string_view text);

// ---------------------------------------------------------------- problems

// Collects problems and remembers the line of every key the file sets.
class Problems {
 public:
  explicit Problems(std::string file) : file_(std::move(file)) {}

  void error(int line, std::string key, std::string message) {
    errors.push_back({{file_, line}, std::move(key), std::move(message)});
  }
  void warning(int line, std::string key, std::string message) {
    warnings.push_back({{file_, line}, std::move(key), std::move(message)});
  }
  const std::string& file() const { return file_; }

  std::vector<ConfigProblem> errors;
  std::vector<ConfigProblem> warnings;
  std::map<std::string, int> lines;

 private:
  std::string file_;
};

int keyLine(const YAML::Node& keyNode);
// "nothing", "\"5 minutes\"", "a list", ... for messages.
std::string describe(const YAML::Node& node);

// One value as read: from the file, or from an environment variable that
// overrides it (Hestia). Messages about it say where it came from.
struct Setting {
  std::string key;  // dotted: "services.comfyui.idle_timeout"
  int line = 0;
  YAML::Node node;
  std::string envVar;  // set when the value came from the environment

  bool isNull() const { return node.IsNull(); }
};

// Reads typed values out of settings; every mismatch becomes an error that
// says what was expected and what was found.
class Reader {
 public:
  explicit Reader(Problems& problems) : problems_(problems) {}

  void error(const Setting& s, const std::string& message) {
    problems_.error(s.line, s.key, (s.envVar.empty() ? "" : "from environment variable " + s.envVar + ": ") + message);
  }
  void expected(const Setting& s, std::string_view what) {
    error(s, "expected " + std::string(what) + "; got " + describe(s.node));
  }

  std::optional<std::string> scalar(const Setting& s, std::string_view what) {
    if (!s.node.IsScalar()) {
      expected(s, what);
      return std::nullopt;
    }
    return s.node.Scalar();
  }

  bool text(const Setting& s, std::string& out, std::string_view what = "a non-empty string") {
    auto v = scalar(s, what);
    if (!v) return false;
    if (trim(*v).empty()) {
      expected(s, what);
      return false;
    }
    out = *v;
    return true;
  }

  bool url(const Setting& s, std::string& out) {
    constexpr std::string_view what = "an http:// or https:// URL";
    auto v = scalar(s, what);
    if (!v) return false;
    if (!looksLikeHttpUrl(*v)) {
      expected(s, what);
      return false;
    }
    out = *v;
    return true;
  }

  // The Semaphore server's URL: credentials in it would show in logs, in
  // failure reasons and on public pages, so they are refused.
  bool serverUrl(const Setting& s, std::string& out) {
    std::string url;
    if (!this->url(s, url)) return false;
    if (!urlUserinfo(url).empty()) {
      error(s,
            "a URL with credentials (user:password@) is refused: they would show in logs and failure "
            "reasons; give them as username and password (semaphore_username and semaphore_password), or "
            "an API token, instead");
      return false;
    }
    out = url;
    return true;
  }

  // A list of names (users, groups): one name or a list of them.
  bool names(const Setting& s, std::vector<std::string>& out, std::string_view what) {
    std::vector<std::string> names;
    const auto add = [&](const YAML::Node& item) {
      if (!item.IsScalar() || trim(item.Scalar()).empty()) return false;
      names.push_back(trim(item.Scalar()));
      return true;
    };
    bool ok = true;
    if (s.node.IsSequence()) {
      for (const YAML::Node& item : s.node)
        ok = ok && add(item);
    } else {
      ok = add(s.node);
    }
    if (!ok) {
      expected(s, what);
      return false;
    }
    out = std::move(names);
    return true;
  }

  // A mapping of environment variable names to values.
  bool environment(const Setting& s, std::map<std::string, std::string>& out) {
    constexpr std::string_view what =
        "a mapping of environment variable names to values, e.g. { CUDA_VISIBLE_DEVICES: \"0\" }";
    if (!s.node.IsMap()) {
      expected(s, what);
      return false;
    }
    std::map<std::string, std::string> vars;
    for (auto it = s.node.begin(); it != s.node.end(); ++it) {
      const std::string name = it->first.IsScalar() ? it->first.Scalar() : std::string();
      const bool validName = !name.empty() && name.find_first_of("=\0") == std::string::npos;
      if (!validName || !it->second.IsScalar()) {
        expected(s, what);
        return false;
      }
      vars[name] = it->second.Scalar();
    }
    out = std::move(vars);
    return true;
  }

  bool integer(const Setting& s, std::int64_t& out, std::int64_t min, std::int64_t max, std::string_view what) {
    auto v = scalar(s, what);
    if (!v) return false;
    const auto n = parseInteger(trim(*v));
    if (!n || *n < min || *n > max) {
      expected(s, what);
      return false;
    }
    out = *n;
    return true;
  }

  bool boolean(const Setting& s, bool& out) {
    constexpr std::string_view what = "true or false";
    auto v = scalar(s, what);
    if (!v) return false;
    const auto b = parseBool(trim(*v));
    if (!b) {
      expected(s, what);
      return false;
    }
    out = *b;
    return true;
  }

  bool duration(const Setting& s, Millis& out, DefaultUnit plainUnit, bool allowZero) {
    const std::string what = std::string(allowZero ? "a duration" : "a duration above 0,") +
                             " like 250ms, 30s, 5m or 1h (a plain number is " +
                             (plainUnit == DefaultUnit::Milliseconds ? "milliseconds)" : "seconds)");
    auto v = scalar(s, what);
    if (!v) return false;
    const auto d = parseDuration(*v, plainUnit);
    if (!d || (!allowZero && d->count() == 0)) {
      expected(s, what);
      return false;
    }
    out = *d;
    return true;
  }

  bool models(const Setting& s, std::vector<std::string>& out) {
    constexpr std::string_view what = "a list of model names, e.g. [llama3, \"llama3:8b\"]";
    if (!s.node.IsSequence() || s.node.size() == 0) {
      expected(s, what);
      return false;
    }
    std::vector<std::string> names;
    for (const YAML::Node& item : s.node) {
      const int line = keyLine(item) ? keyLine(item) : s.line;
      if (!item.IsScalar() || !isValidModelName(item.Scalar())) {
        problems_.error(line, s.key,
                        "expected every model name to be 1 to 256 characters without spaces, quotes or "
                        "backslashes, not starting with '.'; got " +
                            describe(item));
        return false;
      }
      if (std::find(names.begin(), names.end(), item.Scalar()) != names.end()) {
        problems_.error(line, s.key, quote(item.Scalar()) + " is listed twice");
        return false;
      }
      names.push_back(item.Scalar());
    }
    out = std::move(names);
    return true;
  }

  // A mapping of resource names to amounts (0 or more, whole or decimal).
  bool amounts(const Setting& s, std::map<std::string, double>& out, std::string_view what);

  bool argv(const Setting& s, std::vector<std::string>& out) {
    constexpr std::string_view what = "a list of arguments, e.g. [\"systemctl\", \"start\", \"x\"]";
    if (!s.node.IsSequence() || s.node.size() == 0) {
      expected(s, what);
      return false;
    }
    std::vector<std::string> args;
    for (const YAML::Node& item : s.node) {
      if (!item.IsScalar()) {
        problems_.error(keyLine(item) ? keyLine(item) : s.line, s.key,
                        "expected every argument to be a string; got " + describe(item));
        return false;
      }
      args.push_back(item.Scalar());
    }
    if (trim(args.front()).empty()) {
      error(s, "the program (first argument) is empty");
      return false;
    }
    out = std::move(args);
    return true;
  }

 private:
  Problems& problems_;
};

// ---------------------------------------------------------------- mappings

struct KeyHandler {
  std::string_view key;
  std::function<void(const Setting&)> handle;
};

// Says more about a key that is unknown here (e.g. "it belongs under
// semaphore:"); empty when there is nothing to add.
using UnknownKeyNote = std::function<std::string(std::string_view key)>;

// Calls `each` for every entry of a mapping, in file order. Duplicate keys
// (which YAML parsers disagree about) and keys that are not strings are errors.
template <typename Each>
void forEachEntry(Problems& problems, const YAML::Node& map, const std::string& path, Each each) {
  std::map<std::string, int> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const int line = keyLine(it->first);
    if (!it->first.IsScalar()) {
      problems.error(line, path, "expected a plain key; got " + describe(it->first));
      continue;
    }
    const std::string key = it->first.Scalar();
    const std::string dotted = path.empty() ? key : path + "." + key;
    if (const auto [first, fresh] = seen.emplace(key, line); !fresh) {
      problems.error(line, dotted, "given twice (first at line " + std::to_string(first->second) + ")");
      continue;
    }
    problems.lines[dotted] = line;
    each(key, dotted, line, it->second);
  }
}

void readMapping(Problems& problems, const YAML::Node& map, const std::string& path,
                 const std::vector<KeyHandler>& handlers, const UnknownKeyNote& note = {});

}  // namespace ondemand::controld::config_detail
