// What controld answers a CLI (replies, events, the status reply) survives
// encode and decode unchanged; malformed answers are refused with a reason.

#include <catch2/catch.hpp>
#include <string>

#include "shared/protocol.hpp"

using namespace ondemand;
using namespace ondemand::protocol;

namespace {

// A status reply with every field set, in a cluster, with a shared machine.
StatusReply richStatus() {
  StatusReply reply;
  reply.id = 7;
  reply.nowMs = 1763900000123;
  reply.daemon = {
      "controld 0.1.0", 4242, 1763890000000, "/etc/controld/controld.yaml", 4, 1, {{"hello", 5}, {"activity", 120}}};
  reply.clusterJson = R"({"node":"a","prefix":"/ondemand/","etcd":{"reachable":true,"revision":12}})";
  StatusReply::Service s;
  s.name = "comfyui";
  s.state = ServiceState::Starting;
  s.phase = "readiness";
  s.epoch = 9;
  s.sinceMs = 1763899990000;
  s.cause = "request";
  s.reason = "GET /prompt \"quoted\" ünïcode\nline 2";
  s.startingSinceMs = 1763899990000;
  s.retryAtMs = 0;
  s.startsOk = 31;
  s.startsFailed = 1;
  s.lastStartMs = 41250;
  s.inFlight = 3;
  s.startedTotal = 5123;
  s.requestsWaiting = 2;
  s.stops = {{"idle", 4}, {"cli", 1}};
  s.coldStart = {{1000, 5000}, {0, 2, 29}, 1234567};
  s.wait = {{100, 250}, {7, 0, 1}, 900};
  s.idleStopAtMs = 1763900600000;
  s.driver = "semaphore";
  s.machine = "gpu-01";
  s.healthUrl = "http://127.0.0.1:8188/";
  s.baseUrl = "http://127.0.0.1:8188";
  s.idleTimeoutMs = 600000;
  s.queued = true;
  s.owner = "node-b";
  s.needs = {{"vram_gb", 16}, {"cpu", 0.5}};
  s.evictable = false;
  s.waitingFor = "room on gpu-01";
  s.operation = StatusReply::Operation{"start", "semaphore", 42, 0, 1763899990100, "comfyui-1763899990100-0a0b"};
  s.lastOperation = StatusReply::LastOperation{"stop", 1, 2, false, "task failed", 41, "error"};
  s.history = {{1, ServiceState::Warm, ServiceState::Stopping, "idle", "", 0, ""},
               {2, ServiceState::Stopping, ServiceState::Cold, "driver", "done", 41, "success"}};
  reply.services.push_back(s);
  StatusReply::Service quiet;
  quiet.name = "idle-one";
  reply.services.push_back(quiet);
  StatusReply::Machine m;
  m.name = "gpu-01";
  m.minWarmMs = 30000;
  m.resources = {{"vram_gb", 24, 16}, {"cpu", 8, 0.5}};
  m.holders = {{"comfyui", ServiceState::Warm, {{"vram_gb", 16}}}};
  m.queue = {{"llm", 1763899995000, "needs vram_gb 12, 8 free"}};
  reply.machines.push_back(m);
  return reply;
}

}  // namespace

TEST_CASE("a reply survives encode and decode, with and without the service's state") {
  const auto plain = decodeReply(encode(Reply{3, true, "", std::nullopt}));
  REQUIRE(plain.value);
  CHECK(plain.value->id == 3);
  CHECK(plain.value->ok);
  CHECK(plain.value->error.empty());
  CHECK_FALSE(plain.value->service);

  const auto refused =
      decodeReply(encode(Reply{4, false, "unknown service \"x\"", Reply::Service{ServiceState::Warm, 9, "why"}}));
  REQUIRE(refused.value);
  CHECK_FALSE(refused.value->ok);
  CHECK(refused.value->error == "unknown service \"x\"");
  REQUIRE(refused.value->service);
  CHECK(refused.value->service->state == ServiceState::Warm);
  CHECK(refused.value->service->epoch == 9);
  CHECK(refused.value->service->reason == "why");
}

TEST_CASE("an event survives encode and decode, its machine included") {
  const Event sent{"b", 1000, ServiceState::Starting, ServiceState::Starting, "waiting", "no room", 17, 5, "gpu-01"};
  const auto back = decodeEvent(encode(sent));
  REQUIRE(back.value);
  CHECK(back.value->service == "b");
  CHECK(back.value->atMs == 1000);
  CHECK(back.value->from == ServiceState::Starting);
  CHECK(back.value->to == ServiceState::Starting);
  CHECK(back.value->cause == "waiting");
  CHECK(back.value->detail == "no room");
  CHECK(back.value->taskId == 17);
  CHECK(back.value->epoch == 5);
  CHECK(back.value->machine == "gpu-01");
  CHECK(encode(*back.value) == encode(sent));
}

TEST_CASE("a status reply survives encode and decode field for field") {
  const StatusReply sent = richStatus();
  const std::string line = encode(sent);
  const auto back = decodeStatusReply(line);
  INFO(back.error);
  REQUIRE(back.value);
  // Every field: what is encoded again is the same text.
  CHECK(encode(*back.value) == line);
  const auto& s = back.value->services.at(0);
  CHECK(back.value->id == 7);
  CHECK(back.value->daemon.messagesReceived == sent.daemon.messagesReceived);
  CHECK(s.reason == sent.services[0].reason);
  CHECK(s.owner == std::optional<std::string>("node-b"));
  CHECK(s.needs == sent.services[0].needs);
  CHECK_FALSE(s.evictable);
  REQUIRE(s.operation);
  CHECK(s.operation->taskId == 42);
  REQUIRE(s.lastOperation);
  CHECK(s.lastOperation->taskStatus == "error");
  CHECK(s.history.size() == 2);
  CHECK(s.history[1].to == ServiceState::Cold);
  CHECK(s.coldStart.counts == std::vector<std::uint64_t>{0, 2, 29});
  CHECK(s.idleStopAtMs == std::optional<std::int64_t>(1763900600000));
  const auto& quiet = back.value->services.at(1);
  CHECK_FALSE(quiet.idleStopAtMs);
  CHECK_FALSE(quiet.operation);
  CHECK_FALSE(quiet.owner);
  CHECK(quiet.evictable);
  const auto& m = back.value->machines.at(0);
  CHECK(m.resources.at(1).used == 0.5);
  CHECK(m.holders.at(0).needs.at(0).second == 16);
  CHECK(m.queue.at(0).reason == "needs vram_gb 12, 8 free");
  CHECK(back.value->clusterJson == sent.clusterJson);
}

TEST_CASE("status --json is the status reply without its envelope, and reads back the same") {
  const StatusReply sent = richStatus();
  const std::string line = encode(sent);
  const std::string envelope = R"({"type":"reply","id":7,"ok":true,)";
  REQUIRE(line.rfind(envelope, 0) == 0);
  const std::string json = statusJson(sent);
  CHECK(json == "{" + line.substr(envelope.size(), line.size() - envelope.size() - 1));
  const auto back = decodeStatusReply(json);
  REQUIRE(back.value);
  CHECK(statusJson(*back.value) == json);
}

TEST_CASE("the envelope of an answer is read without the rest") {
  const std::string line = encode(richStatus());
  const auto status = decodeEnvelope(line);
  REQUIRE(status.value);
  CHECK(status.value->type == "reply");
  CHECK(status.value->id == 7);
  CHECK(status.value->ok);
  // Only the beginning has to be there.
  const auto cut = decodeEnvelope(line.substr(0, 60));
  REQUIRE(cut.value);
  CHECK(cut.value->id == 7);

  const auto refused = decodeEnvelope(encode(Reply{2, false, "permission denied", std::nullopt}));
  REQUIRE(refused.value);
  CHECK_FALSE(refused.value->ok);
  CHECK(refused.value->error == "permission denied");

  const auto error = decodeEnvelope(encode(Error{"protocol version 2 is not spoken here"}));
  REQUIRE(error.value);
  CHECK(error.value->type == "error");
  CHECK(error.value->error == "protocol version 2 is not spoken here");

  const auto push = decodeEnvelope(encode(StatePush{}));
  REQUIRE(push.value);
  CHECK(push.value->type == "state");

  for (const char* bad : {"", "not json", "[1,2]", R"({"id":1})", R"({"type":"reply","ok":true})",
                          R"({"type":"reply","id":1})", R"({"type":"reply","id":1,"ok":tru)"}) {
    INFO(bad);
    const auto parsed = decodeEnvelope(bad);
    CHECK_FALSE(parsed.value);
    CHECK_FALSE(parsed.error.empty());
  }
}

TEST_CASE("the cluster object of a status reply reads as the CLI shows it") {
  const auto cluster = decodeClusterStatus(
      R"({"node":"a","prefix":"/od/","etcd":{"reachable":false,"synced":true,"endpoint":"http://e:2379",)"
      R"("endpoints":["http://e:2379"],"error":"connection refused","since":5,"revision":12},)"
      R"("lease":{"id":7587,"ttl_s":10,"renewed_ms_ago":-1},)"
      R"("members":[{"node":"a","lease":7587,"pid":10,"version":"controld 0.1.0","started_at":1,"services":2,"self":true}],)"
      R"("owners":{"gpu":"a","llm":"b"},"mismatches":[{"service":"gpu","nodes":["a","b"],"keys":["base_url"]}]})");
  INFO(cluster.error);
  REQUIRE(cluster.value);
  const ClusterStatus& c = *cluster.value;
  CHECK(c.node == "a");
  CHECK(c.prefix == "/od/");
  CHECK_FALSE(c.etcd.reachable);
  CHECK(c.etcd.error == "connection refused");
  CHECK(c.etcd.revision == 12);
  REQUIRE(c.lease);
  CHECK(c.lease->renewedMsAgo == -1);
  REQUIRE(c.members.size() == 1);
  CHECK(c.members[0].self);
  CHECK(c.members[0].services == 2);
  REQUIRE(c.owners);
  CHECK(c.owners->at(1) == std::pair<std::string, std::string>{"llm", "b"});
  REQUIRE(c.mismatches.size() == 1);
  CHECK(c.mismatches[0].keys == std::vector<std::string>{"base_url"});

  CHECK_FALSE(decodeClusterStatus(R"({"owners":{"gpu":1}})").value);
  CHECK_FALSE(decodeClusterStatus(R"({"members":[{"node":"a","self":"yes"}]})").value);
  CHECK_FALSE(decodeClusterStatus("[]").value);
}

TEST_CASE("malformed answers are refused with a reason, never thrown") {
  struct Case {
    const char* line;
    const char* error;
  };
  const Case replies[] = {
      {"", "not JSON"},
      {"{\"type\":\"reply\",\"id\":1", "not JSON"},
      {"[]", "not a JSON object"},
      {R"({"type":"event","id":1,"ok":true})", "not \"reply\""},
      {R"({"type":"reply","ok":true})", "missing field \"id\""},
      {R"({"type":"reply","id":"1","ok":true})", "field \"id\" must be an integer"},
      {R"({"type":"reply","id":1,"ok":true,"state":"tepid"})", "unknown state \"tepid\""},
  };
  for (const auto& c : replies) {
    INFO(c.line);
    const auto parsed = decodeReply(c.line);
    CHECK_FALSE(parsed.value);
    CHECK(parsed.error.find(c.error) != std::string::npos);
  }
  const Case events[] = {
      {R"({"type":"event","service":"a","at":1,"from":"cold","to":"warm"})", "missing field \"epoch\""},
      {R"({"type":"event","service":"a","at":1,"from":"cold","epoch":1})", "missing field \"to\""},
      {R"({"type":"state","service":"a"})", "not \"event\""},
  };
  for (const auto& c : events) {
    INFO(c.line);
    const auto parsed = decodeEvent(c.line);
    CHECK_FALSE(parsed.value);
    CHECK(parsed.error.find(c.error) != std::string::npos);
  }
  const Case statuses[] = {
      {R"({"type":"reply","id":1,"ok":false,"error":"unknown service \"x\""})",
       "controld answered: unknown service \"x\""},
      {R"({"services":{}})", "field \"services\" must be an array"},
      {R"({"services":[1]})", "services[0] must be an object"},
      {R"({"services":[{"state":"warm"}]})", "services[0]: missing field \"name\""},
      {R"({"services":[{"name":"a","state":"warm","history":[{"at":"x","from":"cold","to":"warm"}]}]})",
       "services[0]: history[0]: field \"at\" must be an integer"},
      {R"({"services":[{"name":"a","state":"warm","idle_stop_at":"soon"}]})", "idle_stop_at"},
      {R"({"services":[{"name":"a","state":"warm","operation":[]}]})", "field \"operation\" must be an object or null"},
      {R"({"services":[{"name":"a","state":"warm","stops":{"idle":-1}}]})", "\"idle\" must be a non-negative integer"},
      {R"({"machines":[{"name":"m","resources":{"vram":{"total":"24"}}}]})",
       "machines[0]: resources.vram: field \"total\" must be a number"},
      {R"({"daemon":{"connections":{"worker":-2}}})", "daemon: connections: field \"worker\""},
      {R"({"cluster":[]})", "field \"cluster\" must be an object"},
  };
  for (const auto& c : statuses) {
    INFO(c.line);
    const auto parsed = decodeStatusReply(c.line);
    CHECK_FALSE(parsed.value);
    CHECK(parsed.error.find(c.error) != std::string::npos);
  }
  // Nested far deeper than any answer: refused before parsing.
  std::string deep = R"({"services":)";
  for (int i = 0; i < 100000; ++i)
    deep += "[";
  const auto parsed = decodeStatusReply(deep);
  CHECK_FALSE(parsed.value);
  CHECK(parsed.error.find("nested deeper") != std::string::npos);
  CHECK_FALSE(decodeEnvelope(deep).value);
}
