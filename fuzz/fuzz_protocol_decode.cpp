// decode() on one line. Checked: never throws or crashes; a line either
// decodes or says why not; what decodes encodes to one line that decodes to
// the same message type and encodes to the same text again.

#include <string>

#include "fuzz/fuzz_check.hpp"
#include "shared/protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ondemand::protocol;
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const Decoded decoded = decode(line);
  FUZZ_CHECK(decoded.message.has_value() != !decoded.error.empty());
  if (!decoded.message) return 0;

  const std::string encoded = std::visit([](const auto& m) { return encode(m); }, *decoded.message);
  FUZZ_CHECK(!encoded.empty() && encoded.back() == '\n');
  FUZZ_CHECK(encoded.find('\n') == encoded.size() - 1);
  const Decoded again = decode(std::string_view(encoded).substr(0, encoded.size() - 1));
  FUZZ_CHECK(again.message.has_value());
  FUZZ_CHECK(typeName(*again.message) == typeName(*decoded.message));
  const std::string reencoded = std::visit([](const auto& m) { return encode(m); }, *again.message);
  FUZZ_CHECK(reencoded == encoded);
  return 0;
}
