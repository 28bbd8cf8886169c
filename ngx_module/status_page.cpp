// ondemand_status: every service's state as this worker sees it, JSON for
// API clients, a table for browsers.

#include "ngx_module/answers.hpp"
#include "ngx_module/http_util.hpp"
#include "ngx_module/request.hpp"
#include "ngx_module/worker.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::module {

namespace {

const char* linkStatusName(LinkStatus s) {
  switch (s) {
    case LinkStatus::Up:
      return "connected";
    case LinkStatus::Handshake:
      return "subscribing";
    case LinkStatus::Down:
      return "unreachable";
  }
  return "unknown";
}

std::string statusJson(ControlLink& link, bool reasons) {
  JsonWriter w;
  w.startObject().i64("pid", static_cast<std::int64_t>(ngx_pid));
  w.key("controld").startObject();
  w.str("socket", link.name()).str("status", linkStatusName(link.status())).str("daemon", link.daemon());
  if (link.unreachableSinceMs() > 0) w.i64("unreachable_since", link.unreachableSinceMs());
  w.endObject();
  w.key("services").startArray();
  for (const ServiceEntry* e : link.services().sortedByName()) {
    if (!e->known) continue;
    w.startObject().str("name", e->name).str("state", stateNameFor(*e)).u64("epoch", e->state.epoch);
    w.i64("since", e->state.sinceMs).i64("starting_since", e->state.startingSinceMs);
    w.str("cause", e->state.cause)
        .str("reason", reasons ? std::string_view(e->state.reason) : std::string_view())
        .i64("task_id", e->state.taskId);
    w.u64("in_flight", e->inFlight).u64("waiting", e->parked.size());
    w.endObject();
  }
  w.endArray().endObject();
  return w.line();
}

std::string statusHtml(ControlLink& link, bool reasons) {
  const std::int64_t now = unixMillis();
  std::string body =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ondemand status</title>\n"
      "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>\n</head>\n<body>\n"
      "<h1>ondemand</h1>\n<p>controld at " +
      htmlEscape(link.name()) + ": " + linkStatusName(link.status()) + ". Worker " + std::to_string(ngx_pid) +
      ".</p>\n<table>\n<tr><th>service</th><th>state</th><th>for</th><th>in flight</th><th>waiting</th>"
      "<th>task</th><th>reason</th></tr>\n";
  for (const ServiceEntry* e : link.services().sortedByName()) {
    if (!e->known) continue;
    const long long forSeconds = e->state.sinceMs > 0 ? (now - e->state.sinceMs) / 1000 : 0;
    body += "<tr><td>" + htmlEscape(e->name) + "</td><td>" + stateNameFor(*e) + "</td><td>" + humanSeconds(forSeconds) +
            "</td><td>" + std::to_string(e->inFlight) + "</td><td>" + std::to_string(e->parked.size()) + "</td><td>" +
            (e->state.taskId > 0 ? std::to_string(e->state.taskId) : std::string()) + "</td><td>" +
            (reasons ? htmlEscape(e->state.reason) : std::string()) + "</td></tr>\n";
  }
  body += "</table>\n</body>\n</html>\n";
  return body;
}

ngx_int_t handleStatus(ngx_http_request_t* r) {
  if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
  const ngx_int_t rc = ngx_http_discard_request_body(r);
  if (rc != NGX_OK) return rc;
  Worker* worker = Worker::current();
  ControlLink* link = worker != nullptr ? worker->link(locConf(r)->endpoint) : nullptr;
  if (link == nullptr) return NGX_HTTP_SERVICE_UNAVAILABLE;
  if (!addHeader(r, "Cache-Control", "no-store")) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  if (prefersHtml(headerValue(r, "Accept"))) {
    return sendBody(r, NGX_HTTP_OK, "text/html; charset=utf-8", statusHtml(*link, locConf(r)->reasons));
  }
  return sendBody(r, NGX_HTTP_OK, "application/json", statusJson(*link, locConf(r)->reasons));
}

}  // namespace

ngx_int_t statusHandler(ngx_http_request_t* r) {
  try {
    return handleStatus(r);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: status: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: status: unexpected exception");
  }
  return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

}  // namespace ondemand::module
