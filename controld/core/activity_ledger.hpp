#pragma once
// What the workers have told controld about the requests they hold: how many
// are in flight per connection and service, and, while a service drains,
// which workers still owe an answer to its `stopping` announcement. Pure
// bookkeeping (no I/O): the daemon feeds it messages and connection closes and
// asks it for sums; the state machine decides what they mean.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace ondemand::controld {

class ActivityLedger {
 public:
  using ConnectionId = std::uint64_t;

  // A worker's latest count of requests in flight for a service.
  void report(ConnectionId connection, const std::string& service, std::uint64_t inFlight);
  // The sum over every connection still open.
  std::uint64_t inFlight(const std::string& service) const;
  // A worker's latest count of requests it holds (waiting for the service),
  // and their sum over every connection still open.
  void reportHeld(ConnectionId connection, const std::string& service, std::uint64_t held);
  std::uint64_t held(const std::string& service) const;

  // A connection is gone: its counts no longer add up and it owes no answer.
  struct Dropped {
    std::vector<std::string> inFlightChanged;  // services whose sum it lowered
    std::vector<std::string> acknowledged;     // services that no longer wait for it
  };
  Dropped dropConnection(ConnectionId connection);

  // A service announces `stopping`: these workers must answer (a new
  // announcement replaces the last one).
  void beginDrain(const std::string& service, std::set<ConnectionId> workers);
  // A worker answered; false when it was not awaited.
  bool acknowledge(const std::string& service, ConnectionId connection);
  // No worker owes an answer for the service (also true when it never drained).
  bool drained(const std::string& service) const;
  std::size_t awaiting(const std::string& service) const;
  // The service left the configuration: nobody owes it an answer any more.
  void forgetDrain(const std::string& service);

 private:
  std::map<ConnectionId, std::map<std::string, std::uint64_t>> inFlight_;
  std::map<ConnectionId, std::map<std::string, std::uint64_t>> held_;
  std::map<std::string, std::set<ConnectionId>> awaiting_;
};

}  // namespace ondemand::controld
