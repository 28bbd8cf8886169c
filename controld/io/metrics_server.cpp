#include "controld/io/metrics_server.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <cstring>

#include "controld/config/host_port.hpp"
#include "controld/io/log.hpp"

namespace ondemand::controld {

namespace {

constexpr std::size_t kMaxHeadBytes = 8 * 1024;
constexpr std::size_t kMaxConnections = 64;
constexpr auto kReadTimeout = std::chrono::seconds(10);

std::string response(int status, const char* reason, const std::string& body, bool withBody = true,
                     const char* extraHeaders = "") {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
  out += status == 200 ? "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                       : "Content-Type: text/plain; charset=utf-8\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\n";
  out += extraHeaders;
  out += "\r\n";
  if (withBody) out += body;
  return out;
}

}  // namespace

std::string metricsHttpResponse(const std::string& head, const std::function<std::string()>& render) {
  const auto lineEnd = head.find("\r\n");
  const std::string line = head.substr(0, lineEnd);
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || line.compare(sp2 + 1, 5, "HTTP/") != 0) {
    return response(400, "Bad Request", "malformed request line\n");
  }
  const std::string method = line.substr(0, sp1);
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (const auto q = target.find('?'); q != std::string::npos) target.resize(q);
  if (target != "/metrics") return response(404, "Not Found", "only /metrics is served here\n");
  if (method != "GET" && method != "HEAD") {
    return response(405, "Method Not Allowed", "GET or HEAD only\n", true, "Allow: GET, HEAD\r\n");
  }
  return response(200, "OK", render(), method == "GET");
}

struct MetricsServer::Connection {
  explicit Connection(uv_loop_t* loop) : timer(loop) {}
  std::uint64_t id = 0;
  MetricsServer* server = nullptr;
  UvHandle<uv_tcp_t> tcp;
  std::string head;
  std::string out;
  bool answered = false;
  Timer timer;
};

MetricsServer::MetricsServer(uv_loop_t* loop, Render render) : loop_(loop), render_(std::move(render)) {}

MetricsServer::~MetricsServer() {
  close();
}

void MetricsServer::close() {
  listener_.reset();
  connections_.clear();
}

std::optional<std::string> MetricsServer::listen(const std::string& hostPort) {
  std::string why;
  const auto hp = parseHostPort(hostPort, why);
  if (!hp) return "metrics_listen " + hostPort + ": " + why;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(hp->port);
  // Once, before the loop serves anyone (a name such as localhost is looked up here).
  if (const int rc = ::getaddrinfo(hp->host.c_str(), port.c_str(), &hints, &res); rc != 0 || res == nullptr) {
    return "metrics_listen " + hostPort + ": cannot resolve " + hp->host + ": " + ::gai_strerror(rc);
  }
  auto* tcp = new uv_tcp_t;
  uv_tcp_init(loop_, tcp);
  tcp->data = this;
  listener_.adopt(tcp);
  int rc = uv_tcp_bind(tcp, res->ai_addr, 0);
  ::freeaddrinfo(res);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(tcp), 64, [](uv_stream_t* s, int status) {
      if (status == 0 && s->data) static_cast<MetricsServer*>(s->data)->accept();
    });
  }
  if (rc != 0) {
    listener_.reset();
    return "metrics_listen " + hostPort + ": " + uv_strerror(rc);
  }
  return std::nullopt;
}

void MetricsServer::accept() {
  auto c = std::make_unique<Connection>(loop_);
  auto* tcp = new uv_tcp_t;
  uv_tcp_init(loop_, tcp);
  c->tcp.adopt(tcp);
  if (uv_accept(reinterpret_cast<uv_stream_t*>(listener_.get()), reinterpret_cast<uv_stream_t*>(tcp)) != 0) return;
  if (connections_.size() >= kMaxConnections) {
    LogLine(LogLevel::Warning, "metrics_connection_refused").kv("why", "64 connections are open");
    return;  // closed by its owner going away
  }
  c->id = nextId_++;
  c->server = this;
  tcp->data = c.get();
  Connection& ref = *c;
  connections_[c->id] = std::move(c);
  ref.timer.start(kReadTimeout, [this, id = ref.id] { drop(id); });
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(tcp),
      [](uv_handle_t*, size_t suggested, uv_buf_t* buf) {
        buf->base = new char[suggested];
        buf->len = suggested;
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        std::unique_ptr<char[]> data(buf->base);
        auto* conn = static_cast<Connection*>(s->data);
        if (conn == nullptr || conn->answered) return;
        if (n < 0) {
          conn->server->drop(conn->id);
          return;
        }
        conn->head.append(buf->base, static_cast<std::size_t>(n));
        if (conn->head.find("\r\n\r\n") != std::string::npos || conn->head.find("\n\n") != std::string::npos) {
          conn->server->answer(*conn);
        } else if (conn->head.size() > kMaxHeadBytes) {
          conn->server->finish(*conn, response(431, "Request Header Fields Too Large", "request head over 8 KiB\n"));
        }
      });
}

void MetricsServer::answer(Connection& c) {
  finish(c, metricsHttpResponse(c.head, render_));
}

void MetricsServer::finish(Connection& c, std::string text) {
  c.answered = true;
  ++served_;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(c.tcp.get()));
  c.out = std::move(text);
  auto* req = new uv_write_t;
  uv_buf_t buf = uv_buf_init(c.out.data(), static_cast<unsigned>(c.out.size()));
  // The connection (and its buffer) stays until the write is done or it
  // times out. A connection that went first has left its handle's data null.
  const int rc = uv_write(req, reinterpret_cast<uv_stream_t*>(c.tcp.get()), &buf, 1, [](uv_write_t* w, int) {
    if (auto* conn = static_cast<Connection*>(w->handle->data)) conn->server->drop(conn->id);
    delete w;
  });
  if (rc != 0) {
    delete req;
    drop(c.id);
  }
}

void MetricsServer::drop(std::uint64_t id) {
  connections_.erase(id);
}

}  // namespace ondemand::controld
