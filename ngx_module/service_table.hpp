#pragma once
// What one nginx worker knows about the services of one controld: the state
// controld last pushed for each, the requests parked on it and the activity
// not yet reported. Plain C++ (no nginx), so it can be unit-tested; the
// module owns one table per controld connection.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shared/protocol.hpp"

namespace ondemand::module {

class ParkedList;

// Intrusive list node. Parked requests live in nginx pool memory; the node
// knows its list so that a request can leave it from any path (released,
// timed out, client gone) in O(1).
struct ParkNode {
  ParkNode* prev = nullptr;
  ParkNode* next = nullptr;
  ParkedList* list = nullptr;
  void* owner = nullptr;  // the request context the node belongs to

  bool linked() const { return list != nullptr; }
};

class ParkedList {
 public:
  ParkedList() { head_.prev = head_.next = &head_; }
  ~ParkedList() { clear(); }
  ParkedList(const ParkedList&) = delete;
  ParkedList& operator=(const ParkedList&) = delete;

  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }

  ParkNode* front() const { return empty() ? nullptr : head_.next; }
  void pushBack(ParkNode* node);
  ParkNode* popFront();
  // Moves every node of this list to the end of `into`.
  void moveAllTo(ParkedList& into);
  // Unlinks the node from whatever list holds it; no-op when unlinked.
  static void remove(ParkNode* node);

 private:
  void clear();

  ParkNode head_;
  std::size_t size_ = 0;
};

struct ServiceEntry {
  explicit ServiceEntry(std::string serviceName) : name(std::move(serviceName)) { state.service = name; }

  std::string name;
  bool known = false;      // controld has this service, as of its last push or sync
  bool refreshed = false;  // pushed since the current subscription began
  protocol::StatePush state;

  ParkedList parked;  // requests of this worker waiting for the service

  // A wake goes out once per state epoch, and at most once a second while
  // failed (controld decides whether the failure back-off has passed).
  bool wakeSent = false;
  std::uint64_t wakeEpoch = 0;
  std::int64_t lastWakeMs = 0;

  // Activity of this worker, reported coalesced.
  std::uint64_t inFlight = 0;
  std::uint64_t startedUnreported = 0;
  std::uint64_t held = 0;       // requests of this worker waiting for the service now
  protocol::WaitCounts waited;  // waits that ended since the last report
  bool activityDirty = false;

  bool unknownLogged = false;  // "unknown service" is logged once, not per request
};

class ServiceTable {
 public:
  ServiceEntry* find(std::string_view name);
  // The entry for the name, created (not known to controld yet) if missing.
  // Entries are never freed while the table lives: requests keep pointers.
  ServiceEntry& get(std::string_view name);
  // What a name a request asks for leads to: a service known by that name,
  // else the known service that lists it among its models, else an entry of
  // that name not known to controld (yet), else nullptr.
  ServiceEntry* resolve(std::string_view name);
  std::size_t size() const { return entries_.size(); }

  // Stable snapshot: releasing requests may add entries while we iterate.
  std::vector<ServiceEntry*> entries() const;
  std::vector<const ServiceEntry*> sortedByName() const;

  // Stores a pushed state. Returns the entry.
  ServiceEntry& applyPush(const protocol::StatePush& push);
  // A new subscription begins: nothing is refreshed, no wake is on record.
  void beginSubscription();
  // The service is gone (removed, or missing from a new subscription's
  // burst): its models lead nowhere now.
  void forget(ServiceEntry& entry);
  // The initial burst is complete: a known service not pushed since the
  // subscription began no longer exists. Returns the entries that vanished.
  std::vector<ServiceEntry*> completeSync();

  // True when a wake should go out now for this entry (and records it).
  static bool claimWake(ServiceEntry& entry, std::int64_t nowMs);

  // Activity to report: the entries that changed, or with `everything`
  // (right after subscribing) every entry with requests in flight or held,
  // or unreported starts or waits. Resets what it reports. Empty when nothing to say.
  protocol::Activity takeActivity(bool everything);
  bool activityPending() const;

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  void indexModels(ServiceEntry& entry, const std::vector<std::string>& before);

  std::unordered_map<std::string, std::unique_ptr<ServiceEntry>, Hash, std::equal_to<>> entries_;
  std::unordered_map<std::string, ServiceEntry*, Hash, std::equal_to<>> models_;  // model -> its service
};

}  // namespace ondemand::module
