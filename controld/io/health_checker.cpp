#include "controld/io/health_checker.hpp"

#include <algorithm>
#include <utility>

namespace ondemand::controld {

Millis nextProbeDelay(Millis elapsed, Millis interval) {
  if (elapsed < kFastProbePhase) return std::min(kFastProbeInterval, interval);
  return interval;
}

HealthChecker::HealthChecker(HttpClient& http, uv_loop_t* loop, std::string url, Millis interval, Millis probeTimeout)
    : http_(http), url_(std::move(url)), interval_(interval), probeTimeout_(probeTimeout), next_(loop) {}

HealthChecker::~HealthChecker() {
  stop();
}

void HealthChecker::start(HealthyCallback onHealthy) {
  next_.stop();
  if (probeId_) http_.cancel(std::exchange(probeId_, 0));
  onHealthy_ = std::move(onHealthy);
  waitingSince_ = Clock::now();
  probesSent_ = 0;
  lastDetail_.clear();
  probe();
}

void HealthChecker::stop() {
  next_.stop();
  onHealthy_ = nullptr;
  if (probeId_) http_.cancel(std::exchange(probeId_, 0));
  for (const auto id : oneShots_)
    http_.cancel(id);
  oneShots_.clear();
}

HttpRequest HealthChecker::makeRequest() const {
  HttpRequest request;
  request.url = url_;
  request.timeout = probeTimeout_;
  request.discardBody = true;  // the status says it all; a 64 MiB answer every 20 ms must cost nothing
  return request;
}

std::string HealthChecker::describe(const HttpResponse& response) {
  if (response.status == 0) return response.error;
  return "HTTP " + std::to_string(response.status);
}

void HealthChecker::probe() {
  probeStartedAt_ = Clock::now();
  ++probesSent_;
  probeId_ = http_.send(makeRequest(), [this](HttpResponse response) { onProbeDone(response); });
}

void HealthChecker::onProbeDone(const HttpResponse& response) {
  probeId_ = 0;
  lastDetail_ = describe(response);
  if (response.ok()) {
    auto onHealthy = std::move(onHealthy_);
    onHealthy_ = nullptr;
    onHealthy();  // last: may destroy the checker
    return;
  }
  const auto elapsed = std::chrono::duration_cast<Millis>(probeStartedAt_ - waitingSince_);
  const auto nextStart = probeStartedAt_ + nextProbeDelay(elapsed, interval_);
  const auto wait = std::chrono::duration_cast<Millis>(nextStart - Clock::now());
  next_.start(std::max(wait, Millis(0)), [this] { probe(); });
}

void HealthChecker::probeOnce(ProbeCallback callback) {
  auto id = std::make_shared<HttpClient::RequestId>(0);
  *id = http_.send(makeRequest(), [this, id, callback = std::move(callback)](HttpResponse response) {
    oneShots_.erase(*id);
    callback(response.ok(), describe(response));  // last: may destroy the checker
  });
  oneShots_.insert(*id);
}

}  // namespace ondemand::controld
