#include "controld/drivers/semaphore/semaphore_text.hpp"

#include <rapidjson/document.h>

#include <cstdio>

#include "controld/drivers/semaphore/semaphore_common.hpp"
#include "controld/io/log.hpp"
#include "shared/json_read.hpp"

namespace ondemand::controld {

using namespace semaphore_detail;

// --- output handling ---------------------------------------------------------

std::string stripAnsi(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == 0x1b) {
      if (i + 1 >= text.size()) break;
      const auto kind = static_cast<unsigned char>(text[i + 1]);
      if (kind == '[') {  // CSI: parameters, intermediates, one final byte
        std::size_t j = i + 2;
        while (j < text.size() && static_cast<unsigned char>(text[j]) >= 0x20 &&
               static_cast<unsigned char>(text[j]) <= 0x3f)
          ++j;
        i = j < text.size() ? j : text.size();
      } else if (kind == ']') {  // OSC: up to BEL or ESC '\'
        std::size_t j = i + 2;
        while (j < text.size() && text[j] != '\a' && !(text[j] == 0x1b && j + 1 < text.size() && text[j + 1] == '\\'))
          ++j;
        i = (j < text.size() && text[j] == 0x1b) ? j + 1 : j;
      } else {
        i += 1;  // a two-byte escape
      }
      continue;
    }
    if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) continue;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

std::optional<std::vector<std::string>> lastOutputLines(std::string_view body, std::size_t maxLines, bool cut) {
  rapidjson::Document doc;
  if (cut) {
    // The end of an array of entries: the array made again from the first
    // entry that begins after a "},{" (which a string may hold too, then
    // the next one is tried).
    bool parsed = false;
    std::size_t from = 0;
    for (int attempt = 0; attempt < 16 && !parsed; ++attempt) {
      const auto boundary = body.find("},{", from);
      if (boundary == std::string_view::npos) break;
      parsed = parseJson(doc, "[" + std::string(body.substr(boundary + 2))).empty();
      from = boundary + 1;
    }
    if (!parsed) return std::nullopt;
  } else if (!parseJson(doc, body).empty()) {
    return std::nullopt;
  }
  std::vector<std::string> lines;
  if (doc.IsNull()) return lines;  // Semaphore answers null for an empty log
  if (!doc.IsArray()) return std::nullopt;
  for (const auto& entry : doc.GetArray()) {
    if (!entry.IsObject()) continue;
    const auto output = entry.FindMember("output");
    if (output == entry.MemberEnd() || !output->value.IsString()) continue;
    const std::string text = stripAnsi(std::string_view(output->value.GetString(), output->value.GetStringLength()));
    std::size_t start = 0;
    while (start <= text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(start, end - start);
      while (!line.empty() && (line.back() == ' ' || line.back() == '\t'))
        line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos)
        lines.push_back(protocol::truncateUtf8(line, kMaxLineBytes));
      start = end + 1;
    }
  }
  if (lines.size() > maxLines) lines.erase(lines.begin(), lines.end() - static_cast<std::ptrdiff_t>(maxLines));
  return lines;
}

// --- finding the task of an operation ---------------------------------------

std::optional<std::int64_t> rfc3339Millis(std::string_view text) {
  const auto digits = [text](std::size_t at, std::size_t count) -> std::optional<int> {
    if (at + count > text.size()) return std::nullopt;
    int value = 0;
    for (std::size_t i = at; i < at + count; ++i) {
      if (text[i] < '0' || text[i] > '9') return std::nullopt;
      value = value * 10 + (text[i] - '0');
    }
    return value;
  };
  if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != 't') || text[13] != ':' ||
      text[16] != ':')
    return std::nullopt;
  const auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2);
  const auto hour = digits(11, 2), minute = digits(14, 2), second = digits(17, 2);
  if (!year || !month || !day || !hour || !minute || !second || *hour > 23 || *minute > 59 || *second > 60)
    return std::nullopt;
  std::size_t i = 19;
  std::int64_t millis = 0;
  if (text[i] == '.') {
    int scale = 100;
    for (++i; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, scale /= 10)
      millis += (text[i] - '0') * scale;
  }
  std::int64_t offsetMinutes = 0;  // the zone is required: a local time would be off by hours
  if (i + 1 == text.size() && (text[i] == 'Z' || text[i] == 'z')) {
    // UTC
  } else if (i + 6 == text.size() && (text[i] == '+' || text[i] == '-') && text[i + 3] == ':') {
    const auto hours = digits(i + 1, 2), minutes = digits(i + 4, 2);
    if (!hours || !minutes) return std::nullopt;
    offsetMinutes = (text[i] == '-' ? -1 : 1) * (*hours * 60 + *minutes);
  } else {
    return std::nullopt;
  }
  const std::chrono::year_month_day date{std::chrono::year(*year), std::chrono::month(static_cast<unsigned>(*month)),
                                         std::chrono::day(static_cast<unsigned>(*day))};
  if (!date.ok()) return std::nullopt;
  const std::int64_t days = std::chrono::sys_days(date).time_since_epoch().count();
  const std::int64_t minutes = (days * 24 + *hour) * 60 + *minute - offsetMinutes;
  return minutes * 60'000 + *second * 1000 + millis;
}

std::optional<TaskSearch> searchTaskList(std::string_view body, std::string_view operationId) {
  rapidjson::Document doc;
  if (!parseJson(doc, body).empty() || !doc.IsArray()) return std::nullopt;
  TaskSearch search;
  bool createdKnown = true;
  for (const auto& task : doc.GetArray()) {
    if (!task.IsObject()) return std::nullopt;
    ++search.listed;
    // Semaphore lists the newest first, its API description says otherwise:
    // the order is not relied upon.
    const auto created = task.FindMember("created");
    std::optional<std::int64_t> createdMs;
    if (created != task.MemberEnd() && created->value.IsString())
      createdMs = rfc3339Millis(std::string_view(created->value.GetString(), created->value.GetStringLength()));
    if (!createdMs) {
      createdKnown = false;
    } else if (search.oldestCreatedMs == 0 || *createdMs < search.oldestCreatedMs) {
      search.oldestCreatedMs = *createdMs;
    }

    const auto id = task.FindMember("id");
    const auto environment = task.FindMember("environment");
    if (id == task.MemberEnd() || !id->value.IsInt64() || environment == task.MemberEnd() ||
        !environment->value.IsString())
      continue;
    rapidjson::Document vars;
    if (!parseJson(vars, std::string_view(environment->value.GetString(), environment->value.GetStringLength()))
             .empty() ||
        !vars.IsObject())
      continue;
    const auto key = vars.FindMember(rapidjson::StringRef(kOperationKey.data(), kOperationKey.size()));
    if (key == vars.MemberEnd() || !key->value.IsString() ||
        std::string_view(key->value.GetString(), key->value.GetStringLength()) != operationId)
      continue;
    // Several only if someone ran it again from Semaphore's task history: the
    // first one is the task controld sent. The template is not compared: the
    // id alone names the operation, and a new configuration may have changed
    // the template since.
    if (search.taskId != 0 && id->value.GetInt64() > search.taskId) continue;
    search.taskId = id->value.GetInt64();
    const auto status = task.FindMember("status");
    search.status = status != task.MemberEnd() && status->value.IsString()
                        ? std::string(status->value.GetString(), status->value.GetStringLength())
                        : std::string();
  }
  if (!createdKnown) search.oldestCreatedMs = 0;
  return search;
}

}  // namespace ondemand::controld
