#include "controld/io/clock.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
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

// The wall and the monotonic clock are read one after the other, and NTP
// slews the wall clock: their difference wobbles by a millisecond or so from
// one reading to the next. A time shown twice (a warm service's since, pushed
// again and again) must not move, so the offset follows the wall clock only
// when it has moved by more than this: a step, never jitter.
constexpr std::int64_t kWallStepMs = 500;

struct Clocks {
  std::function<std::int64_t()> wall = realWall;
  std::function<std::int64_t()> monotonic = realMonotonic;
  std::int64_t anchor = realWall() - realMonotonic();  // controld's clock = monotonic + anchor
  std::atomic<std::int64_t> offset{0};                 // wall - controld's clock, as last stepped
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
  auto& c = clocks();
  const std::int64_t measured = saturatingSub(c.wall(), clockMillisNow());
  std::int64_t kept = c.offset.load(std::memory_order_relaxed);
  if (std::llabs(saturatingSub(measured, kept)) > kWallStepMs) {
    c.offset.store(measured, std::memory_order_relaxed);
    kept = measured;
  }
  return kept;
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
  c.offset.store(0, std::memory_order_relaxed);
}

}  // namespace ondemand::controld
