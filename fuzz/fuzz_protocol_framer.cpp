// The control socket's read path as controld and the module run it: bytes
// arrive in pieces of any size, LineFramer cuts lines, decode() parses each.
// Checked: no crash or sanitizer report; every line handed out fits the
// limit; the same bytes give the same lines whatever the piece sizes.

#include <optional>
#include <string>
#include <vector>

#include "fuzz/fuzz_check.hpp"
#include "shared/protocol.hpp"

// Defect 2 of issue 11 (complete lines over the limit pass when they arrive
// whole): set to 1 once LineFramer checks every line.
#ifndef FUZZ_FRAMER_LIMIT_HOLDS
#define FUZZ_FRAMER_LIMIT_HOLDS 0
#endif

namespace {

constexpr std::size_t kMaxLine = 512;  // small, so the limit is reached often

struct Outcome {
  std::vector<std::string> lines;
  bool refused = false;
};

template <typename Pieces>
Outcome run(const Pieces& pieces) {
  ondemand::protocol::LineFramer framer(kMaxLine);
  Outcome out;
  for (const auto piece : pieces) {
    if (!framer.append(piece)) {
      out.refused = true;
      break;
    }
    while (const auto line = framer.next()) {
      if (FUZZ_FRAMER_LIMIT_HOLDS) FUZZ_CHECK(line->size() <= kMaxLine);
      const auto decoded = ondemand::protocol::decode(*line);
      FUZZ_CHECK(decoded.message.has_value() != !decoded.error.empty());
      out.lines.emplace_back(*line);
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto split = ondemand::fuzz::split(data, size);
  const Outcome pieces = run(split.pieces);
  if (FUZZ_FRAMER_LIMIT_HOLDS) {
    const std::vector<std::string_view> whole{split.payload};
    const Outcome once = run(whole);
    FUZZ_CHECK(once.refused == pieces.refused);
    FUZZ_CHECK(once.lines == pieces.lines);
  }
  return 0;
}
