#pragma once
// What controld counts for Prometheus (`metrics_listen`, `controld metrics`)
// and StatsD, per service: histograms of cold-start and wait durations and
// stops by reason. Pure: fed with transitions and the workers' wait counts,
// no I/O. Counters live as long as the process (Prometheus expects resets);
// starts by result come from the persisted counts of the state machine.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "controld/core/service_machine.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

// Upper bounds (ms, inclusive) of the cold-start histogram's buckets.
extern const std::vector<std::uint64_t> kColdStartBucketsMs;

class Histogram {
 public:
  explicit Histogram(std::vector<std::uint64_t> boundsMs);

  void observe(std::uint64_t ms);
  // Adds counts made with the protocol's wait buckets (the same bounds).
  void add(const protocol::WaitCounts& waits);

  const std::vector<std::uint64_t>& boundsMs() const { return bounds_; }
  // Per bucket, not cumulative; one more than the bounds (above the last).
  const std::vector<std::uint64_t>& counts() const { return counts_; }
  std::uint64_t sumMs() const { return sumMs_; }
  std::uint64_t count() const;

 private:
  std::vector<std::uint64_t> bounds_;
  std::vector<std::uint64_t> counts_;
  std::uint64_t sumMs_ = 0;
};

// Something worth a StatsD line, derived from a transition.
struct MetricEvent {
  enum class Kind { StartOk, StartFailed, Stop };
  Kind kind = Kind::StartOk;
  std::string reason;           // Stop: idle, evicted, cli, ...
  std::int64_t durationMs = 0;  // StartOk: wake to warm; Stop: stopping to cold
};

class ServiceMetrics {
 public:
  ServiceMetrics();

  // A new transition of the service (snapshot = the machine after it).
  std::optional<MetricEvent> transition(const Transition& t, const MachineSnapshot& after);
  void waitsEnded(const protocol::WaitCounts& waits) { wait_.add(waits); }

  const Histogram& coldStart() const { return coldStart_; }
  const Histogram& wait() const { return wait_; }
  // Finished stops by the cause that began them: idle, evicted and cli are
  // always present (0 until one happens).
  const std::map<std::string, std::uint64_t>& stops() const { return stops_; }

 private:
  Histogram coldStart_;
  Histogram wait_;
  std::map<std::string, std::uint64_t> stops_;
  std::string stopReason_;  // the cause of the stop under way
  std::int64_t stoppingSinceMs_ = 0;
  static constexpr std::uint64_t kUnseen = ~std::uint64_t{0};
  std::uint64_t startsOkSeen_ = kUnseen;  // the machine's counts at the last transition
  std::uint64_t startsFailedSeen_ = kUnseen;
};

}  // namespace ondemand::controld
