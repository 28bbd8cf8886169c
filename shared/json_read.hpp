#pragma once
// Reading JSON that anyone may have written (a peer on the control socket,
// whatever answers on semaphore.base_url, a state file): one value, nested at
// most kMaxJsonDepth deep, with nothing but white space after it. The depth is
// checked before parsing and the parse itself is iterative, so no input can
// exhaust the stack, neither in the parse nor later in a recursive walk of the
// document (Accept, CopyFrom).

#ifndef RAPIDJSON_HAS_STDSTRING
#define RAPIDJSON_HAS_STDSTRING 1
#endif
#include <rapidjson/document.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace ondemand {

inline constexpr std::size_t kMaxJsonDepth = 64;

// The deepest nesting of arrays and objects in text (strings skipped), or
// more than limit as soon as that is certain.
std::size_t jsonNestingDepth(std::string_view text, std::size_t limit = kMaxJsonDepth);

// Parses text into doc. Returns an empty string on success, otherwise what
// was wrong ("not JSON: ... at offset N", "nested deeper than 64 levels").
std::string parseJson(rapidjson::Document& doc, std::string_view text, std::size_t maxDepth = kMaxJsonDepth);

}  // namespace ondemand
