#include "controld/core/activity_ledger.hpp"

#include "shared/saturating.hpp"

namespace ondemand::controld {

void ActivityLedger::report(ConnectionId connection, const std::string& service, std::uint64_t inFlight) {
  inFlight_[connection][service] = inFlight;
}

std::uint64_t ActivityLedger::inFlight(const std::string& service) const {
  std::uint64_t total = 0;
  for (const auto& [connection, counts] : inFlight_) {
    // Counts come from clients: one sending 2^64-1 must not wrap the sum to nothing.
    if (auto it = counts.find(service); it != counts.end()) total = saturatingAdd(total, it->second);
  }
  return total;
}

void ActivityLedger::reportHeld(ConnectionId connection, const std::string& service, std::uint64_t held) {
  held_[connection][service] = held;
}

std::uint64_t ActivityLedger::held(const std::string& service) const {
  std::uint64_t total = 0;
  for (const auto& [connection, counts] : held_) {
    if (auto it = counts.find(service); it != counts.end()) total += it->second;
  }
  return total;
}

ActivityLedger::Dropped ActivityLedger::dropConnection(ConnectionId connection) {
  Dropped dropped;
  held_.erase(connection);
  if (auto it = inFlight_.find(connection); it != inFlight_.end()) {
    for (const auto& [service, count] : it->second) {
      if (count != 0) dropped.inFlightChanged.push_back(service);
    }
    inFlight_.erase(it);
  }
  for (auto& [service, workers] : awaiting_) {
    if (workers.erase(connection)) dropped.acknowledged.push_back(service);
  }
  return dropped;
}

void ActivityLedger::beginDrain(const std::string& service, std::set<ConnectionId> workers) {
  awaiting_[service] = std::move(workers);
}

bool ActivityLedger::acknowledge(const std::string& service, ConnectionId connection) {
  auto it = awaiting_.find(service);
  return it != awaiting_.end() && it->second.erase(connection) > 0;
}

bool ActivityLedger::drained(const std::string& service) const {
  return awaiting(service) == 0;
}

std::size_t ActivityLedger::awaiting(const std::string& service) const {
  auto it = awaiting_.find(service);
  return it == awaiting_.end() ? 0 : it->second.size();
}

void ActivityLedger::forgetDrain(const std::string& service) {
  awaiting_.erase(service);
}

}  // namespace ondemand::controld
