#pragma once
// The pages people see: the waiting page, the error pages and the status
// page, in one look. Each is one self-contained HTML document (its CSS and
// script inline, nothing fetched from elsewhere), readable on a phone and in
// dark mode. With JavaScript a page follows ondemand_events and changes by
// itself (the waiting page opens the service once it is warm); without it a
// meta refresh inside <noscript> reloads it. Every value is HTML-escaped;
// the data a script reads is JSON with '<', '>' and '&' escaped.

#include <string>
#include <string_view>

#include "ngx_module/answers.hpp"

namespace ondemand::module {

// The page of an answer the module gives itself (any AnswerKind).
std::string answerPage(const AnswerFacts& facts, int status, std::string_view message);

// The frame every page shares. `tone` is wait, ok, warn, bad or idle (the
// colour of the dot; empty: each part of the page has its own); `main` is the page's content (already escaped); `data`
// a JSON object for `script`; `refreshSeconds` the <noscript> reload (0: none).
struct PageFrame {
  std::string title;
  std::string_view tone = "wait";
  std::string main;
  std::string data;
  std::string_view script;
  int refreshSeconds = 0;
  bool wide = false;  // the status page: a grid of cards
};
std::string renderFrame(const PageFrame& frame);

// JSON text that may stand inside <script>: no "</script>", no "<!--".
std::string scriptSafeJson(std::string_view json);

// The status page's script: it follows ondemand_events and updates the cards.
extern const std::string_view kStatusScript;

}  // namespace ondemand::module
