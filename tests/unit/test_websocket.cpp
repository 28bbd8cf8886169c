// The WebSocket pieces controld uses to listen to Semaphore's live updates.

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "controld/io/websocket.hpp"

using namespace ondemand::controld::websocket;

namespace {

std::string hex(const std::array<std::uint8_t, 20>& digest) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (const auto b : digest) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

// A frame as a server sends it: unmasked.
std::string serverFrame(std::uint8_t first, const std::string& payload) {
  std::string out(1, static_cast<char>(first));
  const auto n = payload.size();
  if (n < 126) {
    out.push_back(static_cast<char>(n));
  } else if (n <= 0xffff) {
    out.push_back(static_cast<char>(126));
    out.push_back(static_cast<char>(n >> 8));
    out.push_back(static_cast<char>(n & 0xff));
  } else {
    out.push_back(static_cast<char>(127));
    for (int i = 7; i >= 0; --i)
      out.push_back(static_cast<char>((static_cast<std::uint64_t>(n) >> (i * 8)) & 0xff));
  }
  return out + payload;
}

}  // namespace

TEST_CASE("SHA-1, base64 and the handshake's accept key match the published examples") {
  CHECK(hex(sha1("")) == "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  CHECK(hex(sha1("abc")) == "a9993e364706816aba3e25717850c26c9cd0d89d");
  CHECK(hex(sha1(std::string(1000, 'a'))) == "291e9a6c66994949b57ba5e650361e98fc36b1ba");
  CHECK(base64("") == "");
  CHECK(base64("f") == "Zg==");
  CHECK(base64("fo") == "Zm8=");
  CHECK(base64("foo") == "Zm9v");
  CHECK(base64("foobar") == "Zm9vYmFy");
  // RFC 6455, section 1.3.
  CHECK(acceptKey("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST_CASE("client frames are masked and carry 7-, 16- and 64-bit lengths") {
  const std::array<std::uint8_t, 4> mask{0x37, 0xfa, 0x21, 0x3d};
  // RFC 6455, section 5.7: a masked "Hello".
  const std::string hello = encodeClientFrame(Opcode::Text, "Hello", mask);
  CHECK(hello == std::string("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11));

  for (const std::size_t size : {std::size_t(125), std::size_t(126), std::size_t(70000)}) {
    const std::string payload(size, 'x');
    const std::string frame = encodeClientFrame(Opcode::Binary, payload, mask);
    // A masked frame reads back (the reader accepts masks, though servers send none).
    Reader reader;
    std::vector<Message> out;
    REQUIRE(reader.feed(frame, out));
    REQUIRE(out.size() == 1);
    CHECK(out[0].opcode == Opcode::Binary);
    CHECK(out[0].payload == payload);
  }
}

TEST_CASE("the reader waits for whole frames, joins fragments and passes control frames at once") {
  Reader reader;
  std::vector<Message> out;
  const std::string update = R"({"type":"update","task_id":42,"status":"success"})";
  const std::string bytes = serverFrame(0x81, update) + serverFrame(0x01, "{\"a\":") + serverFrame(0x89, "hi") +
                            serverFrame(0x00, "1") + serverFrame(0x80, "}") + serverFrame(0x81, std::string(300, 'y'));
  // One byte at a time: nothing comes out before its frame is complete.
  for (char c : bytes)
    REQUIRE(reader.feed(std::string_view(&c, 1), out));
  REQUIRE(out.size() == 4);
  CHECK((out[0].opcode == Opcode::Text && out[0].payload == update));
  CHECK((out[1].opcode == Opcode::Ping && out[1].payload == "hi"));
  CHECK((out[2].opcode == Opcode::Text && out[2].payload == "{\"a\":1}"));
  CHECK(out[3].payload.size() == 300);
}

TEST_CASE("the reader refuses what a WebSocket server never sends") {
  std::vector<Message> out;
  SECTION("a message over the limit, before it arrives whole") {
    Reader reader(1000);
    CHECK_FALSE(reader.feed(serverFrame(0x81, std::string(2000, 'x')).substr(0, 10), out));
    CHECK(reader.error() == "message larger than 1000 bytes");
  }
  SECTION("a continuation without a message") {
    Reader reader;
    CHECK_FALSE(reader.feed(serverFrame(0x80, "x"), out));
  }
  SECTION("a fragmented control frame") {
    Reader reader;
    CHECK_FALSE(reader.feed(serverFrame(0x09, "x"), out));
  }
  SECTION("reserved bits and opcodes") {
    Reader a;
    CHECK_FALSE(a.feed(serverFrame(0xc1, "x"), out));
    Reader b;
    CHECK_FALSE(b.feed(serverFrame(0x83, "x"), out));
  }
  CHECK(out.empty());
}
