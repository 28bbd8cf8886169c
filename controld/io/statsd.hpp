#pragma once
// StatsD over UDP, for operators who collect with it (`statsd:` in
// controld.yaml or `serve --statsd-host/--statsd-port/--statsd-namespace`).
// Never blocks the loop: the host is resolved with uv_getaddrinfo (on libuv's
// thread pool) and lines go out with uv_udp_try_send; a line that cannot be
// sent at once (no address yet, a full socket buffer) is dropped and counted,
// as StatsD clients do.

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "controld/io/uv.hpp"

namespace ondemand::controld {

class StatsdClient {
 public:
  StatsdClient(uv_loop_t* loop, std::string host, int port, std::string prefix);
  ~StatsdClient();
  StatsdClient(const StatsdClient&) = delete;
  StatsdClient& operator=(const StatsdClient&) = delete;

  // "<prefix>.<name>:<value>|c|@<rate>" and so on. `name` parts are joined
  // with dots; characters StatsD gives a meaning to (: | @ and whitespace)
  // become '_'.
  void count(std::string_view name, std::uint64_t by = 1);
  void timing(std::string_view name, std::uint64_t ms, double sampleRate = 1.0);
  void gauge(std::string_view name, std::uint64_t value);

  std::uint64_t dropped() const { return dropped_; }
  const std::string& prefix() const { return prefix_; }

  // A metric name part made safe for StatsD (service names may hold dots:
  // they stay, as a hierarchy).
  static std::string sanitize(std::string_view part);

 private:
  void resolve();
  void send(const std::string& line);
  std::string metricName(std::string_view name) const;

  uv_loop_t* loop_;
  std::string host_;
  int port_;
  std::string prefix_;
  UvHandle<uv_udp_t> socket_;
  bool haveAddress_ = false;
  struct Resolve;
  Resolve* pending_ = nullptr;  // owned by libuv until its callback runs
  std::uint64_t dropped_ = 0;
  Timer retry_;
};

}  // namespace ondemand::controld
