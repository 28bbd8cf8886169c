#include "ngx_module/service_table.hpp"

#include <algorithm>

namespace ondemand::module {

// --- ParkedList -------------------------------------------------------------

void ParkedList::pushBack(ParkNode* node) {
  remove(node);
  node->prev = head_.prev;
  node->next = &head_;
  head_.prev->next = node;
  head_.prev = node;
  node->list = this;
  ++size_;
}

ParkNode* ParkedList::popFront() {
  if (empty()) return nullptr;
  ParkNode* node = head_.next;
  remove(node);
  return node;
}

void ParkedList::moveAllTo(ParkedList& into) {
  while (ParkNode* node = popFront())
    into.pushBack(node);
}

void ParkedList::remove(ParkNode* node) {
  if (!node->linked()) return;
  node->prev->next = node->next;
  node->next->prev = node->prev;
  --node->list->size_;
  node->prev = node->next = nullptr;
  node->list = nullptr;
}

void ParkedList::clear() {
  while (popFront()) {
  }
}

// --- ServiceTable -----------------------------------------------------------

ServiceEntry* ServiceTable::find(std::string_view name) {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.get();
}

ServiceEntry& ServiceTable::get(std::string_view name) {
  if (ServiceEntry* entry = find(name)) return *entry;
  auto entry = std::make_unique<ServiceEntry>(std::string(name));
  ServiceEntry& ref = *entry;
  entries_.emplace(ref.name, std::move(entry));
  return ref;
}

ServiceEntry* ServiceTable::resolve(std::string_view name) {
  ServiceEntry* byName = find(name);
  if (byName != nullptr && byName->known) return byName;
  if (const auto it = models_.find(name); it != models_.end()) return it->second;
  return byName;
}

void ServiceTable::indexModels(ServiceEntry& entry, const std::vector<std::string>& before) {
  // Another service may have claimed a model since (a reload moving it):
  // only what still points here is dropped.
  for (const std::string& model : before) {
    const auto it = models_.find(model);
    if (it != models_.end() && it->second == &entry) models_.erase(it);
  }
  if (!entry.known) return;
  for (const std::string& model : entry.state.models)
    models_[model] = &entry;
}

void ServiceTable::forget(ServiceEntry& entry) {
  entry.known = false;
  entry.unknownLogged = false;
  indexModels(entry, entry.state.models);
}

std::vector<ServiceEntry*> ServiceTable::entries() const {
  std::vector<ServiceEntry*> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_)
    out.push_back(entry.get());
  return out;
}

std::vector<const ServiceEntry*> ServiceTable::sortedByName() const {
  std::vector<const ServiceEntry*> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_)
    out.push_back(entry.get());
  std::sort(out.begin(), out.end(), [](const ServiceEntry* a, const ServiceEntry* b) { return a->name < b->name; });
  return out;
}

ServiceEntry& ServiceTable::applyPush(const protocol::StatePush& push) {
  ServiceEntry& entry = get(push.service);
  std::vector<std::string> before = std::move(entry.state.models);
  // In a cluster, etcd back: controld acted on none of the wakes sent while
  // it was away (same epoch), so the next request or parked one asks again.
  if (entry.state.etcdUnreachableSinceMs > 0 && push.etcdUnreachableSinceMs == 0) entry.wakeSent = false;
  entry.state = push;
  if (!entry.known) entry.unknownLogged = false;
  entry.known = true;
  entry.refreshed = true;
  indexModels(entry, before);
  return entry;
}

void ServiceTable::beginSubscription() {
  for (auto& [name, entry] : entries_) {
    entry->refreshed = false;
    entry->wakeSent = false;
    entry->lastWakeMs = 0;
  }
}

std::vector<ServiceEntry*> ServiceTable::completeSync() {
  std::vector<ServiceEntry*> vanished;
  for (auto& [name, entry] : entries_) {
    if (entry->known && !entry->refreshed) {
      forget(*entry);
      vanished.push_back(entry.get());
    }
  }
  return vanished;
}

bool ServiceTable::claimWake(ServiceEntry& entry, std::int64_t nowMs) {
  switch (entry.state.state) {
    case ServiceState::Warm:
      return false;
    case ServiceState::Failed:
      // At most once a second for one failure; the first request after a
      // new failure always wakes (the start that failed may have been woken
      // less than a second ago, and a parked request never wakes again).
      if (entry.wakeSent && entry.wakeEpoch == entry.state.epoch && nowMs - entry.lastWakeMs < 1000) return false;
      break;
    case ServiceState::Cold:
    case ServiceState::Starting:
    case ServiceState::Stopping:
      if (entry.wakeSent && entry.wakeEpoch == entry.state.epoch) return false;
      break;
  }
  entry.wakeSent = true;
  entry.wakeEpoch = entry.state.epoch;
  entry.lastWakeMs = nowMs;
  return true;
}

protocol::Activity ServiceTable::takeActivity(bool everything) {
  protocol::Activity activity;
  for (auto& [name, entry] : entries_) {
    const bool report =
        entry->activityDirty || (everything && (entry->inFlight > 0 || entry->held > 0 ||
                                                entry->startedUnreported > 0 || !entry->waited.empty()));
    if (!report) continue;
    activity.entries.push_back({entry->name, entry->startedUnreported, entry->inFlight, entry->held, entry->waited});
    entry->startedUnreported = 0;
    entry->waited = {};
    entry->activityDirty = false;
  }
  return activity;
}

bool ServiceTable::activityPending() const {
  return std::any_of(entries_.begin(), entries_.end(), [](const auto& kv) { return kv.second->activityDirty; });
}

}  // namespace ondemand::module
