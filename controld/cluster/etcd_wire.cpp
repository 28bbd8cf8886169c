#include "controld/cluster/etcd_wire.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <charconv>

#include "controld/io/websocket.hpp"

namespace ondemand::controld::etcd {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void str(Writer& w, std::string_view v) {
  w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
}
void b64(Writer& w, const char* key, std::string_view v) {
  w.Key(key);
  const std::string e = base64Encode(v);
  str(w, e);
}
// 64-bit numbers go as strings, as the gateway writes them.
void num(Writer& w, const char* key, std::int64_t v) {
  w.Key(key);
  const std::string s = std::to_string(v);
  str(w, s);
}

std::string finish(rapidjson::StringBuffer& buffer) {
  return std::string(buffer.GetString(), buffer.GetSize());
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

bool parseRangeValue(const rapidjson::Value& v, RangeResult& out) {
  if (!v.IsObject() || !readHeaderRevision(v, out.revision)) return false;
  auto kvs = v.FindMember("kvs");
  if (kvs == v.MemberEnd()) return true;
  if (!kvs->value.IsArray()) return false;
  for (const auto& item : kvs->value.GetArray()) {
    KeyValue kv;
    if (!readKv(item, kv)) return false;
    out.kvs.push_back(std::move(kv));
  }
  return true;
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

void writeOp(Writer& w, const TxnOp& op) {
  w.StartObject();
  switch (op.kind) {
    case TxnOp::Kind::Put:
      w.Key("request_put");
      w.StartObject();
      b64(w, "key", op.key);
      b64(w, "value", op.value);
      if (op.lease) num(w, "lease", op.lease);
      w.EndObject();
      break;
    case TxnOp::Kind::Range:
      w.Key("request_range");
      w.StartObject();
      b64(w, "key", op.key);
      if (!op.rangeEnd.empty()) b64(w, "range_end", op.rangeEnd);
      w.EndObject();
      break;
    case TxnOp::Kind::Delete:
      w.Key("request_delete_range");
      w.StartObject();
      b64(w, "key", op.key);
      if (!op.rangeEnd.empty()) b64(w, "range_end", op.rangeEnd);
      w.EndObject();
      break;
  }
  w.EndObject();
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
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  b64(w, "key", key);
  if (!rangeEnd.empty()) b64(w, "range_end", rangeEnd);
  if (revision) num(w, "revision", revision);
  w.EndObject();
  return finish(buffer);
}

std::string putBody(std::string_view key, std::string_view value, std::int64_t lease) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  b64(w, "key", key);
  b64(w, "value", value);
  if (lease) num(w, "lease", lease);
  w.EndObject();
  return finish(buffer);
}

std::string leaseGrantBody(std::int64_t ttlSeconds) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  num(w, "TTL", ttlSeconds);
  w.EndObject();
  return finish(buffer);
}

std::string leaseIdBody(std::int64_t id) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  num(w, "ID", id);
  w.EndObject();
  return finish(buffer);
}

std::string watchCreateBody(std::string_view key, std::string_view rangeEnd, std::int64_t startRevision) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("create_request");
  w.StartObject();
  b64(w, "key", key);
  if (!rangeEnd.empty()) b64(w, "range_end", rangeEnd);
  if (startRevision) num(w, "start_revision", startRevision);
  w.Key("progress_notify");
  w.Bool(true);
  w.EndObject();
  w.EndObject();
  return finish(buffer);
}

std::string authenticateBody(std::string_view name, std::string_view password) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("name");
  str(w, name);
  w.Key("password");
  str(w, password);
  w.EndObject();
  return finish(buffer);
}

std::string txnBody(const std::vector<Compare>& compare, const std::vector<TxnOp>& success,
                    const std::vector<TxnOp>& failure) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("compare");
  w.StartArray();
  for (const Compare& c : compare) {
    w.StartObject();
    b64(w, "key", c.key);
    w.Key("result");
    w.String("EQUAL");
    w.Key("target");
    switch (c.target) {
      case Compare::Target::Create:
        w.String("CREATE");
        num(w, "create_revision", c.number);
        break;
      case Compare::Target::Mod:
        w.String("MOD");
        num(w, "mod_revision", c.number);
        break;
      case Compare::Target::Version:
        w.String("VERSION");
        num(w, "version", c.number);
        break;
      case Compare::Target::Value:
        w.String("VALUE");
        b64(w, "value", c.value);
        break;
      case Compare::Target::Lease:
        w.String("LEASE");
        num(w, "lease", c.number);
        break;
    }
    w.EndObject();
  }
  w.EndArray();
  w.Key("success");
  w.StartArray();
  for (const TxnOp& op : success)
    writeOp(w, op);
  w.EndArray();
  w.Key("failure");
  w.StartArray();
  for (const TxnOp& op : failure)
    writeOp(w, op);
  w.EndArray();
  w.EndObject();
  return finish(buffer);
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
  bool ok = readHeaderRevision(doc, out.revision);
  if (auto r = doc.FindMember("responses"); ok && r != doc.MemberEnd()) {
    ok = r->value.IsArray();
    if (ok) {
      for (const auto& item : r->value.GetArray()) {
        if (!item.IsObject()) {
          ok = false;
          break;
        }
        auto range = item.FindMember("response_range");
        if (range == item.MemberEnd()) continue;
        RangeResult rr;
        if (!parseRangeValue(range->value, rr)) {
          ok = false;
          break;
        }
        out.ranges.push_back(std::move(rr));
      }
    }
  }
  if (!ok) {
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
  bool ok = readHeaderRevision(v, out.revision) && readInt(v, "compact_revision", out.compactRevision);
  if (auto m = v.FindMember("cancel_reason"); m != v.MemberEnd() && m->value.IsString()) {
    out.cancelReason = m->value.GetString();
  }
  if (auto evs = v.FindMember("events"); ok && evs != v.MemberEnd()) {
    ok = evs->value.IsArray();
    if (ok) {
      for (const auto& item : evs->value.GetArray()) {
        Event e;
        auto type = item.IsObject() ? item.FindMember("type") : item.MemberEnd();
        e.deleted = item.IsObject() && type != item.MemberEnd() && type->value.IsString() &&
                    std::string_view(type->value.GetString()) == "DELETE";
        auto kv = item.IsObject() ? item.FindMember("kv") : item.MemberEnd();
        if (!item.IsObject() || kv == item.MemberEnd() || !readKv(kv->value, e.kv)) {
          ok = false;
          break;
        }
        out.events.push_back(std::move(e));
      }
    }
  }
  if (!ok) {
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
