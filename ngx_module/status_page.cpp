// ondemand_status: every service's state as controld pushed it to this
// worker, JSON for API clients, a page for browsers.

#include "ngx_module/answers.hpp"
#include "ngx_module/events.hpp"
#include "ngx_module/http_util.hpp"
#include "ngx_module/page_template.hpp"
#include "ngx_module/pages.hpp"
#include "ngx_module/request.hpp"
#include "ngx_module/worker.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::module {

namespace {

std::string statusJson(ControlLink& link, bool reasons) {
  JsonWriter w;
  w.startObject().i64("pid", static_cast<std::int64_t>(ngx_pid));
  w.key("controld").startObject();
  writeLinkState(w, link);
  w.endObject();
  w.key("services").startArray();
  for (const ServiceEntry* e : link.services().sortedByName()) {
    if (!e->known) continue;
    w.startObject().str("name", e->name);
    writeServiceState(w, *e, reasons);
    w.u64("in_flight", e->inFlight).u64("waiting", e->parked.size());
    w.endObject();
  }
  w.endArray().endObject();
  return w.line();
}

const char* toneOf(const ServiceEntry& e) {
  switch (e.state.state) {
    case ServiceState::Warm:
      return "ok";
    case ServiceState::Starting:
    case ServiceState::Stopping:
      return "wait";
    case ServiceState::Failed:
      return "bad";
    case ServiceState::Cold:
      break;
  }
  return "idle";
}

// A card per service (a grid that becomes one column on a phone), updated
// live from ondemand_events. The states are controld's, as it pushes them
// to every worker; only the two counts are this worker's, and say so.
std::string statusHtml(ControlLink& link, bool reasons, std::string_view eventsUrl) {
  const std::int64_t now = unixMillis();
  const char* linkStatus = linkStatusName(link.status());
  PageFrame frame;
  frame.title = "ondemand status";
  frame.wide = true;
  frame.tone = "";  // the heading and each card have their own
  frame.refreshSeconds = 10;
  std::string& m = frame.main;
  m.append("<div class=\"head\" id=\"od-head\" data-tone=\"");
  m.append(link.status() == LinkStatus::Up ? "ok" : "warn").append("\">\n");
  m.append("<p class=\"brand\">ondemand</p>\n<h1><span class=\"dot\" aria-hidden=\"true\"></span>Services</h1>\n");
  m.append("<p>As controld at <code>")
      .append(htmlEscape(link.name()))
      .append("</code> reports them: <span id=\"od-link\">");
  m.append(linkStatus).append("</span>");
  if (!link.daemon().empty()) m.append(" (").append(htmlEscape(link.daemon())).append(")");
  m.append(".</p>\n");
  if (link.unreachableSinceMs() > 0) {
    m.append("<p>Unreachable for ").append(humanSeconds((now - link.unreachableSinceMs()) / 1000));
    m.append(": the states below are the last ones seen.</p>\n");
  }
  m.append(eventsUrl.empty() ? "<p class=\"hint\">This page reloads every 10 s.</p>\n"
                             : "<p class=\"hint\">This page updates itself as states change.</p>\n");
  m.append("</div>\n<div class=\"services\">\n");
  bool any = false;
  for (const ServiceEntry* e : link.services().sortedByName()) {
    if (!e->known) continue;
    any = true;
    const protocol::StatePush& st = e->state;
    m.append("<section data-service=\"").append(htmlEscape(e->name)).append("\" data-tone=\"").append(toneOf(*e));
    m.append("\" data-since=\"").append(std::to_string(st.sinceMs)).append("\" aria-label=\"");
    m.append(htmlEscape(e->name)).append("\">\n<h2><span class=\"dot\" aria-hidden=\"true\"></span>");
    m.append(htmlEscape(e->name)).append("</h2>\n<dl>\n");
    m.append("<dt>State</dt><dd data-field=\"state\">").append(stateNameFor(*e)).append("</dd>\n");
    m.append("<dt>For</dt><dd data-field=\"for\">");
    m.append(st.sinceMs > 0 ? humanSeconds((now - st.sinceMs) / 1000) : std::string("\u2014")).append("</dd>\n");
    m.append("<dt>Last start took</dt><dd data-field=\"last\">");
    m.append(st.lastStartMs > 0 ? humanSeconds((st.lastStartMs + 500) / 1000) : std::string("\u2014"));
    m.append("</dd>\n<dt>Semaphore task</dt><dd data-field=\"task\">");
    m.append(st.taskId > 0 ? std::to_string(st.taskId) : std::string("\u2014")).append("</dd>\n");
    m.append("<dt>Here</dt><dd>").append(std::to_string(e->inFlight)).append(" in flight, ");
    m.append(std::to_string(e->parked.size())).append(" waiting in this nginx worker</dd>\n</dl>\n");
    const bool showReason = reasons && st.state == ServiceState::Failed && !st.reason.empty();
    m.append("<pre data-field=\"reason\"").append(showReason ? "" : " hidden").append(">");
    m.append(reasons ? htmlEscape(st.reason) : std::string()).append("</pre>\n</section>\n");
  }
  if (!any) m.append("<p>controld has not named any service yet.</p>\n");
  m.append("</div>\n");

  JsonWriter w;
  w.startObject().str("events", eventsUrl).i64("now", now).endObject();
  frame.data = w.text();
  frame.script = kStatusScript;
  return renderFrame(frame);
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
    auto* scf = static_cast<SrvConf*>(ngx_http_get_module_srv_conf(r, ngx_http_ondemand_module));
    return sendBody(r, NGX_HTTP_OK, "text/html; charset=utf-8",
                    statusHtml(*link, locConf(r)->reasons, view(scf->eventsUri)));
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
