#include "controld/config/yaml_json.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <set>

namespace ondemand::controld::config_detail {

namespace {

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

// How much one YAML value may become as JSON. Aliases make a tree of a few
// hundred bytes stand for billions of values (an "alias bomb"): the walk
// stops at these limits with an error instead of growing without bound.
constexpr std::size_t kMaxYamlValues = 100'000;
constexpr std::size_t kMaxYamlDepth = 32;

struct YamlBudget {
  std::size_t values = 0;
  std::size_t depth = 0;
};

bool convert(const YAML::Node& node, rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc,
             const std::string& path, int line, Problems& problems, YamlBudget& budget) {
  if (++budget.values > kMaxYamlValues) {
    problems.error(line, path,
                   "more than " + std::to_string(kMaxYamlValues) +
                       " values once YAML aliases are expanded: too large to send with every task");
    return false;
  }
  if (budget.depth >= kMaxYamlDepth) {
    problems.error(line, path, "nested deeper than " + std::to_string(kMaxYamlDepth) + " levels");
    return false;
  }
  struct Deeper {
    std::size_t& depth;
    explicit Deeper(std::size_t& d) : depth(d) { ++depth; }
    ~Deeper() { --depth; }
  } deeper(budget.depth);
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out.SetNull();
      return true;
    case YAML::NodeType::Sequence: {
      out.SetArray();
      for (const YAML::Node& item : node) {
        rapidjson::Value v;
        if (!convert(item, v, alloc, path, line, problems, budget)) return false;
        out.PushBack(v, alloc);
      }
      return true;
    }
    case YAML::NodeType::Map: {
      out.SetObject();
      bool ok = true;
      forEachEntry(problems, node, path,
                   [&](const std::string& key, const std::string& dotted, int keyLine, const YAML::Node& value) {
                     if (!ok) return;  // one error is enough
                     rapidjson::Value v;
                     if (!convert(value, v, alloc, dotted, keyLine, problems, budget)) {
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

}  // namespace

// Converts a YAML value to JSON the way Ansible would have read it from YAML:
// plain scalars that look like numbers or booleans become numbers and booleans,
// quoted ones stay strings.
bool yamlToJson(const YAML::Node& node, rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc,
                const std::string& path, int line, Problems& problems) {
  YamlBudget budget;
  return convert(node, out, alloc, path, line, problems, budget);
}

}  // namespace ondemand::controld::config_detail
