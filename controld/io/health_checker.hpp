#pragma once
// Readiness of a service: `GET health_url` until it answers 2xx.
//
// Probe schedule (nextProbeDelay): the first probe goes out at once; for the
// first 10 seconds of waiting a new probe starts every 20 ms, after that every
// `health_interval` (250 ms unless configured). Most services either come up
// within seconds or take much longer (a VM booting, a model loading), so the
// fast phase keeps the wait short where it matters and the steady phase keeps
// the load low where it does not: a service that becomes ready is noticed
// within about 20 ms during the first 10 s and within health_interval after
// that (plus the probe's own round trip). An interval shorter than 20 ms is
// used from the start.
//
// Probes never overlap: the next one is scheduled when the previous one has
// finished, keeping the cadence measured from the previous probe's start
// (a probe slower than the cadence is followed by the next one at once).
// Anything but a 2xx is not healthy: 503, a refused connection, a timeout
// (health_timeout per probe).

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "controld/io/http_client.hpp"
#include "controld/io/uv.hpp"
#include "shared/duration.hpp"

namespace ondemand::controld {

inline constexpr Millis kFastProbeInterval{20};
inline constexpr Millis kFastProbePhase{10000};

// How long after the start of one probe the next one starts, given how long
// the checker had been waiting when that probe started.
Millis nextProbeDelay(Millis elapsed, Millis interval);

class HealthChecker {
 public:
  using HealthyCallback = std::function<void()>;
  using ProbeCallback = std::function<void(bool healthy, std::string detail)>;

  HealthChecker(HttpClient& http, uv_loop_t* loop, std::string url, Millis interval, Millis probeTimeout);
  ~HealthChecker();  // like stop()
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Probes until the service answers 2xx, then calls onHealthy once (from the
  // loop) and stops. Starting again restarts the schedule.
  void start(HealthyCallback onHealthy);
  // Cancels the probing and any probeOnce(): no callback afterwards.
  void stop();
  bool running() const { return static_cast<bool>(onHealthy_); }

  // One probe, e.g. to confirm that a service recorded as warm still is after
  // controld restarted. `detail` says what answered: "HTTP 200", "HTTP 503",
  // or curl's error ("Failed to connect to ... Connection refused").
  void probeOnce(ProbeCallback callback);

  // The last probe's detail ("" before the first one) and how many probes
  // start() has sent: for failure reasons ("never became healthy: HTTP 503").
  const std::string& lastDetail() const { return lastDetail_; }
  std::uint64_t probesSent() const { return probesSent_; }
  const std::string& url() const { return url_; }

 private:
  using Clock = std::chrono::steady_clock;

  void probe();
  void onProbeDone(const HttpResponse& response);
  HttpRequest makeRequest() const;
  static std::string describe(const HttpResponse& response);

  HttpClient& http_;
  std::string url_;
  Millis interval_;
  Millis probeTimeout_;
  Timer next_;

  HealthyCallback onHealthy_;  // set while start() is in effect
  Clock::time_point waitingSince_;
  Clock::time_point probeStartedAt_;
  HttpClient::RequestId probeId_ = 0;         // the schedule's probe in flight, 0 if none
  std::set<HttpClient::RequestId> oneShots_;  // probeOnce() requests in flight
  std::string lastDetail_;
  std::uint64_t probesSent_ = 0;
};

}  // namespace ondemand::controld
