// The nginx module's decisions, answers, waiting page and service table,
// without nginx.

#include <catch2/catch.hpp>

#include "ngx_module/answers.hpp"
#include "ngx_module/decision.hpp"
#include "ngx_module/page_template.hpp"
#include "ngx_module/service_table.hpp"

using namespace ondemand;
using namespace ondemand::module;

namespace {

Situation upWith(ServiceState state) {
  Situation s;
  s.link = LinkStatus::Up;
  s.everSynced = true;
  s.known = true;
  s.state = state;
  s.mode = Mode::Block;
  return s;
}

}  // namespace

TEST_CASE("a warm service passes without a wake") {
  const Decision d = decide(upWith(ServiceState::Warm));
  CHECK(d.action == Action::Pass);
  CHECK_FALSE(d.wake);
}

TEST_CASE("a cold or stopping service holds the request and wakes it; a starting one just holds it") {
  for (ServiceState state : {ServiceState::Cold, ServiceState::Stopping}) {
    const Decision d = decide(upWith(state));
    CHECK(d.action == Action::Park);
    CHECK(d.wake);
  }
  const Decision starting = decide(upWith(ServiceState::Starting));
  CHECK(starting.action == Action::Park);
  CHECK_FALSE(starting.wake);
}

TEST_CASE("modes: reject and page answer at once, auto pages browsers and holds the rest") {
  Situation s = upWith(ServiceState::Starting);
  s.mode = Mode::Reject;
  CHECK(decide(s).answer == AnswerKind::NotReady);
  s.state = ServiceState::Cold;
  CHECK(decide(s).wake);
  s.state = ServiceState::Starting;
  s.mode = Mode::Page;
  CHECK(decide(s).answer == AnswerKind::WaitingPage);
  s.mode = Mode::Auto;
  CHECK(decide(s).action == Action::Park);
  s.browserNavigation = true;
  CHECK(decide(s).answer == AnswerKind::WaitingPage);
}

TEST_CASE("ondemand_max_waiting refuses new requests, not the ones already waiting") {
  Situation s = upWith(ServiceState::Starting);
  s.maxWaiting = 10;
  s.waiting = 10;
  CHECK(decide(s).answer == AnswerKind::TooManyWaiting);
  s.alreadyWaiting = true;
  CHECK(decide(s).action == Action::Park);
}

TEST_CASE("a failed service answers 502 until its back-off has passed, then a new request tries again") {
  Situation s = upWith(ServiceState::Failed);
  CHECK(decide(s).answer == AnswerKind::StartFailed);
  CHECK_FALSE(decide(s).wake);
  s.retryAllowed = true;
  CHECK(decide(s).action == Action::Park);
  CHECK(decide(s).wake);
  s.alreadyWaiting = true;  // waited through the failed start
  CHECK(decide(s).answer == AnswerKind::StartFailed);
  CHECK_FALSE(decide(s).wake);
}

TEST_CASE("a name controld does not have is unknown once the table is complete") {
  Situation s = upWith(ServiceState::Cold);
  s.known = false;
  CHECK(decide(s).answer == AnswerKind::UnknownService);
  CHECK_FALSE(decide(s).wake);
}

TEST_CASE("controld down: last_known, open and closed") {
  Situation s = upWith(ServiceState::Warm);
  s.link = LinkStatus::Down;
  CHECK(decide(s).action == Action::Pass);
  s.state = ServiceState::Cold;
  CHECK(decide(s).action == Action::Park);
  CHECK_FALSE(decide(s).wake);
  s.policy = DaemonDownPolicy::Open;
  CHECK(decide(s).action == Action::Pass);
  s.policy = DaemonDownPolicy::Closed;
  CHECK(decide(s).answer == AnswerKind::DaemonDown);
  // Never connected yet: nothing is known. While the first connection is
  // under way the request waits for it; once it has failed, nothing can
  // start the service, and the request is told so at once.
  s.policy = DaemonDownPolicy::LastKnown;
  s.known = false;
  s.everSynced = false;
  CHECK(decide(s).action == Action::Park);
  s.outage = true;
  CHECK(decide(s).action == Action::Answer);
  CHECK(decide(s).answer == AnswerKind::DaemonDown);
  CHECK_FALSE(decide(s).wake);
  s.mode = Mode::Page;
  CHECK(decide(s).answer == AnswerKind::DaemonDown);
}

TEST_CASE("while controld is unreachable no answer claims a start: it says since when") {
  AnswerFacts f;
  f.service = "sample";
  f.state = "unreachable";
  f.unreachableSinceMs = 1796160002000;  // 2026-12-01 21:20:02 UTC
  f.unreachableForMs = 12300;
  f.waitLimitMs = 60000;
  f.lastStartMs = 2000;
  for (AnswerKind kind : {AnswerKind::Timeout, AnswerKind::DaemonDown, AnswerKind::NotReady, AnswerKind::WaitingPage}) {
    f.kind = kind;
    const std::string message = describe(f);
    INFO(message);
    CHECK_THAT(message, Catch::Contains("controld cannot be reached (since 21:20:02 UTC, 12.3 s ago)"));
    CHECK_THAT(message, !Catch::Contains("start has been requested"));
    CHECK_THAT(message, !Catch::Contains("carries on"));
    CHECK_THAT(message, !Catch::Contains("is starting"));
  }
  f.kind = AnswerKind::Timeout;
  const Answer json = renderAnswer(f, false, nullptr);
  CHECK(json.status == 504);
  CHECK_THAT(json.body, Catch::Contains("\"state\":\"unreachable\""));
  CHECK_THAT(json.body, Catch::Contains("\"unreachable_since\":1796160002000,\"unreachable_for_ms\":12300"));
  f.kind = AnswerKind::WaitingPage;
  const Answer page = renderAnswer(f, true, nullptr);
  CHECK(page.status == 503);
  CHECK_THAT(page.body, Catch::Contains("<title>sample cannot be started now</title>"));
  CHECK_THAT(page.body, Catch::Contains("<dt>controld unreachable for</dt><dd id=\"od-elapsed\">12 s</dd>"));
  CHECK_THAT(page.body, !Catch::Contains("is starting"));
}

TEST_CASE("a passive request goes on to a warm service only: it wakes nothing and waits for nothing") {
  Situation s = upWith(ServiceState::Warm);
  s.passive = true;
  CHECK(decide(s).action == Action::Pass);
  for (ServiceState state : {ServiceState::Cold, ServiceState::Starting, ServiceState::Stopping}) {
    for (Mode mode : {Mode::Block, Mode::Page, Mode::Reject, Mode::Auto}) {
      s.state = state;
      s.mode = mode;
      const Decision d = decide(s);
      CHECK(d.answer == AnswerKind::NotWoken);
      CHECK_FALSE(d.wake);
    }
  }
  // A failed start is said as such, and its back-off having passed does not make it try again.
  s.state = ServiceState::Failed;
  CHECK(decide(s).answer == AnswerKind::StartFailed);
  s.retryAllowed = true;
  CHECK(decide(s).answer == AnswerKind::NotWoken);
  CHECK_FALSE(decide(s).wake);
  s.known = false;
  CHECK(decide(s).answer == AnswerKind::UnknownService);
}

TEST_CASE("while the table is being refreshed warm traffic flows and the rest waits") {
  Situation s = upWith(ServiceState::Warm);
  s.link = LinkStatus::Handshake;
  CHECK(decide(s).action == Action::Pass);
  s.state = ServiceState::Cold;
  s.mode = Mode::Reject;
  CHECK(decide(s).action == Action::Park);
}

TEST_CASE("browser navigations are told apart from API calls") {
  CHECK(isBrowserNavigation("GET", "text/html,application/xhtml+xml,*/*;q=0.8", "", ""));
  CHECK(isBrowserNavigation("GET", "text/html", "navigate", ""));
  CHECK_FALSE(isBrowserNavigation("GET", "*/*", "", ""));
  CHECK_FALSE(isBrowserNavigation("POST", "text/html", "", ""));
  CHECK_FALSE(isBrowserNavigation("GET", "text/html", "cors", ""));
  CHECK_FALSE(isBrowserNavigation("GET", "text/html", "", "websocket"));
  CHECK(prefersHtml("Text/HTML"));
  CHECK_FALSE(prefersHtml("application/json"));
}

TEST_CASE("a timeout answer names the service, its state, how long and the task") {
  AnswerFacts f;
  f.kind = AnswerKind::Timeout;
  f.service = "comfyui";
  f.state = "starting";
  f.startingForMs = 75300;
  f.taskId = 42;
  f.waitedMs = 60000;
  f.waitLimitMs = 60000;
  const Answer a = renderAnswer(f, false, nullptr);
  CHECK(a.status == 504);
  CHECK(a.contentType == "application/json");
  CHECK(a.retryAfter == 0);
  CHECK_THAT(a.body, Catch::Contains("\"service\":\"comfyui\""));
  CHECK_THAT(a.body, Catch::Contains("\"state\":\"starting\""));
  CHECK_THAT(a.body, Catch::Contains("starting for 75.3 s (Semaphore task 42)"));
  CHECK_THAT(a.body, Catch::Contains("\"task_id\":42"));
  CHECK_THAT(a.body, !Catch::Contains("last start"));
}

TEST_CASE("answers and the page say how long the last start took, once there was one") {
  AnswerFacts f;
  f.kind = AnswerKind::WaitingPage;
  f.service = "comfyui";
  f.state = "starting";
  f.startingForMs = 5000;
  f.lastStartMs = 41250;
  const Answer page = renderAnswer(f, true, nullptr);
  CHECK_THAT(page.body, Catch::Contains("starting for 5.0 s; the last start took 41.2 s"));
  f.kind = AnswerKind::Timeout;
  const Answer json = renderAnswer(f, false, nullptr);
  CHECK_THAT(json.body, Catch::Contains("\"last_start_ms\":41250"));
}

TEST_CASE("answers and the page say what a start waits for when its machine lacks room") {
  AnswerFacts f;
  f.kind = AnswerKind::Timeout;
  f.service = "sdxl";
  f.state = "starting";
  f.startingForMs = 3000;
  f.waitedMs = 3000;
  f.waitLimitMs = 3000;
  f.waiting = "waiting for room on gpu-01: comfyui has 2 requests in flight";
  const Answer json = renderAnswer(f, false, nullptr);
  CHECK(json.status == 504);
  CHECK_THAT(json.body,
             Catch::Contains("starting for 3.0 s, waiting for room on gpu-01: comfyui has 2 requests in flight"));
  CHECK_THAT(json.body, Catch::Contains("\"waiting\":\"waiting for room on gpu-01"));
  f.kind = AnswerKind::WaitingPage;
  const Answer page = renderAnswer(f, true, nullptr);
  CHECK_THAT(page.body, Catch::Contains("waiting for room on gpu-01: comfyui has 2 requests in flight"));
}

TEST_CASE("answers for browsers are HTML and escape what they show") {
  AnswerFacts f;
  f.kind = AnswerKind::StartFailed;
  f.service = "notes";
  f.state = "failed";
  f.reason = "exit 1: <script>alert(1)</script>";
  const Answer a = renderAnswer(f, true, nullptr);
  CHECK(a.status == 502);
  CHECK_THAT(a.contentType, Catch::StartsWith("text/html"));
  CHECK_THAT(a.body, Catch::Contains("&lt;script&gt;"));
  CHECK_THAT(a.body, !Catch::Contains("<script>alert"));
  // In the data the page's script reads, too: no way out of its <script>.
  f.service = "x</script><script>alert(2)//";
  const Answer b = renderAnswer(f, true, nullptr);
  CHECK_THAT(b.body, !Catch::Contains("</script><script>alert"));
  CHECK_THAT(b.body, Catch::Contains("x\\u003c/script\\u003e"));
}

TEST_CASE("every page has one look: phone width, dark mode, a refresh without JavaScript, live with it") {
  for (AnswerKind kind : {AnswerKind::WaitingPage, AnswerKind::Timeout, AnswerKind::StartFailed,
                          AnswerKind::UnknownService, AnswerKind::TooManyWaiting, AnswerKind::DaemonDown}) {
    AnswerFacts f;
    f.kind = kind;
    f.service = "notes";
    f.state = kind == AnswerKind::StartFailed ? "failed" : kind == AnswerKind::UnknownService ? "unknown" : "starting";
    f.eventsUrl = "/_ondemand/events";
    const Answer a = renderAnswer(f, true, nullptr);
    INFO(a.body);
    CHECK_THAT(a.contentType, Catch::StartsWith("text/html"));
    CHECK_THAT(a.body, Catch::Contains("name=\"viewport\" content=\"width=device-width"));
    CHECK_THAT(a.body, Catch::Contains("@media (prefers-color-scheme:dark)"));
    CHECK_THAT(a.body, Catch::Contains("<noscript><meta http-equiv=\"refresh\""));
    CHECK_THAT(a.body, Catch::Contains("\"events\":\"/_ondemand/events\""));
    CHECK_THAT(a.body, Catch::Contains("new EventSource("));
    CHECK_THAT(a.body, Catch::Contains("role=\"status\""));
    CHECK_THAT(a.body, !Catch::Contains("http://"));  // nothing fetched from elsewhere
    CHECK_THAT(a.body, !Catch::Contains("https://"));
  }
}

TEST_CASE("the failed page gives the reason once, the back-off as a countdown, and retries after it") {
  AnswerFacts f;
  f.kind = AnswerKind::StartFailed;
  f.service = "notes";
  f.state = "failed";
  f.reason = "start command exited with status 1\n";
  f.retryInMs = 28000;
  CHECK(describe(f) ==
        "Service \"notes\" failed to start: start command exited with status 1. A request after 28.0 s "
        "will try again.");
  const Answer a = renderAnswer(f, true, nullptr);
  CHECK(a.status == 502);
  CHECK_THAT(a.body, Catch::Contains("<title>notes failed to start</title>"));
  CHECK_THAT(a.body, Catch::Contains("<pre id=\"od-reason\">start command exited with status 1\n</pre>"));
  CHECK_THAT(a.body, Catch::Contains("A new try starts in 28 s."));
  CHECK_THAT(a.body, Catch::Contains("<noscript><meta http-equiv=\"refresh\" content=\"28\"></noscript>"));
  CHECK_THAT(a.body, Catch::Contains("\"retry_in_ms\":28000"));
  // Once in the page, not in its sentence again.
  const std::string body = a.body;
  CHECK(body.find("exited with status 1") == body.rfind("exited with status 1"));
}

TEST_CASE("the waiting page shows progress against the last start, or that there is none yet") {
  AnswerFacts f;
  f.kind = AnswerKind::WaitingPage;
  f.service = "comfyui";
  f.state = "starting";
  f.startingForMs = 10000;
  f.lastStartMs = 40000;
  const Answer a = renderAnswer(f, true, nullptr);
  CHECK_THAT(a.body, Catch::Contains("aria-valuenow=\"25\""));
  CHECK_THAT(a.body, Catch::Contains("About 30 s left, going by the last start."));
  CHECK_THAT(a.body, Catch::Contains("<dt>Starting for</dt><dd id=\"od-elapsed\">10 s</dd>"));
  f.lastStartMs = 0;
  const Answer first = renderAnswer(f, true, nullptr);
  CHECK_THAT(first.body, Catch::Contains("class=\"bar unknown\""));
  CHECK_THAT(first.body, Catch::Contains("The first start"));
}

TEST_CASE("503 answers carry Retry-After") {
  for (AnswerKind kind : {AnswerKind::TooManyWaiting, AnswerKind::DaemonDown, AnswerKind::NotReady,
                          AnswerKind::WaitingPage, AnswerKind::ShuttingDown, AnswerKind::NotWoken}) {
    AnswerFacts f;
    f.kind = kind;
    f.service = "x";
    f.state = "cold";
    const Answer a = renderAnswer(f, false, nullptr);
    CHECK(a.status == 503);
    CHECK(a.retryAfter > 0);
  }
}

TEST_CASE("the waiting page template: placeholders, escaping, errors") {
  std::string error;
  auto page = PageTemplate::compile(
      "<h1>{{service}}</h1>{{ state }} {{elapsed}} {{elapsed_seconds}}s "
      "refresh={{refresh}} task={{task_id}} last={{last_start}}/{{last_start_seconds}} <p>{{message}}</p>",
      error);
  REQUIRE(page);
  PageTemplate::Values v;
  v.service = "a&b";
  v.state = "starting";
  v.elapsedSeconds = 75;
  v.refreshSeconds = 3;
  v.taskId = 0;
  v.message = "\"quoted\"";
  CHECK(page->render(v) == "<h1>a&amp;b</h1>starting 1 min 15 s 75s refresh=3 task= last=/ <p>&quot;quoted&quot;</p>");
  v.lastStartSeconds = 95;
  CHECK_THAT(page->render(v), Catch::Contains("last=1 min 35 s/95 "));

  CHECK_FALSE(PageTemplate::compile("{{colour}}", error));
  CHECK_THAT(error, Catch::Contains("unknown placeholder \"{{colour}}\""));
  CHECK_FALSE(PageTemplate::compile("{{service", error));
  CHECK_THAT(error, Catch::Contains("unclosed"));
  CHECK(PageTemplate::compile("no placeholders at all", error));
}

TEST_CASE("the built-in page says which service and how long, and refreshes itself") {
  AnswerFacts f;
  f.kind = AnswerKind::WaitingPage;
  f.service = "comfyui";
  f.state = "starting";
  f.startingForMs = 12000;
  const Answer a = renderAnswer(f, false, nullptr);
  CHECK(a.status == 503);
  CHECK(a.retryAfter == kPageRefreshSeconds);
  CHECK_THAT(a.body, Catch::Contains("<title>comfyui is starting</title>"));
  CHECK_THAT(a.body, Catch::Contains("http-equiv=\"refresh\""));
  CHECK_THAT(a.body, Catch::Contains("12 s"));
}

TEST_CASE("parked lists: release in order, leave from anywhere") {
  ParkedList list;
  ParkNode a, b, c;
  list.pushBack(&a);
  list.pushBack(&b);
  list.pushBack(&c);
  CHECK(list.size() == 3);
  ParkedList::remove(&b);  // a client went away
  CHECK(list.size() == 2);
  ParkedList batch;
  list.moveAllTo(batch);
  CHECK(list.empty());
  CHECK(batch.size() == 2);
  ParkedList::remove(&c);  // leaves the batch it is in now
  CHECK(batch.popFront() == &a);
  CHECK(batch.popFront() == nullptr);
  ParkedList::remove(&a);  // already out: nothing happens
  CHECK_FALSE(a.linked());
}

TEST_CASE("the service table: pushes, sync removes vanished services, wakes once per epoch") {
  ServiceTable table;
  protocol::StatePush push;
  push.service = "a";
  push.state = ServiceState::Cold;
  push.epoch = 3;
  table.beginSubscription();
  ServiceEntry& a = table.applyPush(push);
  ServiceEntry& b = table.get("b");
  b.known = true;  // known from an earlier subscription, not pushed this time
  const auto vanished = table.completeSync();
  REQUIRE(vanished.size() == 1);
  CHECK(vanished[0] == &b);
  CHECK_FALSE(b.known);
  CHECK(a.known);

  CHECK(ServiceTable::claimWake(a, 1000));
  CHECK_FALSE(ServiceTable::claimWake(a, 1001));
  push.epoch = 4;
  push.state = ServiceState::Stopping;
  table.applyPush(push);
  CHECK(ServiceTable::claimWake(a, 1002));
  push.epoch = 5;
  push.state = ServiceState::Failed;
  table.applyPush(push);
  CHECK(ServiceTable::claimWake(a, 2500));  // failed: at most once a second
  CHECK_FALSE(ServiceTable::claimWake(a, 3000));
  CHECK(ServiceTable::claimWake(a, 3600));
  // A start woken at 3700 that fails within the second: the next request
  // wakes it again at once, it is not parked without a wake until ondemand_wait.
  push.epoch = 6;
  push.state = ServiceState::Starting;
  table.applyPush(push);
  CHECK(ServiceTable::claimWake(a, 3700));
  push.epoch = 7;
  push.state = ServiceState::Failed;
  table.applyPush(push);
  CHECK(ServiceTable::claimWake(a, 3900));
  CHECK_FALSE(ServiceTable::claimWake(a, 4000));
  push.state = ServiceState::Warm;
  table.applyPush(push);
  CHECK_FALSE(ServiceTable::claimWake(a, 9000));
}

TEST_CASE("a wake sent while controld could not reach etcd is sent again once it can") {
  ServiceTable table;
  ServiceEntry& a = table.get("a");
  protocol::StatePush push;
  push.service = "a";
  push.epoch = 3;
  push.etcdUnreachableSinceMs = 5000;
  table.applyPush(push);
  CHECK(ServiceTable::claimWake(a, 6000));
  CHECK_FALSE(ServiceTable::claimWake(a, 6001));
  table.applyPush(push);  // still away: the same epoch, no new wake
  CHECK_FALSE(ServiceTable::claimWake(a, 7000));
  push.etcdUnreachableSinceMs = 0;  // back, same epoch
  table.applyPush(push);
  CHECK(ServiceTable::claimWake(a, 8000));
  CHECK_FALSE(ServiceTable::claimWake(a, 8001));
  table.applyPush(push);
  CHECK_FALSE(ServiceTable::claimWake(a, 8002));
}

TEST_CASE("activity reports what changed, and everything in flight after subscribing") {
  ServiceTable table;
  ServiceEntry& a = table.get("a");
  ServiceEntry& b = table.get("b");
  a.inFlight = 2;
  a.startedUnreported = 5;
  a.activityDirty = true;
  b.inFlight = 1;
  auto activity = table.takeActivity(false);
  REQUIRE(activity.entries.size() == 1);
  CHECK(activity.entries[0].service == "a");
  CHECK(activity.entries[0].started == 5);
  CHECK(activity.entries[0].inFlight == 2);
  CHECK(table.takeActivity(false).entries.empty());
  CHECK(table.takeActivity(true).entries.size() == 2);
}

TEST_CASE("activity reports held requests, and each ended wait once") {
  ServiceTable table;
  ServiceEntry& a = table.get("a");
  a.held = 2;
  a.waited.add(300);
  a.activityDirty = true;
  auto activity = table.takeActivity(false);
  REQUIRE(activity.entries.size() == 1);
  CHECK(activity.entries[0].held == 2);
  CHECK(activity.entries[0].waited.count() == 1);
  CHECK(activity.entries[0].waited.sumMs == 300);
  CHECK(a.waited.empty());
  // After subscribing again: still held, the wait is not sent twice.
  activity = table.takeActivity(true);
  REQUIRE(activity.entries.size() == 1);
  CHECK(activity.entries[0].held == 2);
  CHECK(activity.entries[0].waited.empty());
}

TEST_CASE("a worker without a link to controld follows ondemand_daemon_down, never passing silently") {
  CHECK(decideWithoutLink(DaemonDownPolicy::Open).action == Action::Pass);
  for (const auto policy : {DaemonDownPolicy::Closed, DaemonDownPolicy::LastKnown}) {
    const Decision d = decideWithoutLink(policy);
    CHECK(d.action == Action::Answer);
    CHECK(d.answer == AnswerKind::DaemonDown);
    CHECK(statusOf(d.answer) == 503);
    CHECK_FALSE(d.wake);
  }
}
