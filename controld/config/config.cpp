#include "controld/config/config.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "controld/config/loader.hpp"
#include "shared/enum_names.hpp"

extern char** environ;

namespace ondemand::controld {

using namespace config_detail;

namespace {

constexpr EnumName<ServiceConfig::DriverKind> kDriverNames[] = {{ServiceConfig::DriverKind::None, "none"},
                                                                {ServiceConfig::DriverKind::Command, "command"},
                                                                {ServiceConfig::DriverKind::Semaphore, "semaphore"}};

}  // namespace

const char* driverName(const ServiceConfig& c) {
  return nameOf(kDriverNames, c.driverKind(), "none");
}

std::string withoutTrailingSlashes(std::string url) {
  while (!url.empty() && url.back() == '/')
    url.pop_back();
  return url;
}

std::string urlUserinfo(std::string_view url) {
  const auto scheme = url.find("://");
  if (scheme == std::string_view::npos) return {};
  const std::string_view authority = url.substr(scheme + 3, url.find_first_of("/?#", scheme + 3) - (scheme + 3));
  const auto at = authority.rfind('@');
  return at == std::string_view::npos ? std::string() : std::string(authority.substr(0, at));
}

std::string withoutCredentials(std::string_view url) {
  const std::string userinfo = urlUserinfo(url);
  if (userinfo.empty()) return std::string(url);
  const auto start = url.find("://") + 3;
  return std::string(url.substr(0, start)) + "***" + std::string(url.substr(start + userinfo.size()));
}

std::string upstreamOf(const std::string& baseUrl) {
  std::string_view url = baseUrl;
  const auto scheme = url.find("://");
  if (scheme == std::string_view::npos) return {};
  const bool https = url.substr(0, scheme) == "https";
  url.remove_prefix(scheme + 3);
  url = url.substr(0, url.find_first_of("/?#"));
  if (const auto at = url.rfind('@'); at != std::string_view::npos) url.remove_prefix(at + 1);  // user:password@
  if (url.empty()) return {};
  // A port is after the last ':' outside brackets ("[::1]:8080").
  const auto colon = url.rfind(':');
  const auto bracket = url.rfind(']');
  const bool hasPort = colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket);
  if (hasPort) return std::string(url);
  return std::string(url) + (https ? ":443" : ":80");
}

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

namespace {

// The first tab in a line's indentation (1-based line and column), for a
// YAML error that does not say it: YAML forbids tabs there.
std::optional<std::pair<int, int>> indentationTab(const std::string& text, int upToLine) {
  int line = 1;
  std::size_t pos = 0;
  while (pos < text.size() && line <= upToLine) {
    const std::size_t end = std::min(text.find('\n', pos), text.size());
    for (std::size_t i = pos; i < end && (text[i] == ' ' || text[i] == '\t'); ++i) {
      if (text[i] == '\t') return std::make_pair(line, static_cast<int>(i - pos) + 1);
    }
    pos = end + 1;
    ++line;
  }
  return std::nullopt;
}

}  // namespace

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
        const int line = e.mark.line >= 0 ? e.mark.line + 1 : 0;
        if (const auto tab = indentationTab(*text, line > 0 ? line : INT_MAX)) {
          problems.error(tab->first, "",
                         "invalid YAML: a tab in the indentation (column " + std::to_string(tab->second) +
                             "); YAML does not allow tabs there: indent with spaces");
        } else {
          problems.error(line, "", "invalid YAML: " + e.msg);
        }
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
