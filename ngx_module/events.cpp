#include "ngx_module/events.hpp"

#include <exception>
#include <new>
#include <string_view>

#include "ngx_module/conf.hpp"
#include "ngx_module/http_util.hpp"
#include "ngx_module/worker.hpp"

namespace ondemand::module {

namespace {

// One open stream. Lives in its request's pool; a pool cleanup takes it off
// the list, so however the request ends (client gone, timeout, shutdown)
// nothing writes to it afterwards.
struct Viewer {
  ngx_http_request_t* request = nullptr;
  ControlLink* link = nullptr;
  const LocConf* conf = nullptr;
  std::string service;  // ?service=NAME: only this service's events; empty: all
  std::string queued;   // events not handed to the output filters yet
  std::string sending;  // what the filters hold (buf points into it)
  ngx_buf_t buf{};
  ngx_chain_t chain{};
  bool busy = false;  // the filters still hold `sending`
  Viewer* prev = nullptr;
  Viewer* next = nullptr;
  bool linked = false;
};

Viewer* gViewers = nullptr;
std::size_t gViewerCount = 0;
ngx_event_t gHeartbeat{};

void onHeartbeat(ngx_event_t* ev);

void addViewer(Viewer* v) {
  v->next = gViewers;
  if (gViewers != nullptr) gViewers->prev = v;
  gViewers = v;
  v->linked = true;
  ++gViewerCount;
  if (!gHeartbeat.timer_set) {
    gHeartbeat.handler = onHeartbeat;
    gHeartbeat.log = ngx_cycle->log;
    gHeartbeat.data = nullptr;
    // Not cancelable on purpose: a worker that is shutting down waits for
    // it and closes the streams nginx does not close by itself (HTTP/2).
    ngx_add_timer(&gHeartbeat, kHeartbeatMs);
  }
}

void removeViewer(Viewer* v) {
  if (!v->linked) return;
  if (v->prev != nullptr) v->prev->next = v->next;
  if (v->next != nullptr) v->next->prev = v->prev;
  if (gViewers == v) gViewers = v->next;
  v->prev = v->next = nullptr;
  v->linked = false;
  --gViewerCount;
  if (gViewerCount == 0 && gHeartbeat.timer_set) ngx_del_timer(&gHeartbeat);
}

void destroyViewer(void* data) {
  auto* v = static_cast<Viewer*>(data);
  removeViewer(v);
  v->~Viewer();
}

std::size_t viewersOf(const LocConf* conf) {
  std::size_t n = 0;
  for (const Viewer* v = gViewers; v != nullptr; v = v->next)
    n += v->conf == conf ? 1 : 0;
  return n;
}

// Ends the stream with an error (the client reconnects).
void fail(Viewer* v) {
  ngx_http_request_t* r = v->request;
  ngx_connection_t* c = r->connection;
  removeViewer(v);
  ngx_http_finalize_request(r, NGX_ERROR);
  ngx_http_run_posted_requests(c);
}

// Hands what is queued to the output filters, never more than one buffer
// at a time: the next one goes when the filters have sent the last.
// Returns false when the stream has ended.
bool pump(Viewer* v) {
  ngx_http_request_t* r = v->request;
  ngx_connection_t* c = r->connection;
  for (;;) {
    if (v->busy) {
      if (ngx_http_output_filter(r, nullptr) == NGX_ERROR) return false;
      if (v->buf.pos != v->buf.last || c->buffered || r->buffered) {
        // Not all sent: the write event goes on, bounded by send_timeout.
        auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_get_module_loc_conf(r, ngx_http_core_module));
        if (!c->write->delayed && !c->write->timer_set) ngx_add_timer(c->write, clcf->send_timeout);
        if (ngx_handle_write_event(c->write, clcf->send_lowat) != NGX_OK) return false;
        return true;
      }
      if (c->write->timer_set) ngx_del_timer(c->write);
      v->busy = false;
      v->sending.clear();
    }
    if (v->queued.empty()) return true;
    v->sending.swap(v->queued);
    v->buf = ngx_buf_t{};
    v->buf.start = v->buf.pos = reinterpret_cast<u_char*>(v->sending.data());
    v->buf.end = v->buf.last = v->buf.pos + v->sending.size();
    v->buf.memory = 1;
    v->buf.flush = 1;
    v->chain.buf = &v->buf;
    v->chain.next = nullptr;
    v->busy = true;
    if (ngx_http_output_filter(r, &v->chain) == NGX_ERROR) return false;
  }
}

void send(Viewer* v, std::string_view text) {
  if (v->queued.size() + v->sending.size() + text.size() > kMaxViewerBacklog) {
    ngx_log_error(NGX_LOG_INFO, v->request->connection->log, 0,
                  "ondemand: events: dropping a viewer that does not read (%uz bytes not sent)",
                  v->queued.size() + v->sending.size());
    fail(v);
    return;
  }
  v->queued.append(text);
  if (!pump(v)) fail(v);
}

// The request's module context is the phase handler's (request.cpp); a
// viewer is found on the list (at most a few hundred per worker).
Viewer* viewerOf(ngx_http_request_t* r) {
  for (Viewer* v = gViewers; v != nullptr; v = v->next) {
    if (v->request == r) return v;
  }
  return nullptr;
}

void onViewerWrite(ngx_http_request_t* r) {
  Viewer* v = viewerOf(r);
  if (v == nullptr) return;
  ngx_event_t* wev = r->connection->write;
  if (wev->timedout) {
    wev->timedout = 0;
    r->connection->timedout = 1;
    removeViewer(v);
    ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
    return;
  }
  if (!pump(v)) {
    removeViewer(v);
    ngx_http_finalize_request(r, NGX_ERROR);
  }
}

std::string event(std::string_view name, std::string_view json) {
  std::string out;
  out.reserve(json.size() + name.size() + 16);
  out.append("event: ").append(name).append("\ndata: ").append(json).append("\n\n");
  return out;
}

std::string stateEvent(const ServiceEntry& entry, bool reasons) {
  JsonWriter w;
  w.startObject().str("service", entry.name);
  writeServiceState(w, entry, reasons);
  w.i64("now", unixMillis());
  return event("state", w.endObject().text());
}

std::string linkEvent(const ControlLink& link) {
  JsonWriter w;
  w.startObject();
  writeLinkState(w, link);
  w.i64("now", unixMillis());
  return event("controld", w.endObject().text());
}

// Every matching viewer gets `make(viewer)`. The list may change while we
// write (a write can end a stream), so the next one is taken first.
template <typename Make>
void broadcast(const ControlLink& link, std::string_view service, Make make) {
  for (Viewer* v = gViewers; v != nullptr;) {
    Viewer* next = v->next;
    if (v->link == &link && (service.empty() || v->service.empty() || v->service == service)) send(v, make(v));
    v = next;
  }
}

void onHeartbeat(ngx_event_t*) {
  try {
    if (ngx_exiting || ngx_quit || ngx_terminate) {
      eventsCloseAll();
      return;
    }
    for (Viewer* v = gViewers; v != nullptr;) {
      Viewer* next = v->next;
      send(v, ":\n\n");
      v = next;
    }
    if (gViewerCount > 0 && !gHeartbeat.timer_set) ngx_add_timer(&gHeartbeat, kHeartbeatMs);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "ondemand: events: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "ondemand: events: unexpected exception");
  }
}

ngx_int_t tooManyViewers(ngx_http_request_t* r, const LocConf* lcf) {
  const std::string message = "This nginx worker already streams events to " + std::to_string(lcf->maxViewers) +
                              " viewers (ondemand_events max=" + std::to_string(lcf->maxViewers) + "); retry in 5 s.";
  JsonWriter w;
  w.startObject().i64("status", 503).str("error", "too_many_viewers").str("message", message);
  w.u64("max_viewers", lcf->maxViewers).i64("retry_after", 5).endObject();
  if (!addHeader(r, "Retry-After", "5") || !addHeader(r, "Cache-Control", "no-store")) return NGX_ERROR;
  return sendBody(r, NGX_HTTP_SERVICE_UNAVAILABLE, "application/json", w.line());
}

std::string serviceArg(ngx_http_request_t* r) {
  ngx_str_t value{};
  if (ngx_http_arg(r, reinterpret_cast<u_char*>(const_cast<char*>("service")), 7, &value) != NGX_OK) return {};
  std::string raw(reinterpret_cast<const char*>(value.data), value.len);
  std::string out(raw.size(), '\0');
  auto* dst = reinterpret_cast<u_char*>(out.data());
  auto* src = reinterpret_cast<u_char*>(raw.data());
  ngx_unescape_uri(&dst, &src, raw.size(), 0);
  out.resize(static_cast<std::size_t>(dst - reinterpret_cast<u_char*>(out.data())));
  return out;
}

ngx_int_t handleEvents(ngx_http_request_t* r) {
  if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
  const ngx_int_t rc = ngx_http_discard_request_body(r);
  if (rc != NGX_OK) return rc;
  LocConf* lcf = locConf(r);
  Worker* worker = Worker::current();
  ControlLink* link = worker != nullptr ? worker->link(lcf->endpoint) : nullptr;
  if (link == nullptr) return NGX_HTTP_SERVICE_UNAVAILABLE;
  if (viewersOf(lcf) >= lcf->maxViewers) return tooManyViewers(r, lcf);

  r->headers_out.status = NGX_HTTP_OK;
  r->headers_out.content_length_n = -1;
  static constexpr std::string_view kType = "text/event-stream; charset=utf-8";
  r->headers_out.content_type = poolString(r->pool, kType);
  r->headers_out.content_type_len = kType.size();
  r->headers_out.content_type_lowcase = nullptr;
  if (r->headers_out.content_type.data == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  // X-Accel-Buffering: an nginx in front does not hold the events back.
  if (!addHeader(r, "Cache-Control", "no-store") || !addHeader(r, "X-Accel-Buffering", "no")) {
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  r->allow_ranges = 0;
  if (r->method == NGX_HTTP_HEAD) {
    r->header_only = 1;
    return ngx_http_send_header(r);
  }

  ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(Viewer));
  if (cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  auto* v = new (cln->data) Viewer();
  cln->handler = destroyViewer;
  v->request = r;
  v->link = link;
  v->conf = lcf;
  v->service = serviceArg(r);

  const ngx_int_t sent = ngx_http_send_header(r);
  if (sent == NGX_ERROR || sent > NGX_OK) return sent;

  // The request stays open until the client goes (ngx_http_test_reading
  // sees it), the stream fails, or the worker shuts down. A plain HTTP/1
  // connection is marked idle so that a graceful shutdown (reload) closes
  // it at once; HTTP/2 streams end with the next heartbeat.
  r->main->count++;
  r->read_event_handler = ngx_http_test_reading;
  r->write_event_handler = onViewerWrite;
#if (NGX_HTTP_V2)
  if (r->stream == nullptr) r->connection->idle = 1;
#else
  r->connection->idle = 1;
#endif
  addViewer(v);

  // What there is now, then every change.
  v->queued = "retry: " + std::to_string(kEventRetryMs) + "\n\n" + linkEvent(*link);
  for (const ServiceEntry* e : link->services().sortedByName()) {
    if (!e->known || (!v->service.empty() && e->name != v->service)) continue;
    v->queued += stateEvent(*e, lcf->reasons != 0);
  }
  if (!pump(v)) {
    removeViewer(v);
    return NGX_ERROR;
  }
  return NGX_DONE;
}

}  // namespace

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

void writeServiceState(JsonWriter& w, const ServiceEntry& e, bool reasons) {
  const protocol::StatePush& st = e.state;
  w.str("state", stateNameFor(e)).u64("epoch", st.epoch).i64("since", st.sinceMs);
  w.i64("starting_since", st.startingSinceMs).str("cause", st.cause);
  w.str("reason", reasons ? std::string_view(st.reason) : std::string_view());
  w.i64("task_id", st.taskId).i64("retry_at", st.retryAtMs).i64("last_start_ms", st.lastStartMs);
  if (!st.waiting.empty()) w.str("waiting_for", st.waiting);
  if (st.etcdUnreachableSinceMs > 0) w.i64("etcd_unreachable_since", st.etcdUnreachableSinceMs);
}

void writeLinkState(JsonWriter& w, const ControlLink& link) {
  w.str("socket", link.name()).str("status", linkStatusName(link.status())).str("daemon", link.daemon());
  if (link.unreachableSinceMs() > 0) w.i64("unreachable_since", link.unreachableSinceMs());
}

void eventsStateChanged(ControlLink& link, const ServiceEntry& entry) {
  if (gViewers == nullptr || !entry.known) return;
  std::string withReason, withoutReason;  // rendered once for all viewers
  broadcast(link, entry.name, [&](const Viewer* v) -> const std::string& {
    std::string& text = v->conf->reasons ? withReason : withoutReason;
    if (text.empty()) text = stateEvent(entry, v->conf->reasons != 0);
    return text;
  });
}

void eventsRemoved(ControlLink& link, const ServiceEntry& entry) {
  if (gViewers == nullptr) return;
  JsonWriter w;
  w.startObject().str("service", entry.name).i64("now", unixMillis()).endObject();
  const std::string text = event("removed", w.text());
  broadcast(link, entry.name, [&](const Viewer*) -> const std::string& { return text; });
}

void eventsLinkChanged(ControlLink& link) {
  if (gViewers == nullptr) return;
  const std::string text = linkEvent(link);
  broadcast(link, {}, [&](const Viewer*) -> const std::string& { return text; });
}

// The end of the stream: the last chunk, and the connection closes.
void eventsCloseAll() {
  while (Viewer* v = gViewers) {
    ngx_http_request_t* r = v->request;
    ngx_connection_t* c = r->connection;
    removeViewer(v);
    r->keepalive = 0;
    ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
    ngx_http_run_posted_requests(c);
  }
  if (gHeartbeat.timer_set) ngx_del_timer(&gHeartbeat);
}

std::size_t eventsViewerCount() {
  return gViewerCount;
}

ngx_int_t eventsHandler(ngx_http_request_t* r) {
  try {
    return handleEvents(r);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: events: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: events: unexpected exception");
  }
  return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

}  // namespace ondemand::module
