// Semaphore's answers as the driver reads them: task output (tail lines, ANSI
// removed), the tasks/last list searched for an operation id, RFC 3339 times.
// The first byte picks the parser. Checked: no crash; at most the lines asked
// for, none blank, none with an escape; a found task is one that was listed.

#include <string>

#include "controld/drivers/semaphore/semaphore_driver.hpp"
#include "fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ondemand::controld;
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 4) {
    case 0: {
      const std::size_t maxLines = 1 + data[0] / 4 % 8;
      if (const auto lines = lastOutputLines(body, maxLines)) {
        FUZZ_CHECK(lines->size() <= maxLines);
        for (const auto& line : *lines) {
          FUZZ_CHECK(line.find_first_not_of(" \t") != std::string::npos);
          FUZZ_CHECK(line.find('\x1b') == std::string::npos);
        }
      }
      break;
    }
    case 1: {
      // The operation id is the body's first line; the rest is the answer.
      const auto newline = body.find('\n');
      const std::string_view id = newline == std::string_view::npos ? body : body.substr(0, newline);
      const std::string_view list = newline == std::string_view::npos ? std::string_view() : body.substr(newline + 1);
      if (const auto found = searchTaskList(list, id)) {
        if (found->taskId != 0) FUZZ_CHECK(found->listed > 0);
      }
      break;
    }
    case 2:
      (void)rfc3339Millis(body);
      break;
    case 3: {
      const std::string clean = stripAnsi(body);
      FUZZ_CHECK(clean.size() <= body.size());
      FUZZ_CHECK(clean.find('\x1b') == std::string::npos);
      break;
    }
  }
  return 0;
}
