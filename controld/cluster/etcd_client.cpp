#include "controld/cluster/etcd_client.hpp"

#include <algorithm>
#include <iterator>
#include <memory>

namespace ondemand::controld {

struct EtcdClient::Attempt {
  std::string path;
  std::string body;
  Callback callback;
  std::size_t tried = 0;  // endpoints tried so far
  bool reauthenticated = false;
  std::string lastError;
};

EtcdClient::EtcdClient(HttpClient& http, const ClusterSettings& settings) : http_(http), settings_(settings) {}

EtcdClient::~EtcdClient() {
  lifetime_.end();
  cancelWatch();
}

HttpRequest EtcdClient::request(const std::string& path, std::string body) const {
  HttpRequest r;
  r.method = "POST";
  r.url = endpoint() + "/v3/" + path;
  r.body = std::move(body);
  r.headers.push_back("Content-Type: application/json");
  if (!token_.empty()) r.headers.push_back("Authorization: " + token_);
  r.timeout = settings_.requestTimeout;
  r.caFile = settings_.caFile;
  r.certFile = settings_.certFile;
  r.keyFile = settings_.keyFile;
  return r;
}

void EtcdClient::call(const std::string& path, std::string body, Callback callback) {
  auto a = std::make_shared<Attempt>();
  a->path = path;
  a->body = std::move(body);
  a->callback = std::move(callback);
  if (!settings_.username.empty() && token_.empty()) {
    authenticate([this, a, life = lifetime_.token()](bool ok, std::string error) {
      if (!life.alive()) return;
      if (!ok) {
        Reply r;
        r.transport = error.rfind("unreachable: ", 0) == 0;
        r.refused = !r.transport;
        r.error = std::move(error);
        a->callback(std::move(r));
        return;
      }
      attempt(a);
    });
    return;
  }
  attempt(a);
}

// An etcd started with --client-cert-auth drops a TLS connection that brings
// no certificate; curl then reports a bad-certificate alert or, as often, a
// socket already gone or reset (TLS 1.3 sends the alert after the handshake).
// None of them names the setting that is missing.
std::string EtcdClient::tlsHint(const std::string& error) const {
  if (!settings_.certFile.empty() || endpoint().rfind("https://", 0) != 0) return {};
  // Any of these once the TCP connection was made (the alert may arrive
  // before or after curl writes): no connect error, no timeout.
  static constexpr const char* kDropped[] = {"SSL", "getpeername", "Send failure", "Recv failure", "reset by peer"};
  if (std::none_of(std::begin(kDropped), std::end(kDropped),
                   [&](const char* sign) { return error.find(sign) != std::string::npos; })) {
    return {};
  }
  return " - no client certificate was offered: if etcd runs with --client-cert-auth, set cert_file and key_file";
}

void EtcdClient::attempt(std::shared_ptr<Attempt> a) {
  http_.send(request(a->path, a->body), [this, a, life = lifetime_.token()](HttpResponse response) {
    if (!life.alive()) return;
    if (response.status == 0 || (response.status >= 500 && !etcd::errorOf(response.body))) {
      a->lastError = endpoint() + ": " + (response.status ? "HTTP " + std::to_string(response.status) : response.error);
      if (response.status == 0) a->lastError += tlsHint(response.error);
      ++a->tried;
      current_ = (current_ + 1) % settings_.endpoints.size();
      if (a->tried < settings_.endpoints.size()) return attempt(a);
      Reply r;
      r.transport = true;
      r.error = "etcd unreachable (" + a->lastError + ")";
      return a->callback(std::move(r));
    }
    Reply r;
    if (auto e = etcd::errorOf(response.body)) {
      if (!settings_.username.empty() && !a->reauthenticated && e->find("auth token") != std::string::npos) {
        a->reauthenticated = true;
        token_.clear();
        authenticate([this, a, life](bool ok, std::string error) {
          if (!life.alive()) return;
          if (!ok) {
            Reply failed;
            failed.error = std::move(error);
            return a->callback(std::move(failed));
          }
          attempt(a);
        });
        return;
      }
      r.error = "etcd: " + *e;
      r.refused = e->find("permission denied") != std::string::npos;
    } else if (!response.ok()) {
      r.error = "etcd answered HTTP " + std::to_string(response.status);
    } else {
      r.ok = true;
    }
    r.body = std::move(response.body);
    a->callback(std::move(r));
  });
}

void EtcdClient::authenticate(std::function<void(bool ok, std::string error)> done) {
  const std::string saved = std::move(token_);
  token_.clear();
  auto a = std::make_shared<Attempt>();
  a->path = "auth/authenticate";
  a->body = etcd::authenticateBody(settings_.username, settings_.password);
  a->reauthenticated = true;  // no loop
  a->callback = [this, done = std::move(done)](Reply r) {
    if (!r.ok) return done(false, (r.transport ? "unreachable: " : "etcd authentication failed: ") + r.error);
    std::string error;
    auto token = etcd::parseAuthToken(r.body, error);
    if (!token) return done(false, error);
    token_ = *token;
    done(true, {});
  };
  attempt(a);
}

void EtcdClient::watch(std::string key, std::string rangeEnd, std::int64_t startRevision,
                       std::function<void(const etcd::WatchMessage&)> onMessage,
                       std::function<void(std::string)> onBroken) {
  cancelWatch();
  const std::uint64_t generation = ++watchGeneration_;
  auto splitter = std::make_shared<etcd::LineSplitter>();
  auto broken = std::make_shared<std::function<void(std::string)>>(std::move(onBroken));
  HttpRequest r = request("watch", etcd::watchCreateBody(key, rangeEnd, startRevision));
  r.timeout = std::chrono::milliseconds(0);
  auto life = lifetime_.token();
  r.onBodyChunk = [this, generation, splitter, broken, onMessage = std::move(onMessage), life](std::string_view data) {
    for (const std::string& line : splitter->feed(data)) {
      if (!life.alive() || generation != watchGeneration_) return;
      std::string error;
      auto message = etcd::parseWatch(line, error);
      if (!message || message->canceled) {
        const std::string why = message ? "watch canceled: " + message->cancelReason : error;
        if (message && message->compactRevision) onMessage(*message);  // tells the revision to resync from
        if (!life.alive() || generation != watchGeneration_) return;
        cancelWatch();
        (*broken)(why);
        return;
      }
      onMessage(*message);
    }
    if (splitter->overflow() && life.alive() && generation == watchGeneration_) {
      cancelWatch();
      (*broken)("watch message too large");
    }
  };
  watchId_ = http_.send(std::move(r), [this, generation, broken, life](HttpResponse response) {
    if (!life.alive() || generation != watchGeneration_) return;
    watchId_ = 0;
    current_ = (current_ + 1) % settings_.endpoints.size();  // the next try goes elsewhere
    (*broken)(response.status ? "watch stream ended (HTTP " + std::to_string(response.status) + ")"
                              : "watch stream broken: " + response.error);
  });
}

void EtcdClient::cancelWatch() {
  ++watchGeneration_;
  if (watchId_) http_.cancel(watchId_);
  watchId_ = 0;
}

}  // namespace ondemand::controld
