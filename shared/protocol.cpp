#include "shared/protocol.hpp"

#define RAPIDJSON_HAS_STDSTRING 1
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <limits>

namespace ondemand::protocol {

// --- framing ----------------------------------------------------------------

bool LineFramer::append(std::string_view bytes) {
  if (consumed_ > 0 && consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  } else if (consumed_ > 4096 && consumed_ * 2 > buffer_.size()) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(bytes);
  // Only the unfinished tail can be over the limit; complete lines are
  // checked in next().
  const auto lastNewline = buffer_.rfind('\n');
  const std::size_t tailStart = lastNewline == std::string::npos ? consumed_ : lastNewline + 1;
  return buffer_.size() - tailStart <= maxLineBytes_;
}

std::optional<std::string_view> LineFramer::next() {
  const auto newline = buffer_.find('\n', consumed_);
  if (newline == std::string::npos) return std::nullopt;
  std::string_view line(buffer_.data() + consumed_, newline - consumed_);
  consumed_ = newline + 1;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// --- decoding ---------------------------------------------------------------

namespace {

using rapidjson::Value;

class Fields {
 public:
  explicit Fields(const Value& object) : object_(object) {}

  bool string(const char* key, std::string& out, bool required = true) {
    const auto it = object_.FindMember(key);
    if (it == object_.MemberEnd()) return missing(key, required);
    if (!it->value.IsString()) return wrongType(key, "a string");
    out.assign(it->value.GetString(), it->value.GetStringLength());
    return true;
  }

  bool int64(const char* key, std::int64_t& out, bool required = true) {
    const auto it = object_.FindMember(key);
    if (it == object_.MemberEnd()) return missing(key, required);
    if (!it->value.IsInt64()) return wrongType(key, "an integer");
    out = it->value.GetInt64();
    return true;
  }

  bool uint64(const char* key, std::uint64_t& out, bool required = true) {
    const auto it = object_.FindMember(key);
    if (it == object_.MemberEnd()) return missing(key, required);
    if (!it->value.IsUint64()) return wrongType(key, "a non-negative integer");
    out = it->value.GetUint64();
    return true;
  }

  const std::string& error() const { return error_; }

 private:
  bool missing(const char* key, bool required) {
    if (!required) return true;
    error_ = std::string("missing field \"") + key + "\"";
    return false;
  }
  bool wrongType(const char* key, const char* expected) {
    error_ = std::string("field \"") + key + "\" must be " + expected;
    return false;
  }

  const Value& object_;
  std::string error_;
};

Decoded fail(std::string error) {
  return Decoded{std::nullopt, std::move(error)};
}

Decoded decodeActivity(const Value& doc) {
  const auto it = doc.FindMember("services");
  if (it == doc.MemberEnd() || !it->value.IsObject()) return fail("field \"services\" must be an object");
  Activity activity;
  for (const auto& member : it->value.GetObject()) {
    if (!member.value.IsObject()) return fail("each entry of \"services\" must be an object");
    Activity::Entry entry;
    entry.service.assign(member.name.GetString(), member.name.GetStringLength());
    Fields f(member.value);
    if (!f.uint64("started", entry.started) || !f.uint64("in_flight", entry.inFlight)) {
      return fail("services." + entry.service + ": " + f.error());
    }
    activity.entries.push_back(std::move(entry));
  }
  return Decoded{Message(std::move(activity)), {}};
}

Decoded decodeState(const Value& doc) {
  StatePush s;
  std::string state;
  Fields f(doc);
  if (!f.string("service", s.service) || !f.string("state", state) || !f.uint64("epoch", s.epoch) ||
      !f.int64("since", s.sinceMs) || !f.int64("starting_since", s.startingSinceMs, false) ||
      !f.string("cause", s.cause, false) || !f.string("reason", s.reason, false) ||
      !f.int64("task_id", s.taskId, false) || !f.int64("retry_at", s.retryAtMs, false) ||
      !f.int64("last_start_ms", s.lastStartMs, false)) {
    return fail(f.error());
  }
  const auto parsed = parseServiceState(state);
  if (!parsed) return fail("unknown state \"" + state + "\"");
  s.state = *parsed;
  return Decoded{Message(std::move(s)), {}};
}

}  // namespace

Decoded decode(std::string_view line) {
  if (line.size() > kMaxMessageBytes) return fail("message larger than the limit");
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseStopWhenDoneFlag>(line.data(), line.size());
  if (doc.HasParseError()) {
    return fail(std::string("not JSON: ") + rapidjson::GetParseError_En(doc.GetParseError()) + " at offset " +
                std::to_string(doc.GetErrorOffset()));
  }
  if (!doc.IsObject()) return fail("message is not a JSON object");
  std::string type;
  Fields f(doc);
  if (!f.string("type", type)) return fail(f.error());

  if (type == "hello") {
    Hello m;
    std::int64_t version = 0;
    if (!f.int64("version", version) || !f.string("role", m.role) || !f.int64("pid", m.pid, false)) {
      return fail(f.error());
    }
    if (version < 0 || version > std::numeric_limits<int>::max()) return fail("bad version");
    m.version = static_cast<int>(version);
    return Decoded{Message(std::move(m)), {}};
  }
  if (type == "welcome") {
    Welcome m;
    std::int64_t version = 0;
    if (!f.int64("version", version) || !f.string("daemon", m.daemon, false)) return fail(f.error());
    m.version = static_cast<int>(version);
    return Decoded{Message(std::move(m)), {}};
  }
  if (type == "subscribe") return Decoded{Message(Subscribe{}), {}};
  if (type == "synced") return Decoded{Message(Synced{}), {}};
  if (type == "state") return decodeState(doc);
  if (type == "removed") {
    Removed m;
    if (!f.string("service", m.service)) return fail(f.error());
    return Decoded{Message(std::move(m)), {}};
  }
  if (type == "wake") {
    Wake m;
    if (!f.string("service", m.service) || !f.string("reason", m.reason, false)) return fail(f.error());
    return Decoded{Message(std::move(m)), {}};
  }
  if (type == "activity") return decodeActivity(doc);
  if (type == "stopping_ack") {
    StoppingAck m;
    if (!f.string("service", m.service) || !f.uint64("epoch", m.epoch) || !f.uint64("in_flight", m.inFlight)) {
      return fail(f.error());
    }
    return Decoded{Message(std::move(m)), {}};
  }
  if (type == "command") {
    Command m;
    if (!f.int64("id", m.id) || !f.string("verb", m.verb) || !f.string("service", m.service, false)) {
      return fail(f.error());
    }
    return Decoded{Message(std::move(m)), {}};
  }
  if (type == "error") {
    Error m;
    if (!f.string("message", m.message)) return fail(f.error());
    return Decoded{Message(std::move(m)), {}};
  }
  return fail("unknown message type \"" + type + "\"");
}

// --- encoding ---------------------------------------------------------------

namespace {

class LineWriter {
 public:
  explicit LineWriter(const char* type) : writer_(buffer_) {
    writer_.StartObject();
    key("type").String(type);
  }
  LineWriter& key(const char* k) {
    writer_.Key(k);
    return *this;
  }
  LineWriter& String(std::string_view v) {
    writer_.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
    return *this;
  }
  LineWriter& Int64(std::int64_t v) {
    writer_.Int64(v);
    return *this;
  }
  LineWriter& Uint64(std::uint64_t v) {
    writer_.Uint64(v);
    return *this;
  }
  rapidjson::Writer<rapidjson::StringBuffer>& raw() { return writer_; }
  std::string finish() {
    writer_.EndObject();
    std::string out(buffer_.GetString(), buffer_.GetSize());
    out.push_back('\n');
    return out;
  }

 private:
  rapidjson::StringBuffer buffer_;
  rapidjson::Writer<rapidjson::StringBuffer> writer_;
};

}  // namespace

std::string encode(const Hello& m) {
  LineWriter w("hello");
  w.key("version").Int64(m.version).key("role").String(m.role).key("pid").Int64(m.pid);
  return w.finish();
}

std::string encode(const Welcome& m) {
  LineWriter w("welcome");
  w.key("version").Int64(m.version).key("daemon").String(m.daemon);
  return w.finish();
}

std::string encode(const Subscribe&) {
  return LineWriter("subscribe").finish();
}
std::string encode(const Synced&) {
  return LineWriter("synced").finish();
}

std::string encode(const StatePush& m) {
  LineWriter w("state");
  w.key("service").String(m.service).key("state").String(toString(m.state)).key("epoch").Uint64(m.epoch);
  w.key("since").Int64(m.sinceMs).key("starting_since").Int64(m.startingSinceMs);
  w.key("cause").String(m.cause).key("reason").String(truncateUtf8(m.reason, kMaxReasonBytes));
  w.key("task_id").Int64(m.taskId).key("retry_at").Int64(m.retryAtMs);
  w.key("last_start_ms").Int64(m.lastStartMs);
  return w.finish();
}

std::string encode(const Removed& m) {
  LineWriter w("removed");
  w.key("service").String(m.service);
  return w.finish();
}

std::string encode(const Wake& m) {
  LineWriter w("wake");
  w.key("service").String(m.service).key("reason").String(truncateUtf8(m.reason, 512));
  return w.finish();
}

std::string encode(const Activity& m) {
  LineWriter w("activity");
  w.key("services");
  w.raw().StartObject();
  for (const auto& e : m.entries) {
    w.key(e.service.c_str());
    w.raw().StartObject();
    w.key("started").Uint64(e.started).key("in_flight").Uint64(e.inFlight);
    w.raw().EndObject();
  }
  w.raw().EndObject();
  return w.finish();
}

std::string encode(const StoppingAck& m) {
  LineWriter w("stopping_ack");
  w.key("service").String(m.service).key("epoch").Uint64(m.epoch).key("in_flight").Uint64(m.inFlight);
  return w.finish();
}

std::string encode(const Command& m) {
  LineWriter w("command");
  w.key("id").Int64(m.id).key("verb").String(m.verb).key("service").String(m.service);
  return w.finish();
}

std::string encode(const Error& m) {
  LineWriter w("error");
  w.key("message").String(m.message);
  return w.finish();
}

std::string_view typeName(const Message& m) {
  static constexpr std::string_view names[] = {"hello", "welcome",  "subscribe",    "synced",  "state", "removed",
                                               "wake",  "activity", "stopping_ack", "command", "error"};
  return names[m.index()];
}

std::string truncateUtf8(std::string_view text, std::size_t maxBytes) {
  if (text.size() <= maxBytes) return std::string(text);
  std::size_t cut = maxBytes;
  // Step back over continuation bytes (10xxxxxx) so no character is split.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;
  return std::string(text.substr(0, cut));
}

}  // namespace ondemand::protocol
