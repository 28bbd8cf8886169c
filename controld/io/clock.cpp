#include "controld/io/clock.hpp"

#include <chrono>
#include <utility>

#include "shared/saturating.hpp"

namespace ondemand::controld {

namespace {

std::int64_t realWall() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t realMonotonic() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Clocks {
  std::function<std::int64_t()> wall = realWall;
  std::function<std::int64_t()> monotonic = realMonotonic;
  std::int64_t anchor = realWall() - realMonotonic();  // controld's clock = monotonic + anchor
};

Clocks& clocks() {
  static Clocks c;
  return c;
}

}  // namespace

std::int64_t clockMillisNow() {
  auto& c = clocks();
  return saturatingAdd(c.monotonic(), c.anchor);
}

std::int64_t wallOffsetMs() {
  return saturatingSub(clocks().wall(), clockMillisNow());
}

std::int64_t toWallMs(std::int64_t clockMs) {
  return clockMs == 0 ? 0 : saturatingAdd(clockMs, wallOffsetMs());
}

std::int64_t fromWallMs(std::int64_t wallMs) {
  return wallMs == 0 ? 0 : saturatingSub(wallMs, wallOffsetMs());
}

void setClocksForTest(std::function<std::int64_t()> wall, std::function<std::int64_t()> monotonic) {
  auto& c = clocks();
  c.wall = wall ? std::move(wall) : realWall;
  c.monotonic = monotonic ? std::move(monotonic) : realMonotonic;
  c.anchor = c.wall() - c.monotonic();
}

}  // namespace ondemand::controld
