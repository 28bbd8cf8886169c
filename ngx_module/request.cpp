#include "ngx_module/request.hpp"

#include <algorithm>
#include <cstring>
#include <exception>
#include <new>
#include <type_traits>

#include "ngx_module/answers.hpp"
#include "ngx_module/http_util.hpp"
#include "ngx_module/request_ctx.hpp"
#include "ngx_module/routing.hpp"
#include "ngx_module/worker.hpp"
#include "shared/utf8.hpp"

namespace ondemand::module {

namespace {

void requestCleanup(void* data);
void onWaitTimeout(ngx_event_t* ev);

// A request counts as in flight for a service once, however many
// locations or subrequests of it go there, until the request ends.
void countInFlight(ngx_http_request_t* r, ControlLink& link, ServiceEntry& entry) {
  RequestCtx* main = mainCtx(r->main);
  if (main == nullptr) return;
  for (int i = 0; i < main->countedN; ++i) {
    if (main->counted[i] == &entry) return;
  }
  if (main->countedN == kMaxCountedServices) return;
  main->countedLink[main->countedN] = &link;
  main->counted[main->countedN] = &entry;
  ++main->countedN;
  link.requestStarted(entry);
}

// --- parking ------------------------------------------------------------------

ngx_int_t park(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) {
  if (!ctx->cleanupAdded) {
    // Runs when the request is terminated (client gone) as well as when
    // it is freed, so a request never stays on a parked list.
    ngx_http_cleanup_t* cln = ngx_http_cleanup_add(r, 0);
    if (cln == nullptr) return NGX_ERROR;
    cln->handler = requestCleanup;
    cln->data = ctx;
    ctx->cleanupAdded = true;
  }
  if (!ctx->waitStarted) {
    ctx->waitStarted = true;
    ctx->parkedAt = ngx_current_msec;
    ctx->waitLink = ctx->link;
    ctx->waitEntry = ctx->service;
    ctx->waitLink->waitBegan(*ctx->waitEntry);
    ngx_event_t* ev = &ctx->waitTimer;
    ev->handler = onWaitTimeout;
    ev->data = ctx;
    ev->log = r->connection->log;
    ngx_add_timer(ev, lcf->wait);
  }
  ctx->service->parked.pushBack(&ctx->node);
  ctx->phase = Phase::Parked;
  r->write_event_handler = ngx_http_core_run_phases;
  // Notice a client that goes away while it waits.
  if (r == r->main) r->read_event_handler = ngx_http_test_reading;
  return NGX_OK;
}

// Leaves the parked list and the wait for good (passing or answered).
void stopWaiting(RequestCtx* ctx, bool touchRequest) {
  ParkedList::remove(&ctx->node);
  stopTimer(&ctx->waitTimer);
  unpostEvent(&ctx->waitTimer);
  if (ctx->waitStarted) {
    const ngx_msec_t waited = ngx_current_msec - ctx->parkedAt;
    ctx->waitedMs += waited;
    ctx->waitStarted = false;
    // (not when the worker is exiting: its links are gone)
    if (Worker::current() != nullptr) ctx->waitLink->waitEnded(*ctx->waitEntry, waited);
  }
  if (!touchRequest) return;
  ngx_http_request_t* r = ctx->request;
  if (r == r->main && r->read_event_handler == ngx_http_test_reading) {
    r->read_event_handler = ngx_http_block_reading;
  }
}

void requestCleanup(void* data) {
  stopWaiting(static_cast<RequestCtx*>(data), false);
}

}  // namespace

void mainPoolCleanup(void* data) {
  auto* ctx = static_cast<RequestCtx*>(data);
  stopWaiting(ctx, false);
  if (Worker::current() != nullptr) {  // (not when the worker is exiting)
    for (int i = 0; i < ctx->countedN; ++i)
      ctx->countedLink[i]->requestFinished(*ctx->counted[i]);
  }
  ctx->countedN = 0;
  releaseMainCtx(ctx);
}

namespace {

void onWaitTimeout(ngx_event_t* ev) {
  auto* ctx = static_cast<RequestCtx*>(ev->data);
  try {
    ParkedList::remove(&ctx->node);
    ctx->phase = Phase::Answer;
    ctx->answer = AnswerKind::Timeout;
    resumeRequest(ctx);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, ev->log, 0, "ondemand: ending a wait: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, ev->log, 0, "ondemand: ending a wait: unexpected exception");
  }
}

// --- answers ------------------------------------------------------------------

ngx_int_t sendFacts(ngx_http_request_t* r, const AnswerFacts& facts, LocConf* lcf);

ngx_int_t sendAnswer(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) {
  if (ctx->routeAnswer != RouteAnswer::None || (ctx->answer == AnswerKind::UnknownService && ctx->fromModel)) {
    return sendRouteAnswer(r, ctx, lcf);
  }
  // No entry: a name from a variable that controld does not have.
  static const ServiceEntry kUnknown{""};
  const ServiceEntry& entry = ctx->service != nullptr ? *ctx->service : kUnknown;
  const std::int64_t now = unixMillis();
  const protocol::StatePush& st = entry.state;

  AnswerFacts facts;
  facts.kind = ctx->answer;
  facts.service = ctx->service != nullptr ? std::string_view(entry.name) : view(ctx->target);
  facts.state = stateNameFor(entry);
  // While controld cannot be reached nothing is starting, whatever the
  // last state seen was: the answer says that (a failed start or an
  // unknown name stays what it was).
  const ControlLink* link = ctx->link;
  const bool unreachable = ctx->answer == AnswerKind::DaemonDown ||
                           (link != nullptr && link->status() == LinkStatus::Down && link->unreachableSinceMs() > 0 &&
                            ctx->answer != AnswerKind::StartFailed && ctx->answer != AnswerKind::UnknownService);
  if (unreachable) {
    facts.state = "unreachable";
    if (link != nullptr && link->unreachableSinceMs() > 0) {
      facts.unreachableSinceMs = link->unreachableSinceMs();
      facts.unreachableForMs = std::max<std::int64_t>(0, now - link->unreachableSinceMs());
    }
  }
  if (entry.known && !unreachable) {
    if (st.sinceMs > 0) facts.inStateMs = now - st.sinceMs;
    if (st.state == ServiceState::Starting && st.startingSinceMs > 0) facts.startingForMs = now - st.startingSinceMs;
    facts.taskId = st.taskId;
    facts.epoch = st.epoch;
    facts.lastStartMs = st.lastStartMs;
    if (st.state == ServiceState::Starting) facts.waiting = st.waiting;
    if (st.etcdUnreachableSinceMs > 0) {
      facts.etcdUnreachableSinceMs = st.etcdUnreachableSinceMs;
      facts.etcdUnreachableForMs = std::max<std::int64_t>(0, now - st.etcdUnreachableSinceMs);
    }
    if (st.state == ServiceState::Failed) {
      // ondemand_reasons off: the reason (Ansible output, hosts, paths)
      // stays with controld's CLI; the answer still says the start failed.
      if (lcf->reasons) facts.reason = st.reason;
      if (st.retryAtMs > now) facts.retryInMs = st.retryAtMs - now;
    }
  }
  facts.waitedMs = static_cast<std::int64_t>(ctx->waitedMs);
  facts.waitLimitMs = static_cast<std::int64_t>(lcf->wait);
  facts.maxWaiting = lcf->maxWaiting;
  return sendFacts(r, facts, lcf);
}

ngx_int_t sendFacts(ngx_http_request_t* r, const AnswerFacts& given, LocConf* lcf) {
  const bool html = prefersHtml(headerValue(r, "Accept"));
  AnswerFacts facts = given;  // the pages follow the server's ondemand_events
  facts.eventsUrl = view(static_cast<SrvConf*>(ngx_http_get_module_srv_conf(r, ngx_http_ondemand_module))->eventsUri);
  const Answer answer = renderAnswer(facts, html, lcf->page);

  if (r == r->main && ngx_http_discard_request_body(r) != NGX_OK) r->keepalive = 0;
  if (!addHeader(r, "X-Ondemand-State", facts.state) || !addHeader(r, "Cache-Control", "no-store")) {
    return NGX_ERROR;
  }
  if (answer.retryAfter > 0 && !addHeader(r, "Retry-After", std::to_string(answer.retryAfter))) return NGX_ERROR;
  return sendBody(r, static_cast<ngx_uint_t>(answer.status), answer.contentType, answer.body);
}

// Finalizing may free the request and its pool, ctx included: nothing may
// touch ctx after this returns (the caller returns NGX_DONE at once).
ngx_int_t answerAndFinalize(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) {
  stopWaiting(ctx, true);
  ctx->phase = Phase::Answered;
  ctx->inHandler = false;
  ngx_http_finalize_request(r, sendAnswer(r, ctx, lcf));
  return NGX_DONE;
}

void logUnknownOnce(ngx_http_request_t* r, ControlLink& link, ServiceEntry& entry) {
  if (entry.unknownLogged) return;
  entry.unknownLogged = true;
  ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                "ondemand: controld at \"%s\" has no service \"%s\" (ondemand_service); its requests are "
                "answered 502 (logged once)",
                link.name().c_str(), entry.name.c_str());
}

// --- the phase handler ----------------------------------------------------------

Situation situationOf(ngx_http_request_t* r, const RequestCtx* ctx, const LocConf* lcf, const ServiceEntry& entry,
                      const ControlLink& link) {
  Situation s;
  s.link = link.status();
  s.policy = static_cast<DaemonDownPolicy>(lcf->daemonDown);
  s.everSynced = link.everSynced();
  s.outage = link.unreachableSinceMs() > 0;
  s.known = entry.known;
  s.state = entry.state.state;
  s.retryAllowed = s.state == ServiceState::Failed && unixMillis() >= entry.state.retryAtMs;
  s.mode = static_cast<Mode>(lcf->mode);
  s.alreadyWaiting = ctx->waitStarted;
  s.waiting = entry.parked.size();
  s.maxWaiting = lcf->maxWaiting;
  s.passive = ctx->passive;
  if (s.mode == Mode::Auto && !(s.known && s.state == ServiceState::Warm)) {
    s.browserNavigation = isBrowserNavigation(view(r->method_name), headerValue(r, "Accept"),
                                              headerValue(r, "Sec-Fetch-Mode"), headerValue(r, "Upgrade"));
  }
  return s;
}

ngx_int_t decideAndAct(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) {
  ControlLink& link = *ctx->link;
  ServiceEntry& entry = *ctx->service;
  for (;;) {
    const Decision d = decide(situationOf(r, ctx, lcf, entry, link));
    if (ctx->foundState == nullptr) ctx->foundState = stateNameFor(entry);
    if (d.wake) link.wake(entry, wakeReason(r));
    switch (d.action) {
      case Action::Pass:
        stopWaiting(ctx, true);
        ctx->phase = Phase::Passed;
        // A passive request is not activity: it keeps nothing warm.
        if (!ctx->passive) countInFlight(r, link, entry);
        return NGX_DECLINED;
      case Action::Answer:
        ctx->phase = Phase::Answer;
        ctx->answer = d.answer;
        if (d.answer == AnswerKind::UnknownService) {
          if (ctx->dynamicTarget) {
            logUnknownName(r, link, view(ctx->target), ctx->fromModel);
          } else {
            logUnknownOnce(r, link, entry);
          }
        }
        return answerAndFinalize(r, ctx, lcf);
      case Action::Park:
        if (park(r, ctx, lcf) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        // Nothing on this stack writes to controld or reads from it (lines
        // are queued for a posted write event), so nothing can have
        // released the request yet; if something did, act on it here
        // rather than leave the request waiting for an event that came and
        // went.
        if (ctx->phase == Phase::Parked) return NGX_AGAIN;
        if (ctx->phase == Phase::Answer) return answerAndFinalize(r, ctx, lcf);
        continue;
    }
  }
}

ngx_int_t handle(ngx_http_request_t* r, LocConf* lcf) {
  Worker* worker = Worker::current();
  ControlLink* link = worker != nullptr ? worker->link(lcf->endpoint) : nullptr;
  if (link == nullptr) {
    // The worker could not set up its link to controld (logged when it
    // started): controld is unreachable for good, and ondemand_daemon_down
    // decides. last_known knows nothing, so it answers as closed does.
    const Decision d = decideWithoutLink(static_cast<DaemonDownPolicy>(lcf->daemonDown));
    if (d.action == Action::Pass) return NGX_DECLINED;
    AnswerFacts facts;
    facts.kind = d.answer;
    facts.service = view(lcf->service);
    facts.state = "unreachable";
    facts.waitLimitMs = static_cast<std::int64_t>(lcf->wait);
    facts.maxWaiting = lcf->maxWaiting;
    ngx_http_finalize_request(r, sendFacts(r, facts, lcf));
    return NGX_DONE;
  }

  auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_ondemand_module));
  if (ctx != nullptr) {
    switch (ctx->phase) {
      case Phase::Parked:
        return NGX_AGAIN;  // a spurious wake-up (e.g. the client socket became writable)
      case Phase::Passed:
        return NGX_DECLINED;
      case Phase::Answer:
        return answerAndFinalize(r, ctx, lcf);
      case Phase::Answered:
        return NGX_DONE;
      case Phase::Body:
        if (ctx->bodyState == BodyState::Reading) return NGX_DONE;  // the body handler runs the phases again
        break;
      case Phase::Fresh:
      case Phase::Recheck:
        break;
    }
  } else {
    ctx = attachCtx(r);
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (lcf->passive != nullptr) {
      // Like proxy_no_cache: passive when a value is neither empty nor "0".
      const ngx_int_t rc = ngx_http_test_predicates(r, lcf->passive);
      if (rc == NGX_ERROR) return NGX_HTTP_INTERNAL_SERVER_ERROR;
      ctx->passive = rc == NGX_DECLINED;
    }
  }
  ctx->link = link;
  if (ctx->phase == Phase::Fresh || ctx->phase == Phase::Body) {
    // Once per pass through a location; a re-check keeps the choice.
    const ngx_int_t rc = chooseTarget(r, ctx, lcf);
    if (rc == NGX_DONE) return NGX_DONE;  // reading the body: its handler runs the phases again
    if (rc == NGX_DECLINED) {
      ctx->phase = Phase::Answer;  // (ctx->routeAnswer says which)
      return answerAndFinalize(r, ctx, lcf);
    }
    if (rc != NGX_OK) return rc;
    if (ctx->target.len == 0) {  // an empty value: off for this request
      ctx->phase = Phase::Passed;
      return NGX_DECLINED;
    }
    ctx->phase = Phase::Fresh;
  }
  ctx->service = resolveTarget(r, ctx, *link);
  if (ctx->service == nullptr) {
    ctx->phase = Phase::Answer;
    ctx->answer = AnswerKind::UnknownService;
    logUnknownName(r, *link, view(ctx->target), ctx->fromModel);
    return answerAndFinalize(r, ctx, lcf);
  }

  ctx->inHandler = true;
  const ngx_int_t rc = decideAndAct(r, ctx, lcf);
  if (rc != NGX_DONE) ctx->inHandler = false;  // NGX_DONE: answered, the request may be gone
  return rc;
}

}  // namespace

// --- entry points ---------------------------------------------------------------

ngx_int_t precontentHandler(ngx_http_request_t* r) {
  LocConf* lcf = locConf(r);
  // The status page, the events and the model list never wait for a service
  // they may inherit.
  if ((lcf->service.len == 0 && lcf->serviceValue == nullptr) || lcf->status || lcf->events || lcf->models) {
    return NGX_DECLINED;
  }
  try {
    return handle(r, lcf);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: unexpected exception");
  }
  return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

void resumeRequest(RequestCtx* ctx) {
  // On the handler's own stack the handler acts on ctx->phase itself.
  if (ctx->inHandler) return;
  ngx_http_request_t* r = ctx->request;
  ngx_connection_t* c = r->connection;
  ngx_http_set_log_request(c->log, r);
  if (r == r->main) {
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler(r);
  } else if (ngx_http_post_request(r, nullptr) != NGX_OK) {
    ngx_http_finalize_request(r, NGX_ERROR);
  }
  ngx_http_run_posted_requests(c);
}

std::string wakeReason(ngx_http_request_t* r) {
  std::string reason(view(r->method_name));
  reason += ' ';
  // The decoded path: "%ff" is a raw byte by now, made valid UTF-8 here.
  reason += validUtf8(view(r->uri).substr(0, 200));
  return reason;
}

RequestCtx* findRequestCtx(ngx_http_request_t* r) {
  auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_ondemand_module));
  if (ctx != nullptr) return ctx;
  if (r == r->main) return existingMainCtx(r);
  return findRequestCtx(r->main);
}

}  // namespace ondemand::module
