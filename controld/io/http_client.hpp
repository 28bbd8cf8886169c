#pragma once
// Non-blocking HTTP for controld: libcurl's multi interface driven by the libuv
// loop (socket and timer callbacks, no polling). Used by the health checker
// and the Semaphore driver. One slow or dead server never delays another
// transfer.

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ondemand::controld {

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;          // "Name: value"
  std::string body;                          // sent when non-empty, or when method is POST/PUT
  std::chrono::milliseconds timeout{30000};  // whole transfer; 0 with onBodyChunk: none
  // What of the answer's body is kept. By default all of it up to 64 MiB (a
  // larger one fails the request); with keepBodyTail only its last bytes, of
  // a body of any length (bodyCut tells whether bytes were dropped); with
  // discardBody none (a health probe needs only the status). These apply to a
  // buffered body; a streamed one (onBodyChunk) is handed over piece by piece
  // and never kept.
  std::size_t keepBodyTail = 0;
  bool discardBody = false;
  // TLS (https://): PEM files; empty = curl's defaults.
  std::string caFile;
  std::string certFile;
  std::string keyFile;
  // A streaming answer (etcd's watch): each piece of the body is handed here
  // as it arrives, on the loop (never from inside curl); the final response
  // then carries no body. The callback may cancel the transfer.
  std::function<void(std::string_view)> onBodyChunk;
};

struct HttpResponse {
  long status = 0;    // 0 when no HTTP answer arrived
  std::string error;  // curl's error text when status == 0 ("Connection refused", "Timeout was reached")
  std::string body;
  bool bodyCut = false;                                      // keepBodyTail: the body's beginning was dropped
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased

  bool ok() const { return status >= 200 && status < 300; }
  // The first header with this (lower-case) name, or empty.
  std::string header(const std::string& lowerName) const;
};

class HttpClient {
 public:
  using Callback = std::function<void(HttpResponse)>;
  using RequestId = std::uint64_t;

  explicit HttpClient(uv_loop_t* loop);
  ~HttpClient();  // aborts every transfer; no callback runs afterwards
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // The callback runs on the loop, never from inside send().
  RequestId send(HttpRequest request, Callback callback);
  void cancel(RequestId id);  // no callback for it afterwards
  std::size_t inFlight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ondemand::controld
