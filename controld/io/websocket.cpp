#include "controld/io/websocket.hpp"

namespace ondemand::controld::websocket {

namespace {

constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

std::uint32_t rotl(std::uint32_t v, int n) {
  return (v << n) | (v >> (32 - n));
}

bool isControl(Opcode op) {
  return static_cast<std::uint8_t>(op) >= 8;
}

}  // namespace

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const std::uint32_t v = (static_cast<std::uint8_t>(bytes[i]) << 16) |
                            (static_cast<std::uint8_t>(bytes[i + 1]) << 8) | static_cast<std::uint8_t>(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == bytes.size()) {
    const std::uint32_t v = static_cast<std::uint8_t>(bytes[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const std::uint32_t v =
        (static_cast<std::uint8_t>(bytes[i]) << 16) | (static_cast<std::uint8_t>(bytes[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::array<std::uint8_t, 20> sha1(std::string_view bytes) {
  std::uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  std::string data(bytes);
  const std::uint64_t bits = static_cast<std::uint64_t>(bytes.size()) * 8;
  data.push_back(static_cast<char>(0x80));
  while (data.size() % 64 != 56)
    data.push_back('\0');
  for (int i = 7; i >= 0; --i)
    data.push_back(static_cast<char>((bits >> (i * 8)) & 0xff));

  for (std::size_t chunk = 0; chunk < data.size(); chunk += 64) {
    std::uint32_t w[80];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(data.data() + chunk + i * 4);
      w[i] = (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
    }
    for (int i = 16; i < 80; ++i)
      w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; ++i) {
      std::uint32_t f, k;
      if (i < 20) {
        f = (b & c) | (~b & d);
        k = 0x5A827999;
      } else if (i < 40) {
        f = b ^ c ^ d;
        k = 0x6ED9EBA1;
      } else if (i < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8F1BBCDC;
      } else {
        f = b ^ c ^ d;
        k = 0xCA62C1D6;
      }
      const std::uint32_t t = rotl(a, 5) + f + e + k + w[i];
      e = d;
      d = c;
      c = rotl(b, 30);
      b = a;
      a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
  }
  std::array<std::uint8_t, 20> out{};
  for (int i = 0; i < 5; ++i) {
    out[i * 4] = static_cast<std::uint8_t>(h[i] >> 24);
    out[i * 4 + 1] = static_cast<std::uint8_t>(h[i] >> 16);
    out[i * 4 + 2] = static_cast<std::uint8_t>(h[i] >> 8);
    out[i * 4 + 3] = static_cast<std::uint8_t>(h[i]);
  }
  return out;
}

std::string acceptKey(std::string_view clientKey) {
  const auto digest = sha1(std::string(clientKey) + std::string(kGuid));
  return base64(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

std::string encodeClientFrame(Opcode opcode, std::string_view payload, std::array<std::uint8_t, 4> mask) {
  std::string out;
  out.reserve(payload.size() + 14);
  out.push_back(static_cast<char>(0x80 | static_cast<std::uint8_t>(opcode)));
  const std::uint64_t n = payload.size();
  if (n < 126) {
    out.push_back(static_cast<char>(0x80 | n));
  } else if (n <= 0xffff) {
    out.push_back(static_cast<char>(0x80 | 126));
    out.push_back(static_cast<char>(n >> 8));
    out.push_back(static_cast<char>(n & 0xff));
  } else {
    out.push_back(static_cast<char>(0x80 | 127));
    for (int i = 7; i >= 0; --i)
      out.push_back(static_cast<char>((n >> (i * 8)) & 0xff));
  }
  for (const auto m : mask)
    out.push_back(static_cast<char>(m));
  for (std::size_t i = 0; i < payload.size(); ++i)
    out.push_back(static_cast<char>(static_cast<std::uint8_t>(payload[i]) ^ mask[i % 4]));
  return out;
}

bool Reader::feed(std::string_view bytes, std::vector<Message>& out) {
  if (!error_.empty()) return false;
  buffer_.append(bytes);
  std::size_t pos = 0;
  auto fail = [&](std::string why) {
    error_ = std::move(why);
    buffer_.clear();
    return false;
  };
  while (true) {
    const std::size_t avail = buffer_.size() - pos;
    if (avail < 2) break;
    const auto* p = reinterpret_cast<const std::uint8_t*>(buffer_.data() + pos);
    const bool fin = p[0] & 0x80;
    if (p[0] & 0x70) return fail("reserved bits set in a frame (no extension was agreed)");
    const auto opcode = static_cast<Opcode>(p[0] & 0x0f);
    const bool masked = p[1] & 0x80;
    std::uint64_t length = p[1] & 0x7f;
    std::size_t header = 2;
    if (length == 126) {
      if (avail < 4) break;
      length = (std::uint64_t(p[2]) << 8) | p[3];
      header = 4;
    } else if (length == 127) {
      if (avail < 10) break;
      length = 0;
      for (int i = 0; i < 8; ++i)
        length = (length << 8) | p[2 + i];
      header = 10;
    }
    if (masked) header += 4;  // servers do not mask, but a masked frame still reads
    const auto op = static_cast<std::uint8_t>(opcode);
    if ((op > 2 && op < 8) || op > 10) return fail("unknown frame opcode " + std::to_string(op));
    if (isControl(opcode) && (length > 125 || !fin)) return fail("invalid control frame");
    if (length > maxMessage_ || partial_.size() + length > maxMessage_)
      return fail("message larger than " + std::to_string(maxMessage_) + " bytes");
    if (avail < header + length) break;

    std::string payload(buffer_.data() + pos + header, static_cast<std::size_t>(length));
    if (masked) {
      const std::uint8_t* key = p + header - 4;
      for (std::size_t i = 0; i < payload.size(); ++i)
        payload[i] = static_cast<char>(static_cast<std::uint8_t>(payload[i]) ^ key[i % 4]);
    }
    pos += header + static_cast<std::size_t>(length);

    if (isControl(opcode)) {
      out.push_back(Message{opcode, std::move(payload)});
    } else if (opcode == Opcode::Continuation) {
      if (!inFragmented_) return fail("continuation frame without a message to continue");
      partial_ += payload;
      if (fin) {
        out.push_back(Message{partialOpcode_, std::move(partial_)});
        partial_.clear();
        inFragmented_ = false;
      }
    } else {
      if (inFragmented_) return fail("new message before the previous one was complete");
      if (fin) {
        out.push_back(Message{opcode, std::move(payload)});
      } else {
        inFragmented_ = true;
        partialOpcode_ = opcode;
        partial_ = std::move(payload);
      }
    }
  }
  buffer_.erase(0, pos);
  return true;
}

}  // namespace ondemand::controld::websocket
