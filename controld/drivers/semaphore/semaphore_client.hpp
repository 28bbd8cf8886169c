#pragma once
// SemaphoreClient: the one connection to Semaphore (base URL, project,
// credentials, the login session and live updates) shared by every service's
// SemaphoreDriver.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "controld/config/config.hpp"
#include "controld/drivers/semaphore/semaphore_live.hpp"
#include "controld/io/http_client.hpp"
#include "controld/io/lifetime.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

// What a Semaphore call came back with.
struct SemaphoreReply {
  HttpResponse http;
  // Set when Semaphore refused the credentials (401/403, or a failed session
  // login): a sentence for the user naming the URL and the kind of credential.
  std::string refused;
};

// Authenticated, non-blocking calls to one Semaphore project. With an API
// token every call carries "Authorization: Bearer <token>". With only a
// username and password, the first call logs in (POST /api/auth/login) and
// later calls reuse the session cookie; calls made while a login is under way
// wait for that one login, and only a 401 leads to a new login (and one retry
// of the refused call). The HttpClient must outlive every call; the client
// itself may go away at any time (drivers share it through a shared_ptr, so a
// configuration reload can bring a new one while old drivers finish).
class SemaphoreClient {
 public:
  using RequestId = std::uint64_t;
  using Callback = std::function<void(SemaphoreReply)>;

  SemaphoreClient(uv_loop_t* loop, HttpClient& http, SemaphoreSettings settings);
  ~SemaphoreClient();  // abandons every call: no callback runs afterwards
  SemaphoreClient(const SemaphoreClient&) = delete;
  SemaphoreClient& operator=(const SemaphoreClient&) = delete;

  // METHOD base_url + path ("/api/..."); `body` is JSON text or empty. The
  // callback runs on the loop, never from inside send().
  // keepBodyTail: only the answer's last bytes are kept (HttpRequest).
  RequestId send(std::string method, std::string path, std::string body, Callback callback,
                 std::size_t keepBodyTail = 0);
  void cancel(RequestId id);  // no callback for it afterwards

  uv_loop_t* loop() const { return loop_; }
  const SemaphoreSettings& settings() const { return settings_; }
  std::string projectPath() const;  // "/api/project/1"

  // Live updates (semaphore_live.hpp): `callback` runs with the status
  // Semaphore announced for the task, or with "" when the connection (re)opened
  // and announcements may have been missed. The connection is open while a
  // task is watched, and a while after, so that back-to-back operations share it.
  using WatchId = std::uint64_t;
  using TaskCallback = std::function<void(const std::string& status)>;
  WatchId watchTask(std::int64_t taskId, TaskCallback callback);
  void unwatchTask(WatchId id);

 private:
  struct Call {
    std::string method;
    std::string path;
    std::string body;
    Callback callback;
    std::size_t keepBodyTail = 0;
    HttpClient::RequestId httpId = 0;
    std::uint64_t session = 0;  // the login the call was sent with
    bool retried = false;
  };

  bool usesSession() const;
  void dispatch(RequestId id);
  void onResponse(RequestId id, HttpResponse response);
  void startLogin();
  void onLogin(HttpResponse response);
  void finish(RequestId id, HttpResponse response, std::string refused);
  std::string refusal(long status) const;
  void onLiveEvent(const SemaphoreLiveUpdates::Event& event);

  uv_loop_t* loop_;
  HttpClient& http_;
  SemaphoreSettings settings_;
  std::map<RequestId, Call> calls_;
  std::vector<RequestId> awaitingLogin_;
  HttpClient::RequestId loginId_ = 0;
  std::string cookie_;  // "semaphore=…", empty when not logged in
  std::uint64_t sessionGeneration_ = 0;
  RequestId nextId_ = 1;

  struct Watch {
    std::int64_t taskId = 0;
    TaskCallback callback;
  };
  std::map<WatchId, Watch> watches_;
  WatchId nextWatch_ = 1;
  std::unique_ptr<SemaphoreLiveUpdates> live_;  // created with the first watch
  std::unique_ptr<Timer> liveLinger_;           // closes the connection a while after the last watch
  bool liveConnected_ = false;
  std::string liveProblemLogged_;  // the last "unavailable" reason logged, to log each only once

  Lifetime lifetime_;
};

}  // namespace ondemand::controld
