#pragma once
// etcd's v3 JSON gateway, as text: the request bodies controld sends and the
// answers it reads (keys and values in base64, 64-bit numbers as strings).
// Pure: no I/O, so every encoding and every malformed answer is unit-tested.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ondemand::controld::etcd {

std::string base64Encode(std::string_view data);
std::optional<std::string> base64Decode(std::string_view text);  // nullopt: not base64

// The end of the range of every key that starts with `prefix` (etcd's
// "prefix + 1" rule: the last byte below 0xff incremented, the rest cut).
std::string prefixEnd(std::string_view prefix);

struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t createRevision = 0;
  std::int64_t modRevision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0;
};

struct Event {
  bool deleted = false;  // DELETE; otherwise PUT
  KeyValue kv;
};

// --- requests ---------------------------------------------------------------

std::string rangeBody(std::string_view key, std::string_view rangeEnd = {}, std::int64_t revision = 0);
std::string putBody(std::string_view key, std::string_view value, std::int64_t lease = 0);
std::string leaseGrantBody(std::int64_t ttlSeconds);
std::string leaseIdBody(std::int64_t id);  // keepalive, revoke, timetolive
std::string watchCreateBody(std::string_view key, std::string_view rangeEnd, std::int64_t startRevision);
std::string authenticateBody(std::string_view name, std::string_view password);

// One comparison of a txn.
struct Compare {
  enum class Target { Create, Mod, Version, Value, Lease };
  std::string key;
  Target target = Target::Create;
  std::int64_t number = 0;  // create/mod revision, version, lease
  std::string value;        // Target::Value
};
// One operation of a txn.
struct TxnOp {
  enum class Kind { Put, Range, Delete };
  Kind kind = Kind::Put;
  std::string key;
  std::string value;  // Put
  std::int64_t lease = 0;
  std::string rangeEnd;  // Range, Delete
};
std::string txnBody(const std::vector<Compare>& compare, const std::vector<TxnOp>& success,
                    const std::vector<TxnOp>& failure);

// --- answers ----------------------------------------------------------------

// The gateway's error object ({"error": ..., "code": N, "message": ...}), if
// the answer is one.
std::optional<std::string> errorOf(std::string_view body);

struct RangeResult {
  std::int64_t revision = 0;  // the store's revision when answered
  std::vector<KeyValue> kvs;
};
std::optional<RangeResult> parseRange(std::string_view body, std::string& error);

struct TxnResult {
  std::int64_t revision = 0;
  bool succeeded = false;
  std::vector<RangeResult> ranges;  // the range answers among the responses, in order
};
std::optional<TxnResult> parseTxn(std::string_view body, std::string& error);

struct LeaseResult {
  std::int64_t id = 0;
  std::int64_t ttl = 0;  // 0 or less: the lease is gone
};
// lease/grant and lease/keepalive (whose answer is wrapped in "result").
std::optional<LeaseResult> parseLease(std::string_view body, std::string& error);

std::optional<std::string> parseAuthToken(std::string_view body, std::string& error);

struct WatchMessage {
  std::int64_t revision = 0;  // header revision
  bool created = false;
  bool canceled = false;
  std::int64_t compactRevision = 0;  // set when the start revision was compacted away
  std::string cancelReason;
  std::vector<Event> events;
};
std::optional<WatchMessage> parseWatch(std::string_view line, std::string& error);

// Cuts a streamed body into its JSON messages (the gateway ends each with a
// newline). Feed it the pieces as they arrive.
class LineSplitter {
 public:
  explicit LineSplitter(std::size_t maxLine = 16 * 1024 * 1024) : maxLine_(maxLine) {}
  // Appends and returns the complete lines; false from overflow() once a line
  // grew beyond maxLine (the stream is then unusable).
  std::vector<std::string> feed(std::string_view data);
  bool overflow() const { return overflow_; }

 private:
  std::string buffer_;
  std::size_t maxLine_;
  bool overflow_ = false;
};

}  // namespace ondemand::controld::etcd
