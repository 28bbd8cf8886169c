#pragma once
// controld in a cluster (docs/CLUSTER.md): several controlds share their
// services through etcd. One lease per controld, kept alive on the loop; per
// service one owner (the key owner/<service> created under the owner's lease
// by a txn on create_revision == 0, as etcd's election recipe does), and
// every write about a service fenced by a txn that compares that key's
// value and create_revision, so a controld that lost its lease writes
// nothing after it comes back.
//
// Keys under the prefix:
//   nodes/<node>              this controld: pid, lease, its services' settings (lease)
//   owner/<service>           the owning node (lease)
//   state/<service>           {"writer", "snapshot"}: the service's machine snapshot (fenced)
//   activity/<service>/<node> that node's requests in flight and started, its stopping-ack (lease)
//   wake/<service>/<node>     a wake from a node that does not own the service (lease)
//   stop/<service>/<node>     a `controld stop` on a node that does not own the service (lease)
//
// The owner drives the service's ServiceMachine; the other nodes mirror its
// state and push it to their workers. The daemon acts only on what it owns
// while etcd answers (owns()).

#include <rapidjson/fwd.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "controld/cluster/etcd_client.hpp"
#include "controld/config/config.hpp"
#include "controld/core/service_machine.hpp"
#include "controld/io/lifetime.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

// What the cluster tells the daemon. All calls happen on the loop.
class ClusterHost {
 public:
  virtual ~ClusterHost() = default;
  // This node now owns the service. `snapshot`: what etcd holds (written by
  // `writer`), to follow; nullopt when etcd has nothing yet.
  virtual void clusterGained(const std::string& service, std::optional<MachineSnapshot> snapshot,
                             const std::string& writer) = 0;
  // This node no longer owns it: act on nothing of it any more.
  virtual void clusterLost(const std::string& service) = 0;
  // The owner (another node) wrote a new state.
  virtual void clusterMirror(const std::string& service, MachineSnapshot snapshot) = 0;
  // Owner only: another node's worker wants the service.
  virtual void clusterWake(const std::string& service, const std::string& reason) = 0;
  // Owner only: `controld stop` ran on another node.
  virtual void clusterStop(const std::string& service, const std::string& reason) = 0;
  // Owner only: another node's activity or stopping-ack changed.
  virtual void clusterActivity(const std::string& service, bool requestsStarted) = 0;
  // etcd became reachable or unreachable.
  virtual void clusterReachability(bool reachable) = 0;
  // After an outage: re-read and watching again (unreachableSinceMs() is 0 again).
  virtual void clusterCaughtUp() = 0;
};

// A node's summary of one service's settings; nodes compare them.
std::string serviceSummary(const ServiceConfig& config);

class Cluster {
 public:
  Cluster(uv_loop_t* loop, HttpClient& http, const ClusterSettings& settings, ClusterHost& host);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // The services this node serves, by name -> serviceSummary(). Called
  // before start() and again after a reload.
  void setServices(std::map<std::string, std::string> summaries);
  void start();

  // controld stopping: act on nothing more, let the pending state writes
  // finish, then revoke the lease so that every key under it (owner, node,
  // activity, wakes) goes now and another node takes over at once, not after
  // lease_ttl. done() runs once: when etcd answered, or after `bound`.
  void leave(std::chrono::milliseconds bound, std::function<void()> done);

  bool reachable() const { return reachable_; }
  // Unix ms since when etcd does not answer this node, until it answers and
  // this node has re-read everything and watches again; 0 otherwise.
  std::int64_t unreachableSinceMs() const { return unreachableSinceMs_; }
  bool owns(const std::string& service) const;
  std::string ownerOf(const std::string& service) const;

  // Owner: writes the service's snapshot, fenced; done(true) once etcd has it.
  void publishState(const std::string& service, const MachineSnapshot& snapshot, std::function<void(bool)> done);
  // Not owner: a worker of this node wants the service.
  void forwardWake(const std::string& service, const std::string& reason);
  // Not owner: `controld stop` ran on this node. The owner acts on it if it
  // sees it on its watch (a request an owner missed is not replayed later).
  void forwardStop(const std::string& service, const std::string& reason);
  // This node's requests in flight and started (cumulative) for a service.
  void reportLocal(const std::string& service, std::uint64_t inFlight, std::uint64_t started);
  // Not owner: this node's workers all answered the stopping announcement `epoch`.
  void reportAck(const std::string& service, std::uint64_t epoch, std::uint64_t inFlight);

  // Owner: requests in flight on the other nodes.
  std::uint64_t remoteInFlight(const std::string& service) const;
  // Owner: whether every other live node serving it acknowledged `epoch`.
  bool remoteAcked(const std::string& service, std::uint64_t epoch) const;

  // The "cluster" object of `controld status --json`.
  std::string statusJson() const;

 private:
  struct Remote {
    std::uint64_t inFlight = 0;
    std::uint64_t started = 0;
    std::uint64_t ackEpoch = 0;
  };
  struct Member {
    std::int64_t lease = 0;
    std::int64_t pid = 0;
    std::int64_t startedAt = 0;
    std::string version;
    std::map<std::string, std::string> services;  // name -> summary
  };
  struct Owner {
    std::string node;
    std::int64_t createRevision = 0;
    std::int64_t lease = 0;
  };
  struct Writes {  // one service's fenced state writes: one at a time, the newest wins
    bool busy = false;
    std::optional<std::string> pending;
    std::vector<std::function<void(bool)>> waiting;
  };
  struct Local {
    std::uint64_t inFlight = 0;
    std::uint64_t started = 0;
    std::uint64_t ackEpoch = 0;
    bool busy = false;
    bool dirty = false;
  };

  struct Forward {  // a wake or stop etcd answered with an error: repair() sends it again
    std::string kind;
    std::string service;
    std::string reason;
  };

  struct StateValue {  // what state/<service> holds
    std::string writer;
    std::optional<MachineSnapshot> snapshot;  // nullopt: none, or one that does not read (error says why)
    std::string error;
  };
  static constexpr auto kRetry = std::chrono::milliseconds(500);

  // cluster.cpp: the core and reporting.
  std::string key(const std::string& kind, const std::string& service = {}, const std::string& node = {}) const;
  void failed(const EtcdClient::Reply& reply, const std::string& what);
  void setReachable(bool reachable, const std::string& why);
  void retryLater(std::function<void()> step);
  void checkMismatches();

  // cluster_ownership.cpp: the lease, claiming, fenced writes, leaving.
  void grantLease();
  void keepAlive();
  void leaseLost(const std::string& why);
  void registerNode();
  void contend(const std::string& service);
  void repair();
  void repairLater();
  void claimed(const std::string& service, const etcd::TxnResult& txn);
  void setOwner(const std::string& service, std::optional<Owner> owner);
  void flushState(const std::string& service);
  void revokeWhenWritten();
  void left(const char* how);

  // cluster_mirror.cpp: reading and watching etcd, the other nodes, this node's activity.
  static StateValue readStateValue(const std::string& value);
  void resync();
  void resynced(const etcd::RangeResult& range);
  void watchFrom(std::int64_t revision);
  void apply(const etcd::KeyValue& kv, bool deleted, bool live);  // live: from the watch, not a range
  void forward(const char* kind, const std::string& service, const std::string& reason);
  void applyMember(const std::string& node, const rapidjson::Value* value, std::int64_t lease);  // null: deleted
  void applyActivity(const std::string& service, const std::string& node, const rapidjson::Value* value);
  void mirrorState(const std::string& service, const std::string& value);
  void flushLocal(const std::string& service);

  ClusterSettings settings_;
  ClusterHost& host_;
  EtcdClient etcd_;
  Timer keepaliveTimer_;
  Timer retryTimer_;
  Timer repairTimer_;
  Timer watchTimer_;
  Timer leaveTimer_;
  bool leaving_ = false;
  bool revoking_ = false;
  std::function<void()> leftCallback_;
  std::map<std::string, std::string> services_;  // mine: name -> summary
  std::int64_t leaseId_ = 0;
  std::int64_t leaseTtl_ = 0;
  std::int64_t lastKeepaliveMs_ = 0;
  bool keepaliveBusy_ = false;
  bool registered_ = false;  // nodes/<node> is put, or on its way
  bool synced_ = false;      // ranged and watching
  bool reachable_ = false;
  std::string lastError_;
  std::int64_t reachableSinceMs_ = 0;
  std::int64_t unreachableSinceMs_ = 0;
  std::int64_t revision_ = 0;  // the store revision seen last
  std::map<std::string, Owner> owners_;
  std::map<std::string, std::int64_t> mine_;  // owned by me: service -> owner key's create_revision
  std::set<std::string> contending_;
  std::map<std::string, Member> members_;
  std::map<std::string, std::map<std::string, Remote>> remote_;  // service -> node -> activity
  std::map<std::string, Local> local_;
  std::map<std::string, Writes> writes_;
  std::set<std::string> forwardsInFlight_;  // "wake/<service>", "stop/<service>"
  std::map<std::string, Forward> unsent_;   // by the same key
  std::uint64_t forwardSeq_ = 0;
  std::set<std::string> reportedMismatches_;
  std::vector<std::string> mismatches_;  // "service: node a has idle_timeout_ms=..., node b ..." (JSON objects)
  std::int64_t startedAtMs_ = 0;
  Lifetime lifetime_;
};

}  // namespace ondemand::controld
