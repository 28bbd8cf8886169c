#pragma once
// One line per event on stderr, as key=value pairs, readable in a terminal and
// under systemd (journald adds its own timestamps, so ours are left out there):
//   level=info event=transition service=comfyui from=cold to=starting cause=request detail="GET /"
// Under journald (JOURNAL_STREAM set) each line goes to the journal's native
// socket instead, with the line as MESSAGE= and structured fields beside it:
// PRIORITY=, EVENT=, SERVICE= and STATE= (the state a transition went to, or
// the one recovered), so `journalctl -u controld SERVICE=comfyui` works. A
// line the journal does not take at once goes to stderr as before.

#include <cstdint>
#include <string>
#include <string_view>

namespace ondemand::controld {

enum class LogLevel { Debug, Info, Warning, Error };

class LogLine {
 public:
  LogLine(LogLevel level, std::string_view event);
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  ~LogLine();  // writes the line

  LogLine& kv(std::string_view key, std::string_view value);
  LogLine& kv(std::string_view key, const std::string& value) { return kv(key, std::string_view(value)); }
  LogLine& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  LogLine& kv(std::string_view key, std::int64_t value);
  LogLine& kv(std::string_view key, std::uint64_t value);
  LogLine& kv(std::string_view key, int value) { return kv(key, static_cast<std::int64_t>(value)); }

 private:
  std::string line_;
  LogLevel level_ = LogLevel::Info;
  std::string event_, service_, state_;
};

// Lines below this level are dropped (CONTROLD_LOG_LEVEL=debug|info|warning|error).
void setLogLevel(LogLevel level);
bool parseLogLevel(std::string_view text, LogLevel& out);

}  // namespace ondemand::controld
