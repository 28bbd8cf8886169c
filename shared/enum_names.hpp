#pragma once
// One table per enum: each value beside its name, so that writing and parsing
// a name read the same table and no loop bound or index has to match the
// enum's size.
//
//   inline constexpr EnumName<Color> kColorNames[] = {{Color::Red, "red"}, {Color::Blue, "blue"}};
//   nameOf(kColorNames, Color::Red, "?")  -> "red"
//   valueOf(kColorNames, "blue")           -> Color::Blue

#include <cstddef>
#include <optional>
#include <string_view>

namespace ondemand {

template <typename Enum>
struct EnumName {
  Enum value;
  const char* name;
};

template <typename Enum, std::size_t N>
constexpr const char* nameOf(const EnumName<Enum> (&table)[N], Enum value, const char* fallback) {
  for (const auto& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return fallback;
}

template <typename Enum, std::size_t N>
constexpr std::optional<Enum> valueOf(const EnumName<Enum> (&table)[N], std::string_view name) {
  for (const auto& entry : table) {
    if (name == entry.name) return entry.value;
  }
  return std::nullopt;
}

}  // namespace ondemand
