#pragma once
// Inside shared/protocol: how its decoders read the fields of a JSON object
// and how its encoders start a line. Not for other code: what crosses the
// socket is read through protocol.hpp's decode functions.

#ifndef RAPIDJSON_HAS_STDSTRING
#define RAPIDJSON_HAS_STDSTRING 1
#endif
#include <rapidjson/document.h>

#include <cstdint>
#include <string>

#include "shared/json_writer.hpp"

namespace ondemand::protocol::detail {

// Typed reads of an object's members. A missing member is an error only when
// required; a member of another type always is. Each read returns false on
// error, and error() says which field and what was wrong.
class Fields {
 public:
  explicit Fields(const rapidjson::Value& object) : object_(object) {}

  bool string(const char* key, std::string& out, bool required = true) {
    return read(key, out, required, "a string", [](const rapidjson::Value& v, std::string& o) {
      if (!v.IsString()) return false;
      o.assign(v.GetString(), v.GetStringLength());
      return true;
    });
  }
  bool int64(const char* key, std::int64_t& out, bool required = true) {
    return read(key, out, required, "an integer",
                [](const rapidjson::Value& v, std::int64_t& o) { return v.IsInt64() && ((o = v.GetInt64()), true); });
  }
  bool uint64(const char* key, std::uint64_t& out, bool required = true) {
    return read(key, out, required, "a non-negative integer", [](const rapidjson::Value& v, std::uint64_t& o) {
      return v.IsUint64() && ((o = v.GetUint64()), true);
    });
  }
  bool boolean(const char* key, bool& out, bool required = true) {
    return read(key, out, required, "true or false",
                [](const rapidjson::Value& v, bool& o) { return v.IsBool() && ((o = v.GetBool()), true); });
  }
  bool number(const char* key, double& out, bool required = true) {
    return read(key, out, required, "a number",
                [](const rapidjson::Value& v, double& o) { return v.IsNumber() && ((o = v.GetDouble()), true); });
  }
  // out: the member when it is an object (or an array); nullptr when it is
  // missing or, with nullable, null.
  bool object(const char* key, const rapidjson::Value*& out, bool required = false, bool nullable = false) {
    return container(key, out, required, nullable, true);
  }
  bool array(const char* key, const rapidjson::Value*& out, bool required = false) {
    return container(key, out, required, false, false);
  }

  const std::string& error() const { return error_; }

 private:
  // take(value, out): false when the value is not of the type `expected` names.
  template <typename T, typename Take>
  bool read(const char* key, T& out, bool required, const char* expected, Take take) {
    const rapidjson::Value* v = find(key);
    if (!v) return missing(key, required);
    return take(*v, out) || wrongType(key, expected);
  }
  const rapidjson::Value* find(const char* key) const {
    const auto it = object_.FindMember(key);
    return it == object_.MemberEnd() ? nullptr : &it->value;
  }
  bool container(const char* key, const rapidjson::Value*& out, bool required, bool nullable, bool isObject) {
    out = find(key);
    if (!out) return missing(key, required);
    if (nullable && out->IsNull()) {
      out = nullptr;
      return true;
    }
    if (isObject ? out->IsObject() : out->IsArray()) return true;
    out = nullptr;
    return wrongType(key, isObject ? (nullable ? "an object or null" : "an object") : "an array");
  }
  bool missing(const char* key, bool required) {
    if (!required) return true;
    error_ = std::string("missing field \"") + key + "\"";
    return false;
  }
  bool wrongType(const char* key, const char* expected) {
    error_ = std::string("field \"") + key + "\" must be " + expected;
    return false;
  }

  const rapidjson::Value& object_;
  std::string error_;
};

// A message is an object whose first member is its type; `members` writes the rest.
template <typename Members>
std::string line(const char* type, Members members) {
  JsonWriter w;
  w.startObject().str("type", type);
  members(w);
  return w.endObject().line();
}

}  // namespace ondemand::protocol::detail
