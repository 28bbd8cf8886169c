#pragma once
// Reading what Semaphore answers: task output without ANSI, the last lines of
// it, the task of an operation in a task list, RFC 3339 timestamps. Pure text
// functions.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ondemand::controld {

// Removes ANSI escape sequences (colours, cursor movement) and the control
// characters but tab from task output.
std::string stripAnsi(std::string_view text);

// The last `maxLines` non-blank lines of a GET …/tasks/{id}/output answer (an
// array of {"output": …} objects, or null), ANSI removed. nullopt when the
// body is not such an answer.
std::optional<std::vector<std::string>> lastOutputLines(std::string_view body, std::size_t maxLines, bool cut = false);

// How much of a task's output controld reads: its end, this many bytes.
inline constexpr std::size_t kOutputTailBytes = 256 * 1024;

// What a GET …/tasks/last answer says about the task of one operation: the
// task whose environment (a JSON object text) has "ondemand_operation" equal
// to `operationId`. nullopt when the body is not a list of tasks.
struct TaskSearch {
  std::int64_t taskId = 0;  // 0: none listed; of several, the first created
  std::string status;
  std::size_t listed = 0;            // how many tasks the answer holds
  std::int64_t oldestCreatedMs = 0;  // when the oldest of them was created (unix ms), 0 if unknown
};
std::optional<TaskSearch> searchTaskList(std::string_view body, std::string_view operationId);

// Semaphore's timestamps ("2024-10-25T08:00:00.123Z", RFC 3339 with any
// fraction and Z or an offset) as unix ms; nullopt for anything else.
std::optional<std::int64_t> rfc3339Millis(std::string_view text);

}  // namespace ondemand::controld
