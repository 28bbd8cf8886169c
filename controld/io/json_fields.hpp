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

inline std::string jsonString(const rapidjson::Value& o, const char* key) {
  const auto* v = jsonMember(o, key);
  return v && v->IsString() ? std::string(v->GetString(), v->GetStringLength()) : std::string();
}

}  // namespace ondemand::controld
