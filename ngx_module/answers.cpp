#include "ngx_module/answers.hpp"

#include <cstdio>
#include <ctime>

#include "ngx_module/pages.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::module {

namespace {

// Everything fixed about an answer of each kind, in one row.
struct KindFacts {
  AnswerKind kind;
  int status;
  const char* code;  // "error" of the JSON body
  int retryAfter;    // seconds; 0: no Retry-After
};

constexpr KindFacts kKinds[] = {
    {AnswerKind::Timeout, 504, "timeout", 0},
    {AnswerKind::StartFailed, 502, "start_failed", 0},
    {AnswerKind::UnknownService, 502, "unknown_service", 0},
    {AnswerKind::TooManyWaiting, 503, "too_many_waiting", kRetryAfterSeconds},
    {AnswerKind::DaemonDown, 503, "controld_unreachable", kRetryAfterSeconds},
    {AnswerKind::NotReady, 503, "not_ready", kRetryAfterSeconds},
    {AnswerKind::WaitingPage, 503, "starting", kPageRefreshSeconds},
    {AnswerKind::ShuttingDown, 503, "shutting_down", kRetryAfterSeconds},
    {AnswerKind::NotWoken, 503, "not_woken", kRetryAfterSeconds},
};
constexpr KindFacts kNoKind = {AnswerKind::None, 500, "error", 0};

const KindFacts& factsOf(AnswerKind kind) {
  for (const auto& row : kKinds) {
    if (row.kind == kind) return row;
  }
  return kNoKind;
}

const char* errorCode(AnswerKind kind) {
  return factsOf(kind).code;
}

std::string seconds(std::int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms < 0 ? 0 : ms) / 1000.0);
  return buf;
}

// " (since 21:40:02 UTC, 12.3 s ago)", or nothing when since is unknown.
std::string sinceWhen(std::int64_t sinceMs, std::int64_t forMs) {
  if (sinceMs <= 0) return {};
  const std::time_t secs = static_cast<std::time_t>(sinceMs / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%H:%M:%S UTC", &tm);
  std::string out = " (since ";
  out += buf;
  if (forMs >= 0) out += ", " + seconds(forMs) + " ago";
  return out + ")";
}

// "controld cannot be reached (since 21:40:02 UTC, 12.3 s ago)".
std::string unreachableSince(const AnswerFacts& f) {
  return "controld cannot be reached" + sinceWhen(f.unreachableSinceMs, f.unreachableForMs);
}

// In a cluster: "controld cannot reach etcd (since ...)".
std::string etcdUnreachableSince(const AnswerFacts& f) {
  return "controld cannot reach etcd" + sinceWhen(f.etcdUnreachableSinceMs, f.etcdUnreachableForMs);
}

// "it has been starting for 12.3 s (Semaphore task 42)", "it is stopping", ...
std::string whereItIs(const AnswerFacts& f) {
  std::string out;
  if (f.state == "starting") {
    out = "it has been starting";
    if (f.startingForMs >= 0) out += " for " + seconds(f.startingForMs);
  } else if (f.state == "cold" && f.etcdUnreachableSinceMs > 0) {
    out = "it is not running";
  } else if (f.state == "cold") {
    out = "it is not running; a start has been requested";
  } else if (f.state == "stopping") {
    out = "it is being stopped and will start again afterwards";
  } else if (f.state == "unreachable") {
    out = unreachableSince(f) + ", so nothing can start it now";
  } else {
    out = "it is ";
    out += f.state;
  }
  if (f.taskId > 0) out += " (Semaphore task " + std::to_string(f.taskId) + ")";
  if (!f.waiting.empty() && f.state == "starting") out += ", " + std::string(f.waiting);
  // What to expect: a start of a GPU service can take minutes, and saying
  // so up front is what keeps people from giving up or hammering reload.
  if (f.lastStartMs > 0 && f.state != "unreachable") out += "; the last start took " + seconds(f.lastStartMs);
  // A cluster node cut off from etcd starts and stops nothing: no answer
  // may suggest that a start is coming.
  if (f.etcdUnreachableSinceMs > 0 && f.state != "unreachable") {
    out += "; " + etcdUnreachableSince(f) + ", so nothing starts or stops it from here until etcd is back";
  }
  return out;
}

// A reason as the end of a sentence: without trailing blank lines, with a
// full stop ("... exit status 1." rather than "... exit status 1 A request").
std::string sentenceOf(std::string_view reason) {
  while (!reason.empty() &&
         (reason.back() == '\n' || reason.back() == ' ' || reason.back() == '\r' || reason.back() == '\t'))
    reason.remove_suffix(1);
  std::string out(reason);
  if (!out.empty() && out.back() != '.' && out.back() != '!' && out.back() != '?') out.push_back('.');
  return out;
}

int retryAfterOf(AnswerKind kind) {
  return factsOf(kind).retryAfter;
}

std::string jsonBody(const AnswerFacts& f, int status, const std::string& message, int retryAfter) {
  JsonWriter w;
  w.startObject().i64("status", status).str("error", errorCode(f.kind)).str("service", f.service);
  w.str("state", f.state).str("message", message);
  if (!f.reason.empty()) w.str("reason", f.reason);
  if (!f.waiting.empty()) w.str("waiting", f.waiting);
  if (f.startingForMs >= 0) w.i64("starting_for_ms", f.startingForMs);
  if (f.lastStartMs > 0) w.i64("last_start_ms", f.lastStartMs);
  if (f.retryInMs > 0) w.i64("retry_in_ms", f.retryInMs);
  if (f.taskId > 0) w.i64("task_id", f.taskId);
  if (f.unreachableSinceMs > 0)
    w.i64("unreachable_since", f.unreachableSinceMs).i64("unreachable_for_ms", f.unreachableForMs);
  if (f.etcdUnreachableSinceMs > 0) {
    w.i64("etcd_unreachable_since", f.etcdUnreachableSinceMs).i64("etcd_unreachable_for_ms", f.etcdUnreachableForMs);
  }
  if (f.waitedMs > 0 || f.kind == AnswerKind::Timeout) w.i64("waited_ms", f.waitedMs);
  if (retryAfter > 0) w.i64("retry_after", retryAfter);
  return w.endObject().line();
}

}  // namespace

int statusOf(AnswerKind kind) {
  return factsOf(kind).status;
}

const char* errorCodeOf(AnswerKind kind) {
  return errorCode(kind);
}

std::string describe(const AnswerFacts& f) {
  const std::string name = "\"" + std::string(f.service) + "\"";
  switch (f.kind) {
    case AnswerKind::Timeout:
      if (f.state == "unreachable") {
        return "Service " + name + " did not become ready within " + seconds(f.waitLimitMs) + ": " + whereItIs(f) +
               ". Try again once controld is back.";
      }
      if (f.etcdUnreachableSinceMs > 0) {
        return "Service " + name + " did not become ready within " + seconds(f.waitLimitMs) + ": " + whereItIs(f) +
               ". Try again once etcd is back.";
      }
      return "Service " + name + " did not become ready within " + seconds(f.waitLimitMs) + ": " + whereItIs(f) +
             ". Its start carries on; try again shortly.";
    case AnswerKind::StartFailed:
      return "Service " + name + " failed to start" + (f.reason.empty() ? "." : ": " + sentenceOf(f.reason)) +
             (f.retryInMs > 0 ? " A request after " + seconds(f.retryInMs) + " will try again." : "");
    case AnswerKind::UnknownService:
      return "controld has no service named " + name + "; check ondemand_service and controld's configuration.";
    case AnswerKind::TooManyWaiting:
      return "Too many requests are already waiting for service " + name + " (ondemand_max_waiting " +
             std::to_string(f.maxWaiting) + "); retry in " + std::to_string(kRetryAfterSeconds) + " s.";
    case AnswerKind::DaemonDown:
      return unreachableSince(f) + ", so service " + name + " cannot be checked or started; retry in " +
             std::to_string(kRetryAfterSeconds) + " s.";
    case AnswerKind::NotReady:
      return "Service " + name + " is not ready: " + whereItIs(f) + ". Retry in " + std::to_string(kRetryAfterSeconds) +
             " s.";
    case AnswerKind::WaitingPage:
      return "Service " + name + " is not ready yet: " + whereItIs(f) + ".";
    case AnswerKind::ShuttingDown:
      return "nginx is shutting down while this request waited for service " + name + "; retry in " +
             std::to_string(kRetryAfterSeconds) + " s.";
    case AnswerKind::NotWoken:
      return "Service " + name + " is not running (" + std::string(f.state) +
             ") and this request does not wake it or wait for it (ondemand_passive).";
    case AnswerKind::None:
      break;
  }
  return "Service " + name + ": internal error.";
}

Answer renderAnswer(const AnswerFacts& f, bool html, const PageTemplate* page) {
  Answer a;
  a.status = statusOf(f.kind);
  a.retryAfter = retryAfterOf(f.kind);
  const std::string message = describe(f);
  if (f.kind == AnswerKind::WaitingPage && page != nullptr) {
    PageTemplate::Values v;
    v.service = f.service;
    v.state = f.state;
    const bool unreachable = f.state == "unreachable";
    const std::int64_t elapsedMs = unreachable            ? f.unreachableForMs
                                   : f.startingForMs >= 0 ? f.startingForMs
                                                          : f.inStateMs;
    v.elapsedSeconds = elapsedMs < 0 ? 0 : elapsedMs / 1000;
    v.refreshSeconds = kPageRefreshSeconds;
    v.taskId = f.taskId;
    v.lastStartSeconds = (f.lastStartMs + 500) / 1000;
    v.message = message;
    a.contentType = "text/html; charset=utf-8";
    a.body = page->render(v);
  } else if (html || f.kind == AnswerKind::WaitingPage) {
    a.contentType = "text/html; charset=utf-8";
    a.body = answerPage(f, a.status, message);
  } else {
    a.contentType = "application/json";
    a.body = jsonBody(f, a.status, message, a.retryAfter);
  }
  return a;
}

}  // namespace ondemand::module
