#include "ngx_module/body_scan.hpp"

#include <cstdio>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ondemand::module {

namespace {

// Whether a byte ends a run of plain string bytes: '"', a backslash or a
// control character. A table, so the bytes that SSE2 does not take (the
// last few of a buffer) cost a load and a test each.
constexpr struct PlainEnds {
  bool at[256] = {};
  constexpr PlainEnds() {
    for (int c = 0; c < 0x20; ++c)
      at[c] = true;
    at[static_cast<unsigned char>('"')] = true;
    at[static_cast<unsigned char>('\\')] = true;
  }
} kPlainEnds;

// The first byte in [p, end) that ends a run of plain string bytes: '"',
// a backslash or a control character (end when there is none). Most of a prompt is
// such a run: 16 bytes at a time where the CPU has SSE2 (every x86-64).
const char* plainStringEnd(const char* p, const char* const end) {
#if defined(__SSE2__)
  const __m128i flip = _mm_set1_epi8(0x02);
  const __m128i upTo = _mm_set1_epi8(0x20);
  const __m128i backslash = _mm_set1_epi8('\\');
  // The bytes of v that end a run. Flipping bit 1 maps '"' (0x22) to 0x20
  // and the control characters onto themselves, and no other byte to 0x20
  // or below: one unsigned <= 0x20 test (min(x, 0x20) == x) for both.
  const auto hits = [&](const char* at) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
    const __m128i x = _mm_xor_si128(v, flip);
    return _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(x, upTo), x), _mm_cmpeq_epi8(v, backslash));
  };
  // A key or a short value ends in its first 16 bytes; a long prompt goes
  // on 64 bytes a turn, one test for all four blocks.
  if (end - p >= 16) {
    const int mask = _mm_movemask_epi8(hits(p));
    if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
  while (end - p >= 64) {
    const __m128i any = _mm_or_si128(_mm_or_si128(hits(p), hits(p + 16)), _mm_or_si128(hits(p + 32), hits(p + 48)));
    if (_mm_movemask_epi8(any) != 0) break;  // the block below finds where
    p += 64;
  }
  while (end - p >= 16) {
    const int mask = _mm_movemask_epi8(hits(p));
    if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
#endif
  while (p < end && !kPlainEnds.at[static_cast<unsigned char>(*p)])
    ++p;
  return p;
}

bool isSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string shown(char c) {
  const auto u = static_cast<unsigned char>(c);
  char text[8];
  if (u >= 0x20 && u < 0x7f) {
    std::snprintf(text, sizeof text, "'%c'", c);
  } else {
    std::snprintf(text, sizeof text, "0x%02x", u);
  }
  return text;
}

}  // namespace

TopLevelFieldScanner::TopLevelFieldScanner(std::string_view field, std::size_t maxValueBytes)
    : field_(field), maxValue_(maxValueBytes) {}

TopLevelFieldScanner::Result TopLevelFieldScanner::fail(const std::string& what) {
  error_ = what + " at byte " + std::to_string(offset_);
  result_ = Result::NotJson;
  return result_;
}

TopLevelFieldScanner::Result TopLevelFieldScanner::unexpected(char c) {
  return fail("unexpected " + shown(c));
}

void TopLevelFieldScanner::pushContainer(bool isObject) {
  if (depth_ >= kMaxDepth) {
    fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    return;
  }
  const std::size_t word = depth_ / 64;
  const std::uint64_t bit = std::uint64_t{1} << (depth_ % 64);
  if (word > deep_.size()) deep_.push_back(0);
  if (isObject) {
    stackWord(word) |= bit;
  } else {
    stackWord(word) &= ~bit;
  }
  ++depth_;
  state_ = isObject ? State::ObjectKeyOrEnd : State::ArrayValueOrEnd;
}

void TopLevelFieldScanner::closeContainer() {
  --depth_;
  valueEnded();
}

void TopLevelFieldScanner::valueEnded() {
  if (depth_ == 0) {
    state_ = State::Done;
    // The top-level object closed without the field.
    if (result_ == Result::NeedMore) result_ = Result::Missing;
    return;
  }
  state_ = State::CommaOrEnd;
}

void TopLevelFieldScanner::appendCodePoint(std::uint32_t cp) {
  char out[4];
  std::size_t n = 0;
  if (cp < 0x80) {
    out[n++] = static_cast<char>(cp);
  } else if (cp < 0x800) {
    out[n++] = static_cast<char>(0xC0 | (cp >> 6));
    out[n++] = static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out[n++] = static_cast<char>(0xE0 | (cp >> 12));
    out[n++] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out[n++] = static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out[n++] = static_cast<char>(0xF0 | (cp >> 18));
    out[n++] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out[n++] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out[n++] = static_cast<char>(0x80 | (cp & 0x3F));
  }
  for (std::size_t i = 0; i < n; ++i)
    stringByte(out[i]);
}

void TopLevelFieldScanner::stringByte(char c) {
  if (highSurrogate_ != 0) {  // a lone high surrogate: not a character
    highSurrogate_ = 0;
    appendCodePoint(0xFFFD);
  }
  switch (role_) {
    case StringRole::Skip:
      return;
    case StringRole::TopKey:
      // Only whether it equals the field matters: the first byte that
      // differs, or one byte more than the field, says it does not.
      if (!keyDiffers_) {
        if (keyMatchedBytes_ < field_.size() && field_[keyMatchedBytes_] == c) {
          ++keyMatchedBytes_;
        } else {
          keyDiffers_ = true;
        }
      }
      return;
    case StringRole::FieldValue:
      if (value_.size() >= maxValue_) {
        result_ = Result::TooLong;
        return;
      }
      value_.push_back(c);
      return;
  }
}

bool TopLevelFieldScanner::plainRun(std::string_view run) {
  switch (role_) {
    case StringRole::Skip:
      return true;
    case StringRole::TopKey:
      // (as stringByte)
      if (!keyDiffers_) {
        if (run.size() <= field_.size() - keyMatchedBytes_ &&
            run == std::string_view(field_).substr(keyMatchedBytes_, run.size())) {
          keyMatchedBytes_ += run.size();
        } else {
          keyDiffers_ = true;
        }
      }
      return true;
    case StringRole::FieldValue:
      if (value_.size() + run.size() > maxValue_) {
        const std::size_t fits = maxValue_ - value_.size();
        value_.append(run.substr(0, fits));
        offset_ += fits + 1;  // up to the byte that is one too many
        result_ = Result::TooLong;
        return false;
      }
      value_.append(run);
      return true;
  }
  return true;
}

void TopLevelFieldScanner::stringEnded() {
  if (highSurrogate_ != 0) {
    highSurrogate_ = 0;
    appendCodePoint(0xFFFD);
  }
  if (stringIsKey_) {
    if (role_ == StringRole::TopKey) keyMatched_ = !keyDiffers_ && keyMatchedBytes_ == field_.size();
    state_ = State::Colon;
    return;
  }
  if (role_ == StringRole::FieldValue) {
    if (result_ == Result::NeedMore) result_ = Result::Found;
    return;
  }
  valueEnded();
}

void TopLevelFieldScanner::escapeByte(char c) {
  state_ = State::String;
  switch (c) {
    case '"':
    case '\\':
    case '/':
      stringByte(c);
      break;
    case 'b':
      stringByte('\b');
      break;
    case 'f':
      stringByte('\f');
      break;
    case 'n':
      stringByte('\n');
      break;
    case 'r':
      stringByte('\r');
      break;
    case 't':
      stringByte('\t');
      break;
    case 'u':
      state_ = State::Unicode;
      unicode_ = 0;
      unicodeDigits_ = 0;
      break;
    default:
      fail("an invalid escape \\" + std::string(1, c));
  }
}

void TopLevelFieldScanner::unicodeByte(char c) {
  const int h = hexValue(c);
  if (h < 0) {
    fail("an invalid \\u escape");
    return;
  }
  unicode_ = unicode_ * 16 + static_cast<std::uint32_t>(h);
  if (++unicodeDigits_ < 4) return;
  state_ = State::String;
  const std::uint32_t cp = unicode_;
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (highSurrogate_ != 0) appendCodePoint(0xFFFD);  // (resets highSurrogate_ first)
    highSurrogate_ = cp;
  } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
    if (highSurrogate_ != 0) {
      const std::uint32_t full = 0x10000 + ((highSurrogate_ - 0xD800) << 10) + (cp - 0xDC00);
      highSurrogate_ = 0;
      appendCodePoint(full);
    } else {
      appendCodePoint(0xFFFD);
    }
  } else {
    appendCodePoint(cp);
  }
}

// One loop over the bytes with the state machine inline: a body is mostly
// string runs and a few dozen bytes of structure, and a call, a result test
// and an offset update per structural byte cost more than the byte's own
// work. String runs, whitespace and numbers are taken in loops of their own.
TopLevelFieldScanner::Result TopLevelFieldScanner::feed(std::string_view bytes) {
  if (result_ != Result::NeedMore) return result_;
  const char* const begin = bytes.data();
  const char* const end = begin + bytes.size();
  const char* p = begin;
  // offset_ follows p only where something reads it (an error's message, a
  // value found too long) and when the bytes run out or a result is reached.
  const std::uint64_t base = offset_;
  const auto sync = [&] { offset_ = base + static_cast<std::uint64_t>(p - begin); };
  // A byte that is wrong where it is: the offset is that byte's.
  const auto unexpectedHere = [&] {
    sync();
    return unexpected(*p);
  };
  const auto skipSpace = [&] {
    while (p < end && isSpace(*p))
      ++p;
    return p < end;
  };
  while (p < end) {
    // A case that takes its bytes itself goes on with `continue`; one that
    // takes the byte at p (structure, an escape, a literal's letter) breaks
    // to the step past it below.
    switch (state_) {
      case State::String: {
        if (highSurrogate_ == 0) {
          // (after a lone high surrogate, the next byte goes through
          // stringByte, which writes U+FFFD for it first)
          const char* q = plainStringEnd(p, end);
          if (q != p && role_ != StringRole::Skip) {
            sync();
            if (!plainRun(std::string_view(p, static_cast<std::size_t>(q - p)))) return result_;
          }
          p = q;
          if (p == end) continue;
        }
        const char c = *p;
        if (c == '"') {
          stringEnded();
        } else if (c == '\\') {
          state_ = State::Escape;
        } else if (static_cast<unsigned char>(c) < 0x20) {
          sync();
          return fail("a control character inside a string");
        } else {
          stringByte(c);
        }
        break;
      }
      case State::Escape:
      case State::Unicode:
        // Rare: the offset is brought up to date for a message.
        sync();
        if (state_ == State::Escape) {
          escapeByte(*p);
        } else {
          unicodeByte(*p);
        }
        if (result_ == Result::NotJson) return result_;
        break;
      case State::Number:
        while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-')) {
          numberDigit_ = numberDigit_ || (*p >= '0' && *p <= '9');
          ++p;
        }
        if (p == end) continue;
        if (!numberDigit_) {
          sync();
          return fail("a number without digits");
        }
        // The byte after the number is the container's, in the next turn.
        valueEnded();
        continue;
      case State::Literal:
        if (*p != *literal_) return unexpectedHere();
        if (*++literal_ == '\0') valueEnded();
        break;
      case State::Start: {
        if (!skipSpace()) continue;
        const char c = *p;
        if (c == '{') {
          sync();
          pushContainer(true);
          if (result_ == Result::NotJson) return result_;
        } else if (c == '[' || c == '"' || c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n') {
          result_ = Result::NotObject;
        } else {
          return unexpectedHere();
        }
        break;
      }
      case State::ObjectKeyOrEnd:
      case State::ObjectKey:
        if (!skipSpace()) continue;
        if (*p == '"') {
          stringIsKey_ = true;
          role_ = depth_ == 1 ? StringRole::TopKey : StringRole::Skip;
          keyMatchedBytes_ = 0;
          keyDiffers_ = false;
          keyMatched_ = false;
          state_ = State::String;
        } else if (*p == '}' && state_ == State::ObjectKeyOrEnd) {
          closeContainer();
        } else {
          return unexpectedHere();
        }
        break;
      case State::Colon:
        if (!skipSpace()) continue;
        if (*p != ':') return unexpectedHere();
        state_ = State::Value;
        break;
      case State::ArrayValueOrEnd:
      case State::Value: {
        if (!skipSpace()) continue;
        const char c = *p;
        if (c == ']' && state_ == State::ArrayValueOrEnd) {
          closeContainer();
          break;
        }
        stringIsKey_ = false;
        if (keyMatched_ && depth_ == 1) {
          // The value of the field itself.
          keyMatched_ = false;
          if (c != '"') {
            result_ = Result::NotString;
            break;
          }
          role_ = StringRole::FieldValue;
          value_.clear();
          state_ = State::String;
          break;
        }
        role_ = StringRole::Skip;
        if (c == '"') {
          state_ = State::String;
        } else if (c == '{' || c == '[') {
          sync();
          pushContainer(c == '{');
          if (result_ == Result::NotJson) return result_;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
          state_ = State::Number;
          numberDigit_ = c != '-';
        } else if (c == 't') {
          state_ = State::Literal;
          literal_ = "rue";
        } else if (c == 'f') {
          state_ = State::Literal;
          literal_ = "alse";
        } else if (c == 'n') {
          state_ = State::Literal;
          literal_ = "ull";
        } else {
          return unexpectedHere();
        }
        break;
      }
      case State::CommaOrEnd: {
        if (!skipSpace()) continue;
        const char c = *p;
        const std::size_t top = depth_ - 1;
        const bool inObject = (stackWord(top / 64) >> (top % 64)) & 1;
        if (c == ',') {
          state_ = inObject ? State::ObjectKey : State::Value;
        } else if ((c == '}' && inObject) || (c == ']' && !inObject)) {
          closeContainer();
        } else {
          return unexpectedHere();
        }
        break;
      }
      case State::Done:
        // (a result was reached when the top-level value ended, so feed
        // returned before this; kept so the state machine is whole)
        if (!skipSpace()) continue;
        return unexpectedHere();
    }
    ++p;
    // A result was reached with the byte before p: the offset is past it.
    if (result_ != Result::NeedMore) {
      sync();
      return result_;
    }
  }
  sync();
  return result_;
}

TopLevelFieldScanner::Result TopLevelFieldScanner::finish() {
  if (result_ != Result::NeedMore) return result_;
  if (state_ == State::Start) {
    error_ = "the body is empty";
    result_ = Result::NotJson;
    return result_;
  }
  return fail("the body ends inside the JSON");
}

const char* toString(TopLevelFieldScanner::Result r) {
  switch (r) {
    case TopLevelFieldScanner::Result::NeedMore:
      return "need more";
    case TopLevelFieldScanner::Result::Found:
      return "found";
    case TopLevelFieldScanner::Result::Missing:
      return "missing";
    case TopLevelFieldScanner::Result::NotJson:
      return "not JSON";
    case TopLevelFieldScanner::Result::NotObject:
      return "not an object";
    case TopLevelFieldScanner::Result::NotString:
      return "not a string";
    case TopLevelFieldScanner::Result::TooLong:
      return "too long";
  }
  return "?";
}

}  // namespace ondemand::module
