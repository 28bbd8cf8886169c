#include "ngx_module/answers.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdio>
#include <ctime>

namespace ondemand::module {

namespace {

const char* errorCode(AnswerKind kind) {
  switch (kind) {
    case AnswerKind::Timeout:
      return "timeout";
    case AnswerKind::StartFailed:
      return "start_failed";
    case AnswerKind::UnknownService:
      return "unknown_service";
    case AnswerKind::TooManyWaiting:
      return "too_many_waiting";
    case AnswerKind::DaemonDown:
      return "controld_unreachable";
    case AnswerKind::NotReady:
      return "not_ready";
    case AnswerKind::WaitingPage:
      return "starting";
    case AnswerKind::ShuttingDown:
      return "shutting_down";
    case AnswerKind::NotWoken:
      return "not_woken";
    case AnswerKind::None:
      break;
  }
  return "error";
}

const char* title(AnswerKind kind) {
  switch (kind) {
    case AnswerKind::Timeout:
      return "Service not ready in time";
    case AnswerKind::StartFailed:
      return "Service failed to start";
    case AnswerKind::UnknownService:
      return "Unknown service";
    case AnswerKind::TooManyWaiting:
      return "Too many requests waiting";
    case AnswerKind::DaemonDown:
      return "Service control unavailable";
    case AnswerKind::NotReady:
    case AnswerKind::WaitingPage:
      return "Service starting";
    case AnswerKind::ShuttingDown:
      return "Server shutting down";
    case AnswerKind::NotWoken:
      return "Service not running";
    case AnswerKind::None:
      break;
  }
  return "Error";
}

std::string seconds(std::int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms < 0 ? 0 : ms) / 1000.0);
  return buf;
}

// "controld cannot be reached (since 21:40:02 UTC, 12.3 s ago)".
std::string unreachableSince(const AnswerFacts& f) {
  std::string out = "controld cannot be reached";
  if (f.unreachableSinceMs > 0) {
    const std::time_t secs = static_cast<std::time_t>(f.unreachableSinceMs / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%H:%M:%S UTC", &tm);
    out += " (since ";
    out += buf;
    if (f.unreachableForMs >= 0) out += ", " + seconds(f.unreachableForMs) + " ago";
    out += ")";
  }
  return out;
}

// "it has been starting for 12.3 s (Semaphore task 42)", "it is stopping", ...
std::string whereItIs(const AnswerFacts& f) {
  std::string out;
  if (f.state == "starting") {
    out = "it has been starting";
    if (f.startingForMs >= 0) out += " for " + seconds(f.startingForMs);
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
  // What to expect: a start of a GPU service can take minutes, and saying
  // so up front is what keeps people from giving up or hammering reload.
  if (f.lastStartMs > 0 && f.state != "unreachable") out += "; the last start took " + seconds(f.lastStartMs);
  return out;
}

int retryAfterOf(AnswerKind kind) {
  switch (kind) {
    case AnswerKind::TooManyWaiting:
    case AnswerKind::DaemonDown:
    case AnswerKind::NotReady:
    case AnswerKind::ShuttingDown:
    case AnswerKind::NotWoken:
      return kRetryAfterSeconds;
    case AnswerKind::WaitingPage:
      return kPageRefreshSeconds;
    default:
      return 0;
  }
}

std::string jsonBody(const AnswerFacts& f, int status, const std::string& message, int retryAfter) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  auto str = [&w](const char* key, std::string_view value) {
    w.Key(key);
    w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
  };
  w.StartObject();
  w.Key("status");
  w.Int(status);
  str("error", errorCode(f.kind));
  str("service", f.service);
  str("state", f.state);
  str("message", message);
  if (!f.reason.empty()) str("reason", f.reason);
  if (f.startingForMs >= 0) {
    w.Key("starting_for_ms");
    w.Int64(f.startingForMs);
  }
  if (f.lastStartMs > 0) {
    w.Key("last_start_ms");
    w.Int64(f.lastStartMs);
  }
  if (f.retryInMs > 0) {
    w.Key("retry_in_ms");
    w.Int64(f.retryInMs);
  }
  if (f.taskId > 0) {
    w.Key("task_id");
    w.Int64(f.taskId);
  }
  if (f.unreachableSinceMs > 0) {
    w.Key("unreachable_since");
    w.Int64(f.unreachableSinceMs);
    w.Key("unreachable_for_ms");
    w.Int64(f.unreachableForMs);
  }
  if (f.waitedMs > 0 || f.kind == AnswerKind::Timeout) {
    w.Key("waited_ms");
    w.Int64(f.waitedMs);
  }
  if (retryAfter > 0) {
    w.Key("retry_after");
    w.Int(retryAfter);
  }
  w.EndObject();
  std::string body(buffer.GetString(), buffer.GetSize());
  body.push_back('\n');
  return body;
}

std::string htmlBody(const AnswerFacts& f, int status, const std::string& message) {
  std::string body = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>";
  body += std::to_string(status) + " " + title(f.kind);
  body += "</title>\n</head>\n<body>\n<h1>";
  body += title(f.kind);
  body += "</h1>\n<p>" + htmlEscape(message) + "</p>\n";
  if (!f.reason.empty()) body += "<pre>" + htmlEscape(f.reason) + "</pre>\n";
  body += "</body>\n</html>\n";
  return body;
}

}  // namespace

int statusOf(AnswerKind kind) {
  switch (kind) {
    case AnswerKind::Timeout:
      return 504;
    case AnswerKind::StartFailed:
    case AnswerKind::UnknownService:
      return 502;
    case AnswerKind::TooManyWaiting:
    case AnswerKind::DaemonDown:
    case AnswerKind::NotReady:
    case AnswerKind::WaitingPage:
    case AnswerKind::ShuttingDown:
    case AnswerKind::NotWoken:
      return 503;
    case AnswerKind::None:
      break;
  }
  return 500;
}

std::string describe(const AnswerFacts& f) {
  const std::string name = "\"" + std::string(f.service) + "\"";
  switch (f.kind) {
    case AnswerKind::Timeout:
      if (f.state == "unreachable") {
        return "Service " + name + " did not become ready within " + seconds(f.waitLimitMs) + ": " + whereItIs(f) +
               ". Try again once controld is back.";
      }
      return "Service " + name + " did not become ready within " + seconds(f.waitLimitMs) + ": " + whereItIs(f) +
             ". Its start carries on; try again shortly.";
    case AnswerKind::StartFailed:
      return "Service " + name + " failed to start" + (f.reason.empty() ? "." : ": " + std::string(f.reason)) +
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
  if (f.kind == AnswerKind::WaitingPage) {
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
    a.body = (page ? *page : unreachable ? PageTemplate::builtInUnreachable() : PageTemplate::builtIn()).render(v);
  } else if (html) {
    a.contentType = "text/html; charset=utf-8";
    a.body = htmlBody(f, a.status, message);
  } else {
    a.contentType = "application/json";
    a.body = jsonBody(f, a.status, message, a.retryAfter);
  }
  return a;
}

}  // namespace ondemand::module
