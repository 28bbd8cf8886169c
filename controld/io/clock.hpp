#pragma once
// controld's clock. Deadlines (start_timeout, idle_timeout, drains, warmup,
// failure_backoff) and the times a ServiceMachine keeps are in unix ms as
// read once when controld started, advanced by the monotonic clock since: an
// NTP step, a manual date change or a suspend while controld runs moves no
// deadline. What is shown (status, pushes, events) and persisted (state
// files) is converted to the wall clock of the moment with toWallMs(), and
// read back with fromWallMs(): after a step, past events keep their distance
// from now.

#include <cstdint>
#include <functional>

namespace ondemand::controld {

// controld's clock now, in (approximately unix) ms.
std::int64_t clockMillisNow();

// The wall clock minus controld's clock: 0 until the wall clock is stepped
// (moves by more than half a second against the monotonic clock); jitter
// below that is ignored, so a time converted twice gives the same answer.
std::int64_t wallOffsetMs();

// Times that are 0 ("none") stay 0.
std::int64_t toWallMs(std::int64_t clockMs);
std::int64_t fromWallMs(std::int64_t wallMs);

// Tests: replace the wall clock (unix ms) and the monotonic clock (ms); an
// empty function restores the real one.
void setClocksForTest(std::function<std::int64_t()> wall, std::function<std::int64_t()> monotonic);

}  // namespace ondemand::controld
