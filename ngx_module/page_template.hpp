#pragma once
// A custom waiting page (ondemand_page; the built-in pages are pages.cpp):
// a small HTML template with {{name}} placeholders (docs/MODULE.md lists
// them). Compiled once when nginx reads its configuration, so a typo is an
// `nginx -t` error, not a broken page.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ondemand::module {

class PageTemplate {
 public:
  enum class Field { Service, State, Elapsed, ElapsedSeconds, Refresh, TaskId, LastStart, LastStartSeconds, Message };

  struct Values {
    std::string_view service;
    std::string_view state;
    long long elapsedSeconds = 0;  // how long the service has been starting (or in its state)
    int refreshSeconds = 0;
    long long taskId = 0;            // 0: none
    long long lastStartSeconds = 0;  // how long the last good start took; 0: none yet
    std::string_view message;
  };

  // The template, or nullopt with `error` saying what is wrong.
  static std::optional<PageTemplate> compile(std::string_view text, std::string& error);

  // Every value is HTML-escaped.
  std::string render(const Values& values) const;

 private:
  struct Segment {
    std::string literal;  // text before the field
    std::optional<Field> field;
  };
  std::vector<Segment> segments_;
};

std::string htmlEscape(std::string_view text);
// 75 -> "1 min 15 s", 9 -> "9 s".
std::string humanSeconds(long long seconds);

}  // namespace ondemand::module
