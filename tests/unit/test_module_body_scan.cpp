// The module's streaming scan for a top-level JSON field ($ondemand_model),
// without nginx: fed whole, byte by byte and in uneven pieces it must give
// the same answer.

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "ngx_module/body_scan.hpp"

using namespace ondemand::module;
using Result = TopLevelFieldScanner::Result;

namespace {

struct Scanned {
  Result result;
  std::string value;
  std::string error;
};

Scanned scanWhole(const std::string& body, const std::string& field = "model") {
  TopLevelFieldScanner s(field);
  s.feed(body);
  s.finish();
  return {s.result(), s.value(), s.error()};
}

Scanned scanInPieces(const std::string& body, std::size_t piece, const std::string& field = "model") {
  TopLevelFieldScanner s(field);
  for (std::size_t i = 0; i < body.size() && s.result() == Result::NeedMore; i += piece)
    s.feed(std::string_view(body).substr(i, piece));
  s.finish();
  return {s.result(), s.value(), s.error()};
}

// The same answer whole, byte by byte, and in pieces of a few sizes.
Scanned scan(const std::string& body, const std::string& field = "model") {
  const Scanned whole = scanWhole(body, field);
  for (std::size_t piece : {1, 2, 3, 7, 64, 4096}) {
    INFO("pieces of " << piece << " bytes");
    const Scanned split = scanInPieces(body, piece, field);
    CHECK(split.result == whole.result);
    CHECK(split.value == whole.value);
    CHECK(split.error == whole.error);
  }
  return whole;
}

}  // namespace

TEST_CASE("body scan: the field is found first, last, or between nested values") {
  CHECK(scan(R"({"model":"m-a"})").value == "m-a");
  const Scanned last =
      scan(R"({"messages":[{"role":"user","content":"say \"model\": \"nope\" {[}]"},{"model":"inner"}],)"
           R"("options":{"model":"deeper","x":[1,2.5e3,-0.1,true,false,null]},"stream":false,"model":"qwen2.5:14b"})");
  CHECK(last.result == Result::Found);
  CHECK(last.value == "qwen2.5:14b");
  const Scanned spaced = scan(" \n{ \"a\" : [ ] , \"b\" : { } ,\t\"model\"\r\n:\n\"x y\" }");
  CHECK(spaced.result == Result::Found);
  CHECK(spaced.value == "x y");
}

TEST_CASE("body scan: keys and values with escapes are decoded before they are compared") {
  CHECK(scan(R"({"mod\u0065l":"m-\u0062"})").value == "m-b");
  CHECK(scan(R"({"model":"a\/b\\c\"d"})").value == "a/b\\c\"d");
  CHECK(scan(R"({"model":"caf\u00e9 \ud83d\ude00"})").value == "caf\xc3\xa9 \xf0\x9f\x98\x80");
  // A key that only starts like the field, or is longer, is another key.
  const Scanned other = scan(R"({"models":"x","mode":"y","model2":"z"})");
  CHECK(other.result == Result::Missing);
  // An escaped quote inside a skipped string does not end it.
  CHECK(scan(R"({"prompt":"a \"model\":\"evil\" b \\","model":"good"})").value == "good");
}

TEST_CASE("body scan: another field name is looked for the same way") {
  CHECK(scan(R"({"model":"a","engine":"b"})", "engine").value == "b");
}

TEST_CASE("body scan: what is wrong with a body is said") {
  CHECK(scan(R"({"messages":[]})").result == Result::Missing);
  CHECK(scan("{}").result == Result::Missing);
  CHECK(scan(R"([{"model":"a"}])").result == Result::NotObject);
  CHECK(scan(R"("model")").result == Result::NotObject);
  CHECK(scan(R"({"model":42})").result == Result::NotString);
  CHECK(scan(R"({"model":{"name":"a"}})").result == Result::NotString);
  CHECK(scan(R"({"model":null})").result == Result::NotString);

  const Scanned empty = scan("");
  CHECK(empty.result == Result::NotJson);
  CHECK(empty.error == "the body is empty");
  const Scanned form = scan("model=m-a&prompt=hi");
  CHECK(form.result == Result::NotJson);
  CHECK(form.error == "unexpected 'm' at byte 0");
  const Scanned cut = scan(R"({"messages":[{"content":"a)");
  CHECK(cut.result == Result::NotJson);
  CHECK(cut.error == "the body ends inside the JSON at byte 26");
  const Scanned badComma = scan(R"({"a":1,,"model":"x"})");
  CHECK(badComma.result == Result::NotJson);
  CHECK(badComma.error == "unexpected ',' at byte 7");
  CHECK(scan(R"({"a":tru,"model":"x"})").result == Result::NotJson);
  CHECK(scan(R"({"a":"x\q","model":"x"})").error == "an invalid escape \\q at byte 8");
  CHECK(scan("{\"a\":\"line\nbreak\",\"model\":\"x\"}").result == Result::NotJson);
  CHECK(scan(R"({"a":[1}],"model":"x"})").result == Result::NotJson);
  CHECK(scan(R"({"a" 1})").result == Result::NotJson);
}

TEST_CASE("body scan: the field's value is bounded, nesting too") {
  TopLevelFieldScanner s("model", 8);
  s.feed(R"({"model":"123456789"})");
  CHECK(s.result() == Result::TooLong);

  std::string deep = R"({"a":)";
  for (std::size_t i = 0; i < TopLevelFieldScanner::kMaxDepth + 1; ++i)
    deep += '[';
  CHECK(scanWhole(deep).result == Result::NotJson);
  // Deep but within the bound: skipped like anything else.
  std::string nested = R"({"a":)";
  for (int i = 0; i < 500; ++i)
    nested += "[{\"k\":";
  nested += "1";
  for (int i = 0; i < 500; ++i)
    nested += "}]";
  nested += R"(,"model":"deep-ok"})";
  CHECK(scan(nested).value == "deep-ok");
}

TEST_CASE("body scan: a 5 MiB prompt before the field, in 8 KiB pieces, keeps a few bytes of state") {
  std::mt19937 rng(13);
  std::string content;
  content.reserve(5 << 20);
  const std::string alphabet = "abc {}[]:,\\\" model \xc3\xa9";
  while (content.size() < (5u << 20)) {
    const char c = alphabet[rng() % alphabet.size()];
    if (c == '\\' || c == '"') content += '\\';
    content += c;
  }
  const std::string body = R"({"messages":[{"role":"user","content":")" + content + R"("}],"model":"big-one"})";
  const Scanned s = scanInPieces(body, 8192);
  CHECK(s.result == Result::Found);
  CHECK(s.value == "big-one");
  CHECK(scanWhole(body).value == "big-one");
}

TEST_CASE("body scan: a quote, an escape or a control character is seen wherever it stands in a long string") {
  // Long runs of plain string bytes are skipped many bytes at a time: each
  // byte that ends a run is found at every position around those blocks,
  // and bytes of 0x80 and above are plain (UTF-8), not control characters.
  const std::string head = R"({"messages":")";
  for (std::size_t at = 0; at < 70; ++at) {
    INFO("at byte " << at << " of the string");
    const std::string before(at, 'x');
    const std::string after(70 - at, '\xe9');
    CHECK(scanWhole(head + before + R"(\"","model":"m"})").value == "m");
    CHECK(scanWhole(head + before + R"(","model":"q)" + after + "\"}").value == "q" + after);
    const Scanned control = scanWhole(head + before + '\x1f' + after + R"(","model":"m"})");
    CHECK(control.result == Result::NotJson);
    CHECK(control.error == "a control character inside a string at byte " + std::to_string(head.size() + at));
    const Scanned escape = scanWhole(head + before + "\\q" + after + R"(","model":"m"})");
    CHECK(escape.error == "an invalid escape \\q at byte " + std::to_string(head.size() + at + 1));
    // Keys are compared whole, however long, and values are bounded the same.
    const std::string pad(at + 1, 'k');
    CHECK(scan("{\"model" + pad + "\":\"no\",\"" + pad + "model\":\"no\",\"model\":\"yes\"}").value == "yes");
    TopLevelFieldScanner bounded("model", at);
    bounded.feed(R"({"model":")" + before + R"("})");
    CHECK(bounded.result() == Result::Found);
    CHECK(bounded.value() == before);
    TopLevelFieldScanner over("model", at);
    over.feed(R"({"model":")" + before + R"(y"})");
    CHECK(over.result() == Result::TooLong);
  }
}
