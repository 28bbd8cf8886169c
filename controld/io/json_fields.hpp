#pragma once
// Lenient reads of a parsed JSON object's fields: a field that is missing or
// of another type reads as empty (nullptr, 0, ""). For state files and replies
// whose readers decide for themselves what is required.

#include <rapidjson/document.h>

#include <cstdint>
#include <string>

namespace ondemand::controld {

inline const rapidjson::Value* jsonMember(const rapidjson::Value& o, const char* key) {
  if (!o.IsObject()) return nullptr;
  auto it = o.FindMember(key);
  return it == o.MemberEnd() ? nullptr : &it->value;
}

inline std::int64_t jsonInt64(const rapidjson::Value& o, const char* key) {
  const auto* v = jsonMember(o, key);
  return v && v->IsInt64() ? v->GetInt64() : 0;
}

inline std::uint64_t jsonUint64(const rapidjson::Value& o, const char* key) {
  const auto* v = jsonMember(o, key);
  return v && v->IsUint64() ? v->GetUint64() : 0;
}

// The member, or a null value: never an assertion on a missing member.
inline const rapidjson::Value& jsonMemberOrNull(const rapidjson::Value& o, const char* key) {
  static const rapidjson::Value null;
  const auto* member = jsonMember(o, key);
  return member ? *member : null;
}

// A reply's "services" array, empty when it has none.
inline rapidjson::Value::ConstArray jsonServices(const rapidjson::Value& reply) {
  static const rapidjson::Value none(rapidjson::kArrayType);
  const auto& services = jsonMemberOrNull(reply, "services");
  return services.IsArray() ? services.GetArray() : none.GetArray();
}

// Whether a reply says "ok": true.
inline bool jsonReplyOk(const rapidjson::Value& reply) {
  const auto& ok = jsonMemberOrNull(reply, "ok");
  return ok.IsBool() && ok.GetBool();
}

inline std::string jsonString(const rapidjson::Value& o, const char* key) {
  const auto* v = jsonMember(o, key);
  return v && v->IsString() ? std::string(v->GetString(), v->GetStringLength()) : std::string();
}

}  // namespace ondemand::controld
