// parseDuration on any text, in both default units. Checked: no crash or
// undefined behaviour; what parses is within 0..1e15 ms; surrounding spaces do
// not change the value; formatDuration of the value is a duration again.

#include <string>

#include "fuzz/fuzz_check.hpp"
#include "shared/duration.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ondemand;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const auto unit : {DefaultUnit::Milliseconds, DefaultUnit::Seconds}) {
    const auto parsed = parseDuration(text, unit);
    const auto padded = parseDuration(" " + std::string(text) + "  ", unit);
    FUZZ_CHECK(parsed.has_value() == padded.has_value());
    if (!parsed) continue;
    FUZZ_CHECK(*parsed == *padded);
    FUZZ_CHECK(parsed->count() >= 0 && parsed->count() <= 1'000'000'000'000'000);
    const std::string shown = formatDuration(*parsed);
    FUZZ_CHECK(!shown.empty() && shown[0] != '-');
    // A value under a minute prints as one number and unit ("1.5s"), which
    // must read back (to the tenth of a second it was cut to).
    if (parsed->count() < 60'000) {
      const auto back = parseDuration(shown, DefaultUnit::Milliseconds);
      FUZZ_CHECK(back.has_value());
      FUZZ_CHECK(back->count() <= parsed->count() && parsed->count() - back->count() < 100);
    }
  }
  return 0;
}
