#pragma once
// What the fuzz targets share: an invariant check that stops the run with a
// message (libFuzzer then saves the input as a crash), and a way to cut one
// input into the pieces a socket might deliver.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#define FUZZ_CHECK(condition)                                                                \
  do {                                                                                       \
    if (!(condition)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (false)

namespace ondemand::fuzz {

// The first byte (when there is one) seeds the piece sizes (1..16 bytes, or
// the rest at once when the seed is 0); the rest is the payload.
struct Split {
  std::string_view payload;
  std::vector<std::string_view> pieces;
};

inline Split split(const std::uint8_t* data, std::size_t size) {
  Split out;
  if (size == 0) return out;
  const std::uint8_t seed = data[0];
  out.payload = std::string_view(reinterpret_cast<const char*>(data + 1), size - 1);
  std::size_t pos = 0;
  std::uint32_t state = seed;
  while (pos < out.payload.size()) {
    std::size_t n = out.payload.size() - pos;
    if (seed != 0) {
      state = state * 1103515245u + 12345u;
      n = std::min<std::size_t>(n, 1 + ((state >> 16) % 16));
    }
    out.pieces.push_back(out.payload.substr(pos, n));
    pos += n;
  }
  return out;
}

}  // namespace ondemand::fuzz
