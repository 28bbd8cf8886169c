#pragma once
// Finds one top-level string field of a JSON object ("model" of an OpenAI or
// Ollama request) in a body that arrives in pieces, without building a tree:
// nested values and strings are skipped as they stream past, so a 5 MiB
// prompt costs one pass and a few bytes of state. Plain C++ (no nginx), so it
// is unit-tested on its own; the module feeds it the request body's buffers
// and temp-file chunks.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ondemand::module {

class TopLevelFieldScanner {
 public:
  enum class Result {
    NeedMore,   // feed more (or finish at the end of the body)
    Found,      // value() holds the field's string value; the rest of the body is not looked at
    Missing,    // a complete JSON object without the field
    NotJson,    // error() says what and where
    NotObject,  // valid JSON so far, but the top level is not an object
    NotString,  // the field is there, but its value is not a string
    TooLong,    // the field's value is longer than maxValueBytes
  };

  // Values longer than `maxValueBytes` (decoded) are refused as TooLong.
  explicit TopLevelFieldScanner(std::string_view field, std::size_t maxValueBytes = 1024);

  // Feeds the next bytes. Once the result is anything but NeedMore it stays
  // so, and further bytes are ignored.
  Result feed(std::string_view bytes);
  // The body ended.
  Result finish();

  Result result() const { return result_; }
  const std::string& field() const { return field_; }
  const std::string& value() const { return value_; }
  // For NotJson: "unexpected '}' at byte 12".
  const std::string& error() const { return error_; }
  std::uint64_t offset() const { return offset_; }

  // Nesting deeper than this is refused (NotJson): the scanner keeps one bit
  // per level.
  static constexpr std::size_t kMaxDepth = 4096;

 private:
  enum class State : std::uint8_t {
    Start,            // before the top-level value
    ObjectKeyOrEnd,   // after '{'
    ObjectKey,        // after ',' in an object
    Colon,            // after a key
    Value,            // after ':' or ',' in an array
    ArrayValueOrEnd,  // after '['
    CommaOrEnd,       // after a value inside a container
    String,           // inside a string
    Escape,           // after '\' in a string
    Unicode,          // inside \uXXXX
    Number,
    Literal,  // true / false / null
    Done,     // the top-level value ended: only whitespace may follow
  };
  // What the string being read is: a key at the top level, the field's
  // value, or anything else (skipped).
  enum class StringRole : std::uint8_t { Skip, TopKey, FieldValue };

  Result fail(const std::string& what);
  Result unexpected(char c);
  void valueEnded();
  void pushContainer(bool isObject);
  void closeContainer();     // after its '}' or ']'
  void escapeByte(char c);   // the byte after '\\' in a string
  void unicodeByte(char c);  // a hex digit of \uXXXX
  void stringByte(char c);
  bool plainRun(std::string_view run);  // plain bytes of the string being read; false: a result was reached
  void appendCodePoint(std::uint32_t cp);
  void stringEnded();

  std::string field_;
  std::size_t maxValue_;
  Result result_ = Result::NeedMore;
  State state_ = State::Start;
  StringRole role_ = StringRole::Skip;
  bool stringIsKey_ = false;  // the string being read is an object key
  // One bit per depth: 1 object, 0 array. The first 64 levels (every real
  // request) in shallow_, without an allocation; deeper ones in deep_.
  std::uint64_t& stackWord(std::size_t word) { return word == 0 ? shallow_ : deep_[word - 1]; }
  std::uint64_t shallow_ = 0;
  std::vector<std::uint64_t> deep_;
  std::size_t depth_ = 0;
  std::uint64_t offset_ = 0;

  // The top-level key being read is compared with the field as it is
  // decoded: how many of the field's bytes it matched, or that it is not it.
  std::size_t keyMatchedBytes_ = 0;
  bool keyDiffers_ = false;
  bool keyMatched_ = false;  // the last top-level key was the field
  std::string value_;
  std::string error_;

  std::uint32_t unicode_ = 0;  // \uXXXX being read
  int unicodeDigits_ = 0;
  std::uint32_t highSurrogate_ = 0;
  const char* literal_ = nullptr;  // the rest of "true"/"false"/"null" to match
  bool numberDigit_ = false;
};

const char* toString(TopLevelFieldScanner::Result r);

}  // namespace ondemand::module
