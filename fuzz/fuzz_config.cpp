// loadConfig on any file text (native controld.yaml or Hestia's
// hestia_config.yml, told apart by their keys). Checked: never throws or
// crashes; a result is either a config or at least one error, and every
// problem names a key or a line.

#include <string>

#include "controld/config/config.hpp"
#include "fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ondemand::controld;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const FileReader reader = [&](const std::string& path, std::string& error) -> std::optional<std::string> {
    if (path == "/fuzz/controld.yaml") return text;
    error = "No such file or directory";
    return std::nullopt;
  };
  const Environment env;
  const ConfigLoadResult result = loadConfig("/fuzz/controld.yaml", env, reader);
  FUZZ_CHECK(result.config.has_value() == result.errors.empty());
  for (const auto& problem : result.errors) {
    FUZZ_CHECK(!problem.message.empty());
    FUZZ_CHECK(!formatProblem(problem).empty());
  }
  return 0;
}
