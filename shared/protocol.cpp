#include "shared/protocol.hpp"

#define RAPIDJSON_HAS_STDSTRING 1
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <iterator>
#include <limits>

#include "shared/json_read.hpp"
#include "shared/json_writer.hpp"
#include "shared/protocol_json.hpp"

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
  const std::size_t oldSize = buffer_.size();
  buffer_.append(bytes);
  // Every line these bytes complete, and the unfinished one, is checked
  // whole: whether a line passes never depends on how reads split it.
  std::size_t lineStart = consumed_;
  if (oldSize > consumed_) {
    const auto newline = buffer_.rfind('\n', oldSize - 1);
    if (newline != std::string::npos && newline >= consumed_) lineStart = newline + 1;
  }
  for (auto newline = buffer_.find('\n', oldSize); newline != std::string::npos;
       newline = buffer_.find('\n', newline + 1)) {
    if (newline - lineStart > maxLineBytes_) return false;
    lineStart = newline + 1;
  }
  return buffer_.size() - lineStart <= maxLineBytes_;
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

using detail::Fields;
using rapidjson::Value;

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
    if (!f.uint64("started", entry.started) || !f.uint64("in_flight", entry.inFlight) ||
        !f.uint64("held", entry.held, false)) {
      return fail("services." + entry.service + ": " + f.error());
    }
    // Optional (older workers send none): {"sum_ms":N,"buckets":[one count per bucket]}.
    const auto waited = member.value.FindMember("waited");
    if (waited != member.value.MemberEnd()) {
      const std::string where = "services." + entry.service + ".waited: ";
      if (!waited->value.IsObject()) return fail(where + "must be an object");
      Fields w(waited->value);
      if (!w.uint64("sum_ms", entry.waited.sumMs)) return fail(where + w.error());
      const auto buckets = waited->value.FindMember("buckets");
      if (buckets == waited->value.MemberEnd() || !buckets->value.IsArray() ||
          buckets->value.Size() != kWaitBucketCount) {
        return fail(where + "\"buckets\" must be an array of " + std::to_string(kWaitBucketCount) + " counts");
      }
      for (rapidjson::SizeType i = 0; i < kWaitBucketCount; ++i) {
        if (!buckets->value[i].IsUint64()) return fail(where + "each bucket must be a non-negative integer");
        entry.waited.buckets[i] = buckets->value[i].GetUint64();
      }
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
      !f.int64("last_start_ms", s.lastStartMs, false) || !f.string("waiting", s.waiting, false)) {
    return fail(f.error());
  }
  if (!f.string("upstream", s.upstream, false) || !f.int64("etcd_unreachable_since", s.etcdUnreachableSinceMs, false)) {
    return fail(f.error());
  }
  if (const auto models = doc.FindMember("models"); models != doc.MemberEnd()) {
    if (!models->value.IsArray()) return fail("field \"models\" must be an array of strings");
    for (const auto& m : models->value.GetArray()) {
      if (!m.IsString()) return fail("field \"models\" must be an array of strings");
      s.models.emplace_back(m.GetString(), m.GetStringLength());
    }
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
  // One object and nothing after it (white space aside), nested at most
  // kMaxJsonDepth deep.
  if (auto error = parseJson(doc, line); !error.empty()) return fail(std::move(error));
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

using detail::line;

std::string encode(const Hello& m) {
  return line("hello", [&](JsonWriter& w) { w.i64("version", m.version).str("role", m.role).i64("pid", m.pid); });
}

std::string encode(const Welcome& m) {
  return line("welcome", [&](JsonWriter& w) { w.i64("version", m.version).str("daemon", m.daemon); });
}

std::string encode(const Subscribe&) {
  return line("subscribe", [](JsonWriter&) {});
}
std::string encode(const Synced&) {
  return line("synced", [](JsonWriter&) {});
}

std::string encode(const StatePush& m) {
  return line("state", [&](JsonWriter& w) {
    w.str("service", m.service).str("state", toString(m.state)).u64("epoch", m.epoch);
    w.i64("since", m.sinceMs).i64("starting_since", m.startingSinceMs);
    w.str("cause", m.cause).str("reason", truncateUtf8(m.reason, kMaxReasonBytes));
    w.i64("task_id", m.taskId).i64("retry_at", m.retryAtMs);
    w.i64("last_start_ms", m.lastStartMs);
    // Only services that have them: most pushes stay as short as before.
    if (!m.upstream.empty()) w.str("upstream", m.upstream);
    if (m.etcdUnreachableSinceMs > 0) w.i64("etcd_unreachable_since", m.etcdUnreachableSinceMs);
    if (!m.models.empty()) {
      w.key("models").startArray();
      for (const auto& model : m.models)
        w.string(model);
      w.endArray();
    }
    if (!m.waiting.empty()) w.str("waiting", truncateUtf8(m.waiting, kMaxReasonBytes));
  });
}

std::string encode(const Removed& m) {
  return line("removed", [&](JsonWriter& w) { w.str("service", m.service); });
}

std::string encode(const Wake& m) {
  return line("wake", [&](JsonWriter& w) { w.str("service", m.service).str("reason", truncateUtf8(m.reason, 512)); });
}

std::string encode(const Activity& m) {
  return line("activity", [&](JsonWriter& w) {
    w.key("services").startObject();
    for (const auto& e : m.entries) {
      w.key(e.service).startObject();
      w.u64("started", e.started).u64("in_flight", e.inFlight).u64("held", e.held);
      if (!e.waited.empty()) {
        w.key("waited").startObject().u64("sum_ms", e.waited.sumMs).key("buckets").startArray();
        for (std::uint64_t c : e.waited.buckets)
          w.uint64(c);
        w.endArray().endObject();
      }
      w.endObject();
    }
    w.endObject();
  });
}

std::string encode(const StoppingAck& m) {
  return line("stopping_ack",
              [&](JsonWriter& w) { w.str("service", m.service).u64("epoch", m.epoch).u64("in_flight", m.inFlight); });
}

std::string encode(const Command& m) {
  return line("command", [&](JsonWriter& w) { w.i64("id", m.id).str("verb", m.verb).str("service", m.service); });
}

std::string encode(const Error& m) {
  return line("error", [&](JsonWriter& w) { w.str("message", m.message); });
}

void WaitCounts::add(std::uint64_t ms) {
  std::size_t i = 0;
  while (i < kWaitBucketsMs.size() && ms > kWaitBucketsMs[i])
    ++i;
  ++buckets[i];
  sumMs += ms;
}

void WaitCounts::add(const WaitCounts& other) {
  for (std::size_t i = 0; i < kWaitBucketCount; ++i)
    buckets[i] += other.buckets[i];
  sumMs += other.sumMs;
}

std::uint64_t WaitCounts::count() const {
  std::uint64_t n = 0;
  for (std::uint64_t c : buckets)
    n += c;
  return n;
}

std::string_view typeName(const Message& m) {
  static constexpr std::string_view names[] = {"hello", "welcome",  "subscribe",    "synced",  "state", "removed",
                                               "wake",  "activity", "stopping_ack", "command", "error"};
  static_assert(std::size(names) == std::variant_size_v<Message>, "one name per alternative, in Message's order");
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
