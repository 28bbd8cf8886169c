#pragma once
// Text that came from outside (a request's path in a wake reason, a command's
// or an Ansible run's output in a failure reason) made valid UTF-8 before it
// reaches a state file, a status answer or a page, so that every strict JSON
// reader can read them.

#include <string>
#include <string_view>

namespace ondemand {

// The text with every byte that is not part of a well-formed UTF-8 sequence
// (stray continuation bytes, overlong forms, surrogates, code points past
// U+10FFFF, cut sequences) replaced by U+FFFD.
std::string validUtf8(std::string_view text);

bool isValidUtf8(std::string_view text);

}  // namespace ondemand
