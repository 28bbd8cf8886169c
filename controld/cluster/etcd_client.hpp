#pragma once
// etcd's v3 JSON gateway over controld's HttpClient, on the loop: unary calls
// (range, put, txn, lease grant/keepalive/revoke) with failover across the
// endpoints, auth tokens, TLS files, and one watch stream (a long-lived POST
// whose body is a sequence of JSON messages) that the caller restarts from
// the revision it reached when it breaks.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "controld/cluster/etcd_wire.hpp"
#include "controld/config/config.hpp"
#include "controld/io/http_client.hpp"
#include "controld/io/lifetime.hpp"

namespace ondemand::controld {

class EtcdClient {
 public:
  // ok: an HTTP 2xx answer without an error object; body is its text.
  // Otherwise error says why (transport, or etcd's error message).
  struct Reply {
    bool ok = false;
    bool transport = false;  // no answer from any endpoint (etcd unreachable)
    // etcd answered but refused this controld: its user or password, or the
    // user's permissions. As useless as no answer until an operator fixes it.
    bool refused = false;
    std::string error;
    std::string body;
  };
  using Callback = std::function<void(Reply)>;

  EtcdClient(HttpClient& http, const ClusterSettings& settings);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // POST /v3/<path> (e.g. "kv/range"). Tries the endpoints in turn, from the
  // last that answered, until one answers.
  void call(const std::string& path, std::string body, Callback callback);

  // One watch stream at a time. onMessage gets each parsed message;
  // onBroken once when the stream ends for any reason (never after
  // cancelWatch()).
  void watch(std::string key, std::string rangeEnd, std::int64_t startRevision,
             std::function<void(const etcd::WatchMessage&)> onMessage, std::function<void(std::string)> onBroken);
  void cancelWatch();
  bool watching() const { return watchId_ != 0; }

  const std::string& endpoint() const { return settings_.endpoints[current_]; }

 private:
  struct Attempt;
  void attempt(std::shared_ptr<Attempt> a);
  std::string tlsHint(const std::string& error) const;
  void authenticate(std::function<void(bool ok, std::string error)> done);
  HttpRequest request(const std::string& path, std::string body) const;

  HttpClient& http_;
  ClusterSettings settings_;
  std::size_t current_ = 0;
  std::string token_;
  HttpClient::RequestId watchId_ = 0;
  std::uint64_t watchGeneration_ = 0;
  Lifetime lifetime_;
};

}  // namespace ondemand::controld
