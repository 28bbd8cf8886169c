#include "controld/io/statsd.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>

#include "controld/io/log.hpp"

namespace ondemand::controld {

struct StatsdClient::Resolve {
  uv_getaddrinfo_t req;
  StatsdClient* owner;  // null once the client is gone
};

StatsdClient::StatsdClient(uv_loop_t* loop, std::string host, int port, std::string prefix)
    : loop_(loop), host_(std::move(host)), port_(port), prefix_(std::move(prefix)), retry_(loop) {
  while (!prefix_.empty() && prefix_.back() == '.')
    prefix_.pop_back();
  resolve();
}

StatsdClient::~StatsdClient() {
  if (pending_) pending_->owner = nullptr;
}

void StatsdClient::resolve() {
  auto* r = new Resolve{{}, this};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  const std::string port = std::to_string(port_);
  const int rc = uv_getaddrinfo(
      loop_, &r->req,
      [](uv_getaddrinfo_t* req, int status, addrinfo* res) {
        auto* r = reinterpret_cast<Resolve*>(req);
        StatsdClient* self = r->owner;
        if (self) self->pending_ = nullptr;
        if (self && status == 0 && res) {
          auto* udp = new uv_udp_t;
          uv_udp_init(self->loop_, udp);
          self->socket_.adopt(udp);
          if (uv_udp_connect(udp, res->ai_addr) == 0) {
            self->haveAddress_ = true;
            LogLine(LogLevel::Info, "statsd_ready").kv("host", self->host_).kv("port", self->port_);
          } else {
            self->socket_.reset();
          }
        }
        if (self && !self->haveAddress_) {
          LogLine(LogLevel::Warning, "statsd_unreachable")
              .kv("host", self->host_)
              .kv("why", status != 0 ? uv_strerror(status) : "cannot use its address")
              .kv("retry_in", "30s");
          self->retry_.start(std::chrono::seconds(30), [self] { self->resolve(); });
        }
        uv_freeaddrinfo(res);
        delete r;
      },
      host_.c_str(), port.c_str(), &hints);
  if (rc != 0) {
    delete r;
    LogLine(LogLevel::Warning, "statsd_unreachable").kv("host", host_).kv("why", uv_strerror(rc));
    return;
  }
  pending_ = r;
}

std::string StatsdClient::sanitize(std::string_view part) {
  std::string out(part);
  for (char& c : out) {
    if (c == ':' || c == '|' || c == '@' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '#') c = '_';
  }
  return out;
}

void StatsdClient::send(const std::string& line) {
  if (!haveAddress_) {
    ++dropped_;
    return;
  }
  uv_buf_t buf = uv_buf_init(const_cast<char*>(line.data()), static_cast<unsigned>(line.size()));
  if (uv_udp_try_send(socket_.get(), &buf, 1, nullptr) < 0) ++dropped_;
}

std::string StatsdClient::metricName(std::string_view name) const {
  return prefix_.empty() ? std::string(name) : prefix_ + "." + std::string(name);
}

void StatsdClient::count(std::string_view name, std::uint64_t by) {
  send(metricName(name) + ":" + std::to_string(by) + "|c");
}

void StatsdClient::timing(std::string_view name, std::uint64_t ms, double sampleRate) {
  std::string line = metricName(name) + ":" + std::to_string(ms) + "|ms";
  if (sampleRate < 1.0) {
    char rate[32];
    std::snprintf(rate, sizeof rate, "|@%.6g", sampleRate);
    line += rate;
  }
  send(line);
}

void StatsdClient::gauge(std::string_view name, std::uint64_t value) {
  send(metricName(name) + ":" + std::to_string(value) + "|g");
}

}  // namespace ondemand::controld
