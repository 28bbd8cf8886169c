// etcd's v3 JSON gateway as text: what controld sends and how it reads the
// answers, including malformed ones.
#include <catch2/catch.hpp>

#include "controld/cluster/etcd_wire.hpp"

using namespace ondemand::controld::etcd;

TEST_CASE("base64 goes both ways and rejects what is not base64") {
  for (const std::string& s :
       std::vector<std::string>{"", "a", "ab", "abc", "abcd", "/ondemand/owner/x", std::string("\0\xff\x10", 3)}) {
    INFO(s);
    CHECK(base64Decode(base64Encode(s)) == s);
  }
  CHECK(base64Encode("abc") == "YWJj");
  CHECK(base64Encode("a") == "YQ==");
  CHECK(!base64Decode("YQ="));
  CHECK(!base64Decode("Y$==").has_value());
  CHECK(!base64Decode("YQ==YQ==").has_value());
}

TEST_CASE("the end of a prefix range increments its last byte") {
  CHECK(prefixEnd("/od/") == "/od0");
  CHECK(prefixEnd(std::string("a\xff", 2)) == "b");
  CHECK(prefixEnd("") == std::string(1, '\0'));
}

TEST_CASE("a txn is written as the gateway expects it") {
  const std::string body = txnBody({{"k", Compare::Target::Create, 0, {}}, {"k", Compare::Target::Value, 0, "n1"}},
                                   {{TxnOp::Kind::Put, "k", "n1", 42, {}}}, {{TxnOp::Kind::Range, "k", {}, 0, {}}});
  CHECK(body ==
        "{\"compare\":[{\"key\":\"aw==\",\"result\":\"EQUAL\",\"target\":\"CREATE\",\"create_revision\":\"0\"},"
        "{\"key\":\"aw==\",\"result\":\"EQUAL\",\"target\":\"VALUE\",\"value\":\"bjE=\"}],"
        "\"success\":[{\"request_put\":{\"key\":\"aw==\",\"value\":\"bjE=\",\"lease\":\"42\"}}],"
        "\"failure\":[{\"request_range\":{\"key\":\"aw==\"}}]}");
}

TEST_CASE("range, txn, lease and watch answers are read, errors and malformed answers reported") {
  std::string error;
  auto range = parseRange(R"({"header":{"revision":"7"},"kvs":[{"key":"YQ==","value":"Yg==","create_revision":"3",)"
                          R"("mod_revision":"5","version":"2","lease":"99"}],"count":"1"})",
                          error);
  REQUIRE(range);
  CHECK(range->revision == 7);
  REQUIRE(range->kvs.size() == 1);
  CHECK(range->kvs[0].key == "a");
  CHECK(range->kvs[0].value == "b");
  CHECK(range->kvs[0].createRevision == 3);
  CHECK(range->kvs[0].modRevision == 5);
  CHECK(range->kvs[0].lease == 99);

  auto txn =
      parseTxn(R"({"header":{"revision":"2"},"succeeded":true,"responses":[{"response_put":{"header":{}}},)"
               R"({"response_range":{"header":{"revision":"2"},"kvs":[{"key":"YQ==","create_revision":"2"}]}}]})",
               error);
  REQUIRE(txn);
  CHECK(txn->succeeded);
  CHECK(txn->revision == 2);
  REQUIRE(txn->ranges.size() == 1);
  CHECK(txn->ranges[0].kvs[0].createRevision == 2);
  auto failedTxn = parseTxn(R"({"header":{"revision":"9"}})", error);
  REQUIRE(failedTxn);
  CHECK(!failedTxn->succeeded);

  auto lease = parseLease(R"({"result":{"header":{},"ID":"123","TTL":"5"}})", error);
  REQUIRE(lease);
  CHECK(lease->id == 123);
  CHECK(lease->ttl == 5);
  auto expired = parseLease(R"({"result":{"header":{},"ID":"123"}})", error);
  REQUIRE(expired);
  CHECK(expired->ttl == 0);

  CHECK(!parseRange(R"({"error":"etcdserver: requested lease not found","code":5})", error));
  CHECK(error == "etcd: etcdserver: requested lease not found");
  CHECK(!parseRange("not json", error));
  CHECK(!parseRange(R"({"kvs":[{"key":"!!"}]})", error));
  CHECK(!parseTxn(R"({"responses":{}})", error));

  auto w = parseWatch(R"({"result":{"header":{"revision":"12"},"events":[{"kv":{"key":"YQ==","mod_revision":"12"}},)"
                      R"({"type":"DELETE","kv":{"key":"Yg==","mod_revision":"12"}}]}})",
                      error);
  REQUIRE(w);
  CHECK(w->revision == 12);
  REQUIRE(w->events.size() == 2);
  CHECK(!w->events[0].deleted);
  CHECK(w->events[1].deleted);
  CHECK(w->events[1].kv.key == "b");
  auto compacted =
      parseWatch(R"({"result":{"canceled":true,"compact_revision":"40","cancel_reason":"compacted"}})", error);
  REQUIRE(compacted);
  CHECK(compacted->canceled);
  CHECK(compacted->compactRevision == 40);
  CHECK(!parseWatch(R"({"result":{"events":[{"kv":5}]}})", error));
}

TEST_CASE("a streamed body is cut into its messages, whatever the pieces") {
  LineSplitter s;
  CHECK(s.feed("{\"a\":").empty());
  auto lines = s.feed("1}\n{\"b\":2}\n{\"c\"");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "{\"a\":1}");
  CHECK(lines[1] == "{\"b\":2}");
  CHECK(s.feed(":3}\r\n") == std::vector<std::string>{"{\"c\":3}"});
  LineSplitter small(4);
  small.feed("123456");
  CHECK(small.overflow());
}
