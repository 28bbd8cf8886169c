#include "controld/core/metrics.hpp"

#include <numeric>

namespace ondemand::controld {

const std::vector<std::uint64_t> kColdStartBucketsMs = {1000,  2500,   5000,   10000,  20000,  30000,
                                                        60000, 120000, 300000, 600000, 1200000};

Histogram::Histogram(std::vector<std::uint64_t> boundsMs)
    : bounds_(std::move(boundsMs)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(std::uint64_t ms) {
  std::size_t i = 0;
  while (i < bounds_.size() && ms > bounds_[i])
    ++i;
  ++counts_[i];
  sumMs_ += ms;
}

void Histogram::add(const protocol::WaitCounts& waits) {
  if (counts_.size() != waits.buckets.size()) return;  // not made with the wait bounds
  for (std::size_t i = 0; i < counts_.size(); ++i)
    counts_[i] += waits.buckets[i];
  sumMs_ += waits.sumMs;
}

std::uint64_t Histogram::count() const {
  return std::accumulate(counts_.begin(), counts_.end(), std::uint64_t{0});
}

ServiceMetrics::ServiceMetrics()
    : coldStart_(kColdStartBucketsMs),
      wait_(std::vector<std::uint64_t>(protocol::kWaitBucketsMs.begin(), protocol::kWaitBucketsMs.end())),
      stops_{{"cli", 0}, {"evicted", 0}, {"idle", 0}} {}

std::optional<MetricEvent> ServiceMetrics::transition(const Transition& t, const MachineSnapshot& after) {
  // A cold start counts when the machine counted one (a service recovered
  // as warm after a restart of controld was not started by anyone).
  const bool startedOk = after.startsOk != startsOkSeen_ && startsOkSeen_ != kUnseen;
  const bool startFailed = after.startsFailed != startsFailedSeen_ && startsFailedSeen_ != kUnseen;
  const bool first = startsOkSeen_ == kUnseen;
  startsOkSeen_ = after.startsOk;
  startsFailedSeen_ = after.startsFailed;
  if (t.to == ServiceState::Stopping) {
    if (t.from != ServiceState::Stopping) {
      stopReason_ = toString(t.cause);
      stoppingSinceMs_ = t.atMs;
    }
    return std::nullopt;
  }
  if (t.from == ServiceState::Stopping) {
    std::optional<MetricEvent> event;
    if (t.to == ServiceState::Cold) {
      const std::string reason = stopReason_.empty() ? toString(t.cause) : stopReason_;
      ++stops_[reason];
      event = MetricEvent{MetricEvent::Kind::Stop, reason,
                          stoppingSinceMs_ > 0 ? std::max<std::int64_t>(0, t.atMs - stoppingSinceMs_) : 0};
    }
    stopReason_.clear();
    stoppingSinceMs_ = 0;
    return event;
  }
  if (t.from == ServiceState::Starting && t.to == ServiceState::Warm && (startedOk || first)) {
    coldStart_.observe(static_cast<std::uint64_t>(std::max<std::int64_t>(0, after.lastStartMs)));
    return MetricEvent{MetricEvent::Kind::StartOk, {}, after.lastStartMs};
  }
  if (t.from == ServiceState::Starting && t.to == ServiceState::Failed && (startFailed || first)) {
    return MetricEvent{MetricEvent::Kind::StartFailed, {}, 0};
  }
  return std::nullopt;
}

}  // namespace ondemand::controld
