#include "ngx_module/worker.hpp"

#include <exception>

#include "ngx_module/events.hpp"
#include "ngx_module/request.hpp"

namespace ondemand::module {

Worker* Worker::current_ = nullptr;

void Worker::start(ngx_cycle_t* cycle, MainConf* conf) {
  if (current_ != nullptr || conf == nullptr) return;
  auto worker = std::make_unique<Worker>();
  worker->releaseEvent_ = ngx_event_t{};
  worker->releaseEvent_.handler = onReleaseEvent;
  worker->releaseEvent_.data = worker.get();
  worker->releaseEvent_.log = cycle->log;
  const auto* endpoints = static_cast<const Endpoint*>(conf->endpoints.elts);
  worker->links_.resize(conf->endpoints.nelts);
  for (ngx_uint_t i = 0; i < conf->endpoints.nelts; ++i) {
    if (!endpoints[i].used) continue;
    worker->links_[i] = std::make_unique<ControlLink>(*worker, view(endpoints[i].name), endpoints[i].address,
                                                      endpoints[i].addressLength, cycle->log);
  }
  current_ = worker.release();
  for (auto& link : current_->links_) {
    if (link) link->start();
  }
}

void Worker::stop() {
  Worker* worker = current_;
  if (worker == nullptr) return;
  // A graceful exit waits for parked requests (their wait timers keep the
  // worker alive); a fast one (SIGTERM) still answers them, briefly.
  worker->answerAllParked();
  eventsCloseAll();
  unpostEvent(&worker->releaseEvent_);
  for (auto& link : worker->links_) {
    if (link) link->close();
  }
  current_ = nullptr;
  delete worker;
}

void Worker::releaseParked(ServiceEntry& entry) {
  if (entry.parked.empty()) return;
  // Taken off the service's list first: a request that parks again goes
  // back on it, not on the list being released, and a request that ends
  // (or times out) before its turn leaves `releasing_` by itself.
  while (ParkNode* node = entry.parked.popFront()) {
    static_cast<RequestCtx*>(node->owner)->phase = Phase::Recheck;
    releasing_.pushBack(node);
  }
  resumeReleased();
}

void Worker::resumeReleased() {
  for (int i = 0; i < kReleaseBatch; ++i) {
    ParkNode* node = releasing_.popFront();
    if (node == nullptr) return;
    resumeRequest(static_cast<RequestCtx*>(node->owner));
  }
  // The rest after the events that are ready now (the answers to the
  // batch just resumed among them).
  if (!releasing_.empty() && !releaseEvent_.posted) {
    ngx_post_event(&releaseEvent_, &ngx_posted_next_events);
  }
}

void Worker::onReleaseEvent(ngx_event_t* ev) {
  auto* worker = static_cast<Worker*>(ev->data);
  try {
    worker->resumeReleased();
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, ev->log, 0, "ondemand: releasing requests: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, ev->log, 0, "ondemand: releasing requests: unexpected exception");
  }
}

void Worker::releaseAll(ControlLink& link) {
  for (ServiceEntry* entry : link.services().entries())
    releaseParked(*entry);
}

void Worker::wakeForParked(ControlLink& link, ServiceEntry& entry) {
  if (entry.parked.empty() || !entry.known) return;
  const auto* ctx = static_cast<const RequestCtx*>(entry.parked.front()->owner);
  link.wake(entry, wakeReason(ctx->request));
}

void Worker::answerAllParked() {
  while (ParkNode* node = releasing_.popFront()) {
    auto* ctx = static_cast<RequestCtx*>(node->owner);
    ctx->phase = Phase::Answer;
    ctx->answer = AnswerKind::ShuttingDown;
    ctx->request->keepalive = 0;
    resumeRequest(ctx);
  }
  for (auto& link : links_) {
    if (!link) continue;
    for (ServiceEntry* entry : link->services().entries()) {
      ParkedList batch;
      entry->parked.moveAllTo(batch);
      while (ParkNode* node = batch.popFront()) {
        auto* ctx = static_cast<RequestCtx*>(node->owner);
        ctx->phase = Phase::Answer;
        ctx->answer = AnswerKind::ShuttingDown;
        ctx->request->keepalive = 0;
        resumeRequest(ctx);
      }
    }
  }
}

void Worker::onStateChanged(ControlLink& link, ServiceEntry& entry) {
  eventsStateChanged(link, entry);
  switch (entry.state.state) {
    case ServiceState::Warm:
    case ServiceState::Failed:
      releaseParked(entry);
      break;
    case ServiceState::Cold:
      // Cold with requests still waiting (a stop finished, a start was
      // called off): ask again.
      wakeForParked(link, entry);
      break;
    case ServiceState::Starting:
    case ServiceState::Stopping:
      break;
  }
}

void Worker::onRemoved(ControlLink& link, ServiceEntry& entry) {
  eventsRemoved(link, entry);
  releaseParked(entry);
}

void Worker::onSynced(ControlLink& link) {
  // Requests parked while the table was incomplete (or controld away) are
  // looked at again with the fresh table; those still waiting send their
  // wake now.
  eventsLinkChanged(link);
  releaseAll(link);
}

void Worker::onDown(ControlLink& link) {
  // ondemand_daemon_down decides, per location: open forwards, closed
  // answers 503, last_known keeps waiting.
  eventsLinkChanged(link);
  releaseAll(link);
}

}  // namespace ondemand::module
