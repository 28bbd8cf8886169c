// The module's scan for a top-level JSON field ($ondemand_model) on any body,
// in the pieces a socket might deliver. Checked: no crash or undefined
// behaviour; the same result, value, error and offset as the body fed whole;
// a found value within the bound; a result other than "need more" once the
// body is finished.

#include <string>

#include "fuzz/fuzz_check.hpp"
#include "ngx_module/body_scan.hpp"

namespace {

using ondemand::module::TopLevelFieldScanner;

constexpr std::size_t kMaxValue = 64;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const ondemand::fuzz::Split in = ondemand::fuzz::split(data, size);
  TopLevelFieldScanner whole("model", kMaxValue);
  whole.feed(in.payload);
  whole.finish();
  TopLevelFieldScanner pieces("model", kMaxValue);
  for (const std::string_view piece : in.pieces) {
    if (pieces.feed(piece) != TopLevelFieldScanner::Result::NeedMore) break;
  }
  pieces.finish();
  FUZZ_CHECK(whole.result() != TopLevelFieldScanner::Result::NeedMore);
  FUZZ_CHECK(pieces.result() == whole.result());
  FUZZ_CHECK(pieces.value() == whole.value());
  FUZZ_CHECK(pieces.error() == whole.error());
  FUZZ_CHECK(pieces.offset() == whole.offset());
  if (whole.result() == TopLevelFieldScanner::Result::Found) FUZZ_CHECK(whole.value().size() <= kMaxValue);
  return 0;
}
