#pragma once
// What to do with a request for an on-demand service, given what the worker
// knows right now. A pure function of its inputs: the module gathers them
// (link status, the pushed state, the location's directives) and carries the
// decision out.

#include <cstddef>
#include <string_view>

#include "shared/service_state.hpp"

namespace ondemand::module {

enum class Mode { Auto, Block, Page, Reject };
enum class DaemonDownPolicy { LastKnown, Open, Closed };

// Up: subscribed and synced, the table is current. Handshake: connected,
// table not complete yet (a few milliseconds). Down: no connection.
enum class LinkStatus { Up, Handshake, Down };

// The answers the module gives itself.
enum class AnswerKind {
  None,
  Timeout,         // 504: waited ondemand_wait
  StartFailed,     // 502: the start failed, with its reason
  UnknownService,  // 502: controld has no such service
  TooManyWaiting,  // 503: ondemand_max_waiting reached
  DaemonDown,      // 503: controld unreachable and ondemand_daemon_down closed
  NotReady,        // 503: ondemand_mode reject
  WaitingPage,     // 503: ondemand_mode page (or auto for a browser)
  ShuttingDown,    // 503: the worker exits with the request still parked
  NotWoken,        // 503: ondemand_passive, and the service is not warm
};

enum class Action { Pass, Park, Answer };

struct Situation {
  LinkStatus link = LinkStatus::Down;
  DaemonDownPolicy policy = DaemonDownPolicy::LastKnown;
  bool everSynced = false;  // the table was complete at least once
  bool outage = false;      // Down, and a connection attempt failed (not just the first one under way)
  bool known = false;       // the service was in controld's table (last seen)
  ServiceState state = ServiceState::Cold;
  bool retryAllowed = false;  // failed, and its failure back-off (retry_at) has passed
  Mode mode = Mode::Auto;
  bool browserNavigation = false;
  bool alreadyWaiting = false;  // the request was parked before (a re-check)
  std::size_t waiting = 0;      // requests this worker holds for the service
  std::size_t maxWaiting = 1024;
  bool passive = false;  // ondemand_passive: never wakes, never waits
};

struct Decision {
  Action action = Action::Pass;
  AnswerKind answer = AnswerKind::None;
  bool wake = false;  // ask controld to start the service
};

Decision decide(const Situation& s);
// The worker has no link to controld at all (setting it up failed when the
// worker started): controld is unreachable for good. open passes; closed, and
// last_known, which knows nothing, answer DaemonDown. Never a silent pass.
Decision decideWithoutLink(DaemonDownPolicy policy);

// Request properties the decision needs, from raw header values.
// A browser navigation: GET or HEAD, Accept includes text/html, no WebSocket
// upgrade, and Sec-Fetch-Mode (when sent) is "navigate".
bool isBrowserNavigation(std::string_view method, std::string_view accept, std::string_view secFetchMode,
                         std::string_view upgrade);
// Whether an error body should be HTML rather than JSON.
bool prefersHtml(std::string_view accept);

}  // namespace ondemand::module
