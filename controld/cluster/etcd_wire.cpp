#include "controld/cluster/etcd_wire.hpp"

#include <rapidjson/document.h>

#include <charconv>

#include "controld/io/websocket.hpp"
#include "shared/enum_names.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::controld::etcd {

namespace {

// Keys and values go base64-encoded, 64-bit numbers as strings, as the
// gateway writes them.
void b64(JsonWriter& w, std::string_view key, std::string_view v) {
  w.str(key, base64Encode(v));
}
void num(JsonWriter& w, std::string_view key, std::int64_t v) {
  w.str(key, std::to_string(v));
}
// "key" and, for more than one key, "range_end".
void keys(JsonWriter& w, std::string_view key, std::string_view rangeEnd) {
  b64(w, "key", key);
  if (!rangeEnd.empty()) b64(w, "range_end", rangeEnd);
}

// A number the gateway sent as a string (int64) or as a JSON number; absent = 0.
bool readInt(const rapidjson::Value& obj, const char* key, std::int64_t& out) {
  out = 0;
  if (!obj.IsObject()) return false;
  auto m = obj.FindMember(key);
  if (m == obj.MemberEnd()) return true;
  if (m->value.IsInt64()) {
    out = m->value.GetInt64();
    return true;
  }
  if (m->value.IsUint64()) {
    out = static_cast<std::int64_t>(m->value.GetUint64());
    return true;
  }
  if (!m->value.IsString()) return false;
  const char* s = m->value.GetString();
  const char* end = s + m->value.GetStringLength();
  const auto [ptr, ec] = std::from_chars(s, end, out);
  return ec == std::errc() && ptr == end;
}

bool readBool(const rapidjson::Value& obj, const char* key) {
  if (!obj.IsObject()) return false;
  auto m = obj.FindMember(key);
  return m != obj.MemberEnd() && m->value.IsBool() && m->value.GetBool();
}

bool readB64(const rapidjson::Value& obj, const char* key, std::string& out) {
  out.clear();
  auto m = obj.FindMember(key);
  if (m == obj.MemberEnd()) return true;
  if (!m->value.IsString()) return false;
  auto d = base64Decode(std::string_view(m->value.GetString(), m->value.GetStringLength()));
  if (!d) return false;
  out = std::move(*d);
  return true;
}

bool readKv(const rapidjson::Value& v, KeyValue& kv) {
  if (!v.IsObject()) return false;
  return readB64(v, "key", kv.key) && readB64(v, "value", kv.value) &&
         readInt(v, "create_revision", kv.createRevision) && readInt(v, "mod_revision", kv.modRevision) &&
         readInt(v, "version", kv.version) && readInt(v, "lease", kv.lease);
}

bool readHeaderRevision(const rapidjson::Value& obj, std::int64_t& revision) {
  revision = 0;
  auto h = obj.FindMember("header");
  if (h == obj.MemberEnd()) return true;
  return readInt(h->value, "revision", revision);
}

// The array `key` of obj (absent: empty), each item given to read(), which
// says false when the item is malformed.
template <typename ReadItem>
bool readArray(const rapidjson::Value& obj, const char* key, ReadItem read) {
  auto m = obj.FindMember(key);
  if (m == obj.MemberEnd()) return true;
  if (!m->value.IsArray()) return false;
  for (const auto& item : m->value.GetArray())
    if (!read(item)) return false;
  return true;
}

bool parseRangeValue(const rapidjson::Value& v, RangeResult& out) {
  return v.IsObject() && readHeaderRevision(v, out.revision) && readArray(v, "kvs", [&](const rapidjson::Value& item) {
           KeyValue kv;
           if (!readKv(item, kv)) return false;
           out.kvs.push_back(std::move(kv));
           return true;
         });
}

// A txn answer's "responses": the ranges it read, in order.
bool readRanges(const rapidjson::Value& doc, std::vector<RangeResult>& ranges) {
  return readArray(doc, "responses", [&](const rapidjson::Value& item) {
    if (!item.IsObject()) return false;
    auto range = item.FindMember("response_range");
    if (range == item.MemberEnd()) return true;
    RangeResult rr;
    if (!parseRangeValue(range->value, rr)) return false;
    ranges.push_back(std::move(rr));
    return true;
  });
}

// A watch message's "events".
bool readEvents(const rapidjson::Value& result, std::vector<Event>& events) {
  return readArray(result, "events", [&](const rapidjson::Value& item) {
    if (!item.IsObject()) return false;
    Event e;
    auto type = item.FindMember("type");
    e.deleted =
        type != item.MemberEnd() && type->value.IsString() && std::string_view(type->value.GetString()) == "DELETE";
    auto kv = item.FindMember("kv");
    if (kv == item.MemberEnd() || !readKv(kv->value, e.kv)) return false;
    events.push_back(std::move(e));
    return true;
  });
}

std::optional<std::string> errorIn(const rapidjson::Value& doc) {
  if (!doc.IsObject()) return std::nullopt;
  for (const char* key : {"error", "message"}) {
    auto m = doc.FindMember(key);
    if (m != doc.MemberEnd() && m->value.IsString() && m->value.GetStringLength() > 0) {
      return std::string(m->value.GetString(), m->value.GetStringLength());
    }
  }
  return std::nullopt;
}

bool parseDoc(rapidjson::Document& doc, std::string_view body, std::string& error) {
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    error = "etcd answered something that is not a JSON object";
    return false;
  }
  if (auto e = errorIn(doc)) {
    error = "etcd: " + *e;
    return false;
  }
  return true;
}

void writePut(JsonWriter& w, std::string_view key, std::string_view value, std::int64_t lease) {
  b64(w, "key", key);
  b64(w, "value", value);
  if (lease) num(w, "lease", lease);
}

constexpr EnumName<TxnOp::Kind> kOpNames[] = {{TxnOp::Kind::Put, "request_put"},
                                              {TxnOp::Kind::Range, "request_range"},
                                              {TxnOp::Kind::Delete, "request_delete_range"}};

void writeOp(JsonWriter& w, const TxnOp& op) {
  w.startObject().key(nameOf(kOpNames, op.kind, "request_range")).startObject();
  if (op.kind == TxnOp::Kind::Put) {
    writePut(w, op.key, op.value, op.lease);
  } else {
    keys(w, op.key, op.rangeEnd);
  }
  w.endObject().endObject();
}

// Each target of a comparison: its name, and the field that holds what it is compared with.
struct TargetWire {
  Compare::Target target;
  const char* name;
  const char* operand;
};
constexpr TargetWire kTargets[] = {{Compare::Target::Create, "CREATE", "create_revision"},
                                   {Compare::Target::Mod, "MOD", "mod_revision"},
                                   {Compare::Target::Version, "VERSION", "version"},
                                   {Compare::Target::Value, "VALUE", "value"},
                                   {Compare::Target::Lease, "LEASE", "lease"}};

void writeTarget(JsonWriter& w, const Compare& c) {
  for (const TargetWire& t : kTargets) {
    if (t.target != c.target) continue;
    w.str("target", t.name);
    if (c.target == Compare::Target::Value) return b64(w, t.operand, c.value);
    return num(w, t.operand, c.number);
  }
}

}  // namespace

std::string base64Encode(std::string_view data) {
  return websocket::base64(data);  // the WebSocket handshake's encoder
}

std::optional<std::string> base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = text[i + j];
      if (c == '=') {
        if (i + 4 != text.size() || j < 2) return std::nullopt;
        v[j] = 0;
        ++pad;
        continue;
      }
      if (pad) return std::nullopt;  // data after padding
      v[j] = value(c);
      if (v[j] < 0) return std::nullopt;
    }
    const unsigned n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>((n >> 16) & 0xff));
    if (pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
  }
  return out;
}

std::string prefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

std::string rangeBody(std::string_view key, std::string_view rangeEnd, std::int64_t revision) {
  JsonWriter w;
  w.startObject();
  keys(w, key, rangeEnd);
  if (revision) num(w, "revision", revision);
  return w.endObject().text();
}

std::string putBody(std::string_view key, std::string_view value, std::int64_t lease) {
  JsonWriter w;
  w.startObject();
  writePut(w, key, value, lease);
  return w.endObject().text();
}

std::string leaseGrantBody(std::int64_t ttlSeconds) {
  JsonWriter w;
  w.startObject();
  num(w, "TTL", ttlSeconds);
  return w.endObject().text();
}

std::string leaseIdBody(std::int64_t id) {
  JsonWriter w;
  w.startObject();
  num(w, "ID", id);
  return w.endObject().text();
}

std::string watchCreateBody(std::string_view key, std::string_view rangeEnd, std::int64_t startRevision) {
  JsonWriter w;
  w.startObject().key("create_request").startObject();
  keys(w, key, rangeEnd);
  if (startRevision) num(w, "start_revision", startRevision);
  w.flag("progress_notify", true);
  return w.endObject().endObject().text();
}

std::string authenticateBody(std::string_view name, std::string_view password) {
  JsonWriter w;
  w.startObject().str("name", name).str("password", password);
  return w.endObject().text();
}

std::string txnBody(const std::vector<Compare>& compare, const std::vector<TxnOp>& success,
                    const std::vector<TxnOp>& failure) {
  JsonWriter w;
  w.startObject().key("compare").startArray();
  for (const Compare& c : compare) {
    w.startObject();
    b64(w, "key", c.key);
    w.str("result", "EQUAL");
    writeTarget(w, c);
    w.endObject();
  }
  w.endArray().key("success").startArray();
  for (const TxnOp& op : success)
    writeOp(w, op);
  w.endArray().key("failure").startArray();
  for (const TxnOp& op : failure)
    writeOp(w, op);
  return w.endArray().endObject().text();
}

std::optional<std::string> errorOf(std::string_view body) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError()) return std::nullopt;
  return errorIn(doc);
}

std::optional<RangeResult> parseRange(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  if (!parseDoc(doc, body, error)) return std::nullopt;
  RangeResult out;
  if (!parseRangeValue(doc, out)) {
    error = "etcd's range answer is malformed";
    return std::nullopt;
  }
  return out;
}

std::optional<TxnResult> parseTxn(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  if (!parseDoc(doc, body, error)) return std::nullopt;
  TxnResult out;
  out.succeeded = readBool(doc, "succeeded");
  if (!readHeaderRevision(doc, out.revision) || !readRanges(doc, out.ranges)) {
    error = "etcd's txn answer is malformed";
    return std::nullopt;
  }
  return out;
}

std::optional<LeaseResult> parseLease(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  if (!parseDoc(doc, body, error)) return std::nullopt;
  const rapidjson::Value* v = &doc;
  if (auto r = doc.FindMember("result"); r != doc.MemberEnd()) {
    if (auto e = errorIn(r->value)) {
      error = "etcd: " + *e;
      return std::nullopt;
    }
    v = &r->value;
  }
  LeaseResult out;
  if (!readInt(*v, "ID", out.id) || !readInt(*v, "TTL", out.ttl)) {
    error = "etcd's lease answer is malformed";
    return std::nullopt;
  }
  return out;
}

std::optional<std::string> parseAuthToken(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  if (!parseDoc(doc, body, error)) return std::nullopt;
  auto t = doc.FindMember("token");
  if (t == doc.MemberEnd() || !t->value.IsString() || t->value.GetStringLength() == 0) {
    error = "etcd's authenticate answer has no token";
    return std::nullopt;
  }
  return std::string(t->value.GetString(), t->value.GetStringLength());
}

std::optional<WatchMessage> parseWatch(std::string_view line, std::string& error) {
  rapidjson::Document doc;
  if (!parseDoc(doc, line, error)) return std::nullopt;
  auto r = doc.FindMember("result");
  if (r == doc.MemberEnd() || !r->value.IsObject()) {
    error = "etcd's watch message has no result";
    return std::nullopt;
  }
  const auto& v = r->value;
  WatchMessage out;
  out.created = readBool(v, "created");
  out.canceled = readBool(v, "canceled");
  if (auto m = v.FindMember("cancel_reason"); m != v.MemberEnd() && m->value.IsString()) {
    out.cancelReason = m->value.GetString();
  }
  if (!readHeaderRevision(v, out.revision) || !readInt(v, "compact_revision", out.compactRevision) ||
      !readEvents(v, out.events)) {
    error = "etcd's watch message is malformed";
    return std::nullopt;
  }
  return out;
}

std::vector<std::string> LineSplitter::feed(std::string_view data) {
  std::vector<std::string> lines;
  if (overflow_) return lines;
  buffer_.append(data);
  std::size_t start = 0;
  for (;;) {
    const auto nl = buffer_.find('\n', start);
    if (nl == std::string::npos) break;
    std::string line = buffer_.substr(start, nl - start);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' '))
      line.pop_back();
    if (!line.empty()) lines.push_back(std::move(line));
    start = nl + 1;
  }
  buffer_.erase(0, start);
  if (buffer_.size() > maxLine_) overflow_ = true;
  return lines;
}

}  // namespace ondemand::controld::etcd
