#include "ngx_module/decision.hpp"

#include <algorithm>
#include <cctype>

namespace ondemand::module {

namespace {

Decision pass() {
  return {Action::Pass, AnswerKind::None, false};
}
Decision answer(AnswerKind kind, bool wake = false) {
  return {Action::Answer, kind, wake};
}
Decision park(bool wake) {
  return {Action::Park, AnswerKind::None, wake};
}

// The service is not warm (cold, starting, stopping): the mode decides.
Decision notWarm(const Situation& s, bool wake) {
  Mode mode = s.mode;
  if (mode == Mode::Auto) mode = s.browserNavigation ? Mode::Page : Mode::Block;
  switch (mode) {
    case Mode::Reject:
      return answer(AnswerKind::NotReady, wake);
    case Mode::Page:
      return answer(AnswerKind::WaitingPage, wake);
    case Mode::Block:
    case Mode::Auto:
      break;
  }
  if (!s.alreadyWaiting && s.waiting >= s.maxWaiting) return answer(AnswerKind::TooManyWaiting, wake);
  return park(wake);
}

bool containsNoCase(std::string_view haystack, std::string_view needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
         }) != haystack.end();
}

bool equalsNoCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && containsNoCase(a, b);
}

// A passive request (a bot, an uptime checker) goes on only to a warm
// service: it wakes nothing and waits for nothing, and an answer that says
// what is wrong (a failed start, an unknown service) stays that answer.
Decision passively(Decision d) {
  d.wake = false;
  if (d.action == Action::Park || d.answer == AnswerKind::NotReady || d.answer == AnswerKind::WaitingPage ||
      d.answer == AnswerKind::TooManyWaiting) {
    return answer(AnswerKind::NotWoken);
  }
  return d;
}

Decision decideActively(const Situation& s) {
  switch (s.link) {
    case LinkStatus::Down:
      switch (s.policy) {
        case DaemonDownPolicy::Open:
          return pass();
        case DaemonDownPolicy::Closed:
          return answer(AnswerKind::DaemonDown);
        case DaemonDownPolicy::LastKnown:
          break;
      }
      // The last state seen. Nothing can be woken now: the wake goes out
      // when the connection is back and the request is looked at again.
      if (!s.known) {
        if (s.everSynced) return answer(AnswerKind::UnknownService);
        // No state ever seen: while the worker's first connection is
        // under way (milliseconds), wait for it; once it has failed,
        // nobody can start anything, and holding the request for
        // ondemand_wait would only hide that: say so at once.
        if (s.outage) return answer(AnswerKind::DaemonDown);
        return park(false);
      }
      if (s.state == ServiceState::Warm) return pass();
      if (s.state == ServiceState::Failed) return answer(AnswerKind::StartFailed);
      return notWarm(s, false);

    case LinkStatus::Handshake:
      // The table is being refreshed; this lasts milliseconds. Keep warm
      // traffic flowing, hold the rest until the table is complete.
      if (s.known && s.state == ServiceState::Warm) return pass();
      return park(false);

    case LinkStatus::Up:
      break;
  }
  if (!s.known) return answer(AnswerKind::UnknownService);
  switch (s.state) {
    case ServiceState::Warm:
      return pass();
    case ServiceState::Failed:
      // Within the failure back-off: the failure, at once. After it, a new
      // request tries again (and waits like any other); requests that
      // waited through the failed start get the failure.
      if (s.retryAllowed && !s.alreadyWaiting) return notWarm(s, true);
      return answer(AnswerKind::StartFailed);
    case ServiceState::Starting:
      return notWarm(s, false);  // controld is on it already
    case ServiceState::Cold:
    case ServiceState::Stopping:  // controld starts it again once stopped
      break;
  }
  return notWarm(s, true);
}

}  // namespace

Decision decide(const Situation& s) {
  const Decision d = decideActively(s);
  return s.passive ? passively(d) : d;
}

Decision decideWithoutLink(DaemonDownPolicy policy) {
  return policy == DaemonDownPolicy::Open ? pass() : answer(AnswerKind::DaemonDown);
}

bool isBrowserNavigation(std::string_view method, std::string_view accept, std::string_view secFetchMode,
                         std::string_view upgrade) {
  if (method != "GET" && method != "HEAD") return false;
  if (!upgrade.empty()) return false;
  if (!secFetchMode.empty() && !equalsNoCase(secFetchMode, "navigate")) return false;
  return containsNoCase(accept, "text/html");
}

bool prefersHtml(std::string_view accept) {
  return containsNoCase(accept, "text/html");
}

}  // namespace ondemand::module
