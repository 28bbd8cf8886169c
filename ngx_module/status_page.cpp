// ondemand_status: every service's state as controld pushed it to this
// worker, JSON for API clients, a page for browsers. The page also asks
// controld for its own status over the worker's connection (without
// blocking: the request waits at most kAskMs), for what only controld
// knows: requests in flight and waiting in every worker, idle stops,
// machines.

#include <algorithm>
#include <cstdio>

#include "ngx_module/answers.hpp"
#include "ngx_module/events.hpp"
#include "ngx_module/http_util.hpp"
#include "ngx_module/page_template.hpp"
#include "ngx_module/pages.hpp"
#include "ngx_module/request.hpp"
#include "ngx_module/worker.hpp"
#include "shared/json_writer.hpp"
#include "shared/protocol.hpp"

namespace ondemand::module {

namespace {

constexpr ngx_msec_t kAskMs = 2000;

using protocol::StatusReply;

std::string amountText(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// controld's entry of a service in its status reply, or nullptr.
const StatusReply::Service* controldService(const StatusReply* status, std::string_view name) {
  if (status == nullptr) return nullptr;
  for (const auto& s : status->services)
    if (s.name == name) return &s;
  return nullptr;
}

// The machines of controld's status, with what their services hold of each
// resource (shared machines; none without them).
void machineCards(std::string& m, const StatusReply* status) {
  if (status == nullptr || status->machines.empty()) return;
  m.append("<h2 class=\"section\">Machines</h2>\n<div class=\"services\">\n");
  for (const auto& machine : status->machines) {
    m.append("<section data-tone=\"idle\" aria-label=\"").append(htmlEscape(machine.name)).append("\">\n<h2>");
    m.append(htmlEscape(machine.name)).append("</h2>\n<dl>\n");
    for (const auto& r : machine.resources) {
      m.append("<dt>").append(htmlEscape(r.name)).append("</dt><dd>");
      m.append(amountText(r.used)).append(" of ").append(amountText(r.total));
      m.append(" in use</dd>\n");
    }
    m.append("</dl>\n</section>\n");
  }
  m.append("</div>\n");
}

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
std::string statusHtml(ControlLink& link, bool reasons, std::string_view eventsUrl, const StatusReply* status) {
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
  if (status == nullptr && link.status() == LinkStatus::Up) {
    m.append("<p>controld did not send its status in time: the counts are this nginx worker's.</p>\n");
  }
  // In a cluster every push carries it (the same for all services).
  std::int64_t etcdDownSinceMs = 0;
  for (const ServiceEntry* e : link.services().sortedByName())
    if (e->known && e->state.etcdUnreachableSinceMs > 0) etcdDownSinceMs = e->state.etcdUnreachableSinceMs;
  if (etcdDownSinceMs > 0 && link.status() == LinkStatus::Up) {
    m.append("<p id=\"od-etcd\">controld cannot reach etcd, for ")
        .append(humanSeconds(std::max<std::int64_t>(0, now - etcdDownSinceMs) / 1000))
        .append(": warm services are served from the last state; nothing starts or stops until etcd is back.</p>\n");
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
    if (const StatusReply::Service* cs = controldService(status, e->name)) {
      // controld's totals, over every worker of every nginx.
      m.append("<dt>Requests</dt><dd>").append(std::to_string(cs->inFlight));
      m.append(" in flight, ").append(std::to_string(cs->requestsWaiting)).append(" waiting</dd>\n");
      const std::int64_t idleStop = cs->idleStopAtMs.value_or(0);
      if (idleStop > 0 && st.state == ServiceState::Warm) {
        m.append("<dt>Idle stop in</dt><dd>").append(humanSeconds(std::max<std::int64_t>(0, idleStop - now) / 1000));
        m.append("</dd>\n");
      }
      if (!cs->machine.empty()) m.append("<dt>Machine</dt><dd>").append(htmlEscape(cs->machine)).append("</dd>\n");
    } else {
      m.append("<dt>Requests</dt><dd>").append(std::to_string(e->inFlight)).append(" in flight, ");
      m.append(std::to_string(e->parked.size())).append(" waiting in this nginx worker</dd>\n");
    }
    m.append("</dl>\n");
    const bool showReason = reasons && st.state == ServiceState::Failed && !st.reason.empty();
    m.append("<pre data-field=\"reason\"").append(showReason ? "" : " hidden").append(">");
    m.append(reasons ? htmlEscape(st.reason) : std::string()).append("</pre>\n</section>\n");
  }
  if (!any) m.append("<p>controld has not named any service yet.</p>\n");
  m.append("</div>\n");
  machineCards(m, status);

  JsonWriter w;
  w.startObject().str("events", eventsUrl).i64("now", now).endObject();
  frame.data = w.text();
  frame.script = kStatusScript;
  return renderFrame(frame);
}

ngx_int_t sendStatusPage(ngx_http_request_t* r, ControlLink& link, const std::string* reply) {
  protocol::Parsed<StatusReply> status;
  if (reply != nullptr) {
    status = protocol::decodeStatusReply(*reply);
    if (!status.value) {
      ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "ondemand: status: controld's status reply: %s",
                    status.error.c_str());
    }
  }
  auto* scf = static_cast<SrvConf*>(ngx_http_get_module_srv_conf(r, ngx_http_ondemand_module));
  return sendBody(r, NGX_HTTP_OK, "text/html; charset=utf-8",
                  statusHtml(link, locConf(r)->reasons, view(scf->eventsUri), status.value ? &*status.value : nullptr));
}

// A status page waiting for controld's status. In the request's pool; its
// cleanup forgets the question however the request ends.
struct StatusAsk {
  ngx_http_request_t* request;
  ControlLink* link;
  std::int64_t id;
  ngx_event_t timer;
  bool answered;
};

void answerAsk(StatusAsk* ask, const std::string* reply) {
  if (ask->answered) return;
  ask->answered = true;
  if (ask->timer.timer_set) ngx_del_timer(&ask->timer);
  ngx_http_request_t* r = ask->request;
  ngx_connection_t* c = r->connection;
  ngx_int_t rc = NGX_ERROR;
  try {
    rc = sendStatusPage(r, *ask->link, reply);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, c->log, 0, "ondemand: status: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, c->log, 0, "ondemand: status: unexpected exception");
  }
  ngx_http_finalize_request(r, rc);
  ngx_http_run_posted_requests(c);
}

void onStatusReply(void* data, const std::string* reply) {
  answerAsk(static_cast<StatusAsk*>(data), reply);
}

void onAskTimeout(ngx_event_t* ev) {
  auto* ask = static_cast<StatusAsk*>(ev->data);
  ask->link->cancelStatus(ask->id);
  answerAsk(ask, nullptr);  // the page without controld's totals
}

void askCleanup(void* data) {
  auto* ask = static_cast<StatusAsk*>(data);
  if (!ask->answered) ask->link->cancelStatus(ask->id);
  ask->answered = true;
  if (ask->timer.timer_set) ngx_del_timer(&ask->timer);
}

ngx_int_t handleStatus(ngx_http_request_t* r) {
  if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
  const ngx_int_t rc = ngx_http_discard_request_body(r);
  if (rc != NGX_OK) return rc;
  Worker* worker = Worker::current();
  ControlLink* link = worker != nullptr ? worker->link(locConf(r)->endpoint) : nullptr;
  if (link == nullptr) return NGX_HTTP_SERVICE_UNAVAILABLE;
  if (!addHeader(r, "Cache-Control", "no-store")) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  if (!prefersHtml(headerValue(r, "Accept"))) {
    // For scripts: this worker's table as it is, no round trip
    // (`controld status --json` has controld's own).
    return sendBody(r, NGX_HTTP_OK, "application/json", statusJson(*link, locConf(r)->reasons));
  }
  if (r->method == NGX_HTTP_HEAD || link->status() != LinkStatus::Up) return sendStatusPage(r, *link, nullptr);

  ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(StatusAsk));
  if (cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  auto* ask = static_cast<StatusAsk*>(cln->data);
  *ask = StatusAsk{};
  ask->request = r;
  ask->link = link;
  ask->id = link->askStatus(onStatusReply, ask);
  if (ask->id == 0) {
    ask->answered = true;
    return sendStatusPage(r, *link, nullptr);
  }
  cln->handler = askCleanup;
  ask->timer.handler = onAskTimeout;
  ask->timer.data = ask;
  ask->timer.log = r->connection->log;
  ask->timer.cancelable = 1;
  ngx_add_timer(&ask->timer, kAskMs);
  r->main->count++;
  r->read_event_handler = ngx_http_test_reading;
  return NGX_DONE;
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
