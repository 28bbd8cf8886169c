#include "controld/core/machine_queue.hpp"

#include <algorithm>

namespace ondemand::controld {

void MachineQueue::enqueue(const std::string& machine, const std::string& service, std::function<void()> begin) {
  if (machine.empty()) {
    begin();
    return;
  }
  Slot& slot = machines_[machine];
  if (slot.holder.empty()) {
    slot.holder = service;
    begin();
    return;
  }
  slot.waiting.emplace_back(service, std::move(begin));
}

void MachineQueue::release(const std::string& machine, const std::string& service) {
  if (machine.empty()) return;
  auto it = machines_.find(machine);
  if (it == machines_.end()) return;
  Slot& slot = it->second;
  auto& w = slot.waiting;
  w.erase(std::remove_if(w.begin(), w.end(), [&](const auto& entry) { return entry.first == service; }), w.end());
  if (slot.holder != service) return;
  slot.holder.clear();
  if (w.empty()) {
    machines_.erase(it);
    return;
  }
  auto next = std::move(w.front());
  w.pop_front();
  slot.holder = next.first;
  next.second();  // may release() again from inside; `slot` is re-looked-up there
}

bool MachineQueue::waiting(const std::string& machine, const std::string& service) const {
  auto it = machines_.find(machine);
  if (it == machines_.end()) return false;
  const auto& w = it->second.waiting;
  return std::any_of(w.begin(), w.end(), [&](const auto& entry) { return entry.first == service; });
}

}  // namespace ondemand::controld
