#include <pthread.h>

#include <catch2/catch.hpp>
#include <functional>
#include <limits>
#include <memory>

#include "shared/duration.hpp"
#include "shared/json_read.hpp"
#include "shared/protocol.hpp"
#include "shared/service_name.hpp"
#include "shared/utf8.hpp"

using namespace ondemand;
using namespace ondemand::protocol;

TEST_CASE("a state push survives encode and decode unchanged") {
  StatePush s;
  s.service = "comfyui";
  s.state = ServiceState::Failed;
  s.epoch = 7;
  s.sinceMs = 1700000000123;
  s.cause = "driver";
  s.reason = "Semaphore task 42 ended with status error: \"quoted\"\nline2";
  s.taskId = 42;
  s.lastStartMs = 41250;
  const std::string line = encode(s);
  REQUIRE(line.back() == '\n');
  const auto decoded = decode(std::string_view(line).substr(0, line.size() - 1));
  REQUIRE(decoded.message);
  const auto& back = std::get<StatePush>(*decoded.message);
  CHECK(back.service == "comfyui");
  CHECK(back.state == ServiceState::Failed);
  CHECK(back.epoch == 7);
  CHECK(back.sinceMs == 1700000000123);
  CHECK(back.reason == s.reason);
  CHECK(back.taskId == 42);
  CHECK(back.lastStartMs == 41250);
  CHECK(back.waiting.empty());
  CHECK(line.find("\"waiting\"") == std::string::npos);  // only while a start waits for room

  s.state = ServiceState::Starting;
  s.waiting = "waiting for room on gpu-01: comfyui has 2 requests in flight";
  const std::string waiting = encode(s);
  const auto again = decode(std::string_view(waiting).substr(0, waiting.size() - 1));
  REQUIRE(again.message);
  CHECK(std::get<StatePush>(*again.message).waiting == s.waiting);
}

TEST_CASE("a state push carries the service's models and upstream, and omits them when it has none") {
  StatePush s;
  s.service = "llm";
  s.models = {"llama3", "qwen2.5:14b", "Qwen/Qwen2.5-7B-Instruct"};
  s.upstream = "127.0.0.1:8001";
  const std::string line = encode(s);
  const auto decoded = decode(std::string_view(line).substr(0, line.size() - 1));
  REQUIRE(decoded.message);
  const auto& back = std::get<StatePush>(*decoded.message);
  CHECK(back.models == s.models);
  CHECK(back.upstream == "127.0.0.1:8001");

  StatePush plain;
  plain.service = "comfyui";
  const std::string plainLine = encode(plain);
  CHECK(plainLine.find("models") == std::string::npos);
  CHECK(plainLine.find("upstream") == std::string::npos);

  const auto bad = decode(R"({"type":"state","service":"x","state":"cold","epoch":1,"since":0,"models":"llama3"})");
  CHECK_FALSE(bad.message);
  CHECK(bad.error == "field \"models\" must be an array of strings");
  const auto badItem = decode(R"({"type":"state","service":"x","state":"cold","epoch":1,"since":0,"models":[1]})");
  CHECK_FALSE(badItem.message);
}

TEST_CASE("model names allow what model servers use, not spaces or quotes") {
  CHECK(isValidModelName("llama3"));
  CHECK(isValidModelName("qwen2.5:14b"));
  CHECK(isValidModelName("Qwen/Qwen2.5-7B-Instruct"));
  CHECK_FALSE(isValidModelName(""));
  CHECK_FALSE(isValidModelName("two words"));
  CHECK_FALSE(isValidModelName(".hidden"));
  CHECK_FALSE(isValidModelName("quo\"te"));
  CHECK_FALSE(isValidModelName("tab\there"));
  CHECK_FALSE(isValidModelName(std::string(257, 'a')));
  CHECK(isValidModelName(std::string(256, 'a')));
}

TEST_CASE("activity reports carry every service's counters") {
  Activity a;
  a.entries.push_back({"a", 3, 1, 0, {}});
  a.entries.push_back({"b", 0, 0, 0, {}});
  const std::string line = encode(a);
  const auto decoded = decode(std::string_view(line).substr(0, line.size() - 1));
  REQUIRE(decoded.message);
  const auto& back = std::get<Activity>(*decoded.message);
  REQUIRE(back.entries.size() == 2);
  CHECK(back.entries[0].service == "a");
  CHECK(back.entries[0].started == 3);
  CHECK(back.entries[0].inFlight == 1);
}

TEST_CASE("activity reports carry held requests and the waits that ended, by bucket") {
  Activity a;
  Activity::Entry e{"a", 1, 2, 3, {}};
  e.waited.add(0);
  e.waited.add(100);  // bounds are inclusive
  e.waited.add(101);
  e.waited.add(999999);  // above the last bound
  a.entries.push_back(e);
  a.entries.push_back({"b", 0, 0, 0, {}});
  const std::string line = encode(a);
  CHECK(line.find("\"waited\"") == line.find("\"waited\":{\"sum_ms\":1000200"));
  CHECK(line.find("\"b\":{\"started\":0,\"in_flight\":0,\"held\":0}") != std::string::npos);  // no empty waits
  const auto decoded = decode(std::string_view(line).substr(0, line.size() - 1));
  REQUIRE(decoded.message);
  const auto& back = std::get<Activity>(*decoded.message);
  REQUIRE(back.entries.size() == 2);
  CHECK(back.entries[0].held == 3);
  CHECK(back.entries[0].waited.count() == 4);
  CHECK(back.entries[0].waited.sumMs == 1000200);
  CHECK(back.entries[0].waited.buckets[0] == 2);
  CHECK(back.entries[0].waited.buckets[1] == 1);
  CHECK(back.entries[0].waited.buckets[kWaitBucketCount - 1] == 1);
  CHECK(back.entries[1].waited.empty());

  // An older worker sends neither field.
  const auto old = decode(R"({"type":"activity","services":{"a":{"started":1,"in_flight":0}}})");
  REQUIRE(old.message);
  CHECK(std::get<Activity>(*old.message).entries[0].held == 0);

  CHECK(
      decode(R"({"type":"activity","services":{"a":{"started":1,"in_flight":0,"waited":{"sum_ms":1,"buckets":[1]}}}})")
          .error == "services.a.waited: \"buckets\" must be an array of 12 counts");
  CHECK(decode(R"({"type":"activity","services":{"a":{"started":1,"in_flight":0,"held":-1}}})").error ==
        "services.a: field \"held\" must be a non-negative integer");
}

TEST_CASE("malformed messages are rejected with a reason, never thrown") {
  CHECK(decode("not json").error.find("not JSON") != std::string::npos);
  CHECK(decode("[1,2]").error == "message is not a JSON object");
  CHECK(decode(R"({"type":"wake"})").error == "missing field \"service\"");
  CHECK(decode(R"({"type":"wake","service":5})").error == "field \"service\" must be a string");
  CHECK(decode(R"({"type":"teleport"})").error == "unknown message type \"teleport\"");
  CHECK(decode(R"({"type":"stopping_ack","service":"a","epoch":-1,"in_flight":0})").error ==
        "field \"epoch\" must be a non-negative integer");
  CHECK(decode(R"({"type":"state","service":"a","state":"melting","epoch":1,"since":0})").error ==
        "unknown state \"melting\"");
}

TEST_CASE("the line framer splits a stream into messages and refuses oversized lines") {
  LineFramer framer(16);
  REQUIRE(framer.append("abc\nde"));
  CHECK(framer.next() == std::optional<std::string_view>("abc"));
  CHECK_FALSE(framer.next());
  REQUIRE(framer.append("f\r\n"));
  CHECK(framer.next() == std::optional<std::string_view>("def"));
  CHECK_FALSE(framer.append(std::string(17, 'x')));

  LineFramer exact(4);
  CHECK(exact.append("abcd"));
  CHECK(exact.append("\n"));
  CHECK(exact.next() == std::optional<std::string_view>("abcd"));
}

TEST_CASE("the line framer judges each line whole, however reads split it") {
  const std::string tooLong = std::string(17, 'x') + "\n";
  LineFramer whole(16);
  CHECK_FALSE(whole.append("ok\n" + tooLong + "ok\n"));  // complete lines are checked too
  LineFramer split(16);
  REQUIRE(split.append("ok\n" + tooLong.substr(0, 10)));
  CHECK_FALSE(split.append(tooLong.substr(10) + "ok\n"));
  LineFramer fine(16);
  CHECK(fine.append(std::string(16, 'y') + "\n" + std::string(8, 'z')));
  CHECK(fine.append(std::string(8, 'z') + "\n"));
  CHECK(fine.next() == std::optional<std::string_view>(std::string(16, 'y')));
  CHECK(fine.next() == std::optional<std::string_view>(std::string(16, 'z')));
}

TEST_CASE("UTF-8 truncation never splits a character") {
  const std::string text = "ab\xC3\xA9";  // "abé"
  CHECK(truncateUtf8(text, 3) == "ab");
  CHECK(truncateUtf8(text, 4) == text);
}

TEST_CASE("durations read the way people write them") {
  CHECK(parseDuration("250ms", DefaultUnit::Seconds) == Millis(250));
  CHECK(parseDuration("30s", DefaultUnit::Seconds) == Millis(30000));
  CHECK(parseDuration("5m", DefaultUnit::Seconds) == Millis(300000));
  CHECK(parseDuration("1h", DefaultUnit::Seconds) == Millis(3600000));
  CHECK(parseDuration("1.5s", DefaultUnit::Seconds) == Millis(1500));
  CHECK(parseDuration("500", DefaultUnit::Milliseconds) == Millis(500));
  CHECK(parseDuration("2.0", DefaultUnit::Seconds) == Millis(2000));
  CHECK_FALSE(parseDuration("5 minutes", DefaultUnit::Seconds));
  CHECK_FALSE(parseDuration("-1s", DefaultUnit::Seconds));
  CHECK_FALSE(parseDuration("", DefaultUnit::Seconds));
  CHECK_FALSE(parseDuration("s", DefaultUnit::Seconds));
  CHECK(formatDuration(Millis(1500)) == "1.5s");
  CHECK(formatDuration(Millis(90000)) == "1m30s");
  CHECK(formatDuration(Millis(0)) == "0ms");
}

TEST_CASE("every duration can be shown, the most negative one included") {
  CHECK(formatDuration(Millis(-1500)) == "-1.5s");
  CHECK(formatDuration(Millis(std::numeric_limits<std::int64_t>::min())) == "-2562047788015h12m55s");
  CHECK(formatDuration(Millis(std::numeric_limits<std::int64_t>::max())) == "2562047788015h12m55s");
}

TEST_CASE("service names are kept to a safe alphabet") {
  CHECK(isValidServiceName("comfy-ui_2.v1"));
  CHECK_FALSE(isValidServiceName(""));
  CHECK_FALSE(isValidServiceName(".hidden"));
  CHECK_FALSE(isValidServiceName("a/b"));
  CHECK_FALSE(isValidServiceName(std::string(65, 'a')));
  CHECK(environmentPrefix("comfy-ui") == "COMFY_UI");
}

TEST_CASE("replies and events are written as docs/PROTOCOL.md describes them") {
  CHECK(encode(Reply{3, true, "", std::nullopt}) == "{\"type\":\"reply\",\"id\":3,\"ok\":true}\n");
  CHECK(encode(Reply{4, false, "unknown service \"x\"", Reply::Service{ServiceState::Warm, 9, "why"}}) ==
        "{\"type\":\"reply\",\"id\":4,\"ok\":false,\"error\":\"unknown service \\\"x\\\"\",\"state\":\"warm\","
        "\"epoch\":9,\"reason\":\"why\"}\n");
  CHECK(encode(Event{"gpu", 1000, ServiceState::Cold, ServiceState::Starting, "request", "GET /", 0, 5, {}}) ==
        "{\"type\":\"event\",\"service\":\"gpu\",\"at\":1000,\"from\":\"cold\",\"to\":\"starting\","
        "\"cause\":\"request\",\"detail\":\"GET /\",\"task_id\":0,\"epoch\":5}\n");
  // A start waiting for room names its machine.
  CHECK(encode(Event{"b", 1000, ServiceState::Starting, ServiceState::Starting, "waiting",
                     "waiting for room on gpu-01: a is starting", 0, 5, "gpu-01"}) ==
        "{\"type\":\"event\",\"service\":\"b\",\"at\":1000,\"from\":\"starting\",\"to\":\"starting\","
        "\"cause\":\"waiting\",\"detail\":\"waiting for room on gpu-01: a is starting\",\"task_id\":0,"
        "\"epoch\":5,\"machine\":\"gpu-01\"}\n");
}

TEST_CASE("the status reply has every field of status --json, null where nothing is under way") {
  StatusReply reply;
  reply.id = 1;
  reply.nowMs = 5000;
  reply.daemon.version = "controld 0.1.0";
  reply.daemon.pid = 42;
  reply.daemon.messagesReceived = {{"hello", 2}, {"wake", 1}};
  StatusReply::Service s;
  s.name = "gpu";
  s.state = ServiceState::Starting;
  s.phase = "driver";
  s.idleStopAtMs = 9000;
  s.operation = StatusReply::Operation{"start", "command", 0, 77, 4000, "gpu-4000-0a0b0c0d"};
  s.history.push_back({4000, ServiceState::Cold, ServiceState::Starting, "cli", "controld start", 0, ""});
  reply.services.push_back(s);
  StatusReply::Service quiet;
  quiet.name = "idle";
  reply.services.push_back(quiet);
  const std::string line = encode(reply);
  CHECK(line.rfind("{\"type\":\"reply\",\"id\":1,\"ok\":true,\"now\":5000,\"daemon\":{\"version\":\"controld 0.1.0\","
                   "\"pid\":42,\"started_at\":0,\"config\":\"\",\"connections\":{\"worker\":0,\"cli\":0},"
                   "\"messages_received\":{\"hello\":2,\"wake\":1}},\"services\":[{\"name\":\"gpu\"",
                   0) == 0);
  CHECK(line.find("\"idle_stop_at\":9000,\"driver\"") != std::string::npos);
  CHECK(line.find("\"operation\":{\"kind\":\"start\",\"driver\":\"command\",\"task_id\":0,\"pid\":77,"
                  "\"started_at\":4000,\"operation_id\":\"gpu-4000-0a0b0c0d\"},\"last_operation\":null,"
                  "\"history\":[{\"at\":4000,\"from\":\"cold\",\"to\":\"starting\",\"cause\":\"cli\"") !=
        std::string::npos);
  CHECK(line.find("{\"name\":\"idle\"") != std::string::npos);
  CHECK(line.find("\"idle_stop_at\":null") != std::string::npos);
  CHECK(line.find("\"operation\":null,\"last_operation\":null,\"history\":[]}],\"machines\":[]}\n") !=
        std::string::npos);
}

namespace {

// Runs fn on a thread with a small stack (as controld may get under a tight
// ulimit -s), so a recursive parse would overflow it.
void onSmallStack(const std::function<void()>& fn) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t thread;
  auto* copy = new std::function<void()>(fn);
  REQUIRE(pthread_create(
              &thread, &attr,
              [](void* arg) -> void* {
                std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(arg));
                (*f)();
                return nullptr;
              },
              copy) == 0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
}

}  // namespace

TEST_CASE("a control message nested 65,536 deep is refused without exhausting the stack") {
  const std::string line(kMaxMessageBytes - 1, '[');
  Decoded decoded;
  onSmallStack([&] { decoded = decode(line); });
  CHECK_FALSE(decoded.message);
  CHECK(decoded.error.find("nested deeper than 64 levels") != std::string::npos);

  std::string deepObject = R"({"type":"wake","service":"a","reason":"x","extra":)";
  for (int i = 0; i < 30000; ++i)
    deepObject += R"({"a":)";
  onSmallStack([&] { decoded = decode(deepObject); });
  CHECK_FALSE(decoded.message);
}

TEST_CASE("JSON nesting is counted outside strings only and up to the limit") {
  rapidjson::Document doc;
  std::string ok;
  for (std::size_t i = 0; i < kMaxJsonDepth; ++i)
    ok += "[";
  ok += R"("[[[[{{{{")";
  for (std::size_t i = 0; i < kMaxJsonDepth; ++i)
    ok += "]";
  CHECK(parseJson(doc, ok).empty());
  CHECK(doc.IsArray());
  CHECK(parseJson(doc, "[" + ok + "]") == "nested deeper than 64 levels");
  CHECK(jsonNestingDepth(R"({"a":"\"[[[","b":[1,{"c":[]}]})") == 4);
}

TEST_CASE("a control message with bytes after its JSON object is malformed") {
  CHECK(decode(R"({"type":"subscribe"})").message);
  CHECK(decode("{\"type\":\"subscribe\"} \t").message);
  const auto twice = decode(R"({"type":"subscribe"}{"type":"wake","service":"x"})");
  CHECK_FALSE(twice.message);
  CHECK(twice.error.find("not JSON") != std::string::npos);
  CHECK_FALSE(decode(R"({"type":"subscribe"} garbage)").message);
}

TEST_CASE("text from outside is made valid UTF-8, byte by byte") {
  CHECK(validUtf8("GET /caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80") ==
        "GET /caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  CHECK(validUtf8("GET /x/\xFF\xFE\xC0") == "GET /x/\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(validUtf8("\xC0\xAF") == "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong '/'
  CHECK(validUtf8("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  CHECK(validUtf8("\xF4\x90\x80\x80").find("\xF4") == std::string::npos);      // past U+10FFFF
  CHECK(validUtf8("cut \xE2\x82") == "cut \xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(isValidUtf8(validUtf8("\x80\xBF\xF8\xFF")));
  CHECK(isValidUtf8(""));
}
