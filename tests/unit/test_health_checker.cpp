#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "controld/io/health_checker.hpp"
#include "http_test_server.hpp"
#include "uv_test_support.hpp"

using namespace ondemand::controld;
using namespace ondemand::testing;

TEST_CASE("health probes come every 20 ms for the first 10 s, then every health_interval") {
  CHECK(nextProbeDelay(0ms, 250ms) == 20ms);
  CHECK(nextProbeDelay(5000ms, 250ms) == 20ms);
  CHECK(nextProbeDelay(9999ms, 250ms) == 20ms);
  CHECK(nextProbeDelay(10000ms, 250ms) == 250ms);
  CHECK(nextProbeDelay(3'600'000ms, 250ms) == 250ms);
  CHECK(nextProbeDelay(12000ms, 2000ms) == 2000ms);
  // An interval below the fast one is used from the start.
  CHECK(nextProbeDelay(0ms, 5ms) == 5ms);
  CHECK(nextProbeDelay(20000ms, 5ms) == 5ms);
}

TEST_CASE("a service that starts listening late is found healthy within one fast probe of it") {
  const int port = freeLoopbackPort();
  TestHttpServer server;
  server.routes().Get("/healthz",
                      [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
  TestLoop loop;
  HttpClient http(loop.get());
  HealthChecker checker(http, loop.get(), "http://127.0.0.1:" + std::to_string(port) + "/healthz", 250ms, 2000ms);

  std::optional<SteadyClock::time_point> listeningAt, healthyAt;
  int healthyCalls = 0;
  Timer comeUp(loop.get());
  comeUp.start(300ms, [&] {
    server.start(port);
    listeningAt = SteadyClock::now();
  });
  checker.start([&] {
    ++healthyCalls;
    healthyAt = SteadyClock::now();
  });

  REQUIRE(loop.runUntil([&] { return healthyAt.has_value(); }, 3000ms));
  REQUIRE(listeningAt);
  CHECK(*healthyAt >= *listeningAt);
  const auto lag = std::chrono::duration_cast<Millis>(*healthyAt - *listeningAt);
  INFO("found healthy " << lag.count() << " ms after it listened, after " << checker.probesSent() << " probes");
  CHECK(lag < 100ms);  // 20 ms cadence plus a round trip; the steady interval would be up to 250 ms
  CHECK(checker.probesSent() >= 8);
  CHECK(checker.lastDetail() == "HTTP 200");
  CHECK_FALSE(checker.running());
  loop.runFor(100ms);
  CHECK(healthyCalls == 1);
}

TEST_CASE("503 answers are not healthy, and probing goes on until a 2xx") {
  TestHttpServer server;
  std::atomic<int> status{503};
  server.routes().Get("/system_stats", [&](const httplib::Request&, httplib::Response& res) {
    res.status = status;
    res.set_content(status == 200 ? "{}" : "loading model", "text/plain");
  });
  server.start();
  TestLoop loop;
  HttpClient http(loop.get());
  HealthChecker checker(http, loop.get(), server.url("/system_stats"), 250ms, 2000ms);

  bool healthy = false;
  checker.start([&] { healthy = true; });
  loop.runFor(300ms);
  CHECK_FALSE(healthy);
  CHECK(checker.running());
  CHECK(checker.lastDetail() == "HTTP 503");
  CHECK(checker.probesSent() >= 5);

  status = 200;
  const auto flipped = SteadyClock::now();
  REQUIRE(loop.runUntil([&] { return healthy; }, 2000ms));
  CHECK(millisSince(flipped) < 100ms);
}

TEST_CASE("a probe never overlaps the previous one") {
  TestHttpServer server;
  std::atomic<int> active{0}, mostActive{0}, answered{0};
  server.routes().Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
    const int now = ++active;
    if (now > mostActive) mostActive = now;
    server.slowDown(60ms);  // slower than the 20 ms cadence
    --active;
    ++answered;
    res.status = 503;
  });
  server.start();
  TestLoop loop;
  HttpClient http(loop.get());
  HealthChecker checker(http, loop.get(), server.url("/healthz"), 250ms, 2000ms);

  checker.start([] {});
  loop.runFor(450ms);
  checker.stop();
  CHECK(mostActive == 1);
  CHECK(answered >= 4);  // a slow probe is followed by the next one at once
  CHECK(checker.probesSent() <= 8);
}

TEST_CASE("stop() ends the probing: no more probes, no callback") {
  TestLoop loop;
  HttpClient http(loop.get());
  HealthChecker checker(http, loop.get(), "http://127.0.0.1:" + std::to_string(freeLoopbackPort()) + "/", 250ms,
                        2000ms);
  bool healthy = false;
  checker.start([&] { healthy = true; });
  loop.runFor(100ms);
  CHECK(checker.probesSent() >= 3);
  INFO("last probe: " << checker.lastDetail());
  CHECK(checker.lastDetail().find("Connection refused") != std::string::npos);

  checker.stop();
  const auto sent = checker.probesSent();
  CHECK_FALSE(checker.running());
  loop.runFor(100ms);
  CHECK(checker.probesSent() == sent);
  CHECK_FALSE(healthy);
  CHECK(http.inFlight() == 0);
}

TEST_CASE("onHealthy may destroy the checker") {
  TestHttpServer server;
  server.routes().Get("/healthz",
                      [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
  server.start();
  TestLoop loop;
  HttpClient http(loop.get());
  auto checker = std::make_unique<HealthChecker>(http, loop.get(), server.url("/healthz"), 250ms, 2000ms);
  checker->start([&] { checker.reset(); });
  REQUIRE(loop.runUntil([&] { return !checker; }, 2000ms));
}

TEST_CASE("a single probe tells whether a service is still warm, and what answered") {
  TestHttpServer server;
  server.routes().Get("/up",
                      [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
  server.routes().Get("/busy", [](const httplib::Request&, httplib::Response& res) { res.status = 503; });
  server.routes().Get("/slow", [&](const httplib::Request&, httplib::Response& res) {
    server.slowDown(2000ms);
    res.set_content("late", "text/plain");
  });
  server.start();
  TestLoop loop;
  HttpClient http(loop.get());

  struct Result {
    bool healthy;
    std::string detail;
  };
  const auto probe = [&](const std::string& url) {
    HealthChecker checker(http, loop.get(), url, 250ms, 200ms);
    std::optional<Result> result;
    checker.probeOnce([&](bool healthy, std::string detail) { result = Result{healthy, std::move(detail)}; });
    REQUIRE(loop.runUntil([&] { return result.has_value(); }, 3000ms));
    return *result;
  };

  const auto up = probe(server.url("/up"));
  CHECK(up.healthy);
  CHECK(up.detail == "HTTP 200");
  const auto busy = probe(server.url("/busy"));
  CHECK_FALSE(busy.healthy);
  CHECK(busy.detail == "HTTP 503");
  const auto slow = probe(server.url("/slow"));  // the probe timeout applies
  CHECK_FALSE(slow.healthy);
  CHECK(slow.detail.find("timed out") != std::string::npos);
  const auto down = probe("http://127.0.0.1:" + std::to_string(freeLoopbackPort()) + "/");
  CHECK_FALSE(down.healthy);
  CHECK(down.detail.find("Connection refused") != std::string::npos);

  // Dropped with its checker: no callback afterwards.
  bool called = false;
  {
    HealthChecker checker(http, loop.get(), server.url("/up"), 250ms, 2000ms);
    checker.probeOnce([&](bool, std::string) { called = true; });
  }
  loop.runFor(200ms);
  CHECK_FALSE(called);
  CHECK(http.inFlight() == 0);
}

TEST_CASE("a health answer's body is not kept: a 100 MB one is as healthy as any 200") {
  TestHttpServer server;
  server.routes().Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content_provider(100 * 1024 * 1024, "text/plain",
                             [](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
                               static const std::string chunk(64 * 1024, 'x');
                               (void)offset;
                               sink.write(chunk.data(), std::min(length, chunk.size()));
                               return true;
                             });
  });
  server.start();
  TestLoop loop;
  HttpClient http(loop.get());
  HealthChecker checker(http, loop.get(), server.url("/healthz"), 250ms, 20000ms);
  bool healthy = false;
  checker.start([&] { healthy = true; });
  REQUIRE(loop.runUntil([&] { return healthy; }, 25000ms));
  CHECK(checker.lastDetail() == "HTTP 200");
}
