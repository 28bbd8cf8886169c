#include "controld/drivers/semaphore/semaphore_live.hpp"

#include <curl/curl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rapidjson/document.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "controld/io/websocket.hpp"
#include "shared/json_read.hpp"

namespace ondemand::controld {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kPingEvery = 30s;     // our own pings keep proxies from closing an idle connection
constexpr auto kSilenceLimit = 75s;  // nothing at all (not even a pong) for this long: reconnect
constexpr auto kMaxBackoff = 60s;
constexpr std::size_t kMaxHandshakeBytes = 16 * 1024;
constexpr Millis kMaxConnectTimeout{10'000};

}  // namespace

struct SemaphoreLiveUpdates::Shared {
  std::mutex mutex;
  std::condition_variable cv;
  bool stop = false;
  bool wanted = false;
  std::string cookie;
  uv_async_t* async = nullptr;  // null once the loop side is gone
  std::deque<Event> events;
  curl_socket_t socket = CURL_SOCKET_BAD;  // the connection's socket, shut down to abort it at once
  int wakeFd = -1;                         // eventfd: wakes the thread from poll()

  // Fixed at construction.
  std::string baseUrl;
  std::string token;
  Millis httpTimeout{30'000};

  void post(Event e) {
    std::lock_guard lock(mutex);
    events.push_back(std::move(e));
    if (async) uv_async_send(async);
  }
  void wake() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakeFd, &one, sizeof one);
  }
  // Whether the thread should end the connection: why, or nullptr.
  const char* shouldLeave() {
    std::lock_guard lock(mutex);
    if (stop) return "stop";
    if (!wanted) return "unwanted";
    return nullptr;
  }
};

namespace {

using Shared = SemaphoreLiveUpdates::Shared;
using Event = SemaphoreLiveUpdates::Event;

enum class Ending { Stopped, Unwanted, Closed, Failed };

// One connection, from connect to close, on the live-updates thread.
class Session {
 public:
  explicit Session(Shared& shared) : s_(shared), random_(std::random_device{}()) {}
  ~Session() {
    if (easy_) curl_easy_cleanup(easy_);
  }

  // Returns how it ended; `problem` says why for Closed and Failed.
  Ending run(std::string& problem) {
    if (!connect(problem)) return leaving() ? leaveReason() : Ending::Failed;
    if (!handshake(problem)) return leaving() ? leaveReason() : Ending::Failed;
    s_.post(Event{Event::Kind::Connected, 0, 0, {}, {}});
    return listen(problem);
  }

 private:
  bool leaving() { return s_.shouldLeave() != nullptr; }
  Ending leaveReason() {
    const char* why = s_.shouldLeave();
    return why && std::strcmp(why, "stop") == 0 ? Ending::Stopped : Ending::Unwanted;
  }

  bool connect(std::string& problem) {
    easy_ = curl_easy_init();
    if (!easy_) {
      problem = "could not create a curl handle";
      return false;
    }
    const std::string url = s_.baseUrl + "/api/ws";
    curl_easy_setopt(easy_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy_, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(easy_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy_, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy_, CURLOPT_HTTPPROXYTUNNEL, 1L);  // through a proxy, a tunnel: the bytes are ours
    curl_easy_setopt(easy_, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(std::min(s_.httpTimeout, kMaxConnectTimeout).count()));
    curl_easy_setopt(easy_, CURLOPT_ERRORBUFFER, error_);
    curl_easy_setopt(easy_, CURLOPT_OPENSOCKETFUNCTION, &Session::openSocket);
    curl_easy_setopt(easy_, CURLOPT_OPENSOCKETDATA, &s_);
    curl_easy_setopt(easy_, CURLOPT_CLOSESOCKETFUNCTION, &Session::closeSocket);
    curl_easy_setopt(easy_, CURLOPT_CLOSESOCKETDATA, &s_);
    curl_easy_setopt(easy_, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(easy_, CURLOPT_XFERINFOFUNCTION, &Session::onProgress);
    curl_easy_setopt(easy_, CURLOPT_XFERINFODATA, &s_);
    const CURLcode rc = curl_easy_perform(easy_);
    if (rc != CURLE_OK) {
      problem = "could not connect: " + std::string(error_[0] ? error_ : curl_easy_strerror(rc));
      return false;
    }
    curl_easy_getinfo(easy_, CURLINFO_ACTIVESOCKET, &fd_);
    if (fd_ == CURL_SOCKET_BAD) {
      problem = "could not connect: no socket";
      return false;
    }
    return true;
  }

  bool handshake(std::string& problem) {
    std::string host, port, path;
    if (CURLU* u = curl_url()) {
      if (curl_url_set(u, CURLUPART_URL, s_.baseUrl.c_str(), 0) == CURLUE_OK) {
        char* part = nullptr;
        if (curl_url_get(u, CURLUPART_HOST, &part, 0) == CURLUE_OK) host = part;
        curl_free(std::exchange(part, nullptr));
        if (curl_url_get(u, CURLUPART_PORT, &part, 0) == CURLUE_OK) port = part;
        curl_free(std::exchange(part, nullptr));
        if (curl_url_get(u, CURLUPART_PATH, &part, 0) == CURLUE_OK) path = part;
        curl_free(part);
      }
      curl_url_cleanup(u);
    }
    while (!path.empty() && path.back() == '/')
      path.pop_back();

    std::string keyBytes(16, '\0');
    for (auto& c : keyBytes)
      c = static_cast<char>(random_() & 0xff);
    const std::string key = websocket::base64(keyBytes);
    std::string cookie;
    {
      std::lock_guard lock(s_.mutex);
      cookie = s_.cookie;
    }
    std::string request = "GET " + path + "/api/ws HTTP/1.1\r\nHost: " + host + (port.empty() ? "" : ":" + port) +
                          "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: " +
                          key + "\r\nUser-Agent: controld/" ONDEMAND_VERSION "\r\n";
    if (!s_.token.empty()) {
      request += "Authorization: Bearer " + s_.token + "\r\n";
    } else if (!cookie.empty()) {
      request += "Cookie: " + cookie + "\r\n";
    }
    request += "\r\n";
    const auto deadline = Clock::now() + s_.httpTimeout;
    if (!sendAll(request, deadline, problem)) return false;

    std::string answer;
    std::size_t end = std::string::npos;
    while ((end = answer.find("\r\n\r\n")) == std::string::npos) {
      if (answer.size() > kMaxHandshakeBytes) {
        problem = "the answer to GET /api/ws has no end of headers";
        return false;
      }
      const int got = receive(answer, deadline, problem);
      if (got < 0) return false;
      if (got == 0) {
        problem = "Semaphore closed the connection during the WebSocket handshake";
        return false;
      }
    }
    const std::string head = answer.substr(0, end);
    const std::string rest = answer.substr(end + 4);
    const auto lineEnd = head.find("\r\n");
    const std::string statusLine = head.substr(0, lineEnd);
    const auto space = statusLine.find(' ');
    const long status = space == std::string::npos ? 0 : std::strtol(statusLine.c_str() + space + 1, nullptr, 10);
    if (status != 101) {
      problem = "GET /api/ws was answered with HTTP " + std::to_string(status) +
                (status == 401 || status == 403 ? " (credentials refused)" : " (not a WebSocket: a proxy in between?)");
      return false;
    }
    std::string accept;
    std::size_t pos = lineEnd;
    while (pos != std::string::npos && pos < head.size()) {
      const std::size_t next = head.find("\r\n", pos + 2);
      const std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
        if (name == "sec-websocket-accept") {
          accept = line.substr(colon + 1);
          accept.erase(0, accept.find_first_not_of(" \t"));
          accept.erase(accept.find_last_not_of(" \t") + 1);
        }
      }
      pos = next;
    }
    if (accept != websocket::acceptKey(key)) {
      problem = "GET /api/ws was answered with a wrong Sec-WebSocket-Accept";
      return false;
    }
    std::vector<websocket::Message> messages;
    if (!reader_.feed(rest, messages)) {
      problem = "WebSocket protocol error: " + reader_.error();
      return false;
    }
    pending_ = std::move(messages);
    return true;
  }

  Ending listen(std::string& problem) {
    auto lastReceived = Clock::now();
    auto lastPing = Clock::now();
    std::vector<websocket::Message> messages = std::move(pending_);
    while (true) {
      if (const char* why = s_.shouldLeave()) {
        sendFrame(websocket::Opcode::Close, std::string("\x03\xe8", 2));  // 1000: normal closure
        return std::strcmp(why, "stop") == 0 ? Ending::Stopped : Ending::Unwanted;
      }
      for (auto& m : messages) {
        switch (m.opcode) {
          case websocket::Opcode::Text:
            handleText(m.payload);
            break;
          case websocket::Opcode::Ping:
            sendFrame(websocket::Opcode::Pong, m.payload);
            break;
          case websocket::Opcode::Close:
            sendFrame(websocket::Opcode::Close, m.payload.substr(0, 2));
            problem = "Semaphore closed the connection";
            return Ending::Closed;
          default:
            break;
        }
      }
      messages.clear();

      // Everything curl (or TLS) already holds, then wait for more.
      std::string data;
      const int got = receive(data, {}, problem);
      if (got < 0) return Ending::Closed;
      if (got == 0 && closed_) {
        problem = "Semaphore closed the connection";
        return Ending::Closed;
      }
      if (got > 0) {
        lastReceived = Clock::now();
        if (!reader_.feed(data, messages)) {
          problem = "WebSocket protocol error: " + reader_.error();
          return Ending::Closed;
        }
        continue;
      }
      const auto now = Clock::now();
      if (now - lastReceived > kSilenceLimit) {
        problem = "nothing heard from Semaphore for " + std::to_string(kSilenceLimit.count()) + "s";
        return Ending::Closed;
      }
      if (now - lastPing >= kPingEvery) {
        sendFrame(websocket::Opcode::Ping, "controld");
        lastPing = now;
      }
      const auto untilPing = std::chrono::duration_cast<std::chrono::milliseconds>(lastPing + kPingEvery - now);
      waitReadable(static_cast<int>(std::clamp<long long>(untilPing.count(), 10, 1000)));
    }
  }

  void handleText(const std::string& payload) {
    rapidjson::Document doc;
    if (!parseJson(doc, payload).empty() || !doc.IsObject()) return;
    const auto type = doc.FindMember("type");
    if (type == doc.MemberEnd() || !type->value.IsString() || std::strcmp(type->value.GetString(), "update") != 0)
      return;  // "log" lines and whatever newer versions add
    Event e;
    e.kind = Event::Kind::Update;
    const auto id = doc.FindMember("task_id");
    const auto status = doc.FindMember("status");
    if (id == doc.MemberEnd() || !id->value.IsInt64() || status == doc.MemberEnd() || !status->value.IsString()) return;
    e.taskId = id->value.GetInt64();
    e.status.assign(status->value.GetString(), status->value.GetStringLength());
    const auto project = doc.FindMember("project_id");
    if (project != doc.MemberEnd() && project->value.IsInt64()) e.projectId = project->value.GetInt64();
    s_.post(std::move(e));
  }

  // Appends what can be read now (or, with a deadline, waits for something).
  // Returns the byte count, 0 when nothing is there (closed_ tells an end of
  // stream apart), -1 on an error (`problem` set).
  int receive(std::string& into, std::optional<Clock::time_point> deadline, std::string& problem) {
    char buffer[16384];
    while (true) {
      std::size_t n = 0;
      const CURLcode rc = curl_easy_recv(easy_, buffer, sizeof buffer, &n);
      if (rc == CURLE_OK) {
        if (n == 0) closed_ = true;
        into.append(buffer, n);
        return static_cast<int>(n);
      }
      if (rc != CURLE_AGAIN) {
        problem = std::string("connection lost: ") + curl_easy_strerror(rc);
        return -1;
      }
      if (!deadline) return 0;
      if (leaving()) {
        problem = "leaving";
        return -1;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now());
      if (left.count() <= 0) {
        problem = "no answer to GET /api/ws within " + std::to_string(s_.httpTimeout.count()) + " ms";
        return -1;
      }
      waitReadable(static_cast<int>(std::min<long long>(left.count(), 1000)));
    }
  }

  bool sendAll(const std::string& data, Clock::time_point deadline, std::string& problem) {
    std::size_t sent = 0;
    while (sent < data.size()) {
      std::size_t n = 0;
      const CURLcode rc = curl_easy_send(easy_, data.data() + sent, data.size() - sent, &n);
      if (rc == CURLE_OK) {
        sent += n;
        continue;
      }
      if (rc != CURLE_AGAIN) {
        problem = std::string("connection lost: ") + curl_easy_strerror(rc);
        return false;
      }
      if (leaving() || Clock::now() > deadline) {
        problem = "could not send to Semaphore";
        return false;
      }
      pollfd fds[2] = {{fd_, POLLOUT, 0}, {s_.wakeFd, POLLIN, 0}};
      ::poll(fds, 2, 100);
      drainWake(fds[1]);
    }
    return true;
  }

  void sendFrame(websocket::Opcode opcode, const std::string& payload) {
    std::array<std::uint8_t, 4> mask{};
    for (auto& b : mask)
      b = static_cast<std::uint8_t>(random_() & 0xff);
    std::string ignored;
    sendAll(websocket::encodeClientFrame(opcode, payload, mask), Clock::now() + 1s, ignored);
  }

  void waitReadable(int timeoutMs) {
    pollfd fds[2] = {{fd_, POLLIN, 0}, {s_.wakeFd, POLLIN, 0}};
    ::poll(fds, 2, timeoutMs);
    drainWake(fds[1]);
  }

  void drainWake(const pollfd& p) {
    if (p.revents & POLLIN) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto n = ::read(s_.wakeFd, &count, sizeof count);
    }
  }

  static curl_socket_t openSocket(void* data, curlsocktype, curl_sockaddr* address) {
    auto* s = static_cast<Shared*>(data);
    const curl_socket_t fd = ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    std::lock_guard lock(s->mutex);
    if (s->stop) {
      if (fd >= 0) ::close(fd);
      return CURL_SOCKET_BAD;
    }
    s->socket = fd;
    return fd;
  }

  static int closeSocket(void* data, curl_socket_t fd) {
    auto* s = static_cast<Shared*>(data);
    {
      std::lock_guard lock(s->mutex);
      if (s->socket == fd) s->socket = CURL_SOCKET_BAD;
    }
    return ::close(fd);
  }

  static int onProgress(void* data, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    return static_cast<Shared*>(data)->shouldLeave() ? 1 : 0;
  }

  Shared& s_;
  CURL* easy_ = nullptr;
  curl_socket_t fd_ = CURL_SOCKET_BAD;
  char error_[CURL_ERROR_SIZE] = {};
  bool closed_ = false;
  websocket::Reader reader_;
  std::vector<websocket::Message> pending_;
  std::mt19937 random_;
};

void runThread(const std::shared_ptr<Shared>& s) {
  int failures = 0;
  while (true) {
    {
      std::unique_lock lock(s->mutex);
      s->cv.wait(lock, [&] { return s->stop || s->wanted; });
      if (s->stop) return;
    }
    std::string problem;
    Ending ending;
    {
      Session session(*s);
      ending = session.run(problem);
    }  // the socket is closed here
    if (ending == Ending::Stopped) return;
    s->post(Event{Event::Kind::Disconnected, 0, 0, {}, ending == Ending::Unwanted ? std::string() : problem});
    if (ending == Ending::Unwanted) continue;
    // After a failure, back off; after a connection that worked, a short
    // pause (a proxy that accepts and closes at once must not make a loop).
    failures = ending == Ending::Failed ? failures + 1 : 0;
    const auto delay = failures == 0
                           ? std::chrono::milliseconds(1s)
                           : std::min<std::chrono::milliseconds>(1s * (1 << std::min(failures - 1, 6)), kMaxBackoff);
    std::unique_lock lock(s->mutex);
    if (s->cv.wait_for(lock, delay, [&] { return s->stop; })) return;
  }
}

}  // namespace

SemaphoreLiveUpdates::SemaphoreLiveUpdates(uv_loop_t* loop, const SemaphoreSettings& settings, Callback callback)
    : shared_(std::make_shared<Shared>()), callback_(std::move(callback)) {
  shared_->baseUrl = withoutTrailingSlashes(settings.baseUrl);
  shared_->token = settings.apiToken;
  shared_->httpTimeout = settings.httpTimeout;
  shared_->wakeFd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

  auto* async = new uv_async_t;
  uv_async_init(loop, async, [](uv_async_t* h) {
    if (auto* self = static_cast<SemaphoreLiveUpdates*>(h->data)) self->deliver();
  });
  async->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(async));  // never what keeps the loop running
  async_.adopt(async);
  shared_->async = async;
  thread_ = std::thread([shared = shared_] { runThread(shared); });
}

SemaphoreLiveUpdates::~SemaphoreLiveUpdates() {
  lifetime_.end();
  {
    std::lock_guard lock(shared_->mutex);
    shared_->stop = true;
    shared_->async = nullptr;
    if (shared_->socket != CURL_SOCKET_BAD) ::shutdown(shared_->socket, SHUT_RDWR);  // ends a connect at once
  }
  shared_->cv.notify_all();
  shared_->wake();
  if (thread_.joinable()) thread_.join();
  ::close(shared_->wakeFd);
}

void SemaphoreLiveUpdates::setWanted(bool wanted) {
  {
    std::lock_guard lock(shared_->mutex);
    if (shared_->wanted == wanted) return;
    shared_->wanted = wanted;
  }
  shared_->cv.notify_all();
  shared_->wake();
}

void SemaphoreLiveUpdates::setCookie(std::string cookie) {
  std::lock_guard lock(shared_->mutex);
  shared_->cookie = std::move(cookie);
}

void SemaphoreLiveUpdates::deliver() {
  std::deque<Event> events;
  {
    std::lock_guard lock(shared_->mutex);
    events.swap(shared_->events);
  }
  const auto life = lifetime_.token();
  for (const auto& e : events) {
    callback_(e);  // may destroy this
    if (!life.alive()) return;
  }
}

}  // namespace ondemand::controld
