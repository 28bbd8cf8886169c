#include "ngx_module/control_link.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
#include <variant>

namespace ondemand::module {

namespace {

template <class F>
void guarded(ngx_log_t* log, const char* where, F&& body) noexcept {
  try {
    body();
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, log, 0, "ondemand: %s: %s", where, e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, log, 0, "ondemand: %s: unexpected exception", where);
  }
}

}  // namespace

std::int64_t unixMillis() {
  const ngx_time_t* tp = ngx_timeofday();
  return static_cast<std::int64_t>(tp->sec) * 1000 + static_cast<std::int64_t>(tp->msec);
}

ControlLink::ControlLink(Listener& listener, std::string_view name, const sockaddr* address, socklen_t length,
                         ngx_log_t* log)
    : listener_(listener),
      name_(name),
      address_(reinterpret_cast<const unsigned char*>(address),
               reinterpret_cast<const unsigned char*>(address) + length),
      addressLength_(length),
      log_(log) {
  peerName_.data = reinterpret_cast<u_char*>(name_.data());
  peerName_.len = name_.size();

  quietLog_ = *log;
  quietLog_.log_level = NGX_LOG_ALERT;
  quietLog_.next = nullptr;

  reconnectTimer_.handler = onReconnectTimer;
  reconnectTimer_.data = this;
  reconnectTimer_.log = log;
  reconnectTimer_.cancelable = 1;

  activityTimer_.handler = onActivityTimer;
  activityTimer_.data = this;
  activityTimer_.log = log;
  activityTimer_.cancelable = 1;
}

ControlLink::~ControlLink() {
  close();
}

void ControlLink::start() {
  connect();
}

LinkStatus ControlLink::status() const {
  if (conn_ == nullptr || connecting_) return LinkStatus::Down;
  return session_.synced() ? LinkStatus::Up : LinkStatus::Handshake;
}

// --- connecting ---------------------------------------------------------------

void ControlLink::connect() {
  if (closed_ || conn_ != nullptr) return;
  peer_ = ngx_peer_connection_t{};
  peer_.sockaddr = reinterpret_cast<sockaddr*>(address_.data());
  peer_.socklen = addressLength_;
  peer_.name = &peerName_;
  peer_.get = ngx_event_get_peer;
  peer_.log = &quietLog_;
  peer_.log_error = NGX_ERROR_ERR;

  const ngx_int_t rc = ngx_event_connect_peer(&peer_);
  if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
    const ngx_err_t err = ngx_socket_errno;
    peer_.connection = nullptr;
    connectFailed("connect() failed", err);
    return;
  }
  conn_ = peer_.connection;
  // Connect failures were the quiet log's business; from now on the
  // connection logs to the worker's error log (a reset peer is reported by
  // disconnect(), once).
  conn_->log = log_;
  conn_->read->log = log_;
  conn_->write->log = log_;
  conn_->log_error = NGX_ERROR_IGNORE_ECONNRESET;
  conn_->data = this;
  conn_->read->handler = onRead;
  conn_->write->handler = onWrite;
  if (rc == NGX_AGAIN) {
    connecting_ = true;
    ngx_add_timer(conn_->write, kConnectTimeoutMs);
    return;
  }
  onConnected();
}

void ControlLink::onConnected() {
  connecting_ = false;
  overflow_ = false;
  stopTimer(conn_->write);
  session_.connected();
  out_.clear();
  outSent_ = 0;

  protocol::Hello hello;
  hello.role = "worker";
  hello.pid = static_cast<std::int64_t>(ngx_pid);
  send(protocol::encode(hello));
  send(protocol::encode(protocol::Subscribe{}));
  // What is in flight right now, so controld's count is right from the start.
  sendActivity(true);
}

bool ControlLink::beginOutage() {
  if (outageLogged_) return false;
  outageLogged_ = true;
  outageSince_ = ngx_current_msec;
  unreachableSinceMs_ = unixMillis();
  return true;
}

namespace {

// What the worker runs as, for the hint on a refused connection.
std::string workerUser() {
  const auto* ccf = reinterpret_cast<const ngx_core_conf_t*>(ngx_get_conf(ngx_cycle->conf_ctx, ngx_core_module));
  if (ccf != nullptr && ccf->username != nullptr && ::geteuid() == ccf->user) return ccf->username;
  return "uid " + std::to_string(::geteuid());
}

}  // namespace

void ControlLink::connectFailed(const char* why, ngx_err_t err) {
  if (beginOutage()) {
    if (err == NGX_EACCES || err == EPERM) {
      const std::string user = workerUser();
      ngx_log_error(NGX_LOG_ERR, log_, err,
                    "ondemand: cannot connect to controld at \"%s\" (%s): this worker runs as %s, which may not "
                    "connect to the socket; give the socket to a group of %s (socket_group and socket_mode in "
                    "controld.yaml) or run the workers as a user who may (nginx's \"user\"). Retrying; requests "
                    "follow ondemand_daemon_down until it is back",
                    name_.c_str(), why, user.c_str(), user.c_str());
    } else {
      ngx_log_error(NGX_LOG_ERR, log_, err,
                    "ondemand: cannot connect to controld at \"%s\" (%s); retrying, requests follow "
                    "ondemand_daemon_down until it is back",
                    name_.c_str(), why);
    }
    scheduleReconnect();
    // Requests held for the first connection are answered now.
    if (!session_.everSynced()) listener_.onDown(*this);
    return;
  }
  ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log_, err, "ondemand: connect to controld failed again: %s", why);
  scheduleReconnect();
}

void ControlLink::disconnect(const std::string& why, ngx_err_t err) {
  const bool wasConnected = conn_ != nullptr && !connecting_;
  const bool wasUp = session_.synced();
  if (conn_ != nullptr) {
    ngx_close_connection(conn_);
    conn_ = nullptr;
  }
  connecting_ = false;
  session_.lost();
  out_.clear();
  outSent_ = 0;
  stopTimer(&activityTimer_);
  answerQuestions(0, nullptr);

  const bool first = beginOutage();
  if (first) {
    ngx_log_error(NGX_LOG_ERR, log_, err,
                  wasUp ? "ondemand: lost the connection to controld at \"%s\" (%s); reconnecting, requests "
                          "follow ondemand_daemon_down until it is back"
                        : "ondemand: connection to controld at \"%s\" failed (%s); retrying, requests follow "
                          "ondemand_daemon_down until it is back",
                  name_.c_str(), why.c_str());
  }
  scheduleReconnect();
  if (wasConnected || (first && !session_.everSynced())) listener_.onDown(*this);
}

void ControlLink::scheduleReconnect() {
  if (closed_ || reconnectTimer_.timer_set) return;
  ngx_add_timer(&reconnectTimer_, backoff_);
  backoff_ = std::min(backoff_ * 2, kMaxRetryMs);
}

void ControlLink::close() {
  if (closed_) return;
  closed_ = true;
  answerQuestions(0, nullptr);
  stopTimer(&reconnectTimer_);
  stopTimer(&activityTimer_);
  unpostEvent(&reconnectTimer_);
  unpostEvent(&activityTimer_);
  if (conn_ == nullptr) return;
  if (!connecting_) {
    // Best effort, one non-blocking write: controld forgets this worker's
    // counts when the connection closes anyway.
    const protocol::Activity activity = session_.table().takeActivity(false);
    if (!activity.entries.empty()) out_ += protocol::encode(activity);
    if (outSent_ < out_.size())
      (void)conn_->send(conn_, reinterpret_cast<u_char*>(out_.data() + outSent_), out_.size() - outSent_);
  }
  ngx_close_connection(conn_);
  conn_ = nullptr;
  connecting_ = false;
  session_.lost();
}

// --- writing ----------------------------------------------------------------

void ControlLink::send(const std::string& line) {
  if (conn_ == nullptr || connecting_) return;  // re-established from the table on reconnect
  out_ += line;
  if (out_.size() - outSent_ > kMaxQueuedBytes) overflow_ = true;
  postEvent(conn_->write);
}

void ControlLink::flush() {
  while (conn_ != nullptr && outSent_ < out_.size()) {
    const ssize_t n = conn_->send(conn_, reinterpret_cast<u_char*>(out_.data() + outSent_), out_.size() - outSent_);
    if (n > 0) {
      outSent_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n == NGX_AGAIN) {
      if (overflow_) {
        disconnect("controld does not read what this worker sends");
        return;
      }
      if (ngx_handle_write_event(conn_->write, 0) != NGX_OK) disconnect("cannot watch the socket for writing");
      return;
    }
    disconnect("write to controld failed", ngx_socket_errno);
    return;
  }
  out_.clear();
  outSent_ = 0;
  overflow_ = false;
}

// --- reading ----------------------------------------------------------------

void ControlLink::readAvailable() {
  u_char buffer[16384];
  while (conn_ != nullptr) {
    const ssize_t n = conn_->recv(conn_, buffer, sizeof buffer);
    if (n == NGX_AGAIN) {
      if (ngx_handle_read_event(conn_->read, 0) != NGX_OK) disconnect("cannot watch the socket for reading");
      return;
    }
    if (n == 0) {
      disconnect("controld closed the connection");
      return;
    }
    if (n < 0) {
      disconnect("read from controld failed", ngx_socket_errno);
      return;
    }
    if (!session_.append(std::string_view(reinterpret_cast<const char*>(buffer), static_cast<std::size_t>(n)))) {
      disconnect("controld sent a message longer than the protocol allows");
      return;
    }
    while (conn_ != nullptr) {
      LinkSession::Incoming in;
      std::string error;
      const auto next = session_.next(in, error);
      if (next == LinkSession::Next::None) break;
      if (next == LinkSession::Next::Broken) {
        disconnect(error);
        return;
      }
      act(in);
    }
  }
}

std::int64_t ControlLink::askStatus(StatusDone done, void* data) {
  if (status() != LinkStatus::Up) return 0;
  protocol::Command command;
  command.id = nextQuestion_++;
  command.verb = "status";
  questions_.push_back({command.id, done, data});
  send(protocol::encode(command));
  return command.id;
}

void ControlLink::cancelStatus(std::int64_t id) {
  questions_.erase(
      std::remove_if(questions_.begin(), questions_.end(), [id](const StatusQuestion& q) { return q.id == id; }),
      questions_.end());
}

// id 0: every question (the connection is gone, reply is nullptr).
void ControlLink::answerQuestions(std::int64_t id, const std::string* reply) {
  std::vector<StatusQuestion> answered;
  for (auto it = questions_.begin(); it != questions_.end();) {
    if (id == 0 || it->id == id) {
      answered.push_back(*it);
      it = questions_.erase(it);
    } else {
      ++it;
    }
  }
  for (const StatusQuestion& q : answered)
    q.done(q.data, reply);
}

void ControlLink::act(LinkSession::Incoming& in) {
  using Kind = LinkSession::Incoming::Kind;
  switch (in.kind) {
    case Kind::StatusAnswer:
      answerQuestions(in.answerId, &in.text);
      return;
    case Kind::State:
      if (in.ack) {
        sendActivity(false);
        send(protocol::encode(*in.ack));
      }
      listener_.onStateChanged(*this, *in.entry);
      return;
    case Kind::Synced:
      for (ServiceEntry* vanished : in.vanished)
        listener_.onRemoved(*this, *vanished);
      session_.markSynced();
      backoff_ = kFirstRetryMs;
      if (outageLogged_) {
        ngx_log_error(NGX_LOG_NOTICE, log_, 0, "ondemand: connected to controld at \"%s\" again after %M ms",
                      name_.c_str(), ngx_current_msec - outageSince_);
        outageLogged_ = false;
      }
      unreachableSinceMs_ = 0;
      listener_.onSynced(*this);
      return;
    case Kind::Removed:
      listener_.onRemoved(*this, *in.entry);
      return;
    case Kind::ControldError:
      ngx_log_error(NGX_LOG_ERR, log_, 0, "ondemand: controld at \"%s\" reports: %s", name_.c_str(), in.text.c_str());
      return;
    case Kind::Welcome:
      return;
    case Kind::Ignored:
      if (!in.text.empty()) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log_, 0, "ondemand: ignoring a \"%s\" message from controld",
                       in.text.c_str());
      }
      return;
  }
}

// --- what the worker tells controld --------------------------------------------

void ControlLink::wake(ServiceEntry& entry, std::string_view reason) {
  if (status() != LinkStatus::Up || !entry.known) return;
  if (!ServiceTable::claimWake(entry, unixMillis())) return;
  protocol::Wake wake;
  wake.service = entry.name;
  wake.reason = std::string(reason);
  send(protocol::encode(wake));
}

void ControlLink::requestStarted(ServiceEntry& entry) {
  countsChanged_ = true;
  ++entry.inFlight;
  ++entry.startedUnreported;
  entry.activityDirty = true;
  scheduleActivity(entry.inFlight == 1);
}

void ControlLink::requestFinished(ServiceEntry& entry) {
  countsChanged_ = true;
  if (entry.inFlight > 0) --entry.inFlight;
  entry.activityDirty = true;
  scheduleActivity(entry.inFlight == 0);
}

void ControlLink::waitBegan(ServiceEntry& entry) {
  ++entry.held;
  entry.activityDirty = true;
  scheduleActivity(false);
}

void ControlLink::waitEnded(ServiceEntry& entry, std::uint64_t waitedMs) {
  if (entry.held > 0) --entry.held;
  entry.waited.add(waitedMs);
  entry.activityDirty = true;
  scheduleActivity(false);
}

void ControlLink::scheduleActivity(bool urgent) {
  if (conn_ == nullptr || connecting_ || closed_) return;  // reported after (re)subscribing
  const ngx_msec_t elapsed = ngx_current_msec - lastActivityAt_;
  if (urgent && elapsed >= kActivityIntervalMs) {
    // At once, even when a coalesced report (held requests, waits) is due.
    if (activityTimer_.timer_set) ngx_del_timer(&activityTimer_);
    sendActivity(false);
    return;
  }
  if (activityTimer_.timer_set) return;  // a report is already due
  ngx_add_timer(&activityTimer_, elapsed >= kActivityIntervalMs ? kActivityIntervalMs : kActivityIntervalMs - elapsed);
}

void ControlLink::sendActivity(bool everything) {
  protocol::Activity activity = session_.table().takeActivity(everything);
  if (activity.entries.empty()) return;
  send(protocol::encode(activity));
  // Only reports of requests started or ended pace the urgent ones: a report
  // of held requests and waits does not delay the next 0<->1 change.
  if (countsChanged_) lastActivityAt_ = ngx_current_msec;
  countsChanged_ = false;
}

// --- event handlers ---------------------------------------------------------------

void ControlLink::onRead(ngx_event_t* ev) {
  auto* c = static_cast<ngx_connection_t*>(ev->data);
  auto* link = static_cast<ControlLink*>(c->data);
  guarded(link->log_, "reading from controld", [&] {
    if (c->close) {
      // worker_shutdown_timeout: nginx closes every connection.
      link->close();
      return;
    }
    if (ev->timedout) {
      ev->timedout = 0;
      return;
    }
    link->readAvailable();
  });
}

void ControlLink::onWrite(ngx_event_t* ev) {
  auto* c = static_cast<ngx_connection_t*>(ev->data);
  auto* link = static_cast<ControlLink*>(c->data);
  guarded(link->log_, "writing to controld", [&] {
    if (link->connecting_) {
      if (ev->timedout) {
        link->disconnect("timed out connecting", NGX_ETIMEDOUT);
        return;
      }
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) err = ngx_socket_errno;
      if (err != 0) {
        link->disconnect("connect() failed", err);
        return;
      }
      link->onConnected();
    }
    link->flush();
  });
}

void ControlLink::onReconnectTimer(ngx_event_t* ev) {
  auto* link = static_cast<ControlLink*>(ev->data);
  guarded(link->log_, "reconnecting to controld", [&] { link->connect(); });
}

void ControlLink::onActivityTimer(ngx_event_t* ev) {
  auto* link = static_cast<ControlLink*>(ev->data);
  guarded(link->log_, "reporting activity", [&] { link->sendActivity(false); });
}

}  // namespace ondemand::module
