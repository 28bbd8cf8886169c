// The WebSocket frame reader on what a Semaphore server (or anyone on the
// path) sends. Checked: no crash; no message over the limit; control frames
// carry at most 125 bytes; the same bytes give the same messages and the same
// verdict whatever the piece sizes.

#include <string>
#include <vector>

#include "controld/io/websocket.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

using ondemand::controld::websocket::Message;
using ondemand::controld::websocket::Opcode;
using ondemand::controld::websocket::Reader;

constexpr std::size_t kMaxMessage = 4096;

struct Outcome {
  std::vector<Message> messages;
  bool failed = false;
};

template <typename Pieces>
Outcome run(const Pieces& pieces) {
  Reader reader(kMaxMessage);
  Outcome out;
  for (const auto piece : pieces) {
    if (!reader.feed(piece, out.messages)) {
      FUZZ_CHECK(!reader.error().empty());
      out.failed = true;
      break;
    }
  }
  for (const auto& m : out.messages) {
    FUZZ_CHECK(m.payload.size() <= kMaxMessage);
    FUZZ_CHECK(m.opcode != Opcode::Continuation);
    if (m.opcode == Opcode::Close || m.opcode == Opcode::Ping || m.opcode == Opcode::Pong)
      FUZZ_CHECK(m.payload.size() <= 125);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto split = ondemand::fuzz::split(data, size);
  const Outcome pieces = run(split.pieces);
  const std::vector<std::string_view> whole{split.payload};
  const Outcome once = run(whole);
  FUZZ_CHECK(once.failed == pieces.failed);
  // A failing feed may have delivered some messages first; up to the failure
  // both runs saw the same frames, so the shorter list is a prefix.
  const auto& shorter = once.messages.size() <= pieces.messages.size() ? once.messages : pieces.messages;
  const auto& longer = once.messages.size() <= pieces.messages.size() ? pieces.messages : once.messages;
  if (!once.failed) FUZZ_CHECK(shorter.size() == longer.size());
  for (std::size_t i = 0; i < shorter.size(); ++i) {
    FUZZ_CHECK(shorter[i].opcode == longer[i].opcode);
    FUZZ_CHECK(shorter[i].payload == longer[i].payload);
  }
  return 0;
}
