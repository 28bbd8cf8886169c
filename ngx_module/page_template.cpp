#include "ngx_module/page_template.hpp"

#include <array>
#include <utility>

namespace ondemand::module {

namespace {

constexpr std::array<std::pair<std::string_view, PageTemplate::Field>, 9> kFields{{
    {"service", PageTemplate::Field::Service},
    {"state", PageTemplate::Field::State},
    {"elapsed", PageTemplate::Field::Elapsed},
    {"elapsed_seconds", PageTemplate::Field::ElapsedSeconds},
    {"refresh", PageTemplate::Field::Refresh},
    {"task_id", PageTemplate::Field::TaskId},
    {"last_start", PageTemplate::Field::LastStart},
    {"last_start_seconds", PageTemplate::Field::LastStartSeconds},
    {"message", PageTemplate::Field::Message},
}};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<PageTemplate> PageTemplate::compile(std::string_view text, std::string& error) {
  PageTemplate page;
  std::string literal;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t open = text.find("{{", pos);
    if (open == std::string_view::npos) {
      literal.append(text.substr(pos));
      break;
    }
    literal.append(text.substr(pos, open - pos));
    const std::size_t close = text.find("}}", open + 2);
    if (close == std::string_view::npos) {
      error = "unclosed \"{{\" at offset " + std::to_string(open);
      return std::nullopt;
    }
    const std::string_view name = trim(text.substr(open + 2, close - open - 2));
    std::optional<Field> field;
    for (const auto& [fieldName, value] : kFields) {
      if (fieldName == name) field = value;
    }
    if (!field) {
      error = "unknown placeholder \"{{" + std::string(name) +
              "}}\" (known: service, state, elapsed, elapsed_seconds, refresh, task_id, last_start, "
              "last_start_seconds, message)";
      return std::nullopt;
    }
    page.segments_.push_back({std::move(literal), field});
    literal.clear();
    pos = close + 2;
  }
  if (!literal.empty()) page.segments_.push_back({std::move(literal), std::nullopt});
  return page;
}

std::string PageTemplate::render(const Values& v) const {
  std::string out;
  out.reserve(2048);
  for (const Segment& segment : segments_) {
    out.append(segment.literal);
    if (!segment.field) continue;
    switch (*segment.field) {
      case Field::Service:
        out.append(htmlEscape(v.service));
        break;
      case Field::State:
        out.append(htmlEscape(v.state));
        break;
      case Field::Elapsed:
        out.append(humanSeconds(v.elapsedSeconds));
        break;
      case Field::ElapsedSeconds:
        out.append(std::to_string(v.elapsedSeconds));
        break;
      case Field::Refresh:
        out.append(std::to_string(v.refreshSeconds));
        break;
      case Field::TaskId:
        if (v.taskId > 0) out.append(std::to_string(v.taskId));
        break;
      case Field::LastStart:
        if (v.lastStartSeconds > 0) out.append(humanSeconds(v.lastStartSeconds));
        break;
      case Field::LastStartSeconds:
        if (v.lastStartSeconds > 0) out.append(std::to_string(v.lastStartSeconds));
        break;
      case Field::Message:
        out.append(htmlEscape(v.message));
        break;
    }
  }
  return out;
}

std::string htmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    switch (ch) {
      case '&':
        out.append("&amp;");
        break;
      case '<':
        out.append("&lt;");
        break;
      case '>':
        out.append("&gt;");
        break;
      case '"':
        out.append("&quot;");
        break;
      case '\'':
        out.append("&#39;");
        break;
      default:
        out.push_back(ch);
    }
  }
  return out;
}

std::string humanSeconds(long long seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return std::to_string(seconds) + " s";
  const long long minutes = seconds / 60;
  if (minutes < 60) return std::to_string(minutes) + " min " + std::to_string(seconds % 60) + " s";
  return std::to_string(minutes / 60) + " h " + std::to_string(minutes % 60) + " min";
}

}  // namespace ondemand::module
