#include "controld/io/log.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "shared/enum_names.hpp"

namespace ondemand::controld {

namespace {

LogLevel gLevel = LogLevel::Info;

constexpr EnumName<LogLevel> kLevelNames[] = {
    {LogLevel::Debug, "debug"}, {LogLevel::Info, "info"}, {LogLevel::Warning, "warning"}, {LogLevel::Error, "error"}};

const char* levelName(LogLevel level) {
  return nameOf(kLevelNames, level, "info");
}

bool underJournal() {
  static const bool journal = std::getenv("JOURNAL_STREAM") != nullptr;
  return journal;
}

bool needsQuotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

}  // namespace

void setLogLevel(LogLevel level) {
  gLevel = level;
}

bool parseLogLevel(std::string_view text, LogLevel& out) {
  const auto level = valueOf(kLevelNames, text);
  if (level) out = *level;
  return level.has_value();
}

LogLine::LogLine(LogLevel level, std::string_view event) {
  if (level < gLevel) return;
  line_.reserve(160);
  if (!underJournal()) {
    const auto now = std::chrono::system_clock::now();
    const std::time_t secs = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    line_ += buf;
  }
  line_ += "level=";
  line_ += levelName(level);
  line_ += " event=";
  line_ += event;
}

LogLine::~LogLine() {
  if (line_.empty()) return;
  line_.push_back('\n');
  // One write() per line so lines from concurrent processes never interleave.
  [[maybe_unused]] const auto n = ::write(STDERR_FILENO, line_.data(), line_.size());
}

LogLine& LogLine::kv(std::string_view key, std::string_view value) {
  if (line_.empty()) return *this;
  line_ += ' ';
  line_ += key;
  line_ += '=';
  if (!needsQuotes(value)) {
    line_ += value;
    return *this;
  }
  line_ += '"';
  for (char c : value) {
    if (c == '"' || c == '\\') {
      line_ += '\\';
      line_ += c;
    } else if (c == '\n') {
      line_ += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      line_ += ' ';
    } else {
      line_ += c;
    }
  }
  line_ += '"';
  return *this;
}

LogLine& LogLine::kv(std::string_view key, std::int64_t value) {
  return kv(key, std::to_string(value));
}
LogLine& LogLine::kv(std::string_view key, std::uint64_t value) {
  return kv(key, std::to_string(value));
}

}  // namespace ondemand::controld
