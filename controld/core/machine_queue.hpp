#pragma once
// Operations (starts and stops) of services that share a `machine` run one at
// a time, in the order they were asked for; different machines run in
// parallel. A service without a machine never waits.

#include <deque>
#include <functional>
#include <map>
#include <string>

namespace ondemand::controld {

class MachineQueue {
 public:
  // Runs `begin` now if the machine is free (or empty), else when its turn comes.
  void enqueue(const std::string& machine, const std::string& service, std::function<void()> begin);
  // The service's operation on that machine ended (or was abandoned, or was
  // still waiting): the next one may begin.
  void release(const std::string& machine, const std::string& service);
  // Whether the service's operation is waiting for its turn.
  bool waiting(const std::string& machine, const std::string& service) const;

 private:
  struct Slot {
    std::string holder;  // service whose operation runs, empty = free
    std::deque<std::pair<std::string, std::function<void()>>> waiting;
  };
  std::map<std::string, Slot> machines_;
};

}  // namespace ondemand::controld
