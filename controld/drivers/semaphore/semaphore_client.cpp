#include "controld/drivers/semaphore/semaphore_client.hpp"

#include <rapidjson/document.h>

#include "controld/drivers/semaphore/semaphore_common.hpp"
#include "controld/io/log.hpp"

namespace ondemand::controld {

using namespace semaphore_detail;

// --- SemaphoreClient ---------------------------------------------------------

SemaphoreClient::SemaphoreClient(uv_loop_t* loop, HttpClient& http, SemaphoreSettings settings)
    : loop_(loop), http_(http), settings_(std::move(settings)) {
  settings_.baseUrl = withoutTrailingSlashes(settings_.baseUrl);
}

SemaphoreClient::~SemaphoreClient() {
  // The transfers under way finish on their own (or with the HttpClient, which
  // may already be gone at shutdown); their callbacks find lifetime_ ended and return.
  lifetime_.end();
  live_.reset();
}

std::string SemaphoreClient::projectPath() const {
  return "/api/project/" + std::to_string(settings_.projectId);
}

bool SemaphoreClient::usesSession() const {
  return settings_.apiToken.empty() && !settings_.username.empty();
}

SemaphoreClient::RequestId SemaphoreClient::send(std::string method, std::string path, std::string body,
                                                 Callback callback, std::size_t keepBodyTail) {
  const RequestId id = nextId_++;
  Call call;
  call.keepBodyTail = keepBodyTail;
  call.method = std::move(method);
  call.path = std::move(path);
  call.body = std::move(body);
  call.callback = std::move(callback);
  calls_.emplace(id, std::move(call));
  if (usesSession() && cookie_.empty()) {
    awaitingLogin_.push_back(id);
    startLogin();
  } else {
    dispatch(id);
  }
  return id;
}

void SemaphoreClient::cancel(RequestId id) {
  const auto it = calls_.find(id);
  if (it == calls_.end()) return;
  if (it->second.httpId) http_.cancel(it->second.httpId);
  calls_.erase(it);  // a pending login simply finds it gone
}

void SemaphoreClient::dispatch(RequestId id) {
  Call& call = calls_.at(id);
  HttpRequest request;
  request.method = call.method;
  request.url = settings_.baseUrl + call.path;
  request.headers.push_back("Accept: application/json");
  if (!call.body.empty()) request.headers.push_back("Content-Type: application/json");
  if (!settings_.apiToken.empty()) {
    request.headers.push_back("Authorization: Bearer " + settings_.apiToken);
  } else if (!cookie_.empty()) {
    request.headers.push_back("Cookie: " + cookie_);
  }
  request.body = call.body;
  request.timeout = settings_.httpTimeout;
  request.keepBodyTail = call.keepBodyTail;
  call.session = sessionGeneration_;
  call.httpId = http_.send(std::move(request), [this, life = lifetime_.token(), id](HttpResponse response) {
    if (life.alive()) onResponse(id, std::move(response));
  });
}

void SemaphoreClient::onResponse(RequestId id, HttpResponse response) {
  const auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Call& call = it->second;
  call.httpId = 0;
  if (usesSession() && response.status == 401 && !call.retried) {
    // The session expired (or Semaphore restarted): log in again, once, and
    // repeat the call. A 401 means Semaphore did nothing, so repeating is safe.
    call.retried = true;
    if (call.session == sessionGeneration_) cookie_.clear();
    if (cookie_.empty()) {
      awaitingLogin_.push_back(id);
      startLogin();
    } else {
      dispatch(id);  // another call already logged in again meanwhile
    }
    return;
  }
  std::string refused;
  if (response.status == 401 || response.status == 403) refused = refusal(response.status);
  finish(id, std::move(response), std::move(refused));
}

void SemaphoreClient::startLogin() {
  if (loginId_) return;
  JsonWriter body;
  body.startObject().str("auth", settings_.username).str("password", settings_.password).endObject();

  HttpRequest request;
  request.method = "POST";
  request.url = settings_.baseUrl + "/api/auth/login";
  request.headers = {"Accept: application/json", "Content-Type: application/json"};
  request.body = body.text();
  request.timeout = settings_.httpTimeout;
  loginId_ = http_.send(std::move(request), [this, life = lifetime_.token()](HttpResponse response) {
    if (life.alive()) onLogin(std::move(response));
  });
}

void SemaphoreClient::onLogin(HttpResponse response) {
  loginId_ = 0;
  std::string cookie;
  if (response.ok()) {
    for (const auto& [name, value] : response.headers) {
      if (name != "set-cookie") continue;
      std::string pair = value.substr(0, value.find(';'));
      pair.erase(0, pair.find_first_not_of(" \t"));
      if (pair.rfind("semaphore=", 0) == 0 && pair.size() > 10) {
        cookie = pair;
        break;
      }
    }
  }
  auto waiting = std::exchange(awaitingLogin_, {});
  if (!cookie.empty()) {
    cookie_ = std::move(cookie);
    if (live_) live_->setCookie(cookie_);
    ++sessionGeneration_;
    for (const RequestId id : waiting)
      if (calls_.count(id)) dispatch(id);
    return;
  }

  std::string refused;
  const std::string who = "Semaphore at " + settings_.baseUrl;
  if (response.status == 401 || response.status == 403 || response.status == 400) {
    refused = who + " refused the login of user \"" + settings_.username + "\" (HTTP " +
              std::to_string(response.status) + "): check semaphore username and password";
  } else if (response.ok()) {
    refused = who + " accepted the login of user \"" + settings_.username +
              "\" but sent no session cookie (a login that needs a second factor cannot be used: configure an API "
              "token)";
  } else if (response.status != 0) {
    refused = who + " answered HTTP " + std::to_string(response.status) + " to the login of user \"" +
              settings_.username + "\"";
  }
  const auto life = lifetime_.token();
  for (const RequestId id : waiting) {
    if (!life.alive()) return;
    if (calls_.count(id)) finish(id, response, refused);
  }
}

void SemaphoreClient::finish(RequestId id, HttpResponse response, std::string refused) {
  const auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Callback callback = std::move(it->second.callback);
  calls_.erase(it);
  callback(SemaphoreReply{std::move(response), std::move(refused)});
}

std::string SemaphoreClient::refusal(long status) const {
  const std::string who = "Semaphore at " + settings_.baseUrl;
  const std::string code = " (HTTP " + std::to_string(status) + ")";
  const std::string project = std::to_string(settings_.projectId);
  if (!settings_.apiToken.empty()) {
    if (status == 401) return who + " refused the API token" + code + ": check semaphore api_token";
    return who + " refused the API token" + code + ": its user may not run tasks in project " + project;
  }
  if (usesSession()) {
    if (status == 401) return who + " refused the session of user \"" + settings_.username + "\"" + code;
    return who + " refused user \"" + settings_.username + "\"" + code + ": the user may not run tasks in project " +
           project;
  }
  return who + " asks for credentials" + code + ": configure an API token, or a username and password";
}

// --- live updates ------------------------------------------------------------

SemaphoreClient::WatchId SemaphoreClient::watchTask(std::int64_t taskId, TaskCallback callback) {
  const WatchId id = nextWatch_++;
  watches_.emplace(id, Watch{taskId, std::move(callback)});
  if (!live_) {
    live_ = std::make_unique<SemaphoreLiveUpdates>(
        loop_, settings_, [this](const SemaphoreLiveUpdates::Event& event) { onLiveEvent(event); });
    liveLinger_ = std::make_unique<Timer>(loop_);
  }
  if (!cookie_.empty()) live_->setCookie(cookie_);
  liveLinger_->stop();
  live_->setWanted(true);
  return id;
}

void SemaphoreClient::unwatchTask(WatchId id) {
  if (!watches_.erase(id) || !watches_.empty() || !live_) return;
  liveLinger_->start(kLiveLinger, [this] {
    if (watches_.empty() && live_) live_->setWanted(false);
  });
}

void SemaphoreClient::onLiveEvent(const SemaphoreLiveUpdates::Event& event) {
  using Kind = SemaphoreLiveUpdates::Event::Kind;
  switch (event.kind) {
    case Kind::Connected:
      liveConnected_ = true;
      liveProblemLogged_.clear();
      LogLine(LogLevel::Info, "semaphore_live_updates")
          .kv("state", "connected")
          .kv("url", settings_.baseUrl + "/api/ws");
      break;
    case Kind::Disconnected:
      if (!event.problem.empty() && (liveConnected_ || event.problem != liveProblemLogged_)) {
        LogLine(LogLevel::Info, "semaphore_live_updates")
            .kv("state", "unavailable")
            .kv("url", settings_.baseUrl + "/api/ws")
            .kv("why", event.problem)
            .kv("meanwhile", "tasks are polled every poll_interval");
        liveProblemLogged_ = event.problem;
      }
      liveConnected_ = false;
      return;
    case Kind::Update:
      if (event.projectId != 0 && event.projectId != settings_.projectId) return;
      break;
  }
  // Connected: announcements may have been missed meanwhile, every watched
  // task is worth a look ("").
  const std::string status = event.kind == Kind::Update ? event.status : std::string();
  std::vector<std::pair<WatchId, TaskCallback>> due;
  for (const auto& [id, watch] : watches_) {
    if (event.kind == Kind::Connected || watch.taskId == event.taskId) due.emplace_back(id, watch.callback);
  }
  const auto life = lifetime_.token();
  for (auto& [id, callback] : due) {
    if (!life.alive()) return;
    if (!watches_.count(id)) continue;  // unwatched by an earlier callback
    callback(status);
  }
}

}  // namespace ondemand::controld
