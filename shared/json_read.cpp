#include "shared/json_read.hpp"

#include <rapidjson/error/en.h>

namespace ondemand {

std::size_t jsonNestingDepth(std::string_view text, std::size_t limit) {
  std::size_t depth = 0;
  std::size_t deepest = 0;
  bool inString = false;
  bool escaped = false;
  for (const char c : text) {
    if (inString) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        inString = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        inString = true;
        break;
      case '[':
      case '{':
        if (++depth > deepest) deepest = depth;
        if (deepest > limit) return deepest;
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return deepest;
}

std::string parseJson(rapidjson::Document& doc, std::string_view text, std::size_t maxDepth) {
  if (jsonNestingDepth(text, maxDepth) > maxDepth) {
    doc.SetNull();
    return "nested deeper than " + std::to_string(maxDepth) + " levels";
  }
  doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
  if (doc.HasParseError()) {
    std::string error = std::string("not JSON: ") + rapidjson::GetParseError_En(doc.GetParseError()) + " at offset " +
                        std::to_string(doc.GetErrorOffset());
    doc.SetNull();
    return error;
  }
  return {};
}

}  // namespace ondemand
