// The module's connection to controld without nginx: the lines controld
// sends, framed however the reads split them, the handshake, the service
// table they update, the acks and wakes they lead to, across a reconnect.

#include <catch2/catch.hpp>
#include <string>

#include "ngx_module/link_session.hpp"

using namespace ondemand;
using namespace ondemand::module;
using Kind = LinkSession::Incoming::Kind;

namespace {

protocol::StatePush push(const std::string& service, ServiceState state, std::uint64_t epoch) {
  protocol::StatePush p;
  p.service = service;
  p.state = state;
  p.epoch = epoch;
  p.sinceMs = 1700000000000;
  return p;
}

// Every line the session has read, in order; fails the test on a broken one.
std::vector<LinkSession::Incoming> readAll(LinkSession& session, const std::string& bytes) {
  REQUIRE(session.append(bytes));
  std::vector<LinkSession::Incoming> lines;
  for (;;) {
    LinkSession::Incoming in;
    std::string error;
    const auto next = session.next(in, error);
    INFO(error);
    REQUIRE(next != LinkSession::Next::Broken);
    if (next == LinkSession::Next::None) return lines;
    lines.push_back(std::move(in));
  }
}

// What a worker reads after connecting: the welcome, every state, synced.
std::string burst(const std::vector<protocol::StatePush>& states) {
  std::string bytes = protocol::encode(protocol::Welcome{protocol::kVersion, "controld 0.1.0"});
  for (const auto& s : states)
    bytes += protocol::encode(s);
  return bytes + protocol::encode(protocol::Synced{});
}

}  // namespace

TEST_CASE("the link's handshake: welcome, the first burst of states, then synced") {
  LinkSession session(64 * 1024);
  session.connected();
  const auto lines = readAll(session, burst({push("gpu", ServiceState::Cold, 3), push("llm", ServiceState::Warm, 8)}));
  REQUIRE(lines.size() == 4);
  CHECK(lines[0].kind == Kind::Welcome);
  CHECK(session.daemon() == "controld 0.1.0");
  CHECK(lines[1].kind == Kind::State);
  REQUIRE(lines[1].entry != nullptr);
  CHECK(lines[1].entry->name == "gpu");
  CHECK(lines[1].entry->known);
  CHECK(lines[2].entry->state.state == ServiceState::Warm);
  CHECK(lines[3].kind == Kind::Synced);
  CHECK(lines[3].vanished.empty());
  // Up only once the link has dealt with what vanished.
  CHECK_FALSE(session.synced());
  session.markSynced();
  CHECK(session.synced());
  CHECK(session.everSynced());
  CHECK(session.table().find("llm")->state.epoch == 8);
}

TEST_CASE("the link reads lines however the reads split them, and skips empty ones") {
  LinkSession session(64 * 1024);
  session.connected();
  const std::string bytes = "\n" + protocol::encode(push("gpu", ServiceState::Starting, 4)) + "\r\n" +
                            protocol::encode(push("gpu", ServiceState::Warm, 5));
  std::vector<LinkSession::Incoming> lines;
  for (char c : bytes) {
    auto more = readAll(session, std::string(1, c));
    for (auto& in : more)
      lines.push_back(std::move(in));
  }
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].entry == lines[1].entry);
  CHECK(lines[1].entry->state.state == ServiceState::Warm);
  CHECK(lines[1].entry->state.epoch == 5);
}

TEST_CASE("a stopping push asks for an ack with this worker's requests in flight") {
  LinkSession session(64 * 1024);
  session.connected();
  readAll(session, burst({push("gpu", ServiceState::Warm, 3)}));
  session.markSynced();
  session.table().find("gpu")->inFlight = 2;
  const auto lines = readAll(session, protocol::encode(push("gpu", ServiceState::Stopping, 4)));
  REQUIRE(lines.size() == 1);
  REQUIRE(lines[0].ack);
  CHECK(lines[0].ack->service == "gpu");
  CHECK(lines[0].ack->epoch == 4);
  CHECK(lines[0].ack->inFlight == 2);
  // Other states ask for none.
  CHECK_FALSE(readAll(session, protocol::encode(push("gpu", ServiceState::Cold, 5)))[0].ack);
}

TEST_CASE("the link hands over status answers, controld's errors and removals") {
  LinkSession session(64 * 1024);
  session.connected();
  readAll(session, burst({push("gpu", ServiceState::Warm, 3)}));
  session.markSynced();

  protocol::StatusReply status;
  status.id = 12;
  const std::string reply = protocol::encode(status);
  auto lines = readAll(session, reply);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].kind == Kind::StatusAnswer);
  CHECK(lines[0].answerId == 12);
  CHECK(lines[0].text + "\n" == reply);

  lines = readAll(session, protocol::encode(protocol::Error{"too many connections"}));
  CHECK(lines.at(0).kind == Kind::ControldError);
  CHECK(lines.at(0).text == "too many connections");

  lines = readAll(session, protocol::encode(protocol::Removed{"gpu"}) + protocol::encode(protocol::Removed{"never"}));
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].kind == Kind::Removed);
  CHECK(lines[0].entry->name == "gpu");
  CHECK_FALSE(lines[0].entry->known);
  CHECK(lines[1].kind == Kind::Ignored);  // a service this worker never knew

  lines = readAll(session, protocol::encode(protocol::Subscribe{}));
  CHECK(lines.at(0).kind == Kind::Ignored);
  CHECK(lines.at(0).text == "subscribe");
}

TEST_CASE("what breaks the protocol drops the connection, with the reason") {
  struct Case {
    std::string line;
    const char* error;
  };
  const Case cases[] = {
      {protocol::encode(protocol::Welcome{protocol::kVersion + 1, "controld 9"}), "protocol version"},
      {"{\"type\":\"state\",\"service\":\"a\"}\n", "bad message from controld: missing field"},
      {"not json\n", "bad message from controld"},
      {"{\"type\":\"reply\",\"ok\":true}\n", "bad reply from controld"},
  };
  for (const auto& c : cases) {
    INFO(c.line);
    LinkSession session(64 * 1024);
    session.connected();
    REQUIRE(session.append(c.line));
    LinkSession::Incoming in;
    std::string error;
    CHECK(session.next(in, error) == LinkSession::Next::Broken);
    CHECK(error.find(c.error) != std::string::npos);
  }
  LinkSession session(1024);
  session.connected();
  CHECK_FALSE(session.append(std::string(2000, 'x')));
}

TEST_CASE("after a reconnect the new burst decides: missing services vanish, wakes go out again") {
  LinkSession session(64 * 1024);
  session.connected();
  readAll(session, burst({push("gpu", ServiceState::Cold, 3), push("old", ServiceState::Cold, 1)}));
  session.markSynced();
  ServiceEntry& gpu = *session.table().find("gpu");
  CHECK(ServiceTable::claimWake(gpu, 1000));
  CHECK_FALSE(ServiceTable::claimWake(gpu, 1001));

  // The connection drops mid-line; the half line is not read after it.
  REQUIRE(session.append(protocol::encode(push("gpu", ServiceState::Starting, 4)).substr(0, 20)));
  session.lost();
  CHECK_FALSE(session.synced());
  CHECK(session.everSynced());
  CHECK(gpu.known);  // the last state is kept while controld is away

  session.connected();
  // A new subscription: no wake on record, so the same epoch wakes again.
  CHECK(ServiceTable::claimWake(gpu, 2000));
  const auto lines = readAll(session, burst({push("gpu", ServiceState::Cold, 3)}));
  REQUIRE(lines.size() == 3);
  CHECK(lines[1].entry == &gpu);  // the same entry: requests keep pointers to it
  REQUIRE(lines[2].vanished.size() == 1);
  CHECK(lines[2].vanished[0]->name == "old");
  CHECK_FALSE(lines[2].vanished[0]->known);
}
