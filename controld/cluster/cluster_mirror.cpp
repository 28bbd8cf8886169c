// What this node learns from etcd and tells the others: reading the whole
// prefix and watching it from there, the other nodes' registrations, the
// owners' states mirrored to this node's workers, the activity and
// stopping-acks of every node (this node's written, the others' summed by an
// owner), and the wakes forwarded to an owner.
#include "controld/cluster/cluster.hpp"

#include <rapidjson/document.h>

#include "controld/io/json_fields.hpp"
#include "controld/io/log.hpp"
#include "controld/io/state_store.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::controld {

namespace {

std::string toJson(const rapidjson::Value& v) {
  JsonWriter w;
  return w.value(v).text();
}

}  // namespace

Cluster::StateValue Cluster::readStateValue(const std::string& value) {
  rapidjson::Document doc;
  doc.Parse(value.c_str(), value.size());
  StateValue out;
  out.writer = jsonString(doc, "writer");
  if (const auto* snapshot = jsonMember(doc, "snapshot")) out.snapshot = snapshotFromJson(toJson(*snapshot), out.error);
  return out;
}

// --- reading and watching ---------------------------------------------------

void Cluster::resync() {
  if (leaving_) return;
  etcd_.call("kv/range", etcd::rangeBody(settings_.prefix, etcd::prefixEnd(settings_.prefix)),
             [this, life = lifetime_.token()](EtcdClient::Reply r) {
               if (!life.alive()) return;
               std::string error;
               std::optional<etcd::RangeResult> range;
               if (r.ok) range = etcd::parseRange(r.body, error);
               if (!range) {
                 if (r.ok) r.error = error;
                 failed(r, "kv/range");
                 return;  // the next keepalive that succeeds tries again
               }
               setReachable(true, {});
               resynced(*range);
             });
}

void Cluster::resynced(const etcd::RangeResult& range) {
  // What the range does not show is gone.
  std::set<std::string> seenOwners;
  members_.clear();
  remote_.clear();
  const std::string ownerPrefix = settings_.prefix + "owner/";
  for (const auto& kv : range.kvs) {
    apply(kv, false, false);
    if (kv.key.rfind(ownerPrefix, 0) == 0) seenOwners.insert(kv.key.substr(ownerPrefix.size()));
  }
  for (auto it = owners_.begin(); it != owners_.end();) {
    const std::string service = it->first;
    ++it;
    if (!seenOwners.count(service)) setOwner(service, std::nullopt);
  }
  for (auto it = mine_.begin(); it != mine_.end();) {
    const std::string service = it->first;
    ++it;
    if (!seenOwners.count(service)) {
      mine_.erase(service);
      host_.clusterLost(service);
    }
  }
  revision_ = range.revision;
  synced_ = true;
  checkMismatches();
  watchFrom(revision_ + 1);
  for (const auto& [name, l] : local_)
    flushLocal(name);
  repair();
  for (const auto& [name, rev] : mine_)
    host_.clusterActivity(name, false);
  if (unreachableSinceMs_ != 0) {  // caught up: the workers may ask again what they asked meanwhile
    unreachableSinceMs_ = 0;
    host_.clusterCaughtUp();
  }
}

void Cluster::watchFrom(std::int64_t revision) {
  etcd_.watch(
      settings_.prefix, etcd::prefixEnd(settings_.prefix), revision,
      [this](const etcd::WatchMessage& m) {
        if (m.compactRevision) return;  // resync follows from onBroken
        for (const auto& e : m.events) {
          apply(e.kv, e.deleted, true);
          revision_ = std::max(revision_, e.kv.modRevision);
        }
        revision_ = std::max(revision_, m.revision);
        if (!m.events.empty()) checkMismatches();
      },
      [this, life = lifetime_.token()](std::string why) {
        if (!life.alive()) return;
        LogLine(LogLevel::Info, "etcd_watch_broken").kv("why", why).kv("revision", revision_);
        watchTimer_.start(kRetry, [this, compacted = why.find("compact") != std::string::npos] {
          if (compacted || !reachable_) {
            synced_ = false;
            resync();
          } else {
            watchFrom(revision_ + 1);
          }
        });
      });
}

// --- what a key says ----------------------------------------------------------

void Cluster::apply(const etcd::KeyValue& kv, bool deleted, bool live) {
  if (kv.key.rfind(settings_.prefix, 0) != 0) return;
  const std::string rest = kv.key.substr(settings_.prefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string::npos) return;
  const std::string kind = rest.substr(0, slash);
  std::string name = rest.substr(slash + 1);
  std::string node;
  if (kind == "activity" || kind == "wake" || kind == "stop") {
    const auto s2 = name.find('/');
    if (s2 == std::string::npos) return;
    node = name.substr(s2 + 1);
    name = name.substr(0, s2);
  }
  rapidjson::Document doc;
  if (!deleted) {
    doc.Parse(kv.value.c_str(), kv.value.size());
    if (doc.HasParseError() && kind != "owner") {
      LogLine(LogLevel::Warning, "etcd_value_ignored").kv("key", kv.key).kv("why", "not JSON");
      return;
    }
  }
  if (kind == "owner") {
    if (deleted) return setOwner(name, std::nullopt);
    return setOwner(name, Owner{kv.value, kv.createRevision, kv.lease});
  }
  if (kind == "state") {
    if (deleted || !services_.count(name) || mine_.count(name)) return;  // mine: our own write
    return mirrorState(name, kv.value);
  }
  if (kind == "nodes") return applyMember(name, deleted ? nullptr : &doc, kv.lease);
  if (node == settings_.node) return;  // our own activity or wake
  if (kind == "activity") return applyActivity(name, node, deleted ? nullptr : &doc);
  if (kind == "wake" && !deleted && mine_.count(name) && reachable_) {
    host_.clusterWake(name, jsonString(doc, "reason") + " (via " + node + ")");
  }
  if (kind == "stop" && !deleted && live && mine_.count(name) && reachable_) {
    host_.clusterStop(name, jsonString(doc, "reason") + " (via " + node + ")");
  }
}

void Cluster::applyMember(const std::string& node, const rapidjson::Value* value, std::int64_t lease) {
  if (!value) {  // gone with its lease: its activity goes too
    members_.erase(node);
    for (auto& [service, nodes] : remote_) {
      if (nodes.erase(node) && mine_.count(service)) host_.clusterActivity(service, false);
    }
    return;
  }
  Member m;
  m.lease = lease;
  m.pid = static_cast<std::int64_t>(jsonUint64(*value, "pid"));
  m.startedAt = static_cast<std::int64_t>(jsonUint64(*value, "started_at"));
  m.version = jsonString(*value, "version");
  if (const auto* services = jsonMember(*value, "services"); services && services->IsObject()) {
    for (auto& entry : services->GetObject())
      m.services[entry.name.GetString()] = toJson(entry.value);
  }
  members_[node] = std::move(m);
}

void Cluster::applyActivity(const std::string& service, const std::string& node, const rapidjson::Value* value) {
  auto& r = remote_[service];
  bool started = false;
  if (!value) {
    r.erase(node);
  } else {
    Remote next{jsonUint64(*value, "in_flight"), jsonUint64(*value, "started"), jsonUint64(*value, "ack_epoch")};
    auto it = r.find(node);
    started = it != r.end() ? next.started > it->second.started : next.started > 0;
    r[node] = next;
  }
  if (mine_.count(service)) host_.clusterActivity(service, started);
}

void Cluster::mirrorState(const std::string& service, const std::string& value) {
  StateValue state = readStateValue(value);
  if (!state.snapshot) {
    if (!state.error.empty())
      LogLine(LogLevel::Warning, "etcd_value_ignored").kv("service", service).kv("why", state.error);
    return;
  }
  host_.clusterMirror(service, std::move(*state.snapshot));
}

// --- this node's wakes and activity ------------------------------------------

void Cluster::forwardWake(const std::string& service, const std::string& reason) {
  forward("wake", service, reason);
}

void Cluster::forwardStop(const std::string& service, const std::string& reason) {
  forward("stop", service, reason);
}

void Cluster::forward(const char* kind, const std::string& service, const std::string& reason) {
  const std::string what = std::string(kind) + "/" + service;
  if (!leaseId_ || !reachable_ || forwardsInFlight_.count(what)) return;
  forwardsInFlight_.insert(what);
  JsonWriter w;
  w.startObject().str("reason", reason).u64("seq", ++forwardSeq_).endObject();
  etcd_.call("kv/put", etcd::putBody(key(kind, service, settings_.node), w.text(), leaseId_),
             [this, life = lifetime_.token(), what, kind = std::string(kind), service, reason](EtcdClient::Reply r) {
               if (!life.alive()) return;
               forwardsInFlight_.erase(what);
               if (r.ok) return;
               failed(r, "forward " + what);
               if (!reachable_) return;
               unsent_[what] = Forward{kind, service, reason};
               repairLater();
             });
}

void Cluster::reportLocal(const std::string& service, std::uint64_t inFlight, std::uint64_t started) {
  auto& l = local_[service];
  if (l.inFlight == inFlight && l.started == started) return;
  l.inFlight = inFlight;
  l.started = started;
  flushLocal(service);
}

void Cluster::reportAck(const std::string& service, std::uint64_t epoch, std::uint64_t inFlight) {
  auto& l = local_[service];
  l.ackEpoch = epoch;
  l.inFlight = inFlight;
  flushLocal(service);
}

void Cluster::flushLocal(const std::string& service) {
  auto& l = local_[service];
  if (l.busy) {
    l.dirty = true;
    return;
  }
  if (!leaseId_ || !reachable_) return;  // resync() flushes it again
  l.busy = true;
  l.dirty = false;
  JsonWriter w;
  w.startObject().u64("in_flight", l.inFlight).u64("started", l.started).u64("ack_epoch", l.ackEpoch).endObject();
  etcd_.call("kv/put", etcd::putBody(key("activity", service, settings_.node), w.text(), leaseId_),
             [this, life = lifetime_.token(), service](EtcdClient::Reply r) {
               if (!life.alive()) return;
               auto& local = local_[service];
               local.busy = false;
               if (!r.ok) {
                 failed(r, "report activity");
                 local.dirty = true;  // repair() sends it again, or the resync once etcd is back
                 return repairLater();
               }
               if (local.dirty) flushLocal(service);
             });
}

// --- the other nodes, summed by an owner ---------------------------------------

std::uint64_t Cluster::remoteInFlight(const std::string& service) const {
  std::uint64_t total = 0;
  if (auto it = remote_.find(service); it != remote_.end()) {
    for (const auto& [node, r] : it->second)
      if (members_.count(node)) total += r.inFlight;
  }
  return total;
}

bool Cluster::remoteAcked(const std::string& service, std::uint64_t epoch) const {
  const auto it = remote_.find(service);
  for (const auto& [node, m] : members_) {
    if (node == settings_.node || !m.services.count(service)) continue;
    if (it == remote_.end()) return false;
    auto r = it->second.find(node);
    if (r == it->second.end() || r->second.ackEpoch != epoch) return false;
  }
  return true;
}

}  // namespace ondemand::controld
