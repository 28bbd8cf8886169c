#pragma once
// The one JSON writer of the project: every producer of JSON text (wire
// messages, command replies, events, the status reply, state files, the
// module's answers and status page, Semaphore request bodies) writes through
// it. Compact output, keys in the order written, strings escaped by RapidJSON
// (header-only, so the nginx module can use it too).

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace ondemand {

class JsonWriter {
 public:
  JsonWriter() : writer_(buffer_) {}
  JsonWriter(const JsonWriter&) = delete;
  JsonWriter& operator=(const JsonWriter&) = delete;

  JsonWriter& startObject() {
    writer_.StartObject();
    return *this;
  }
  JsonWriter& endObject() {
    writer_.EndObject();
    return *this;
  }
  JsonWriter& startArray() {
    writer_.StartArray();
    return *this;
  }
  JsonWriter& endArray() {
    writer_.EndArray();
    return *this;
  }
  JsonWriter& key(std::string_view k) {
    writer_.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
    return *this;
  }

  // Values (after key() inside an object, or as array items).
  JsonWriter& string(std::string_view v) {
    writer_.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
    return *this;
  }
  JsonWriter& int64(std::int64_t v) {
    writer_.Int64(v);
    return *this;
  }
  JsonWriter& uint64(std::uint64_t v) {
    writer_.Uint64(v);
    return *this;
  }
  JsonWriter& number(double v) {
    writer_.Double(v);
    return *this;
  }
  JsonWriter& boolean(bool v) {
    writer_.Bool(v);
    return *this;
  }
  JsonWriter& null() {
    writer_.Null();
    return *this;
  }

  // Members: a key and its value.
  JsonWriter& str(std::string_view k, std::string_view v) { return key(k).string(v); }
  JsonWriter& i64(std::string_view k, std::int64_t v) { return key(k).int64(v); }
  JsonWriter& u64(std::string_view k, std::uint64_t v) { return key(k).uint64(v); }
  JsonWriter& flag(std::string_view k, bool v) { return key(k).boolean(v); }

  // Text that is JSON already (an object another writer made), as a value.
  JsonWriter& json(std::string_view text) {
    writer_.RawValue(text.data(), text.size(), rapidjson::kObjectType);
    return *this;
  }
  // A parsed RapidJSON value, written again.
  template <typename Value>
  JsonWriter& value(const Value& v) {
    v.Accept(writer_);
    return *this;
  }

  // For RapidJSON values written as they are (value.Accept(writer.raw())).
  rapidjson::Writer<rapidjson::StringBuffer>& raw() { return writer_; }

  // The text written so far; line() adds the '\n' that ends a wire message.
  std::string text() const { return std::string(buffer_.GetString(), buffer_.GetSize()); }
  std::string line() const { return text() + "\n"; }

 private:
  rapidjson::StringBuffer buffer_;
  rapidjson::Writer<rapidjson::StringBuffer> writer_;
};

}  // namespace ondemand
