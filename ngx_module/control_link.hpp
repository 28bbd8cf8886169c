#pragma once
// One worker's connection to one controld: a non-blocking Unix socket on
// nginx's event loop. It says hello, subscribes, keeps the pushed state of
// every service in a ServiceTable, sends wakes, activity and stopping acks,
// and reconnects with a short back-off when the connection drops. Nothing
// here blocks and nothing is written from a request handler's stack: lines
// are queued and written from a posted write event.

#include <string>
#include <string_view>
#include <vector>

#include "ngx_module/decision.hpp"
#include "ngx_module/link_session.hpp"
#include "ngx_module/ngx.hpp"
#include "ngx_module/service_table.hpp"
#include "shared/protocol.hpp"

namespace ondemand::module {

class ControlLink {
 public:
  // The worker: told about everything that can release parked requests.
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void onStateChanged(ControlLink& link, ServiceEntry& entry) = 0;
    virtual void onRemoved(ControlLink& link, ServiceEntry& entry) = 0;
    virtual void onSynced(ControlLink& link) = 0;
    virtual void onDown(ControlLink& link) = 0;
  };

  // Reconnect back-off: 50 ms, doubling, at most 500 ms, so a worker is back
  // within a second of controld.
  static constexpr ngx_msec_t kFirstRetryMs = 50;
  static constexpr ngx_msec_t kMaxRetryMs = 500;
  static constexpr ngx_msec_t kConnectTimeoutMs = 1000;
  // Activity is sent at most this often (a 0<->1 change of in-flight goes
  // out at once when nothing was sent for this long).
  static constexpr ngx_msec_t kActivityIntervalMs = 250;
  // controld not reading what we write: drop the connection.
  static constexpr std::size_t kMaxQueuedBytes = 1024 * 1024;
  // The longest line read from controld: a status reply (askStatus) with
  // every service's history is longer than any pushed message.
  static constexpr std::size_t kMaxLineBytes = 4 * 1024 * 1024;

  ControlLink(Listener& listener, std::string_view name, const sockaddr* address, socklen_t length, ngx_log_t* log);
  ~ControlLink();
  ControlLink(const ControlLink&) = delete;
  ControlLink& operator=(const ControlLink&) = delete;

  void start();
  // Worker exit: reports the last activity if it can, closes the connection
  // and stops the timers, so nginx does not wait on them.
  void close();

  LinkStatus status() const;
  bool everSynced() const { return session_.everSynced(); }
  // Unix ms at which the current outage began (a connection attempt failed
  // or the connection was lost), 0 when there is none: connected, or still
  // on the first attempt.
  std::int64_t unreachableSinceMs() const { return unreachableSinceMs_; }
  const std::string& name() const { return name_; }
  const std::string& daemon() const { return session_.daemon(); }
  ServiceTable& services() { return session_.table(); }

  // A request wants the service: sent once per state epoch (controld
  // ignores duplicates anyway), only while the table is current.
  void wake(ServiceEntry& entry, std::string_view reason);
  // A request was forwarded to the service / its response ended.
  void requestStarted(ServiceEntry& entry);
  void requestFinished(ServiceEntry& entry);
  // A request began waiting for the service / its wait ended after `waitedMs`
  // (it went on, was answered, or its client left).
  void waitBegan(ServiceEntry& entry);
  void waitEnded(ServiceEntry& entry, std::uint64_t waitedMs);

  // ondemand_status asks controld for its own status (every service's
  // totals, its machines) over this connection. `done` gets the reply line
  // (JSON, as `controld status --json` plus type/id/ok), or nullptr when the
  // connection went away first. Returns 0 (and never calls `done`) when not
  // connected; cancelStatus forgets a question.
  using StatusDone = void (*)(void* data, const std::string* reply);
  std::int64_t askStatus(StatusDone done, void* data);
  void cancelStatus(std::int64_t id);

 private:
  void connect();
  void onConnected();
  void connectFailed(const char* why, ngx_err_t err);
  void disconnect(const std::string& why, ngx_err_t err = 0);
  // The first failure of an outage: logged once (with why), and requests
  // that waited for the first connection are looked at again.
  bool beginOutage();
  void scheduleReconnect();
  void send(const std::string& line);
  void flush();
  void readAvailable();
  // Does what a line from controld asks (session_ has read it).
  void act(LinkSession::Incoming& in);
  void scheduleActivity(bool urgent);
  void sendActivity(bool everything);

  static void onRead(ngx_event_t* ev);
  static void onWrite(ngx_event_t* ev);
  static void onReconnectTimer(ngx_event_t* ev);
  static void onActivityTimer(ngx_event_t* ev);

  Listener& listener_;
  std::string name_;  // "unix:/run/controld/controld.sock"
  ngx_str_t peerName_{};
  std::vector<unsigned char> address_;
  socklen_t addressLength_;
  ngx_log_t* log_;        // the worker's error log
  ngx_log_t quietLog_{};  // for the connection itself: connect() failures are reported once by us, not per retry

  ngx_peer_connection_t peer_{};
  ngx_connection_t* conn_ = nullptr;
  bool connecting_ = false;
  bool closed_ = false;
  bool overflow_ = false;

  bool outageLogged_ = false;
  ngx_msec_t outageSince_ = 0;
  std::int64_t unreachableSinceMs_ = 0;
  ngx_msec_t backoff_ = kFirstRetryMs;
  ngx_event_t reconnectTimer_{};
  ngx_event_t activityTimer_{};
  ngx_msec_t lastActivityAt_ = 0;
  bool countsChanged_ = false;  // in-flight counts changed since the last report

  LinkSession session_{kMaxLineBytes};  // lines, handshake, the service table
  std::string out_;
  std::size_t outSent_ = 0;

  struct StatusQuestion {
    std::int64_t id;
    StatusDone done;
    void* data;
  };
  std::vector<StatusQuestion> questions_;  // a few at a time: status pages being rendered
  std::int64_t nextQuestion_ = 1;
  void answerQuestions(std::int64_t id, const std::string* reply);
};

// Wall-clock milliseconds from nginx's cached time (what controld's
// "since" fields are measured in).
std::int64_t unixMillis();

}  // namespace ondemand::module
