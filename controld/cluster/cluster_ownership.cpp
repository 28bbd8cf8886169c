// The cluster's lease and what this node owns under it: granting and renewing
// the lease, registering the node, claiming a service (the owner key created
// under the lease only while it does not exist), the fenced state writes of
// an owner, losing ownership, and leaving (revoking the lease so another node
// takes over at once).
#include "controld/cluster/cluster.hpp"

#include <unistd.h>

#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"
#include "controld/io/state_store.hpp"
#include "controld/version.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::controld {

// --- lease ------------------------------------------------------------------

void Cluster::grantLease() {
  if (leaving_) return;
  const std::int64_t ttl = settings_.leaseTtl.count() / 1000;
  etcd_.call("lease/grant", etcd::leaseGrantBody(ttl), [this, life = lifetime_.token()](EtcdClient::Reply r) {
    if (!life.alive()) return;
    std::string error;
    std::optional<etcd::LeaseResult> lease;
    if (r.ok) lease = etcd::parseLease(r.body, error);
    if (!r.ok || !lease || lease->id == 0) {
      if (r.ok) r.error = error.empty() ? "no lease id" : error;
      failed(r, "lease/grant");
      return retryLater([this] { grantLease(); });
    }
    leaseId_ = lease->id;
    leaseTtl_ = lease->ttl;
    lastKeepaliveMs_ = clockMillisNow();
    LogLine(LogLevel::Info, "cluster_lease").kv("node", settings_.node).kv("lease", leaseId_).kv("ttl_s", leaseTtl_);
    keepaliveTimer_.start(std::chrono::milliseconds(leaseTtl_ * 1000 / 3), [this] { keepAlive(); });
    registerNode();
    resync();
  });
}

void Cluster::keepAlive() {
  keepaliveTimer_.start(std::chrono::milliseconds(std::max<std::int64_t>(leaseTtl_ * 1000 / 3, 500)),
                        [this] { keepAlive(); });
  if (keepaliveBusy_ || !leaseId_) return;
  keepaliveBusy_ = true;
  etcd_.call("lease/keepalive", etcd::leaseIdBody(leaseId_),
             [this, life = lifetime_.token(), id = leaseId_](EtcdClient::Reply r) {
               if (!life.alive()) return;
               keepaliveBusy_ = false;
               if (id != leaseId_) return;
               if (!r.ok) return failed(r, "lease/keepalive");
               std::string error;
               auto lease = etcd::parseLease(r.body, error);
               if (!lease) {
                 LogLine(LogLevel::Warning, "etcd_error").kv("request", "lease/keepalive").kv("why", error);
                 return;
               }
               if (lease->ttl <= 0) return leaseLost("the lease expired");
               lastKeepaliveMs_ = clockMillisNow();
               if (!reachable_ || !synced_) {
                 setReachable(true, {});
                 resync();  // catch up: re-read everything, watch from there
               }
             });
}

void Cluster::leaseLost(const std::string& why) {
  LogLine(LogLevel::Warning, "cluster_lease_lost").kv("lease", leaseId_).kv("why", why);
  leaseId_ = 0;
  synced_ = false;
  etcd_.cancelWatch();
  keepaliveTimer_.stop();
  auto lost = mine_;
  mine_.clear();
  for (const auto& [service, rev] : lost)
    host_.clusterLost(service);
  local_.clear();
  grantLease();
}

void Cluster::registerNode() {
  JsonWriter w;
  w.startObject()
      .str("node", settings_.node)
      .i64("pid", ::getpid())
      .str("version", versionString())
      .i64("started_at", startedAtMs_)
      .i64("lease", leaseId_);
  w.key("services").startObject();
  for (const auto& [name, summary] : services_)
    w.key(name).json(summary);
  w.endObject().endObject();
  registered_ = true;  // until etcd says otherwise
  etcd_.call("kv/put", etcd::putBody(key("nodes", settings_.node), w.text(), leaseId_),
             [this, life = lifetime_.token()](EtcdClient::Reply r) {
               if (!life.alive()) return;
               if (r.ok) return;
               registered_ = false;
               failed(r, "register node");
               repairLater();
             });
}

// A claim, a registration, a forwarded wake or stop, or an activity report
// that etcd answered without doing it (a timeout inside etcd, a token it no
// longer knows) is sent again: nothing else would. When etcd does not answer
// at all, the resync that follows its return does the same.
void Cluster::repairLater() {
  if (reachable_) repairTimer_.start(kRetry, [this] { repair(); });
}

void Cluster::repair() {
  if (leaving_ || !leaseId_) return;
  if (!registered_) registerNode();
  auto unsent = std::move(unsent_);
  unsent_.clear();
  for (const auto& [what, f] : unsent)
    forward(f.kind.c_str(), f.service, f.reason);
  for (const auto& [name, l] : local_)
    if (l.dirty && !l.busy) flushLocal(name);
  if (!synced_) return;  // the resync contends for what it finds unowned
  for (const auto& [name, summary] : services_)
    if (!owners_.count(name)) contend(name);
}

// --- ownership --------------------------------------------------------------

void Cluster::contend(const std::string& service) {
  if (leaving_ || !leaseId_ || contending_.count(service) || mine_.count(service)) return;
  contending_.insert(service);
  const std::string ownerKey = key("owner", service);
  const std::string stateKey = key("state", service);
  etcd::Compare unowned{ownerKey, etcd::Compare::Target::Create, 0, {}};
  etcd::TxnOp claim{etcd::TxnOp::Kind::Put, ownerKey, settings_.node, leaseId_, {}};
  etcd::TxnOp readOwner{etcd::TxnOp::Kind::Range, ownerKey, {}, 0, {}};
  etcd::TxnOp readState{etcd::TxnOp::Kind::Range, stateKey, {}, 0, {}};
  etcd_.call("kv/txn", etcd::txnBody({unowned}, {claim, readState}, {readOwner, readState}),
             [this, life = lifetime_.token(), service, lease = leaseId_](EtcdClient::Reply r) {
               if (!life.alive()) return;
               contending_.erase(service);
               std::string error;
               std::optional<etcd::TxnResult> txn;
               if (r.ok) txn = etcd::parseTxn(r.body, error);
               if (!txn) {
                 if (r.ok) r.error = error;
                 failed(r, "claim ownership");
                 return repairLater();
               }
               if (lease == leaseId_) claimed(service, *txn);
             });
}

void Cluster::claimed(const std::string& service, const etcd::TxnResult& txn) {
  // Either way the txn read the state: the operation under way, to follow or to mirror.
  StateValue state;
  if (!txn.ranges.empty() && !txn.ranges.back().kvs.empty()) state = readStateValue(txn.ranges.back().kvs[0].value);
  if (txn.succeeded) {
    owners_[service] = Owner{settings_.node, txn.revision, leaseId_};
    mine_[service] = txn.revision;
    LogLine(LogLevel::Info, "cluster_owner")
        .kv("service", service)
        .kv("node", settings_.node)
        .kv("revision", txn.revision)
        .kv("follows", state.writer.empty() ? std::string("nothing") : state.writer);
    host_.clusterGained(service, std::move(state.snapshot), state.writer);
    return;
  }
  if (!txn.ranges.empty() && !txn.ranges.front().kvs.empty()) {
    const auto& kv = txn.ranges.front().kvs[0];
    setOwner(service, Owner{kv.value, kv.createRevision, kv.lease});
  }
  if (state.snapshot) host_.clusterMirror(service, std::move(*state.snapshot));
}

void Cluster::setOwner(const std::string& service, std::optional<Owner> owner) {
  const bool wasMine = mine_.count(service) > 0;
  if (owner) {
    owners_[service] = *owner;
    const bool isMine = owner->node == settings_.node && owner->lease == leaseId_ && leaseId_ != 0;
    if (wasMine && !isMine) {
      mine_.erase(service);
      host_.clusterLost(service);
    }
    return;
  }
  owners_.erase(service);
  if (wasMine) {
    mine_.erase(service);
    host_.clusterLost(service);
  }
  if (services_.count(service) && synced_) contend(service);
}

// --- the owner's fenced state writes ------------------------------------------

void Cluster::publishState(const std::string& service, const MachineSnapshot& snapshot,
                           std::function<void(bool)> done) {
  JsonWriter w;
  w.startObject().str("writer", settings_.node).i64("at", unixMillisNow());
  w.key("snapshot").json(snapshotToJson(snapshot)).endObject();
  auto& writes = writes_[service];
  writes.pending = w.text();
  if (done) writes.waiting.push_back(std::move(done));
  flushState(service);
}

void Cluster::flushState(const std::string& service) {
  auto& writes = writes_[service];
  if (writes.busy || !writes.pending) return;
  auto waiting = std::move(writes.waiting);
  writes.waiting.clear();
  auto it = mine_.find(service);
  if (it == mine_.end() || !reachable_) {
    writes.pending.reset();
    for (auto& cb : waiting)
      cb(false);
    return;
  }
  const std::string ownerKey = key("owner", service);
  etcd::Compare sameOwner{ownerKey, etcd::Compare::Target::Create, it->second, {}};
  etcd::Compare sameNode{ownerKey, etcd::Compare::Target::Value, 0, settings_.node};
  etcd::TxnOp put{etcd::TxnOp::Kind::Put, key("state", service), *writes.pending, 0, {}};
  writes.pending.reset();
  writes.busy = true;
  etcd_.call("kv/txn", etcd::txnBody({sameOwner, sameNode}, {put}, {}),
             [this, life = lifetime_.token(), service, waiting = std::move(waiting)](EtcdClient::Reply r) mutable {
               if (!life.alive()) return;
               writes_[service].busy = false;
               std::string error;
               std::optional<etcd::TxnResult> txn;
               if (r.ok) txn = etcd::parseTxn(r.body, error);
               bool ok = txn && txn->succeeded;
               if (!txn) {
                 if (r.ok) r.error = error;
                 failed(r, "write state");
               } else if (!txn->succeeded && mine_.count(service)) {
                 LogLine(LogLevel::Warning, "cluster_owner_lost")
                     .kv("service", service)
                     .kv("why", "the fenced write found another owner");
                 mine_.erase(service);
                 host_.clusterLost(service);
               }
               for (auto& cb : waiting)
                 cb(ok);
               flushState(service);
               if (leaving_) revokeWhenWritten();
             });
}

// --- leaving ----------------------------------------------------------------

void Cluster::leave(std::chrono::milliseconds bound, std::function<void()> done) {
  if (leaving_) return;
  leaving_ = true;
  leftCallback_ = std::move(done);
  etcd_.cancelWatch();
  keepaliveTimer_.stop();
  retryTimer_.stop();
  repairTimer_.stop();
  watchTimer_.stop();
  leaveTimer_.start(bound, [this] { left("timed out"); });
  revokeWhenWritten();
}

void Cluster::revokeWhenWritten() {
  if (revoking_ || !leftCallback_) return;
  for (const auto& [service, w] : writes_)
    if (w.busy || w.pending) return;  // the next owner follows the newest state: it goes first
  if (!leaseId_ || !reachable_) return left("no lease to revoke");
  revoking_ = true;
  etcd_.call("lease/revoke", etcd::leaseIdBody(leaseId_), [this, life = lifetime_.token()](EtcdClient::Reply r) {
    if (!life.alive()) return;
    if (!r.ok) LogLine(LogLevel::Warning, "etcd_error").kv("request", "lease/revoke").kv("why", r.error);
    left(r.ok ? "lease revoked" : "lease not revoked");
  });
}

void Cluster::left(const char* how) {
  if (!leftCallback_) return;
  leaveTimer_.stop();
  LogLine(LogLevel::Info, "cluster_leave")
      .kv("node", settings_.node)
      .kv("lease", leaseId_)
      .kv("how", how)
      .kv("services_owned", static_cast<std::uint64_t>(mine_.size()));
  auto done = std::move(leftCallback_);
  leftCallback_ = nullptr;
  done();
}

}  // namespace ondemand::controld
