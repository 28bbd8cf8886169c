#include <catch2/catch.hpp>

#include <cstdint>

#include "controld/io/clock.hpp"

using namespace ondemand::controld;

namespace {

struct FakeClocks {
  std::int64_t wall = 1'800'000'000'000;
  std::int64_t monotonic = 5'000;
  FakeClocks() {
    setClocksForTest([this] { return wall; }, [this] { return monotonic; });
  }
  ~FakeClocks() { setClocksForTest({}, {}); }
  void advance(std::int64_t ms) {
    wall += ms;
    monotonic += ms;
  }
};

}  // namespace

TEST_CASE("a time converted to the wall clock again and again does not move with jitter") {
  FakeClocks clocks;
  const std::int64_t since = clockMillisNow();
  const std::int64_t shown = toWallMs(since);
  CHECK(shown == clocks.wall);
  for (int i = 0; i < 20; ++i) {
    clocks.advance(250);
    clocks.wall += (i % 2 == 0) ? 1 : -1;  // the two reads a millisecond apart, and NTP slewing
    CHECK(toWallMs(since) == shown);
    CHECK(fromWallMs(shown) == since);
  }
}

TEST_CASE("a step of the wall clock moves every time shown, keeping its distance from now") {
  FakeClocks clocks;
  const std::int64_t since = clockMillisNow();
  clocks.advance(1'000);
  const std::int64_t before = toWallMs(since);
  clocks.wall += 3'600'000;  // the clock is set an hour ahead
  CHECK(wallOffsetMs() == 3'600'000);
  CHECK(toWallMs(since) == before + 3'600'000);
  CHECK(clocks.wall - toWallMs(since) == 1'000);
  clocks.wall -= 2 * 3'600'000;  // and then back, an hour behind where it started
  CHECK(toWallMs(since) == before - 3'600'000);
  CHECK(toWallMs(0) == 0);
}
