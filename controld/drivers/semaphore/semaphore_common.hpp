#pragma once
// What the Semaphore client, task operation and driver share: limits, timing
// and a few helpers for messages. Internal to controld/drivers/semaphore/.

#include <algorithm>
#include <string>
#include <string_view>

#include "controld/drivers/semaphore/semaphore_client.hpp"
#include "controld/drivers/semaphore/semaphore_text.hpp"
#include "shared/duration.hpp"
#include "shared/json_writer.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld::semaphore_detail {

inline constexpr std::size_t kOutputLines = 10;
inline constexpr std::size_t kMaxLineBytes = 400;
inline constexpr std::size_t kMaxOutputBytes = 2500;
inline constexpr Millis kFirstPoll{100};
// How long the live-updates connection stays open after the last watched task.
inline constexpr Millis kLiveLinger{30'000};
// How many tasks GET …/tasks/last lists at most.
inline constexpr std::size_t kLastTasks = 200;
// How far Semaphore's clock may be from controld's when telling whether a
// full list of the last tasks reaches back to when a task was sent.
inline constexpr Millis kClockSlack{5 * 60'000};
// The environment key that carries the operation id.
inline constexpr std::string_view kOperationKey = "ondemand_operation";
// Why a task is sent by a resume (its message says it).
inline constexpr const char* kSentAgain = "sent again after a restart of controld: the first request created no task";

// A short, printable piece of an unexpected answer for error messages.
inline std::string excerpt(std::string_view body) {
  std::string clean = stripAnsi(body.substr(0, 300));
  std::replace(clean.begin(), clean.end(), '\t', ' ');
  clean = protocol::truncateUtf8(clean, 200);
  return clean.empty() ? "(empty body)" : clean;
}

// Why a call that should have worked did not, in a few words.
inline std::string problem(const SemaphoreReply& reply) {
  if (!reply.refused.empty()) return reply.refused;
  if (reply.http.status == 0) return reply.http.error;
  if (reply.http.ok()) return "unexpected answer: " + excerpt(reply.http.body);
  return "HTTP " + std::to_string(reply.http.status);
}

inline bool isFinished(const std::string& status) {
  return status == "success" || status == "error" || status == "stopped";
}

// {"force": false} is the only stop controld sends: a forced stop would leave
// the task "stopped" instead of "error" and skip Ansible's own cleanup.
inline constexpr const char* kStopBody = R"({"force":false})";

}  // namespace ondemand::controld::semaphore_detail
