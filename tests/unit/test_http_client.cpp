#include <catch2/catch.hpp>

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "controld/io/http_client.hpp"
#include "http_test_server.hpp"
#include "uv_test_support.hpp"

using namespace ondemand::controld;
using namespace ondemand::testing;

namespace {

HttpRequest get(const std::string& url, Millis timeout = 5000ms) {
  HttpRequest r;
  r.url = url;
  r.timeout = timeout;
  return r;
}

}  // namespace

TEST_CASE("a GET answers with the status, body and lower-cased headers, never from inside send()") {
  TestHttpServer server;
  server.routes().Get("/hello", [](const httplib::Request&, httplib::Response& res) {
    res.status = 201;
    res.set_header("X-Answer-From", "Test Server");
    res.set_content("hello there", "text/plain");
  });
  server.start();
  TestLoop loop;
  HttpClient client(loop.get());

  std::optional<HttpResponse> response;
  client.send(get(server.url("/hello")), [&](HttpResponse r) { response = std::move(r); });
  CHECK_FALSE(response);  // delivered on the loop, not on the caller's stack
  CHECK(client.inFlight() == 1);

  REQUIRE(loop.runUntil([&] { return response.has_value(); }, 5000ms));
  CHECK(response->status == 201);
  CHECK(response->ok());
  CHECK(response->error.empty());
  CHECK(response->body == "hello there");
  CHECK(response->header("x-answer-from") == "Test Server");
  CHECK(response->header("content-type") == "text/plain");
  CHECK(response->header("X-Answer-From").empty());  // look-ups are by lower-case name
  CHECK(client.inFlight() == 0);
}

TEST_CASE("a POST delivers its body and headers to the server") {
  TestHttpServer server;
  std::mutex mutex;
  std::string receivedBody, receivedType, receivedToken;
  server.routes().Post("/tasks", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mutex);
    receivedBody = req.body;
    receivedType = req.get_header_value("Content-Type");
    receivedToken = req.get_header_value("Authorization");
    res.set_content(R"({"id":42})", "application/json");
  });
  server.start();
  TestLoop loop;
  HttpClient client(loop.get());

  // Larger than curl's threshold for "Expect: 100-continue", which would cost a second.
  const std::string body = R"({"template_id":22,"environment":")" + std::string(3000, 'x') + R"("})";
  HttpRequest request = get(server.url("/tasks"));
  request.method = "POST";
  request.body = body;
  request.headers = {"Content-Type: application/json", "Authorization: Bearer secret-token"};
  std::optional<HttpResponse> response;
  const auto started = SteadyClock::now();
  client.send(request, [&](HttpResponse r) { response = std::move(r); });

  REQUIRE(loop.runUntil([&] { return response.has_value(); }, 5000ms));
  CHECK(millisSince(started) < 900ms);
  CHECK(response->status == 200);
  CHECK(response->body == R"({"id":42})");
  std::lock_guard lock(mutex);
  CHECK(receivedBody == body);
  CHECK(receivedType == "application/json");
  CHECK(receivedToken == "Bearer secret-token");
}

TEST_CASE("a refused connection answers status 0 with curl's error") {
  TestLoop loop;
  HttpClient client(loop.get());
  std::optional<HttpResponse> response;
  client.send(get("http://127.0.0.1:" + std::to_string(freeLoopbackPort()) + "/health"),
              [&](HttpResponse r) { response = std::move(r); });

  REQUIRE(loop.runUntil([&] { return response.has_value(); }, 5000ms));
  CHECK(response->status == 0);
  CHECK_FALSE(response->ok());
  INFO("error: " << response->error);
  CHECK(response->error.find("Connection refused") != std::string::npos);
}

TEST_CASE("a server that does not answer in time ends the request at its timeout") {
  TestHttpServer server;
  server.routes().Get("/slow", [&](const httplib::Request&, httplib::Response& res) {
    server.slowDown(3000ms);
    res.set_content("late", "text/plain");
  });
  server.start();
  TestLoop loop;
  HttpClient client(loop.get());

  std::optional<HttpResponse> response;
  const auto started = SteadyClock::now();
  client.send(get(server.url("/slow"), 200ms), [&](HttpResponse r) { response = std::move(r); });

  REQUIRE(loop.runUntil([&] { return response.has_value(); }, 3000ms));
  const auto took = millisSince(started);
  CHECK(took >= 190ms);
  CHECK(took < 1000ms);
  CHECK(response->status == 0);
  CHECK(response->body.empty());
  INFO("error: " << response->error);
  CHECK(response->error.find("timed out") != std::string::npos);
}

TEST_CASE("a slow server does not delay a request running beside it") {
  TestHttpServer server;
  server.routes().Get("/slow", [&](const httplib::Request&, httplib::Response& res) {
    server.slowDown(1000ms);
    res.set_content("slow", "text/plain");
  });
  server.routes().Get("/fast",
                      [](const httplib::Request&, httplib::Response& res) { res.set_content("fast", "text/plain"); });
  server.start();
  TestLoop loop;
  HttpClient client(loop.get());

  const auto started = SteadyClock::now();
  std::optional<Millis> slowAt, fastAt;
  std::optional<HttpResponse> slow, fast;
  client.send(get(server.url("/slow")), [&](HttpResponse r) {
    slowAt = millisSince(started);
    slow = std::move(r);
  });
  client.send(get(server.url("/fast")), [&](HttpResponse r) {
    fastAt = millisSince(started);
    fast = std::move(r);
  });

  REQUIRE(loop.runUntil([&] { return fast.has_value(); }, 5000ms));
  CHECK(*fastAt < 500ms);
  CHECK_FALSE(slow);
  CHECK(fast->body == "fast");
  REQUIRE(loop.runUntil([&] { return slow.has_value(); }, 5000ms));
  CHECK(*slowAt >= 1000ms);
  CHECK(slow->body == "slow");
}

TEST_CASE("requests to the same server reuse one connection") {
  TestHttpServer server;
  std::mutex mutex;
  std::vector<int> clientPorts;
  server.routes().Get("/ping", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mutex);
    clientPorts.push_back(req.remote_port);
    res.set_content("pong", "text/plain");
  });
  server.start();
  TestLoop loop;
  HttpClient client(loop.get());

  int answered = 0;
  std::function<void(HttpResponse)> next = [&](HttpResponse r) {
    CHECK(r.status == 200);
    if (++answered < 3) client.send(get(server.url("/ping")), next);  // sending from a callback is fine
  };
  client.send(get(server.url("/ping")), next);

  REQUIRE(loop.runUntil([&] { return answered == 3; }, 5000ms));
  std::lock_guard lock(mutex);
  REQUIRE(clientPorts.size() == 3);
  CHECK(clientPorts[0] == clientPorts[1]);
  CHECK(clientPorts[1] == clientPorts[2]);
}

TEST_CASE("a cancelled request never calls back") {
  TestHttpServer server;
  server.routes().Get("/fast",
                      [](const httplib::Request&, httplib::Response& res) { res.set_content("fast", "text/plain"); });
  server.routes().Get("/slow", [&](const httplib::Request&, httplib::Response& res) {
    server.slowDown(300ms);
    res.set_content("slow", "text/plain");
  });
  server.start();
  TestLoop loop;
  HttpClient client(loop.get());

  bool cancelledAnswered = false, cancelledLaterAnswered = false, otherAnswered = false;
  const auto cancelled = client.send(get(server.url("/fast")), [&](HttpResponse) { cancelledAnswered = true; });
  const auto cancelledLater =
      client.send(get(server.url("/slow")), [&](HttpResponse) { cancelledLaterAnswered = true; });
  client.send(get(server.url("/fast")), [&](HttpResponse) { otherAnswered = true; });
  client.cancel(cancelled);
  CHECK(client.inFlight() == 2);

  // The other fast request answers, so the cancelled one would have too.
  REQUIRE(loop.runUntil([&] { return otherAnswered; }, 5000ms));
  client.cancel(cancelledLater);  // while the server is working on it
  CHECK(client.inFlight() == 0);
  loop.runFor(500ms);  // past the moment the slow answer arrives
  CHECK_FALSE(cancelledAnswered);
  CHECK_FALSE(cancelledLaterAnswered);
  client.cancel(cancelled);  // cancelling twice is harmless
}

TEST_CASE("destroying the client with transfers running calls nothing back and leaves nothing open") {
  TestHttpServer server;
  server.routes().Get("/slow", [&](const httplib::Request&, httplib::Response& res) {
    server.slowDown(300ms);
    res.set_content("slow", "text/plain");
  });
  server.start();
  TestLoop loop;
  auto client = std::make_unique<HttpClient>(loop.get());

  int answers = 0;
  for (int i = 0; i < 3; ++i)
    client->send(get(server.url("/slow")), [&](HttpResponse) { ++answers; });
  loop.runFor(100ms);  // connections are open and waiting
  client.reset();
  loop.runFor(500ms);
  CHECK(answers == 0);
  CHECK(loop.close());  // every poll handle and timer was closed
}

TEST_CASE("a callback may destroy the client, and the other finished requests are then dropped") {
  TestHttpServer server;
  server.routes().Get("/fast",
                      [](const httplib::Request&, httplib::Response& res) { res.set_content("fast", "text/plain"); });
  server.start();
  TestLoop loop;
  auto client = std::make_unique<HttpClient>(loop.get());

  int answers = 0;
  for (int i = 0; i < 5; ++i) {
    client->send(get(server.url("/fast")), [&](HttpResponse) {
      ++answers;
      client.reset();
    });
  }
  REQUIRE(loop.runUntil([&] { return !client; }, 5000ms));
  loop.runFor(200ms);
  CHECK(answers == 1);
}

TEST_CASE("a URL curl cannot use is reported through the callback, from the loop") {
  TestLoop loop;
  HttpClient client(loop.get());
  std::optional<HttpResponse> response;
  client.send(get("ftp://127.0.0.1/file"), [&](HttpResponse r) { response = std::move(r); });
  CHECK_FALSE(response);
  REQUIRE(loop.runUntil([&] { return response.has_value(); }, 5000ms));
  CHECK(response->status == 0);
  CHECK_FALSE(response->error.empty());
}
