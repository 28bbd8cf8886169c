#pragma once
// Shared machines: which services hold a machine's resources, which to stop
// to make room for a wake, and the wakes that wait for room. Pure logic like
// ServiceMachine: no I/O, no clock of its own (every call that depends on
// time takes the current unix ms), so every rule is testable with a fake
// clock. The daemon tells it what each service is doing and carries out what
// decide() returns (begin a start, evict a service).
//
// The rules (PRODUCT.md "Shared machines"; docs/CONFIGURATION.md):
// - A service holds its needs while it is starting (once its start began),
//   warm or stopping. A start waiting for room, a cold or a failed service
//   hold nothing.
// - Wakes for one machine are served in the order they came (a FIFO queue);
//   only the first may make room, the others wait behind it.
// - The first goes ahead when its needs fit beside what the others hold.
//   Else, when services already stopping would free enough, it waits for them.
//   Else it evicts: warm services that have nothing in flight, are evictable,
//   can be stopped, have been warm for at least the machine's min_warm (the
//   thrash guard) and whose last stop did not fail — least recently used
//   first (ties by name), then as few as make room. When even all of those
//   would not make room, nothing is evicted and it waits, with a reason that
//   names what would have to go and why it cannot go now.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shared/duration.hpp"
#include "shared/service_state.hpp"

namespace ondemand::controld {

using Amounts = std::map<std::string, double>;  // resource name -> amount

struct PlacementMachine {
  Amounts resources;
  Millis minWarm = Millis(30'000);  // thrash guard: no eviction before a service was warm this long
};

struct PlacementService {
  std::string machine;
  Amounts needs;
  bool evictable = true;
  bool canStop = true;  // controld has a stop driver for it
};

// What the daemon does next for one machine.
struct PlacementDecision {
  std::vector<std::string> start;  // begin these starts now, in this order
  // Stop these to make room; value: the service the room is for.
  std::vector<std::pair<std::string, std::string>> evict;
  // When decide() must be called again at the latest even if nothing else
  // changes (a min_warm guard runs out); nullopt: no timer needed.
  std::optional<std::int64_t> retryAtMs;
};

struct MachineUsage {
  struct Holder {
    std::string service;
    ServiceState state = ServiceState::Cold;
    Amounts needs;
  };
  struct Waiter {
    std::string service;
    std::int64_t sinceMs = 0;
    std::string reason;
  };
  std::string name;
  Amounts total;
  Amounts used;
  std::vector<Holder> holders;  // by name
  std::vector<Waiter> queue;    // first in line first
};

class Placement {
 public:
  // Configuration (again at every reload). A service on a machine that is
  // not declared, or without a machine, is not managed: it never waits.
  void configure(std::map<std::string, PlacementMachine> machines, std::map<std::string, PlacementService> services);
  bool manages(const std::string& service) const;
  const std::string& machineOf(const std::string& service) const;  // empty when not managed

  // What the service is doing now; call after every transition and
  // whenever its requests in flight change. `lastUsedMs` orders evictions
  // (least recently used first); `sinceMs` is when it entered `state`.
  void update(const std::string& service, ServiceState state, std::uint64_t inFlight, std::int64_t lastUsedMs,
              std::int64_t sinceMs);

  // A start that needs room joins its machine's queue (arrivedMs orders it;
  // equal times keep the order of the calls). Again for a queued one: no-op.
  void enqueue(const std::string& service, std::int64_t arrivedMs);
  // Leaves the queue (its start began, was abandoned, the service is gone).
  void dequeue(const std::string& service);
  bool queued(const std::string& service) const;
  // The reason a queued service waits, as decide() last found it; empty when
  // it does not wait (or decide() has not looked yet).
  std::string waitReason(const std::string& service) const;

  // The stop of an evicted service failed: it keeps its resources and is not
  // evicted again while it stays warm (nothing retries on its own).
  void stopFailed(const std::string& service, const std::string& reason);

  // What to do now on this machine. A service named in `start` leaves the
  // queue and holds its needs from now on.
  PlacementDecision decide(const std::string& machine, std::int64_t nowMs);

  MachineUsage usage(const std::string& machine) const;
  std::vector<std::string> machineNames() const;

 private:
  struct Known {
    PlacementService config;
    ServiceState state = ServiceState::Cold;
    std::uint64_t inFlight = 0;
    std::int64_t lastUsedMs = 0;
    std::int64_t sinceMs = 0;
    std::string stopFailure;  // set: its eviction's stop failed while it stays warm
  };
  struct Waiting {
    std::string service;
    std::int64_t arrivedMs = 0;
    std::string reason;
  };

  bool holds(const std::string& name, const Known& k) const;
  // Why `k` cannot be evicted now; empty when it can.
  std::string whyNotEvictable(const std::string& name, const Known& k, const PlacementMachine& m,
                              std::int64_t nowMs) const;

  std::map<std::string, PlacementMachine> machines_;
  std::map<std::string, Known> services_;
  std::map<std::string, std::deque<Waiting>> queues_;  // machine -> first in line first
};

// "24", "7.5"
std::string formatAmount(double amount);

}  // namespace ondemand::controld
