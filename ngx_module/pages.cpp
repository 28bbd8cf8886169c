#include "ngx_module/pages.hpp"

#include <algorithm>

#include "ngx_module/page_template.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::module {

namespace {

// One look for every page: light by default, dark with the system's dark
// mode, a single column that fits a 320 px phone, no sideways scrolling.
constexpr std::string_view kStyle =
    R"(:root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--text:#1b1d21;--muted:#5d6470;--line:#dfe2e7;--accent:#2158d6;--ok:#137a3a;--warn:#a35a00;--bad:#b3261e}
@media (prefers-color-scheme:dark){:root{--bg:#0e1014;--card:#171a20;--text:#e7e9ed;--muted:#9aa1ad;--line:#2b3038;--accent:#7aa7ff;--ok:#5fd38a;--warn:#f0b552;--bad:#ff8a80}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:1rem;background:var(--bg);color:var(--text);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
body.wide{align-items:flex-start}
main{width:100%;max-width:34rem;background:var(--card);border:1px solid var(--line);border-radius:14px;padding:1.5rem 1.5rem 1.25rem;box-shadow:0 1px 3px rgba(0,0,0,.06)}
body.wide main{max-width:64rem;background:none;border:0;box-shadow:none;padding:0}
.brand{margin:0 0 .6rem;font-size:.75rem;font-weight:600;letter-spacing:.09em;text-transform:uppercase;color:var(--muted)}
h1{margin:0 0 .5rem;font-size:1.45rem;line-height:1.25;display:flex;gap:.6rem;align-items:baseline;overflow-wrap:anywhere}
h2{margin:0;font-size:1.05rem;overflow-wrap:anywhere;display:flex;gap:.5rem;align-items:baseline}
p{margin:.4rem 0}
.dot{flex:none;display:inline-block;width:.7rem;height:.7rem;border-radius:50%;background:var(--accent)}
[data-tone=wait] .dot{animation:pulse 1.4s ease-in-out infinite}
[data-tone=ok] .dot{background:var(--ok)}
[data-tone=warn] .dot{background:var(--warn)}
[data-tone=bad] .dot{background:var(--bad)}
[data-tone=idle] .dot{background:var(--muted)}
@keyframes pulse{50%{opacity:.25}}
.bar{height:.5rem;border-radius:99px;background:var(--line);overflow:hidden;margin:1rem 0 .35rem}
.bar>div{height:100%;width:0;background:var(--accent);border-radius:99px;transition:width 1s linear}
.bar.unknown>div{width:30%;animation:slide 1.6s ease-in-out infinite}
@keyframes slide{from{margin-left:-30%}to{margin-left:100%}}
.expect{font-size:.9rem;color:var(--muted);margin:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:1rem 0 0;font-size:.95rem}
dt{color:var(--muted)}
dd{margin:0;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.75rem 0 0;background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:.6rem .75rem;font-size:.85rem;max-height:18rem;overflow:auto}
.hint{color:var(--muted);font-size:.9rem;margin-top:1rem}
.services{display:grid;gap:.75rem;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));margin-top:1rem}
.services section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1rem}
.services dl{margin-top:.5rem;font-size:.9rem}
h2.section{margin:1.5rem 0 0}
.head{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1rem}
a{color:var(--accent)}
@media (prefers-reduced-motion:reduce){*{animation:none!important;transition:none!important}}
)";

// The answer pages' script: follows the service on ondemand_events, opens
// it the moment it is warm, counts the start (and a failure's back-off)
// down, and reloads only when the answer would change.
constexpr std::string_view kAnswerScript = R"((function () {
  "use strict";
  var d = JSON.parse(document.getElementById("od-data").textContent);
  var root = document.documentElement, t0 = Date.now(), done = false;
  function $(id) { return document.getElementById(id); }
  function set(id, text) { var e = $(id); if (e && e.textContent !== text) e.textContent = text; }
  function human(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + " min " + (s % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function reload(why) { if (done) return; done = true; if (why) set("od-hint", why); location.reload(); }
  var unreachable = d.state === "unreachable";
  var etcdDown = d.etcd_unreachable_for_ms >= 0;  // in a cluster: this node starts nothing until etcd is back
  var startedAt = d.starting_for_ms >= 0 ? t0 - d.starting_for_ms : -1;
  var retryAt = d.retry_in_ms > 0 ? t0 + d.retry_in_ms : -1;
  function tick() {
    var now = Date.now();
    if (startedAt >= 0 && !unreachable) {
      var el = now - startedAt, bar = $("od-bar");
      set("od-elapsed", human(el));
      if (bar && d.last_start_ms > 0) {
        var p = Math.min(95, Math.round(100 * el / d.last_start_ms));
        bar.style.width = p + "%";
        bar.parentNode.setAttribute("aria-valuenow", String(p));
        set("od-expect", el < d.last_start_ms ? "About " + human(d.last_start_ms - el) + " left, going by the last start."
                                              : "Taking longer than the last start (" + human(d.last_start_ms) + ").");
      }
    }
    if (unreachable && d.unreachable_for_ms >= 0) set("od-elapsed", human(d.unreachable_for_ms + now - t0));
    if (retryAt >= 0) {
      var left = retryAt - now;
      if (left <= 0) reload("Trying again now\u2026");
      else set("od-retry", (d.kind === "start_failed" ? "A new try starts in " : "Trying again in ") + human(left) + ".");
    }
  }
  function unreachableNow() {
    if (unreachable) return;
    unreachable = true;
    root.setAttribute("data-tone", "warn");
    document.title = d.service + " cannot be started now";
    set("od-title", document.title);
    set("od-message", "controld cannot be reached, so nothing can start " + d.service + " now.");
    set("od-hint", "This page carries on by itself once controld is back.");
    var bar = $("od-bar"); if (bar) bar.parentNode.hidden = true;
    set("od-expect", "");
  }
  tick();
  setInterval(tick, 1000);
  function fallback() { if (retryAt < 0 && d.refresh > 0) retryAt = Date.now() + d.refresh * 1000; }
  if (!d.events || !window.EventSource) { fallback(); return; }
  var es = new EventSource(d.events + (d.events.indexOf("?") < 0 ? "?" : "&") + "service=" + encodeURIComponent(d.service));
  es.addEventListener("state", function (e) {
    var s = JSON.parse(e.data);
    if (s.service !== d.service || done) return;
    if (s.state === "warm") { es.close(); reload("Ready: opening " + d.service + "\u2026"); return; }
    if (d.kind === "unknown_service") { reload(); return; }
    if (d.kind === "start_failed") { if (s.state !== "failed") reload(); return; }
    // A failure newer than the page (not the one a retry just left behind).
    if (s.state === "failed") { if (s.epoch > d.epoch) { es.close(); reload(); } return; }
    if (!!s.etcd_unreachable_since !== etcdDown) { reload(); return; }  // etcd went or came back
    d.state = s.state;
    set("od-state", s.state);
    set("od-wait", s.waiting_for || "");
    if (s.last_start_ms > 0) d.last_start_ms = s.last_start_ms;
    if (s.state === "starting" && s.starting_since > 0) startedAt = Date.now() - Math.max(0, s.now - s.starting_since);
    tick();
  });
  es.addEventListener("removed", function () { if (d.kind !== "unknown_service") reload(); });
  es.addEventListener("controld", function (e) {
    var c = JSON.parse(e.data);
    if (c.status === "unreachable") unreachableNow();
    else if (c.status === "connected" && unreachable) reload();
  });
  es.onerror = function () { if (es.readyState === 2) fallback(); };
})();
)";

}  // namespace

const std::string_view kStatusScript = R"((function () {
  "use strict";
  var d = JSON.parse(document.getElementById("od-data").textContent);
  var skew = d.now - Date.now();
  var tones = {cold: "idle", starting: "wait", warm: "ok", stopping: "wait", failed: "bad"};
  function human(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + " min " + (s % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function card(name) {
    var all = document.querySelectorAll("section[data-service]");
    for (var i = 0; i < all.length; i++) if (all[i].getAttribute("data-service") === name) return all[i];
    return null;
  }
  function field(c, name) { return c.querySelector("[data-field=" + name + "]"); }
  function put(c, name, text) { var e = field(c, name); if (e && e.textContent !== text) e.textContent = text; }
  function tick() {
    var now = Date.now() + skew, all = document.querySelectorAll("section[data-since]");
    for (var i = 0; i < all.length; i++) {
      var since = Number(all[i].getAttribute("data-since"));
      if (since > 0) put(all[i], "for", human(now - since));
    }
  }
  tick();
  setInterval(tick, 1000);
  if (!d.events || !window.EventSource) { setTimeout(function () { location.reload(); }, 10000); return; }
  var es = new EventSource(d.events);
  es.addEventListener("state", function (e) {
    var s = JSON.parse(e.data), c = card(s.service);
    skew = s.now - Date.now();
    if (!c) { es.close(); location.reload(); return; }
    c.setAttribute("data-tone", tones[s.state] || "idle");
    c.setAttribute("data-since", String(s.since));
    put(c, "state", s.state);
    put(c, "task", s.task_id > 0 ? String(s.task_id) : "\u2014");
    put(c, "last", s.last_start_ms > 0 ? human(s.last_start_ms) : "\u2014");
    var r = field(c, "reason");
    if (r) { r.textContent = s.reason; r.hidden = !s.reason || s.state !== "failed"; }
    tick();
  });
  es.addEventListener("removed", function (e) {
    var c = card(JSON.parse(e.data).service);
    if (c) c.parentNode.removeChild(c);
  });
  es.addEventListener("controld", function (e) {
    var c = JSON.parse(e.data), el = document.getElementById("od-link");
    if (el) el.textContent = c.status;
    document.getElementById("od-head").setAttribute("data-tone", c.status === "connected" ? "ok" : "warn");
  });
})();
)";

std::string scriptSafeJson(std::string_view json) {
  std::string out;
  out.reserve(json.size() + 16);
  for (const char ch : json) {
    // Only inside JSON strings can these appear; \u escapes mean the same.
    switch (ch) {
      case '<':
        out.append("\\u003c");
        break;
      case '>':
        out.append("\\u003e");
        break;
      case '&':
        out.append("\\u0026");
        break;
      default:
        out.push_back(ch);
    }
  }
  return out;
}

std::string renderFrame(const PageFrame& f) {
  std::string out;
  out.reserve(8192 + f.main.size());
  out.append("<!DOCTYPE html>\n<html lang=\"en\"");
  if (!f.tone.empty()) out.append(" data-tone=\"").append(f.tone).append("\"");
  out.append(">\n<head>\n");
  out.append("<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
  out.append("<meta name=\"color-scheme\" content=\"light dark\">\n");
  if (f.refreshSeconds > 0) {
    // Only without JavaScript: with it the page follows ondemand_events
    // and reloads only when its answer changes.
    out.append("<noscript><meta http-equiv=\"refresh\" content=\"")
        .append(std::to_string(f.refreshSeconds))
        .append("\"></noscript>\n");
  }
  out.append("<title>").append(htmlEscape(f.title)).append("</title>\n<style>\n").append(kStyle);
  out.append("</style>\n</head>\n<body").append(f.wide ? " class=\"wide\"" : "").append(">\n<main>\n");
  out.append(f.main);
  out.append("</main>\n");
  if (!f.script.empty()) {
    out.append("<script id=\"od-data\" type=\"application/json\">").append(scriptSafeJson(f.data));
    out.append("</script>\n<script>\n").append(f.script).append("</script>\n");
  }
  out.append("</body>\n</html>\n");
  return out;
}

std::string answerPage(const AnswerFacts& f, int status, std::string_view message) {
  const bool unreachable = f.state == "unreachable";
  // In a cluster, cut off from etcd: nothing is starting either.
  const bool etcdDown = !unreachable && f.etcdUnreachableSinceMs > 0;
  const bool waitingKind = f.kind == AnswerKind::WaitingPage || f.kind == AnswerKind::Timeout;
  PageFrame frame;
  std::string headline;
  std::string hint;
  int refresh = kRetryAfterSeconds;
  switch (f.kind) {
    case AnswerKind::WaitingPage:
    case AnswerKind::Timeout:
    case AnswerKind::NotReady:
      headline = unreachable || etcdDown         ? std::string(f.service) + " cannot be started now"
                 : f.kind == AnswerKind::Timeout ? std::string(f.service) + " is not ready yet"
                                                 : std::string(f.service) + " is starting";
      frame.tone = unreachable || etcdDown ? "warn" : "wait";
      hint = unreachable ? "This page carries on by itself once controld is back."
             : etcdDown
                 ? "This page carries on by itself once etcd is back."
                 : "This page follows the start and opens " + std::string(f.service) + " as soon as it is ready.";
      refresh = kPageRefreshSeconds;
      break;
    case AnswerKind::StartFailed:
      headline = std::string(f.service) + " failed to start";
      frame.tone = "bad";
      hint = "The next request after the back-off tries again; this page does so by itself.";
      refresh = f.retryInMs > 0 ? static_cast<int>((f.retryInMs + 999) / 1000) : kRetryAfterSeconds;
      break;
    case AnswerKind::UnknownService:
      headline = "No service named " + std::string(f.service);
      frame.tone = "bad";
      hint = "This page reloads by itself if controld gets such a service.";
      refresh = 30;
      break;
    case AnswerKind::TooManyWaiting:
      headline = "Too many requests are waiting for " + std::string(f.service);
      frame.tone = "warn";
      hint = "This page tries again by itself, or opens " + std::string(f.service) + " once it is ready.";
      break;
    case AnswerKind::DaemonDown:
      headline = std::string(f.service) + " cannot be started now";
      frame.tone = "warn";
      hint = "This page carries on by itself once controld is back.";
      break;
    default:
      headline = std::string(f.service) + ": " + std::string(f.state);
      frame.tone = "warn";
      hint = "This page tries again by itself.";
      break;
  }
  frame.title = headline;
  frame.refreshSeconds = refresh;

  std::string& m = frame.main;
  m.append("<p class=\"brand\">ondemand &middot; ").append(std::to_string(status)).append("</p>\n");
  m.append("<h1><span class=\"dot\" aria-hidden=\"true\"></span><span id=\"od-title\">")
      .append(htmlEscape(headline))
      .append("</span></h1>\n");
  // The reason is shown once, in full, below: the sentence above it only
  // says that the start failed.
  std::string sentence(message);
  if (f.kind == AnswerKind::StartFailed) {
    sentence = "The last start of " + std::string(f.service) + " failed" + (f.reason.empty() ? "." : ":");
  }
  m.append("<p id=\"od-message\" role=\"status\" aria-live=\"polite\">").append(htmlEscape(sentence)).append("</p>\n");
  if (!f.reason.empty()) m.append("<pre id=\"od-reason\">").append(htmlEscape(f.reason)).append("</pre>\n");

  const bool starting = waitingKind && !unreachable && !etcdDown && f.state != "failed";
  // Cold: this request's wake is what starts it, now.
  const std::int64_t startingForMs = !starting ? -1 : f.startingForMs >= 0 ? f.startingForMs : 0;
  if (starting) {
    if (f.lastStartMs > 0) {
      const std::int64_t el = startingForMs;
      const int pct = static_cast<int>(std::min<std::int64_t>(95, el * 100 / f.lastStartMs));
      m.append(
           "<div class=\"bar\" role=\"progressbar\" aria-label=\"Start, measured against the last one\" "
           "aria-valuemin=\"0\" aria-valuemax=\"100\" aria-valuenow=\"")
          .append(std::to_string(pct))
          .append("\"><div id=\"od-bar\" style=\"width:")
          .append(std::to_string(pct))
          .append("%\"></div></div>\n<p class=\"expect\" id=\"od-expect\">");
      m.append(el < f.lastStartMs
                   ? "About " + humanSeconds((f.lastStartMs - el + 500) / 1000) + " left, going by the last start."
                   : "Taking longer than the last start (" + humanSeconds((f.lastStartMs + 500) / 1000) + ").");
      m.append("</p>\n");
    } else {
      m.append(
          "<div class=\"bar unknown\" role=\"progressbar\" aria-label=\"Starting\"><div id=\"od-bar\"></div></div>\n");
      m.append("<p class=\"expect\" id=\"od-expect\">The first start: no earlier one to go by.</p>\n");
    }
  }

  m.append("<dl>\n");
  auto row = [&m](std::string_view term, std::string_view id, const std::string& value) {
    m.append("<dt>").append(term).append("</dt><dd");
    if (!id.empty()) m.append(" id=\"").append(id).append("\"");
    m.append(">").append(htmlEscape(value)).append("</dd>\n");
  };
  row("Service", "", std::string(f.service));
  row("State", "od-state", std::string(f.state));
  if (unreachable && f.unreachableForMs >= 0) {
    row("controld unreachable for", "od-elapsed", humanSeconds(f.unreachableForMs / 1000));
  } else if (startingForMs >= 0) {
    row(f.state == "stopping" ? "Waiting for" : "Starting for", "od-elapsed", humanSeconds(startingForMs / 1000));
  }
  // On a shared machine: what the start waits for (kept up to date by the
  // script, emptied once room is found).
  if (starting && !f.waiting.empty()) row("Waiting for room", "od-wait", std::string(f.waiting));
  if (etcdDown && f.etcdUnreachableForMs >= 0) {
    row("etcd unreachable for", "", humanSeconds(f.etcdUnreachableForMs / 1000));
  }
  if (f.lastStartMs > 0 && !unreachable) row("Last start took", "", humanSeconds((f.lastStartMs + 500) / 1000));
  if (f.taskId > 0) row("Semaphore task", "", std::to_string(f.taskId));
  if (f.kind == AnswerKind::Timeout) row("Waited", "", humanSeconds(f.waitedMs / 1000));
  if (f.kind == AnswerKind::TooManyWaiting) row("Waiting already", "", std::to_string(f.maxWaiting));
  m.append("</dl>\n");
  if (f.kind == AnswerKind::StartFailed || f.kind == AnswerKind::TooManyWaiting || f.kind == AnswerKind::DaemonDown ||
      f.kind == AnswerKind::NotWoken || f.kind == AnswerKind::ShuttingDown) {
    m.append("<p id=\"od-retry\" role=\"timer\">");
    if (f.kind == AnswerKind::StartFailed && f.retryInMs > 0) {
      m.append("A new try starts in ").append(humanSeconds((f.retryInMs + 999) / 1000)).append(".");
    } else if (f.kind != AnswerKind::StartFailed) {
      m.append("Trying again in ").append(std::to_string(refresh)).append(" s.");
    }
    m.append("</p>\n");
  }
  m.append("<p class=\"hint\" id=\"od-hint\">").append(htmlEscape(hint)).append("</p>\n");
  m.append("<noscript><p class=\"hint\">This page reloads every ")
      .append(std::to_string(refresh))
      .append(" s.</p></noscript>\n");

  JsonWriter w;
  w.startObject().str("kind", errorCodeOf(f.kind)).str("service", f.service).str("state", f.state);
  w.str("events", f.eventsUrl).i64("refresh", refresh).u64("epoch", f.epoch);
  w.i64("starting_for_ms", startingForMs).i64("last_start_ms", f.lastStartMs);
  std::int64_t retryIn = -1;
  if (f.kind == AnswerKind::StartFailed) {
    retryIn = f.retryInMs > 0 ? f.retryInMs : -1;
  } else if (!waitingKind && f.kind != AnswerKind::UnknownService) {
    retryIn = static_cast<std::int64_t>(refresh) * 1000;
  }
  w.i64("retry_in_ms", retryIn).i64("unreachable_for_ms", unreachable ? f.unreachableForMs : -1);
  w.i64("etcd_unreachable_for_ms", etcdDown ? f.etcdUnreachableForMs : -1);
  frame.data = w.endObject().text();
  frame.script = kAnswerScript;
  return renderFrame(frame);
}

}  // namespace ondemand::module
