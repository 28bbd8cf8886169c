#pragma once
// The answers the module gives itself (a timeout, a failed start, too many
// waiting, ...): status, headers and a short body saying what happened, JSON
// for API clients and HTML for browsers. Never a hidden 200.

#include <cstdint>
#include <string>
#include <string_view>

#include "ngx_module/decision.hpp"
#include "ngx_module/page_template.hpp"

namespace ondemand::module {

inline constexpr int kRetryAfterSeconds = 5;
inline constexpr int kPageRefreshSeconds = 3;

// What the body reports. Durations are -1 when unknown.
struct AnswerFacts {
  AnswerKind kind = AnswerKind::None;
  std::string_view service;
  std::string_view state;       // cold | starting | warm | stopping | failed | unknown | unreachable
  std::int64_t inStateMs = -1;  // since the service's last transition
  std::int64_t startingForMs = -1;
  std::int64_t taskId = 0;
  std::uint64_t epoch = 0;       // of the state the answer is about (0: unknown)
  std::string_view reason;       // failure reason
  std::string_view waiting;      // starting, held back: "waiting for room on gpu-01: comfyui has 2 requests in flight"
  std::int64_t retryInMs = -1;   // failed: until a request may try again
  std::int64_t lastStartMs = 0;  // how long the last good start took; 0: none yet
  std::int64_t unreachableSinceMs = 0;  // state "unreachable": unix ms since when (0: unknown)
  std::int64_t unreachableForMs = -1;
  // In a cluster: controld cannot reach etcd (since, unix ms; 0: it can), so
  // it starts and stops nothing (docs/CLUSTER.md).
  std::int64_t etcdUnreachableSinceMs = 0;
  std::int64_t etcdUnreachableForMs = -1;
  std::int64_t waitedMs = 0;
  std::int64_t waitLimitMs = 0;
  std::uint64_t maxWaiting = 0;
  std::string_view eventsUrl;  // the server's ondemand_events location: the pages follow it (empty: none)
};

struct Answer {
  int status = 0;
  std::string contentType;
  std::string body;
  int retryAfter = 0;  // seconds; 0: no Retry-After header
};

int statusOf(AnswerKind kind);
// The "error" of the JSON body: "timeout", "start_failed", ...
const char* errorCodeOf(AnswerKind kind);
// One sentence for people: the "message" of the body and of the page.
std::string describe(const AnswerFacts& facts);
// `page` is the waiting-page template (the built-in one when null).
Answer renderAnswer(const AnswerFacts& facts, bool html, const PageTemplate* page);

}  // namespace ondemand::module
