#include "controld/config/reader.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace ondemand::controld::config_detail {

namespace {

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

}  // namespace

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

std::optional<bool> parseBool(std::string_view text) {
  const std::string lower = toLower(text);
  if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") return true;
  if (lower == "false" || lower == "no" || lower == "off" || lower == "0") return false;
  return std::nullopt;
}

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

std::optional<double> parseAmount(std::string_view text) {
  if (text.empty() || text.size() > 40) return std::nullopt;
  bool digit = false;
  int dots = 0;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      digit = true;
    } else if (c == '.') {
      ++dots;
    } else {
      return std::nullopt;
    }
  }
  if (!digit || dots > 1) return std::nullopt;
  return std::strtod(std::string(text).c_str(), nullptr);
}

bool Reader::amounts(const Setting& s, std::map<std::string, double>& out, std::string_view what) {
  if (!s.node.IsMap()) {
    expected(s, std::string(what));
    return false;
  }
  bool ok = true;
  forEachEntry(problems_, s.node, s.key,
               [&](const std::string& name, const std::string& dotted, int line, const YAML::Node& value) {
                 const Setting item{dotted, line, value, {}};
                 constexpr std::string_view number = "a number, 0 or more (whole or decimal, e.g. 24 or 7.5)";
                 const auto v = scalar(item, number);
                 if (!v) {
                   ok = false;
                   return;
                 }
                 const auto n = parseAmount(trim(*v));
                 if (!n) {
                   expected(item, number);
                   ok = false;
                   return;
                 }
                 out[name] = *n;
               });
  return ok;
}

void readMapping(Problems& problems, const YAML::Node& map, const std::string& path,
                 const std::vector<KeyHandler>& handlers, const UnknownKeyNote& note) {
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

}  // namespace ondemand::controld::config_detail
