#include "controld/io/log.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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

int syslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return 7;
    case LogLevel::Info:
      return 6;
    case LogLevel::Warning:
      return 4;
    case LogLevel::Error:
      return 3;
  }
  return 6;
}

// journald's native protocol (systemd.journal-fields(7), "native protocol"):
// one datagram of FIELD=value lines; a value with a newline is sent as
// FIELD\n, its length as 64-bit little endian, the value and \n.
void appendField(std::string& out, std::string_view name, std::string_view value) {
  if (value.find('\n') == std::string_view::npos) {
    out.append(name).append("=").append(value).append("\n");
    return;
  }
  out.append(name).append("\n");
  std::uint64_t n = value.size();
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out.append(value).append("\n");
}

// The socket the journal listens on; CONTROLD_JOURNAL_SOCKET replaces it
// (for tests). Opened once, non-blocking: a full journal never stalls the loop.
bool sendToJournal(const std::string& datagram) {
  static const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  static const sockaddr_un addr = [] {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const char* override = std::getenv("CONTROLD_JOURNAL_SOCKET");
    const char* path = override && *override ? override : "/run/systemd/journal/socket";
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    return a;
  }();
  if (fd < 0) return false;
  return ::sendto(fd, datagram.data(), datagram.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr),
                  sizeof addr) == static_cast<ssize_t>(datagram.size());
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

LogLine::LogLine(LogLevel level, std::string_view event) : level_(level) {
  if (level < gLevel) return;
  event_ = event;
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
  if (underJournal()) {
    std::string datagram;
    appendField(datagram, "MESSAGE", line_);
    appendField(datagram, "PRIORITY", std::to_string(syslogPriority(level_)));
    appendField(datagram, "SYSLOG_IDENTIFIER", "controld");
    appendField(datagram, "EVENT", event_);
    if (!service_.empty()) appendField(datagram, "SERVICE", service_);
    if (!state_.empty()) appendField(datagram, "STATE", state_);
    if (sendToJournal(datagram)) return;
  }
  line_.push_back('\n');
  // One write() per line so lines from concurrent processes never interleave.
  [[maybe_unused]] const auto n = ::write(STDERR_FILENO, line_.data(), line_.size());
}

LogLine& LogLine::kv(std::string_view key, std::string_view value) {
  if (line_.empty()) return *this;
  if (key == "service") service_ = value;
  if (key == "to" || key == "state") state_ = value;
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
