#pragma once
// The client side of the WebSocket protocol (RFC 6455), as far as controld
// needs it to listen to Semaphore's live updates: the handshake key, masked
// client frames, and a reader that turns server bytes into messages. No I/O
// here; SemaphoreLiveUpdates moves the bytes.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ondemand::controld::websocket {

enum class Opcode : std::uint8_t { Continuation = 0, Text = 1, Binary = 2, Close = 8, Ping = 9, Pong = 10 };

std::string base64(std::string_view bytes);
std::array<std::uint8_t, 20> sha1(std::string_view bytes);
// Sec-WebSocket-Accept for a Sec-WebSocket-Key.
std::string acceptKey(std::string_view clientKey);

// One frame from client to server: FIN set, payload masked with `mask`.
std::string encodeClientFrame(Opcode opcode, std::string_view payload, std::array<std::uint8_t, 4> mask);

struct Message {
  Opcode opcode = Opcode::Text;  // Text, Binary, Close, Ping or Pong
  std::string payload;           // a fragmented message arrives whole
};

// Server frames in, whole messages out. Control frames (close, ping, pong)
// come out as they arrive, also in the middle of a fragmented message.
class Reader {
 public:
  explicit Reader(std::size_t maxMessageBytes = 1 << 20) : maxMessage_(maxMessageBytes) {}

  // Appends bytes and moves every complete message into `out`. False on a
  // protocol error (then error() says what, and the connection must go).
  bool feed(std::string_view bytes, std::vector<Message>& out);
  const std::string& error() const { return error_; }

 private:
  std::size_t maxMessage_;
  std::string buffer_;
  std::string partial_;  // payload of a fragmented message so far
  Opcode partialOpcode_ = Opcode::Text;
  bool inFragmented_ = false;
  std::string error_;
};

}  // namespace ondemand::controld::websocket
