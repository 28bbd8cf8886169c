#include "controld/config/config.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <sys/un.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

#include "shared/service_name.hpp"

extern char** environ;

namespace ondemand::controld {

namespace {

// What controld.yaml allows a start by default; Hestia's starts get it on top of their task timeout.
const Millis kNativeStartTimeout = ServiceConfig{}.startTimeout;

// ---------------------------------------------------------------- text helpers

std::string trim(std::string_view s) {
  const auto isSpace = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && isSpace(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && isSpace(s.back()))
    s.remove_suffix(1);
  return std::string(s);
}

std::string toUpper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The closest known key, if it is close enough to be a typo.
std::optional<std::string_view> suggestKey(std::string_view key, const std::vector<std::string_view>& known) {
  std::optional<std::string_view> best;
  std::size_t bestDistance = std::max<std::size_t>(2, key.size() / 4) + 1;
  for (std::string_view candidate : known) {
    const std::size_t d = editDistance(key, candidate);
    if (d < bestDistance) {
      bestDistance = d;
      best = candidate;
    }
  }
  return best;
}

std::string joinKeys(const std::vector<std::string_view>& keys) {
  std::string out;
  for (std::string_view k : keys) {
    if (!out.empty()) out += ", ";
    out += k;
  }
  return out;
}

// "http://gpu-02:8188/x" -> "gpu-02:8188", for the nginx snippets in warnings.
std::string hostPort(std::string_view url) {
  const auto scheme = url.find("://");
  if (scheme != std::string_view::npos) url.remove_prefix(scheme + 3);
  return std::string(url.substr(0, url.find('/')));
}

bool looksLikeHttpUrl(std::string_view url) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (url.substr(0, scheme.size()) == scheme) {
      const std::string_view rest = url.substr(scheme.size());
      return !rest.empty() && rest.front() != '/' && rest.find_first_of(" \t\r\n") == std::string_view::npos;
    }
  }
  return false;
}

std::optional<std::int64_t> parseInteger(std::string_view text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

// Booleans as YAML 1.1 (PyYAML, so Hestia and Ansible) and environment
// variables spell them.
std::optional<bool> parseBool(std::string_view text) {
  const std::string lower = toLower(text);
  if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") return true;
  if (lower == "false" || lower == "no" || lower == "off" || lower == "0") return false;
  return std::nullopt;
}

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

int keyLine(const YAML::Node& keyNode) {
  const YAML::Mark mark = keyNode.Mark();
  return mark.line >= 0 ? mark.line + 1 : 0;
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "nothing";
    case YAML::NodeType::Scalar:
      return quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return node.size() == 0 ? "an empty list" : "a list";
    case YAML::NodeType::Map:
      return node.size() == 0 ? "an empty mapping" : "a mapping";
  }
  return "something else";
}

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
                 const std::vector<KeyHandler>& handlers, const UnknownKeyNote& note = {}) {
  forEachEntry(problems, map, path,
               [&](const std::string& key, const std::string& dotted, int line, const YAML::Node& value) {
                 for (const KeyHandler& h : handlers) {
                   if (h.key == key) {
                     h.handle(Setting{dotted, line, value, {}});
                     return;
                   }
                 }
                 std::vector<std::string_view> known;
                 for (const KeyHandler& h : handlers)
                   known.push_back(h.key);
                 std::string message = "unknown key " + quote(key);
                 const auto suggestion = suggestKey(key, known);
                 const std::string extra = note ? note(key) : std::string();
                 if (suggestion) message += " (did you mean " + quote(*suggestion) + "?)";
                 if (!extra.empty()) message += "; " + extra;
                 if (!suggestion && extra.empty()) message += "; expected one of: " + joinKeys(known);
                 problems.error(line, dotted, message);
               });
}

// ---------------------------------------------------------------- extra_vars

constexpr std::string_view kReservedExtraVars[] = {"service_id", "machine_id", "action", "ondemand_operation"};

bool isPlainInteger(std::string_view s) {
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) s.remove_prefix(1);
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  // "0755" stays a string: YAML 1.1 would read it as octal, a JSON number as
  // decimal; Ansible modules take the string form as meant.
  return s.size() == 1 || s.front() != '0';
}

std::optional<double> parseFloat(const std::string& s) {
  bool digit = false;
  for (char c : s) {
    if (c >= '0' && c <= '9') {
      digit = true;
    } else if (c != '.' && c != 'e' && c != 'E' && c != '-' && c != '+') {
      return std::nullopt;
    }
  }
  if (!digit) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE) return std::nullopt;
  return v;
}

// Converts a YAML value to JSON the way Ansible would have read it from YAML:
// plain scalars that look like numbers or booleans become numbers and booleans,
// quoted ones stay strings.
bool yamlToJson(const YAML::Node& node, rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc,
                const std::string& path, int line, Problems& problems) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out.SetNull();
      return true;
    case YAML::NodeType::Sequence: {
      out.SetArray();
      for (const YAML::Node& item : node) {
        rapidjson::Value v;
        if (!yamlToJson(item, v, alloc, path, line, problems)) return false;
        out.PushBack(v, alloc);
      }
      return true;
    }
    case YAML::NodeType::Map: {
      out.SetObject();
      bool ok = true;
      forEachEntry(problems, node, path,
                   [&](const std::string& key, const std::string& dotted, int keyLine, const YAML::Node& value) {
                     rapidjson::Value v;
                     if (!yamlToJson(value, v, alloc, dotted, keyLine, problems)) {
                       ok = false;
                       return;
                     }
                     out.AddMember(rapidjson::Value(key, alloc), v, alloc);
                   });
      return ok;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() != "?") {  // quoted or explicitly tagged: a string as written
        out.SetString(s, alloc);
        return true;
      }
      if (isPlainInteger(s)) {
        if (const auto n = parseInteger(s.front() == '+' ? s.substr(1) : s)) {
          out.SetInt64(*n);
          return true;
        }
      }
      static const std::set<std::string> kBoolWords = {"yes",  "Yes",  "YES",  "no",    "No",    "NO",
                                                       "true", "True", "TRUE", "false", "False", "FALSE",
                                                       "on",   "On",   "ON",   "off",   "Off",   "OFF"};
      if (kBoolWords.count(s)) {
        out.SetBool(*parseBool(s));
        return true;
      }
      if (!isPlainInteger(s) && s.find_first_of(".eE") != std::string::npos) {
        if (const auto f = parseFloat(s)) {
          out.SetDouble(*f);
          return true;
        }
      }
      out.SetString(s, alloc);
      return true;
    }
  }
  problems.error(line, path, "expected a YAML value");
  return false;
}

// ---------------------------------------------------------------- the loader

// Keys only one of the two formats has; a file is read in the format whose
// keys it uses most. On a tie (only keys both have, such as health_url) a file
// named hestia_config.yml is Hestia's, so its environment overrides apply.
constexpr std::string_view kHestiaTopKeys[] = {"semaphore_base_url", "semaphore_timeout", "semaphore_username",
                                               "semaphore_password", "semaphore_api_key"};
constexpr std::string_view kHestiaServiceKeys[] = {"idle_timeout_ms", "request_timeout_seconds",
                                                   "queue_size",      "retry_count",
                                                   "retry_delay_ms",  "fallback_url",
                                                   "instances",       "strategy",
                                                   "routing"};
constexpr std::string_view kNativeTopKeys[] = {"socket",    "socket_mode",  "socket_group",
                                               "state_dir", "history_size", "semaphore"};
constexpr std::string_view kNativeServiceKeys[] = {
    "warmup",       "start_timeout", "idle_timeout",  "failure_backoff", "health_interval", "health_timeout",
    "stop_timeout", "machine",       "start_command", "stop_command",    "semaphore"};

template <std::size_t N>
bool contains(const std::string_view (&list)[N], std::string_view key) {
  return std::find(std::begin(list), std::end(list), key) != std::end(list);
}

bool isHestiaServiceKey(std::string_view key) {
  return contains(kHestiaServiceKeys, key) || key.substr(0, 10) == "semaphore_";
}

struct FormatGuess {
  ConfigFormat format = ConfigFormat::Native;
  std::string key;  // the first key that speaks for that format, for messages
  int line = 0;
};

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

// "…: use one format per file" for a key of the other format.
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

// The per-service keys Hestia reads from <SERVICE_ID>_<FIELD> variables.
constexpr std::string_view kHestiaEnvFields[] = {"BASE_URL",
                                                 "HEALTH_URL",
                                                 "WARMUP_MS",
                                                 "IDLE_TIMEOUT_MS",
                                                 "REQUEST_TIMEOUT_SECONDS",
                                                 "QUEUE_SIZE",
                                                 "RETRY_COUNT",
                                                 "RETRY_DELAY_MS",
                                                 "FALLBACK_URL",
                                                 "SEMAPHORE_ENABLED",
                                                 "SEMAPHORE_MACHINE_ID",
                                                 "SEMAPHORE_START_TEMPLATE_ID",
                                                 "SEMAPHORE_STOP_TEMPLATE_ID",
                                                 "SEMAPHORE_TASK_TIMEOUT",
                                                 "SEMAPHORE_POLL_INTERVAL"};

// Hestia's per-service Semaphore settings, with Hestia's defaults, until it is
// known whether semaphore_enabled is on.
struct HestiaSemaphore {
  bool enabled = false;
  std::string machineId;
  std::int64_t startTemplateId = 1;
  std::int64_t stopTemplateId = 2;
  Millis taskTimeout = 300s;
  Millis pollInterval = 2s;
};

class Loader {
 public:
  Loader(Problems& problems, const Environment& env, const FileReader& readFile, std::filesystem::path dir)
      : problems_(problems), read_(problems), env_(env), readFile_(readFile), dir_(std::move(dir)) {}

  void loadNative(const YAML::Node& root, const FormatGuess& guess, Config& config);
  void loadHestia(const YAML::Node& root, const FormatGuess& guess, Config& config);

 private:
  // Native controld.yaml
  void readNativeSemaphore(const Setting& s, Config& config);
  void readNativeService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config);
  void readServiceSemaphore(const Setting& s, SemaphoreServiceSettings& out);
  void readExtraVars(const Setting& s, std::string& out);

  // Hestia
  void readHestiaService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config);
  void warnNginxSide(const Setting& s, std::string message);
  void warnAboutUnusedOverrides();

  // Both
  template <typename ReadService>
  void readServices(const Setting& s, ReadService readService);
  bool path(const Setting& s, std::string& out);
  const std::string* envValue(const std::string& name) const;
  void applyEnvironment(const std::vector<KeyHandler>& handlers, const std::string& prefix, const std::string& path,
                        int line);
  void tokenFallback(SemaphoreSettings& sem) const;

  Problems& problems_;
  Reader read_;
  const Environment& env_;
  const FileReader& readFile_;
  std::filesystem::path dir_;
  std::set<std::string> hestiaPrefixesUsed_;
};

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

template <typename ReadService>
void Loader::readServices(const Setting& s, ReadService readService) {
  if (s.isNull()) return;  // "services:" with nothing under it: reported as "no services" later
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping of service names to their settings");
    return;
  }
  forEachEntry(problems_, s.node, s.key,
               [&](const std::string& name, const std::string& dotted, int line, const YAML::Node& value) {
                 if (!isValidServiceName(name)) {
                   problems_.error(line, dotted,
                                   "invalid service name " + quote(name) + ": expected 1 to " +
                                       std::to_string(kMaxServiceNameLength) +
                                       " letters, digits, '-', '_' or '.', not starting with '.'");
                   return;
                 }
                 const Setting service{dotted, line, value, {}};
                 if (!value.IsMap()) {
                   read_.expected(service, "a mapping of the service's settings");
                   return;
                 }
                 readService(name, service);
               });
}

// ------------------------------------------------ native controld.yaml

void Loader::loadNative(const YAML::Node& root, const FormatGuess& guess, Config& config) {
  config.format = ConfigFormat::Native;
  readMapping(problems_, root, "",
              {
                  {"socket",
                   [&](const Setting& s) {
                     if (path(s, config.socketPath) && config.socketPath.size() >= sizeof(sockaddr_un::sun_path)) {
                       read_.error(s, "the socket path is " + std::to_string(config.socketPath.size()) +
                                          " bytes long; a Unix socket path must be shorter than " +
                                          std::to_string(sizeof(sockaddr_un::sun_path)));
                     }
                   }},
                  {"socket_mode",
                   [&](const Setting& s) {
                     constexpr std::string_view what = "an octal file mode like \"0660\"";
                     auto v = read_.scalar(s, what);
                     if (!v) return;
                     std::string digits = trim(*v);
                     if (digits.rfind("0o", 0) == 0) digits = digits.substr(2);
                     unsigned mode = 0;
                     const char* end = digits.data() + digits.size();
                     const auto [ptr, ec] = std::from_chars(digits.data(), end, mode, 8);
                     if (digits.empty() || ec != std::errc() || ptr != end || mode > 07777) {
                       read_.expected(s, what);
                       return;
                     }
                     config.socketMode = static_cast<mode_t>(mode);
                   }},
                  {"socket_group", [&](const Setting& s) { read_.text(s, config.socketGroup, "a group name"); }},
                  {"state_dir", [&](const Setting& s) { path(s, config.stateDir); }},
                  {"history_size",
                   [&](const Setting& s) {
                     std::int64_t n = 0;
                     if (read_.integer(s, n, 1, 100000, "a whole number from 1 to 100000")) {
                       config.historySize = static_cast<std::size_t>(n);
                     }
                   }},
                  {"semaphore", [&](const Setting& s) { readNativeSemaphore(s, config); }},
                  {"services",
                   [&](const Setting& s) {
                     readServices(s, [&](const std::string& name, const Setting& svc) {
                       readNativeService(name, svc, guess, config);
                     });
                   }},
              },
              [&](std::string_view key) { return otherFormatNote(guess, key, true); });
}

void Loader::readNativeSemaphore(const Setting& s, Config& config) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping with base_url, project_id and the credentials");
    return;
  }
  SemaphoreSettings sem;
  readMapping(
      problems_, s.node, s.key,
      {
          {"base_url",
           [&](const Setting& v) {
             if (read_.url(v, sem.baseUrl)) {
               while (endsWith(sem.baseUrl, "/"))
                 sem.baseUrl.pop_back();
             }
           }},
          {"project_id",
           [&](const Setting& v) { read_.integer(v, sem.projectId, 1, INT64_MAX, "a project id (1 or more)"); }},
          {"api_token", [&](const Setting& v) { read_.text(v, sem.apiToken, "an API token"); }},
          {"api_token_file",
           [&](const Setting& v) {
             std::string file;
             if (!path(v, file)) return;
             std::string why;
             const auto content = readFile_(file, why);
             if (!content) {
               read_.error(v, "cannot read the token file " + quote(file) + ": " + why);
             } else if (trim(*content).empty()) {
               read_.error(v, "the token file " + quote(file) + " is empty");
             } else {
               sem.apiToken = trim(*content);
             }
           }},
          {"username", [&](const Setting& v) { read_.text(v, sem.username, "a user name or e-mail address"); }},
          {"password", [&](const Setting& v) { read_.text(v, sem.password, "a password"); }},
          {"http_timeout", [&](const Setting& v) { read_.duration(v, sem.httpTimeout, DefaultUnit::Seconds, false); }},
      });
  if (problems_.lines.count(s.key + ".api_token") && problems_.lines.count(s.key + ".api_token_file")) {
    problems_.error(problems_.lines[s.key + ".api_token_file"], s.key + ".api_token_file",
                    "api_token is given too; keep one of them");
  }
  tokenFallback(sem);
  config.semaphore = std::move(sem);
}

void Loader::readNativeService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config) {
  ServiceConfig svc;
  svc.name = name;
  svc.where = {problems_.file(), s.line};
  const auto duration = [&](Millis& out, DefaultUnit unit, bool allowZero) {
    return [&out, unit, allowZero, this](const Setting& v) { read_.duration(v, out, unit, allowZero); };
  };
  static const std::vector<std::string_view> kServiceSemaphoreKeys = {
      "start_template_id", "stop_template_id", "task_timeout", "poll_interval", "machine_id", "extra_vars"};
  readMapping(problems_, s.node, s.key,
              {
                  {"base_url", [&](const Setting& v) { read_.url(v, svc.baseUrl); }},
                  {"health_url", [&](const Setting& v) { read_.url(v, svc.healthUrl); }},
                  {"warmup_ms", duration(svc.warmup, DefaultUnit::Milliseconds, true)},
                  {"warmup", duration(svc.warmup, DefaultUnit::Seconds, true)},
                  {"start_timeout", duration(svc.startTimeout, DefaultUnit::Seconds, false)},
                  {"idle_timeout", duration(svc.idleTimeout, DefaultUnit::Seconds, true)},
                  {"failure_backoff", duration(svc.failureBackoff, DefaultUnit::Seconds, true)},
                  {"health_interval", duration(svc.healthInterval, DefaultUnit::Seconds, false)},
                  {"health_timeout", duration(svc.healthTimeout, DefaultUnit::Seconds, false)},
                  {"stop_timeout", duration(svc.stopTimeout, DefaultUnit::Seconds, false)},
                  {"machine", [&](const Setting& v) { read_.text(v, svc.machine, "a machine name"); }},
                  {"start_command", [&](const Setting& v) { read_.argv(v, svc.startCommand); }},
                  {"stop_command", [&](const Setting& v) { read_.argv(v, svc.stopCommand); }},
                  {"semaphore",
                   [&](const Setting& v) {
                     SemaphoreServiceSettings sem;
                     readServiceSemaphore(v, sem);
                     svc.semaphore = std::move(sem);
                   }},
              },
              [&](std::string_view key) {
                const auto it = std::find(kServiceSemaphoreKeys.begin(), kServiceSemaphoreKeys.end(), key);
                if (it != kServiceSemaphoreKeys.end()) return std::string("it belongs under \"semaphore:\"");
                return otherFormatNote(guess, key, false);
              });
  if (problems_.lines.count(s.key + ".warmup") && problems_.lines.count(s.key + ".warmup_ms")) {
    problems_.error(problems_.lines[s.key + ".warmup"], s.key + ".warmup", "warmup_ms is given too; keep one of them");
  }
  if (svc.semaphore) {
    if (svc.semaphore->machineId.empty()) svc.semaphore->machineId = svc.machine;
    if (svc.machine.empty()) svc.machine = svc.semaphore->machineId;
  }
  config.services[name] = std::move(svc);
}

void Loader::readServiceSemaphore(const Setting& s, SemaphoreServiceSettings& sem) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping with start_template_id (and stop_template_id, task_timeout, extra_vars…)");
    return;
  }
  constexpr std::string_view templateId = "a task template id (1 or more)";
  readMapping(
      problems_, s.node, s.key,
      {
          {"start_template_id",
           [&](const Setting& v) { read_.integer(v, sem.startTemplateId, 1, INT64_MAX, templateId); }},
          {"stop_template_id",
           [&](const Setting& v) { read_.integer(v, sem.stopTemplateId, 1, INT64_MAX, templateId); }},
          {"task_timeout", [&](const Setting& v) { read_.duration(v, sem.taskTimeout, DefaultUnit::Seconds, false); }},
          {"poll_interval",
           [&](const Setting& v) { read_.duration(v, sem.pollInterval, DefaultUnit::Seconds, false); }},
          {"machine_id", [&](const Setting& v) { read_.text(v, sem.machineId, "a machine id"); }},
          {"extra_vars", [&](const Setting& v) { readExtraVars(v, sem.extraVarsJson); }},
      });
}

void Loader::readExtraVars(const Setting& s, std::string& out) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping of variable names to values, e.g. { model_name: sdxl }");
    return;
  }
  bool reserved = false;
  for (auto it = s.node.begin(); it != s.node.end(); ++it) {
    if (it->first.IsScalar() && contains(kReservedExtraVars, it->first.Scalar())) {
      problems_.error(keyLine(it->first), s.key + "." + it->first.Scalar(),
                      "controld sets " + it->first.Scalar() +
                          " itself (service_id, machine_id, action and ondemand_operation are reserved)");
      reserved = true;
    }
  }
  rapidjson::Document doc;
  if (!yamlToJson(s.node, doc, doc.GetAllocator(), s.key, s.line, problems_) || reserved) return;
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  doc.Accept(writer);
  out = buffer.GetString();
}

// ------------------------------------------------ Hestia's hestia_config.yml

void Loader::applyEnvironment(const std::vector<KeyHandler>& handlers, const std::string& prefix,
                              const std::string& path, int line) {
  // Hestia reads these from the file only.
  static constexpr std::string_view kFileOnly[] = {"services", "instances", "strategy", "routing"};
  for (const KeyHandler& h : handlers) {
    if (contains(kFileOnly, h.key)) continue;
    const std::string name = prefix + toUpper(h.key);
    const std::string* value = envValue(name);
    if (!value) continue;
    const std::string dotted = path.empty() ? std::string(h.key) : path + "." + std::string(h.key);
    const auto fileLine = problems_.lines.find(dotted);
    h.handle(Setting{dotted, fileLine != problems_.lines.end() ? fileLine->second : line, YAML::Node(*value), name});
  }
}

void Loader::warnNginxSide(const Setting& s, std::string message) {
  problems_.warning(s.line, s.key,
                    (s.envVar.empty() ? "" : "from environment variable " + s.envVar + ": ") +
                        "ignored by controld: " + std::move(message));
}

void Loader::loadHestia(const YAML::Node& root, const FormatGuess& guess, Config& config) {
  config.format = ConfigFormat::Hestia;
  SemaphoreSettings sem;
  const auto optionalText = [&](std::string& out, std::string_view what) {
    return [&out, what, this](const Setting& s) {
      if (s.isNull())
        out.clear();
      else
        read_.text(s, out, what);
    };
  };
  const std::vector<KeyHandler> handlers = {
      {"semaphore_base_url",
       [&](const Setting& s) {
         sem.baseUrl.clear();
         if (s.isNull()) return;
         if (read_.url(s, sem.baseUrl)) {
           while (endsWith(sem.baseUrl, "/"))
             sem.baseUrl.pop_back();
         }
       }},
      {"semaphore_timeout", [&](const Setting& s) { read_.duration(s, sem.httpTimeout, DefaultUnit::Seconds, false); }},
      {"semaphore_username", optionalText(sem.username, "a user name or e-mail address")},
      {"semaphore_password", optionalText(sem.password, "a password")},
      {"semaphore_api_key", optionalText(sem.apiToken, "an API token")},
      {"services",
       [&](const Setting& s) {
         readServices(
             s, [&](const std::string& name, const Setting& svc) { readHestiaService(name, svc, guess, config); });
       }},
  };
  readMapping(problems_, root, "", handlers, [&](std::string_view key) { return otherFormatNote(guess, key, true); });
  applyEnvironment(handlers, "", "", 0);
  tokenFallback(sem);
  // Without a server there are no Semaphore settings; a service that enables
  // Semaphore is then reported by validateConfig.
  if (!sem.baseUrl.empty()) config.semaphore = std::move(sem);
  warnAboutUnusedOverrides();
}

void Loader::readHestiaService(const std::string& name, const Setting& s, const FormatGuess& guess, Config& config) {
  ServiceConfig svc;
  svc.name = name;
  svc.where = {problems_.file(), s.line};
  svc.idleTimeout = 0ms;  // Hestia's default: never stop
  HestiaSemaphore sem;

  const std::string prefix = environmentPrefix(name);
  if (!hestiaPrefixesUsed_.insert(prefix).second) {
    // Only a problem once a variable is actually set for that prefix.
    for (std::string_view field : kHestiaEnvFields) {
      const std::string var = prefix + "_" + std::string(field);
      if (envValue(var)) {
        problems_.error(s.line, s.key,
                        "another service has the same environment prefix " + prefix + "_, so environment variable " +
                            var + " could belong to either; rename one of them");
        break;
      }
    }
  }

  const auto ms = [&](Millis& out, bool allowZero) {
    return [&out, allowZero, this](const Setting& v) { read_.duration(v, out, DefaultUnit::Milliseconds, allowZero); };
  };
  const auto seconds = [&](Millis& out) {
    return [&out, this](const Setting& v) { read_.duration(v, out, DefaultUnit::Seconds, false); };
  };
  const auto optionalUrl = [&](std::string& out) {
    return [&out, this](const Setting& v) {
      if (v.isNull())
        out.clear();
      else
        read_.url(v, out);
    };
  };
  const auto templateId = [&](std::int64_t& out) {
    return [&out, this](const Setting& v) { read_.integer(v, out, 1, INT64_MAX, "a task template id (1 or more)"); };
  };
  const std::vector<KeyHandler> handlers = {
      {"base_url", [&](const Setting& v) { read_.url(v, svc.baseUrl); }},
      {"health_url", optionalUrl(svc.healthUrl)},
      {"warmup_ms", ms(svc.warmup, true)},
      {"idle_timeout_ms", ms(svc.idleTimeout, true)},
      {"request_timeout_seconds",
       [&](const Setting& v) {
         if (!read_.duration(v, svc.waitHint, DefaultUnit::Seconds, false)) return;
         problems_.warning(v.line, v.key,
                           (v.envVar.empty() ? "" : "from environment variable " + v.envVar + ": ") +
                               "shown by controld status, but how long a request waits is nginx's job: set "
                               "\"ondemand_wait " +
                               formatDuration(svc.waitHint) + ";\" where the service's location is (default 60s)");
       }},
      {"semaphore_enabled", [&](const Setting& v) { read_.boolean(v, sem.enabled); }},
      {"semaphore_machine_id",
       [&](const Setting& v) {
         if (v.isNull())
           sem.machineId.clear();
         else
           read_.text(v, sem.machineId, "a machine id");
       }},
      {"semaphore_start_template_id", templateId(sem.startTemplateId)},
      {"semaphore_stop_template_id", templateId(sem.stopTemplateId)},
      {"semaphore_task_timeout", seconds(sem.taskTimeout)},
      {"semaphore_poll_interval", seconds(sem.pollInterval)},
      // Hestia proxies requests itself; here nginx does, so these are nginx's.
      {"retry_count",
       [&](const Setting& v) {
         std::int64_t n = 0;
         if (!read_.integer(v, n, 0, 1000, "a whole number, 0 or more")) return;
         warnNginxSide(v,
                       "retries are nginx's job: \"proxy_next_upstream error timeout;\" and "
                       "\"proxy_next_upstream_tries " +
                           std::to_string(n + 1) + ";\" in the location");
       }},
      {"retry_delay_ms",
       [&](const Setting& v) {
         Millis d{};
         if (!read_.duration(v, d, DefaultUnit::Milliseconds, true)) return;
         warnNginxSide(v,
                       "nginx retries the next server at once, without a delay; "
                       "\"proxy_next_upstream_timeout\" bounds how long it keeps trying");
       }},
      {"fallback_url",
       [&](const Setting& v) {
         std::string url;
         if (v.isNull() || !read_.url(v, url)) return;
         warnNginxSide(v, "a fallback is nginx's job: add \"server " + hostPort(url) +
                              " backup;\" to the service's upstream block and proxy_pass to that upstream");
       }},
      {"queue_size",
       [&](const Setting& v) {
         std::int64_t n = 0;
         if (!read_.integer(v, n, 1, INT64_MAX, "a whole number, 1 or more")) return;
         warnNginxSide(v, "how many requests may wait is nginx's job: \"ondemand_max_waiting " + std::to_string(n) +
                              ";\" in the location");
       }},
      {"instances",
       [&](const Setting& v) {
         if (!v.node.IsSequence()) {
           read_.expected(v, "a list of instances");
           return;
         }
         warnNginxSide(v,
                       "several instances are nginx's job: list them as \"server\" lines of an upstream block "
                       "and proxy_pass to it");
       }},
      {"strategy",
       [&](const Setting& v) {
         if (v.isNull()) return;
         std::string name;
         if (!read_.text(v, name, "a strategy name")) return;
         warnNginxSide(v,
                       "choosing an instance is nginx's job: pick the upstream block's load-balancing method "
                       "(round-robin by default, \"least_conn;\", \"hash $key;\", \"random;\")");
       }},
      {"routing",
       [&](const Setting& v) {
         if (!v.node.IsMap()) {
           read_.expected(v, "a mapping");
           return;
         }
         warnNginxSide(v,
                       "routing is nginx's job: a \"map\" on a header or argument choosing the upstream, or one "
                       "location per route with its own proxy_pass");
       }},
  };
  readMapping(problems_, s.node, s.key, handlers,
              [&](std::string_view key) { return otherFormatNote(guess, key, false); });
  applyEnvironment(handlers, prefix + "_", s.key, s.line);

  if (sem.enabled && sem.machineId.empty()) {
    const std::string key = s.key + ".semaphore_enabled";
    const auto line = problems_.lines.find(key);
    problems_.error(line != problems_.lines.end() ? line->second : s.line, s.key + ".semaphore_machine_id",
                    "missing: Semaphore is enabled, and the task needs the machine to run on (Hestia requires it "
                    "too); set semaphore_machine_id or " +
                        prefix + "_SEMAPHORE_MACHINE_ID");
  }
  if (sem.enabled) {
    SemaphoreServiceSettings out;
    out.startTemplateId = sem.startTemplateId;
    out.stopTemplateId = sem.stopTemplateId;
    out.taskTimeout = sem.taskTimeout;
    out.pollInterval = sem.pollInterval;
    out.machineId = sem.machineId;
    svc.semaphore = std::move(out);
    svc.machine = sem.machineId;
    // Hestia has no start timeout of its own: the task may use all of its
    // timeout and the service still gets the usual time to become healthy.
    svc.startTimeout = sem.taskTimeout + kNativeStartTimeout;
  }
  config.services[name] = std::move(svc);
}

// Hestia created services from the environment alone; controld takes them
// only from the file, so a variable for a service the file lacks is reported.
void Loader::warnAboutUnusedOverrides() {
  for (const auto& [var, value] : env_) {
    if (contains(kHestiaTopKeys, toLower(var))) continue;  // SEMAPHORE_BASE_URL and friends
    for (std::string_view field : kHestiaEnvFields) {
      if (var.size() <= field.size() + 1 || !endsWith(var, "_" + std::string(field))) continue;
      const std::string prefix = var.substr(0, var.size() - field.size() - 1);
      if (hestiaPrefixesUsed_.count(prefix)) break;
      std::string guess = toLower(prefix);
      std::replace(guess.begin(), guess.end(), '_', '-');
      problems_.warning(0, "services",
                        "environment variable " + var + " is not used: no service in this file has the prefix " +
                            prefix + "_ (controld takes services only from the file; add \"" + guess +
                            ":\" under services: to use it)");
      break;
    }
  }
}

// ------------------------------------------------ validation helpers

// The name a key has in the format the config was read from.
std::string keyName(const Config& config, const std::string& service, std::string_view nativeKey) {
  static const std::map<std::string_view, std::string_view> kServiceKeys = {
      {"semaphore", "semaphore_enabled"},
      {"semaphore.start_template_id", "semaphore_start_template_id"},
      {"semaphore.task_timeout", "semaphore_task_timeout"},
      {"idle_timeout", "idle_timeout_ms"},
  };
  static const std::map<std::string_view, std::string_view> kGlobalKeys = {
      {"semaphore", "semaphore_base_url"},          {"semaphore.base_url", "semaphore_base_url"},
      {"semaphore.username", "semaphore_username"}, {"semaphore.password", "semaphore_password"},
      {"semaphore.api_token", "semaphore_api_key"},
  };
  std::string_view key = nativeKey;
  if (config.format == ConfigFormat::Hestia) {
    const auto& table = service.empty() ? kGlobalKeys : kServiceKeys;
    if (const auto it = table.find(nativeKey); it != table.end()) key = it->second;
  }
  return service.empty() ? std::string(key) : "services." + service + "." + std::string(key);
}

int lineOf(const Config& config, const std::string& key, int fallback) {
  const auto it = config.lines.find(key);
  return it != config.lines.end() ? it->second : fallback;
}

}  // namespace

// ---------------------------------------------------------------- public API

std::string formatProblem(const ConfigProblem& problem) {
  std::string out = problem.where.file;
  if (problem.where.line > 0) out += ":" + std::to_string(problem.where.line);
  out += ": ";
  if (!problem.key.empty()) out += problem.key + ": ";
  return out + problem.message;
}

Environment processEnvironment() {
  Environment env;
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string_view text(*entry);
    const auto eq = text.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return env;
}

std::optional<std::string> readWholeFile(const std::string& path, std::string& error) {
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (!f) {
    error = std::strerror(errno);
    return std::nullopt;
  }
  std::string content;
  char buffer[8192];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0)
    content.append(buffer, n);
  const bool failed = std::ferror(f) != 0;
  const int savedErrno = errno;
  std::fclose(f);
  if (failed) {
    error = std::strerror(savedErrno);
    return std::nullopt;
  }
  return content;
}

ConfigProblems validateConfig(const Config& config) {
  ConfigProblems out;
  const auto error = [&](int line, std::string key, std::string message) {
    out.errors.push_back({{config.sourceFile, line}, std::move(key), std::move(message)});
  };
  const auto warning = [&](int line, std::string key, std::string message) {
    out.warnings.push_back({{config.sourceFile, line}, std::move(key), std::move(message)});
  };
  const bool hestia = config.format == ConfigFormat::Hestia;

  bool anySemaphore = false;
  for (const auto& [name, svc] : config.services) {
    const int serviceLine = svc.where.line;
    const auto key = [&](std::string_view k) { return keyName(config, name, k); };
    const auto line = [&](std::string_view k) { return lineOf(config, key(k), serviceLine); };
    const bool commands = !svc.startCommand.empty() || !svc.stopCommand.empty();

    if (svc.semaphore) {
      anySemaphore = true;
      if (commands) {
        const std::string_view which = svc.startCommand.empty() ? "stop_command" : "start_command";
        error(line(which), key(which),
              "a service has one driver, but this one has both semaphore and " + std::string(which) +
                  "; keep one of them");
      }
      if (!config.semaphore) {
        error(line("semaphore"), key("semaphore"),
              hestia ? "Semaphore is enabled, but there is no semaphore_base_url (nor SEMAPHORE_BASE_URL)"
                     : "this service uses Semaphore, but there is no top-level \"semaphore:\" section "
                       "(base_url, credentials)");
      }
      if (svc.semaphore->startTemplateId <= 0) {
        error(line("semaphore"), key("semaphore"),
              "start_template_id is missing: expected the id of the task template that starts the service");
      }
      if (svc.semaphore->taskTimeout > svc.startTimeout) {
        warning(line("semaphore.task_timeout"), key("semaphore.task_timeout"),
                "longer than start_timeout (" + formatDuration(svc.startTimeout) +
                    "): the start is abandoned before the task's own timeout applies");
      }
    }
    if (!svc.stopCommand.empty() && svc.startCommand.empty()) {
      error(line("stop_command"), key("stop_command"),
            "there is no start_command: controld could stop this service but never start it again");
    }
    if (svc.driverKind() == ServiceConfig::DriverKind::None && svc.healthUrl.empty()) {
      if (hestia) {
        warning(serviceLine, "services." + name,
                "neither semaphore_enabled nor health_url: controld has nothing to start or watch, so it always "
                "counts this service as warm; leave ondemand_service off for its location");
      } else {
        error(serviceLine, "services." + name,
              "no driver and no health_url: controld could neither start this service nor tell when it is ready; "
              "add health_url, or a driver (semaphore:, or start_command/stop_command)");
      }
    }
    const bool canStop = (svc.semaphore && svc.semaphore->stopTemplateId > 0) || !svc.stopCommand.empty();
    if (svc.idleTimeout.count() > 0 && !canStop && config.lines.count(key("idle_timeout"))) {
      warning(line("idle_timeout"), key("idle_timeout"),
              "controld has no way to stop this service (no stop_command or stop_template_id), so the idle "
              "timeout does nothing");
    }
  }

  if (config.semaphore) {
    const SemaphoreSettings& sem = *config.semaphore;
    const int sectionLine = lineOf(config, keyName(config, "", "semaphore"), 0);
    const auto line = [&](std::string_view k) { return lineOf(config, keyName(config, "", k), sectionLine); };
    if (sem.baseUrl.empty() && (!hestia || anySemaphore)) {
      error(line("semaphore.base_url"), keyName(config, "", "semaphore.base_url"),
            hestia ? "missing: expected the Semaphore server's URL, e.g. http://semaphore.internal:3000 "
                     "(or set SEMAPHORE_BASE_URL)"
                   : "base_url is missing: expected the Semaphore server's URL, e.g. http://semaphore.internal:3000");
    }
    if (sem.username.empty() != sem.password.empty()) {
      const std::string_view given = sem.username.empty() ? "semaphore.password" : "semaphore.username";
      error(line(given), keyName(config, "", given),
            sem.username.empty() ? "a password without a username" : "a username without a password");
    } else if (!sem.apiToken.empty() && !sem.username.empty()) {
      warning(line("semaphore.username"), keyName(config, "", "semaphore.username"),
              "not used: an API token is given, and controld uses the token");
    }
    if (anySemaphore && sem.apiToken.empty() && sem.username.empty() && sem.password.empty()) {
      error(sectionLine, keyName(config, "", "semaphore"),
            hestia ? "no credentials for Semaphore: expected semaphore_api_key, or semaphore_username and "
                     "semaphore_password (or the environment variable SEMAPHORE_API_TOKEN)"
                   : "no credentials: expected api_token, api_token_file, or username and password (or the "
                     "environment variable SEMAPHORE_API_TOKEN)");
    }
  }

  if (config.services.empty()) {
    warning(lineOf(config, "services", 0), "services", "no services are defined: controld has nothing to do");
  }
  return out;
}

ConfigLoadResult loadConfig(const std::string& path, const Environment& env, const FileReader& readFile) {
  ConfigLoadResult result;
  Problems problems(path);
  Config config;
  config.sourceFile = path;
  try {
    std::string why;
    const auto text = readFile(path, why);
    if (!text) {
      problems.error(0, "", "cannot read the config file: " + why);
    } else {
      YAML::Node root;
      try {
        root = YAML::Load(*text);
      } catch (const YAML::ParserException& e) {
        problems.error(e.mark.line >= 0 ? e.mark.line + 1 : 0, "", "invalid YAML: " + e.msg);
      }
      if (problems.errors.empty()) {
        std::error_code ec;
        std::filesystem::path dir = std::filesystem::absolute(path, ec).parent_path();
        if (ec) dir = std::filesystem::path(path).parent_path();
        Loader loader(problems, env, readFile, dir);
        if (root.IsNull()) {
          problems.error(0, "", "the file is empty: expected a mapping with services: (see docs/CONFIGURATION.md)");
        } else if (!root.IsMap()) {
          problems.error(keyLine(root), "",
                         "expected a mapping of settings at the top of the file; got " + describe(root));
        } else if (const FormatGuess guess = guessFormat(root, path); guess.format == ConfigFormat::Hestia) {
          loader.loadHestia(root, guess, config);
        } else {
          loader.loadNative(root, guess, config);
        }
        config.lines = problems.lines;
        // Relations between keys are only worth checking once each key is right.
        if (problems.errors.empty() && root.IsMap()) {
          ConfigProblems checked = validateConfig(config);
          for (auto& p : checked.errors)
            problems.errors.push_back(std::move(p));
          for (auto& p : checked.warnings)
            problems.warnings.push_back(std::move(p));
        }
      }
    }
  } catch (const std::exception& e) {
    problems.error(0, "", std::string("cannot load the config: ") + e.what());
  } catch (...) {
    problems.error(0, "", "cannot load the config: unexpected error");
  }

  const auto byLine = [](const ConfigProblem& a, const ConfigProblem& b) { return a.where.line < b.where.line; };
  std::stable_sort(problems.errors.begin(), problems.errors.end(), byLine);
  std::stable_sort(problems.warnings.begin(), problems.warnings.end(), byLine);
  result.errors = std::move(problems.errors);
  result.warnings = std::move(problems.warnings);
  if (result.errors.empty()) result.config = std::move(config);
  return result;
}

}  // namespace ondemand::controld
