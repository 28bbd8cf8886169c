#include "controld/io/http_client.hpp"

#include <curl/curl.h>
#include <fcntl.h>

#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string_view>

#include "controld/io/lifetime.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

std::string HttpResponse::header(const std::string& lowerName) const {
  for (const auto& [name, value] : headers) {
    if (name == lowerName) return value;
  }
  return {};
}

namespace {

// A response larger than this is a misbehaving server, not something controld
// wants in memory (Semaphore task output is fetched in pages far below it).
constexpr std::size_t kMaxBodyBytes = 64 * 1024 * 1024;

void initCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string_view trim(std::string_view s) {
  const auto isSpace = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && isSpace(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && isSpace(s.back()))
    s.remove_suffix(1);
  return s;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace

struct HttpClient::Impl {
  struct Transfer {
    Impl* owner = nullptr;
    RequestId id = 0;
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    bool inMulti = false;
    bool bodyTooLarge = false;
    std::string chunk;    // streaming: arrived, not yet handed over
    HttpRequest request;  // owns the body curl sends from
    HttpResponse response;
    Callback callback;
    char errorBuffer[CURL_ERROR_SIZE] = {};

    Transfer() = default;
    Transfer(const Transfer&) = delete;
    Transfer& operator=(const Transfer&) = delete;
    ~Transfer() {
      if (easy) curl_easy_cleanup(easy);
      curl_slist_free_all(headers);
    }
  };

  // One socket curl asked us to watch.
  struct Socket {
    Impl* owner = nullptr;
    curl_socket_t fd = CURL_SOCKET_BAD;
    UvHandle<uv_poll_t> poll;
  };

  explicit Impl(uv_loop_t* l) : loop(l) {
    initCurlOnce();
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &Impl::onSocket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &Impl::onCurlTimer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);

    auto* t = new uv_timer_t;
    uv_timer_init(loop, t);
    t->data = this;
    curlTimer.adopt(t);

    auto* d = new uv_timer_t;
    uv_timer_init(loop, d);
    d->data = this;
    deliveryTimer.adopt(d);
  }

  ~Impl() {
    lifetime.end();
    shuttingDown = true;  // curl's callbacks below must not touch the loop any more
    sockets.clear();      // stops watching before curl closes the descriptors
    for (auto& [id, transfer] : transfers) {
      if (transfer->inMulti) curl_multi_remove_handle(multi, transfer->easy);
      transfer->inMulti = false;
    }
    transfers.clear();
    curl_multi_cleanup(multi);
  }

  RequestId send(HttpRequest request, Callback callback) {
    auto transfer = std::make_unique<Transfer>();
    Transfer* t = transfer.get();
    t->owner = this;
    t->id = nextId++;
    t->request = std::move(request);
    t->callback = std::move(callback);
    transfers.emplace(t->id, std::move(transfer));

    if (const char* problem = setUp(*t)) {
      failLater(*t, problem);
      return t->id;
    }
    // Adding only arms curl's timer (at 0 ms): the transfer begins on the next
    // loop iteration, so nothing can complete inside send().
    const CURLMcode rc = curl_multi_add_handle(multi, t->easy);
    if (rc != CURLM_OK) {
      failLater(*t, curl_multi_strerror(rc));
      return t->id;
    }
    t->inMulti = true;
    return t->id;
  }

  void cancel(RequestId id) {
    auto it = transfers.find(id);
    if (it == transfers.end()) return;
    auto transfer = std::move(it->second);
    transfers.erase(it);
    if (transfer->inMulti) curl_multi_remove_handle(multi, transfer->easy);
    transfer->inMulti = false;
    // An id left in `ready` is skipped at delivery: it is no longer in `transfers`.
  }

  // Returns a description of what went wrong, or nullptr.
  const char* setUp(Transfer& t) {
    t.easy = curl_easy_init();
    if (!t.easy) return "could not create a curl handle";
    CURL* e = t.easy;
    const HttpRequest& r = t.request;

    curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.errorBuffer);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (r.timeout.count() > 0 || !r.onBodyChunk) {
      curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(r.timeout.count() > 0 ? r.timeout.count() : 1));
    }
    if (r.onBodyChunk) {
      // A long-lived stream: a dead peer shows through TCP keepalives.
      curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
      curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
      curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 2L);
      curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 1L);
    }
    if (!r.caFile.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, r.caFile.c_str());
    if (!r.certFile.empty()) curl_easy_setopt(e, CURLOPT_SSLCERT, r.certFile.c_str());
    if (!r.keyFile.empty()) curl_easy_setopt(e, CURLOPT_SSLKEY, r.keyFile.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "controld/" ONDEMAND_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Impl::onBody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Impl::onHeader);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    // Commands controld runs must not inherit its connections.
    curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, &Impl::onSocketOpened);
    if (curl_easy_setopt(e, CURLOPT_URL, r.url.c_str()) != CURLE_OK) return "invalid URL";

    if (r.method == "HEAD") {
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (!r.body.empty() || r.method == "POST" || r.method == "PUT") {
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.body.data());
      if (r.method != "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str());
    } else if (r.method != "GET") {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str());
    }

    for (const auto& h : r.headers)
      t.headers = curl_slist_append(t.headers, h.c_str());
    // A body must not wait a second for "100 Continue" from servers that never send it.
    t.headers = curl_slist_append(t.headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.headers);
    return nullptr;
  }

  // Reports a transfer that never reached curl; delivered from the loop.
  void failLater(Transfer& t, const char* problem) {
    t.response = HttpResponse{};
    t.response.error = problem;
    ready.push_back(t.id);
    uv_timer_start(
        deliveryTimer.get(),
        [](uv_timer_t* h) {
          if (auto* self = static_cast<Impl*>(h->data)) self->deliverReady();
        },
        0, 0);
  }

  void socketAction(curl_socket_t fd, int flags) {
    int running = 0;
    curl_multi_socket_action(multi, fd, flags, &running);
    const auto life = lifetime.token();
    deliverChunks();  // may cancel transfers or destroy this
    if (!life.alive()) return;
    collectFinished();
    deliverReady();  // may destroy this
  }

  void deliverChunks() {
    const auto life = lifetime.token();
    while (!chunksReady.empty()) {
      const RequestId id = chunksReady.front();
      chunksReady.pop_front();
      auto it = transfers.find(id);
      if (it == transfers.end() || it->second->chunk.empty()) continue;
      std::string data = std::move(it->second->chunk);
      it->second->chunk.clear();
      auto callback = it->second->request.onBodyChunk;  // a copy: the transfer may go inside
      callback(data);
      if (!life.alive()) return;
    }
  }

  void collectFinished() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      const CURLcode result = msg->data.result;  // msg is invalid once the handle is removed
      Transfer* t = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &t);
      curl_multi_remove_handle(multi, easy);
      if (!t) continue;
      t->inMulti = false;
      complete(*t, result);
      ready.push_back(t->id);
    }
  }

  // An answer that did not arrive whole is no answer: status 0 and the reason.
  static void complete(Transfer& t, CURLcode result) {
    HttpResponse& r = t.response;
    long status = 0;
    if (result == CURLE_OK) curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
    if (result == CURLE_OK && status > 0) {
      r.status = status;
      if (const std::size_t tail = t.request.keepBodyTail; tail > 0 && r.body.size() > tail) {
        r.body.erase(0, r.body.size() - tail);
        r.bodyCut = true;
      }
      return;
    }
    r.status = 0;
    r.body.clear();
    r.headers.clear();
    if (t.bodyTooLarge) {
      r.error = "response body larger than " + std::to_string(kMaxBodyBytes / (1024 * 1024)) + " MiB";
    } else if (t.errorBuffer[0]) {
      r.error = t.errorBuffer;
    } else if (result != CURLE_OK) {
      r.error = curl_easy_strerror(result);
    } else {
      r.error = "no HTTP response";
    }
    // "Couldn't connect to server" alone hides whether nothing listens or a
    // firewall dropped the packets.
    long osErrno = 0;
    if (result == CURLE_COULDNT_CONNECT && curl_easy_getinfo(t.easy, CURLINFO_OS_ERRNO, &osErrno) == CURLE_OK &&
        osErrno != 0) {
      r.error += std::string(" (") + std::strerror(static_cast<int>(osErrno)) + ")";
    }
  }

  void deliverReady() {
    const auto life = lifetime.token();
    while (!ready.empty()) {
      const RequestId id = ready.front();
      ready.pop_front();
      auto it = transfers.find(id);
      if (it == transfers.end()) continue;  // cancelled after it finished
      auto transfer = std::move(it->second);
      transfers.erase(it);
      auto callback = std::move(transfer->callback);
      HttpResponse response = std::move(transfer->response);
      transfer.reset();
      if (callback) callback(std::move(response));  // may send, cancel, or destroy the client
      if (!life.alive()) return;
    }
  }

  static int onSocket(CURL*, curl_socket_t fd, int what, void* userp, void*) {
    auto* self = static_cast<Impl*>(userp);
    if (self->shuttingDown) return 0;
    if (what == CURL_POLL_REMOVE) {
      self->sockets.erase(fd);  // closes the poll handle before curl closes the socket
      return 0;
    }
    auto& socket = self->sockets[fd];
    if (!socket) {
      auto* poll = new uv_poll_t;
      if (uv_poll_init_socket(self->loop, poll, fd) != 0) {
        // Left unwatched, the transfer ends at its timeout with curl's error.
        delete poll;
        self->sockets.erase(fd);
        return 0;
      }
      socket = std::make_unique<Socket>();
      socket->owner = self;
      socket->fd = fd;
      poll->data = socket.get();
      socket->poll.adopt(poll);
    }
    int events = 0;
    if (what & CURL_POLL_IN) events |= UV_READABLE;
    if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
    uv_poll_start(socket->poll.get(), events, &Impl::onPoll);
    return 0;
  }

  static void onPoll(uv_poll_t* handle, int status, int events) {
    auto* socket = static_cast<Socket*>(handle->data);
    if (!socket) return;
    int flags = 0;
    if (status < 0) {
      flags = CURL_CSELECT_ERR;
    } else {
      if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
      if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    socket->owner->socketAction(socket->fd, flags);  // the socket may be gone afterwards
  }

  static int onCurlTimer(CURLM*, long timeoutMs, void* userp) {
    auto* self = static_cast<Impl*>(userp);
    if (self->shuttingDown) return 0;
    if (timeoutMs < 0) {
      uv_timer_stop(self->curlTimer.get());
      return 0;
    }
    // Never call curl from inside its own callback: act when the timer fires.
    uv_timer_start(
        self->curlTimer.get(),
        [](uv_timer_t* h) {
          if (auto* s = static_cast<Impl*>(h->data)) s->socketAction(CURL_SOCKET_TIMEOUT, 0);
        },
        static_cast<std::uint64_t>(timeoutMs), 0);
    return 0;
  }

  static int onSocketOpened(void*, curl_socket_t fd, curlsocktype) {
    const int flags = fcntl(fd, F_GETFD);
    if (flags >= 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    return CURL_SOCKOPT_OK;
  }

  static size_t onBody(char* data, size_t size, size_t count, void* userp) {
    auto* t = static_cast<Transfer*>(userp);
    const size_t n = size * count;
    if (t->request.onBodyChunk) {
      if (t->chunk.empty()) t->owner->chunksReady.push_back(t->id);
      t->chunk.append(data, n);
      return n;
    }
    if (t->request.discardBody) return n;
    std::string& body = t->response.body;
    if (const std::size_t tail = t->request.keepBodyTail; tail > 0) {
      body.append(data, n);
      if (body.size() > 2 * tail) {  // trimmed now and then, not at every chunk
        body.erase(0, body.size() - tail);
        t->response.bodyCut = true;
      }
      return n;
    }
    if (body.size() + n > kMaxBodyBytes) {
      t->bodyTooLarge = true;
      return 0;  // curl aborts the transfer
    }
    body.append(data, n);
    return n;
  }

  static size_t onHeader(char* data, size_t size, size_t count, void* userp) {
    auto* t = static_cast<Transfer*>(userp);
    const size_t n = size * count;
    const std::string_view line(data, n);
    if (line.substr(0, 5) == "HTTP/") {
      // A new status line (after "100 Continue" or a redirect): keep only the final answer's headers.
      t->response.headers.clear();
      return n;
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) return n;  // the blank line that ends the headers
    const auto name = trim(line.substr(0, colon));
    if (name.empty()) return n;
    t->response.headers.emplace_back(toLower(name), std::string(trim(line.substr(colon + 1))));
    return n;
  }

  uv_loop_t* loop;
  CURLM* multi = nullptr;
  UvHandle<uv_timer_t> curlTimer;      // curl's single timeout
  UvHandle<uv_timer_t> deliveryTimer;  // results known without curl, delivered from the loop
  std::map<curl_socket_t, std::unique_ptr<Socket>> sockets;
  std::map<RequestId, std::unique_ptr<Transfer>> transfers;
  std::deque<RequestId> ready;        // finished, callbacks not yet run
  std::deque<RequestId> chunksReady;  // streaming transfers with body pieces to hand over
  RequestId nextId = 1;
  bool shuttingDown = false;
  Lifetime lifetime;  // ended once destroyed
};

HttpClient::HttpClient(uv_loop_t* loop) : impl_(std::make_unique<Impl>(loop)) {}

HttpClient::~HttpClient() = default;

HttpClient::RequestId HttpClient::send(HttpRequest request, Callback callback) {
  return impl_->send(std::move(request), std::move(callback));
}

void HttpClient::cancel(RequestId id) {
  impl_->cancel(id);
}

std::size_t HttpClient::inFlight() const {
  return impl_->transfers.size();
}

}  // namespace ondemand::controld
