#include "controld/cluster/cluster.hpp"

#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"
#include "controld/io/state_store.hpp"
#include "controld/version.hpp"

namespace ondemand::controld {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

void str(JsonWriter& w, const std::string& v) {
  w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

std::uint64_t readU64(const rapidjson::Value& v, const char* k) {
  if (!v.IsObject()) return 0;
  auto m = v.FindMember(k);
  return m != v.MemberEnd() && m->value.IsUint64() ? m->value.GetUint64() : 0;
}

std::string readStr(const rapidjson::Value& v, const char* k) {
  if (!v.IsObject()) return {};
  auto m = v.FindMember(k);
  return m != v.MemberEnd() && m->value.IsString() ? std::string(m->value.GetString(), m->value.GetStringLength())
                                                   : std::string();
}

std::string toJson(const rapidjson::Value& v) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  v.Accept(w);
  return std::string(buffer.GetString(), buffer.GetSize());
}

constexpr auto kRetry = std::chrono::milliseconds(500);

}  // namespace

std::string serviceSummary(const ServiceConfig& c) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  auto ms = [&](const char* k, Millis v) {
    w.Key(k);
    w.Int64(v.count());
  };
  ms("idle_timeout_ms", c.idleTimeout);
  ms("start_timeout_ms", c.startTimeout);
  ms("stop_timeout_ms", c.stopTimeout);
  ms("failure_backoff_ms", c.failureBackoff);
  ms("warmup_ms", c.warmup);
  w.Key("health_url");
  str(w, c.healthUrl);
  w.Key("machine");
  str(w, c.machine);
  w.Key("driver");
  w.String(c.driverKind() == ServiceConfig::DriverKind::Semaphore ? "semaphore"
           : c.driverKind() == ServiceConfig::DriverKind::Command ? "command"
                                                                  : "none");
  w.Key("start_command");
  w.StartArray();
  for (const auto& a : c.startCommand)
    str(w, a);
  w.EndArray();
  w.Key("stop_command");
  w.StartArray();
  for (const auto& a : c.stopCommand)
    str(w, a);
  w.EndArray();
  if (c.semaphore) {
    w.Key("start_template_id");
    w.Int64(c.semaphore->startTemplateId);
    w.Key("stop_template_id");
    w.Int64(c.semaphore->stopTemplateId);
  }
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

Cluster::Cluster(uv_loop_t* loop, HttpClient& http, const ClusterSettings& settings, ClusterHost& host)
    : settings_(settings),
      host_(host),
      etcd_(http, settings),
      keepaliveTimer_(loop),
      retryTimer_(loop),
      watchTimer_(loop),
      leaveTimer_(loop) {}

Cluster::~Cluster() {
  *alive_ = false;
  etcd_.cancelWatch();
}

std::string Cluster::key(const std::string& kind, const std::string& service, const std::string& node) const {
  std::string k = settings_.prefix + kind + "/";
  if (!service.empty()) k += service;
  if (!node.empty()) k += "/" + node;
  return k;
}

void Cluster::setServices(std::map<std::string, std::string> summaries) {
  services_ = std::move(summaries);
  if (leaseId_) {
    registerNode();
    for (const auto& [name, summary] : services_)
      if (!owners_.count(name) && !mine_.count(name)) contend(name);
  }
}

void Cluster::start() {
  startedAtMs_ = unixMillisNow();
  grantLease();
}

bool Cluster::owns(const std::string& service) const {
  return !leaving_ && reachable_ && synced_ && mine_.count(service) > 0;
}

std::string Cluster::ownerOf(const std::string& service) const {
  auto it = owners_.find(service);
  return it == owners_.end() ? std::string() : it->second.node;
}

void Cluster::retryLater(std::function<void()> step) {
  retryTimer_.start(kRetry, std::move(step));
}

void Cluster::setReachable(bool reachable, const std::string& why) {
  if (!reachable) lastError_ = why;
  // News: etcd answers again, or the first failure (also before it ever answered).
  const bool news = reachable ? !reachable_ : unreachableSinceMs_ == 0;
  reachable_ = reachable;
  if (!news) return;
  reachableSinceMs_ = unixMillisNow();
  if (!reachable) unreachableSinceMs_ = reachableSinceMs_;  // cleared once caught up (resync)
  if (reachable) {
    LogLine(LogLevel::Info, "etcd_reachable").kv("endpoint", etcd_.endpoint());
  } else {
    LogLine(LogLevel::Warning, "etcd_unreachable")
        .kv("why", why)
        .kv("consequence", "serving from the last state; starting and stopping nothing");
  }
  host_.clusterReachability(reachable);
}

void Cluster::failed(const EtcdClient::Reply& reply, const char* what) {
  if (reply.transport || reply.refused) {
    setReachable(false, reply.error);
  } else {
    LogLine(LogLevel::Warning, "etcd_error").kv("request", what).kv("why", reply.error);
  }
}

// --- lease ------------------------------------------------------------------

void Cluster::grantLease() {
  if (leaving_) return;
  const std::int64_t ttl = settings_.leaseTtl.count() / 1000;
  etcd_.call("lease/grant", etcd::leaseGrantBody(ttl), [this, alive = alive_](EtcdClient::Reply r) {
    if (!*alive) return;
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
             [this, alive = alive_, id = leaseId_](EtcdClient::Reply r) {
               if (!*alive) return;
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
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("node");
  str(w, settings_.node);
  w.Key("pid");
  w.Int64(::getpid());
  w.Key("version");
  w.String(versionString());
  w.Key("started_at");
  w.Int64(startedAtMs_);
  w.Key("lease");
  w.Int64(leaseId_);
  w.Key("services");
  w.StartObject();
  for (const auto& [name, summary] : services_) {
    w.Key(name.c_str(), static_cast<rapidjson::SizeType>(name.size()));
    w.RawValue(summary.c_str(), summary.size(), rapidjson::kObjectType);
  }
  w.EndObject();
  w.EndObject();
  etcd_.call("kv/put",
             etcd::putBody(key("nodes", settings_.node), std::string(buffer.GetString(), buffer.GetSize()), leaseId_),
             [this, alive = alive_](EtcdClient::Reply r) {
               if (!*alive) return;
               if (!r.ok) failed(r, "register node");
             });
}

// --- reading and watching ---------------------------------------------------

void Cluster::resync() {
  if (leaving_) return;
  etcd_.call("kv/range", etcd::rangeBody(settings_.prefix, etcd::prefixEnd(settings_.prefix)),
             [this, alive = alive_](EtcdClient::Reply r) {
               if (!*alive) return;
               std::string error;
               std::optional<etcd::RangeResult> range;
               if (r.ok) range = etcd::parseRange(r.body, error);
               if (!range) {
                 if (r.ok) r.error = error;
                 failed(r, "kv/range");
                 return;  // the next keepalive that succeeds tries again
               }
               setReachable(true, {});
               // What the range does not show is gone.
               std::set<std::string> seenOwners;
               std::map<std::string, Member> oldMembers = std::move(members_);
               members_.clear();
               remote_.clear();
               for (const auto& kv : range->kvs) {
                 apply(kv, false);
                 const std::string prefix = settings_.prefix + "owner/";
                 if (kv.key.rfind(prefix, 0) == 0) seenOwners.insert(kv.key.substr(prefix.size()));
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
               revision_ = range->revision;
               synced_ = true;
               checkMismatches();
               watchFrom(revision_ + 1);
               for (const auto& [name, summary] : services_)
                 if (!owners_.count(name)) contend(name);
               for (const auto& [name, rev] : mine_)
                 host_.clusterActivity(name, false);
               for (const auto& [name, l] : local_)
                 flushLocal(name);
               if (unreachableSinceMs_ != 0) {  // caught up: the workers may ask again what they asked meanwhile
                 unreachableSinceMs_ = 0;
                 host_.clusterCaughtUp();
               }
             });
}

void Cluster::watchFrom(std::int64_t revision) {
  etcd_.watch(
      settings_.prefix, etcd::prefixEnd(settings_.prefix), revision,
      [this](const etcd::WatchMessage& m) {
        if (m.compactRevision) return;  // resync follows from onBroken
        for (const auto& e : m.events) {
          apply(e.kv, e.deleted);
          revision_ = std::max(revision_, e.kv.modRevision);
        }
        revision_ = std::max(revision_, m.revision);
        if (!m.events.empty()) checkMismatches();
      },
      [this, alive = alive_](std::string why) {
        if (!*alive) return;
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

void Cluster::apply(const etcd::KeyValue& kv, bool deleted) {
  if (kv.key.rfind(settings_.prefix, 0) != 0) return;
  const std::string rest = kv.key.substr(settings_.prefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string::npos) return;
  const std::string kind = rest.substr(0, slash);
  std::string name = rest.substr(slash + 1);
  std::string node;
  if (kind == "activity" || kind == "wake") {
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
    if (deleted || !services_.count(name)) return;
    lastWriter_[name] = readStr(doc, "writer");
    if (mine_.count(name)) return;  // our own write
    return mirrorState(name, kv.value);
  }
  if (kind == "nodes") {
    if (deleted) {
      members_.erase(name);
      for (auto& [service, nodes] : remote_) {
        if (nodes.erase(name) && mine_.count(service)) host_.clusterActivity(service, false);
      }
      return;
    }
    Member m;
    m.lease = kv.lease;
    m.pid = static_cast<std::int64_t>(readU64(doc, "pid"));
    m.startedAt = static_cast<std::int64_t>(readU64(doc, "started_at"));
    m.version = readStr(doc, "version");
    if (auto s = doc.FindMember("services"); s != doc.MemberEnd() && s->value.IsObject()) {
      for (auto& entry : s->value.GetObject())
        m.services[entry.name.GetString()] = toJson(entry.value);
    }
    members_[name] = std::move(m);
    return;
  }
  if (node == settings_.node) return;  // our own activity or wake
  if (kind == "activity") {
    auto& r = remote_[name];
    bool started = false;
    if (deleted) {
      r.erase(node);
    } else {
      Remote next{readU64(doc, "in_flight"), readU64(doc, "started"), readU64(doc, "ack_epoch")};
      auto it = r.find(node);
      started = it != r.end() ? next.started > it->second.started : next.started > 0;
      r[node] = next;
    }
    if (mine_.count(name)) host_.clusterActivity(name, started);
    return;
  }
  if (kind == "wake" && !deleted && mine_.count(name) && reachable_) {
    host_.clusterWake(name, readStr(doc, "reason") + " (via " + node + ")");
  }
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

void Cluster::mirrorState(const std::string& service, const std::string& value) {
  rapidjson::Document doc;
  doc.Parse(value.c_str(), value.size());
  auto snap = doc.IsObject() ? doc.FindMember("snapshot") : doc.MemberEnd();
  if (!doc.IsObject() || snap == doc.MemberEnd()) return;
  std::string error;
  auto snapshot = snapshotFromJson(toJson(snap->value), error);
  if (!snapshot) {
    LogLine(LogLevel::Warning, "etcd_value_ignored").kv("service", service).kv("why", error);
    return;
  }
  host_.clusterMirror(service, std::move(*snapshot));
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
             [this, alive = alive_, service, lease = leaseId_](EtcdClient::Reply r) {
               if (!*alive) return;
               contending_.erase(service);
               std::string error;
               std::optional<etcd::TxnResult> txn;
               if (r.ok) txn = etcd::parseTxn(r.body, error);
               if (!txn) {
                 if (r.ok) r.error = error;
                 return failed(r, "claim ownership");
               }
               if (lease != leaseId_) return;
               std::optional<MachineSnapshot> snapshot;
               std::string writer;
               const etcd::RangeResult* state = txn->ranges.empty() ? nullptr : &txn->ranges.back();
               if (state && !state->kvs.empty()) {
                 rapidjson::Document doc;
                 doc.Parse(state->kvs[0].value.c_str(), state->kvs[0].value.size());
                 writer = readStr(doc, "writer");
                 if (auto s = doc.IsObject() ? doc.FindMember("snapshot") : doc.MemberEnd(); s != doc.MemberEnd()) {
                   snapshot = snapshotFromJson(toJson(s->value), error);
                 }
               }
               if (txn->succeeded) {
                 owners_[service] = Owner{settings_.node, txn->revision, leaseId_};
                 mine_[service] = txn->revision;
                 LogLine(LogLevel::Info, "cluster_owner")
                     .kv("service", service)
                     .kv("node", settings_.node)
                     .kv("revision", txn->revision)
                     .kv("follows", writer.empty() ? std::string("nothing") : writer);
                 host_.clusterGained(service, std::move(snapshot), writer);
                 return;
               }
               if (txn->ranges.size() >= 1 && !txn->ranges.front().kvs.empty()) {
                 const auto& kv = txn->ranges.front().kvs[0];
                 setOwner(service, Owner{kv.value, kv.createRevision, kv.lease});
               }
               if (snapshot) host_.clusterMirror(service, std::move(*snapshot));
             });
}

void Cluster::publishState(const std::string& service, const MachineSnapshot& snapshot,
                           std::function<void(bool)> done) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("writer");
  str(w, settings_.node);
  w.Key("at");
  w.Int64(unixMillisNow());
  w.Key("snapshot");
  const std::string json = snapshotToJson(snapshot);
  w.RawValue(json.c_str(), json.size(), rapidjson::kObjectType);
  w.EndObject();
  auto& writes = writes_[service];
  writes.pending = std::string(buffer.GetString(), buffer.GetSize());
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
             [this, alive = alive_, service, waiting = std::move(waiting)](EtcdClient::Reply r) mutable {
               if (!*alive) return;
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
  etcd_.call("lease/revoke", etcd::leaseIdBody(leaseId_), [this, alive = alive_](EtcdClient::Reply r) {
    if (!*alive) return;
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

// --- activity and wakes ------------------------------------------------------

void Cluster::forwardWake(const std::string& service, const std::string& reason) {
  if (!leaseId_ || !reachable_ || wakesInFlight_.count(service)) return;
  wakesInFlight_.insert(service);
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("reason");
  str(w, reason);
  w.Key("seq");
  w.Uint64(++wakeSeq_);
  w.EndObject();
  etcd_.call(
      "kv/put",
      etcd::putBody(key("wake", service, settings_.node), std::string(buffer.GetString(), buffer.GetSize()), leaseId_),
      [this, alive = alive_, service](EtcdClient::Reply r) {
        if (!*alive) return;
        wakesInFlight_.erase(service);
        if (!r.ok) failed(r, "forward wake");
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
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("in_flight");
  w.Uint64(l.inFlight);
  w.Key("started");
  w.Uint64(l.started);
  w.Key("ack_epoch");
  w.Uint64(l.ackEpoch);
  w.EndObject();
  etcd_.call("kv/put",
             etcd::putBody(key("activity", service, settings_.node), std::string(buffer.GetString(), buffer.GetSize()),
                           leaseId_),
             [this, alive = alive_, service](EtcdClient::Reply r) {
               if (!*alive) return;
               auto& local = local_[service];
               local.busy = false;
               if (!r.ok) failed(r, "report activity");
               if (local.dirty) flushLocal(service);
             });
}

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

// --- reporting --------------------------------------------------------------

void Cluster::checkMismatches() {
  std::vector<std::string> found;
  for (const auto& [service, mine] : services_) {
    for (const auto& [node, m] : members_) {
      if (node == settings_.node) continue;
      auto theirs = m.services.find(service);
      if (theirs == m.services.end() || theirs->second == mine) continue;
      rapidjson::Document a, b;
      a.Parse(mine.c_str());
      b.Parse(theirs->second.c_str());
      std::vector<std::string> keys;
      if (a.IsObject() && b.IsObject()) {
        for (auto& entry : a.GetObject()) {
          auto other = b.FindMember(entry.name);
          if (other == b.MemberEnd() || !(other->value == entry.value)) keys.push_back(entry.name.GetString());
        }
      }
      rapidjson::StringBuffer buffer;
      JsonWriter w(buffer);
      w.StartObject();
      w.Key("service");
      str(w, service);
      w.Key("nodes");
      w.StartArray();
      str(w, settings_.node);
      str(w, node);
      w.EndArray();
      w.Key("keys");
      w.StartArray();
      for (const auto& k : keys)
        str(w, k);
      w.EndArray();
      w.Key("mine");
      w.RawValue(mine.c_str(), mine.size(), rapidjson::kObjectType);
      w.Key("theirs");
      w.RawValue(theirs->second.c_str(), theirs->second.size(), rapidjson::kObjectType);
      w.EndObject();
      std::string entry(buffer.GetString(), buffer.GetSize());
      if (reportedMismatches_.insert(service + "\n" + node + "\n" + theirs->second).second) {
        std::string joined;
        for (const auto& k : keys)
          joined += (joined.empty() ? "" : ",") + k;
        LogLine(LogLevel::Warning, "cluster_config_mismatch")
            .kv("service", service)
            .kv("node", settings_.node)
            .kv("other_node", node)
            .kv("keys", joined);
      }
      found.push_back(std::move(entry));
    }
  }
  mismatches_ = std::move(found);
}

std::string Cluster::statusJson() const {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("node");
  str(w, settings_.node);
  w.Key("prefix");
  str(w, settings_.prefix);
  w.Key("etcd");
  w.StartObject();
  w.Key("reachable");
  w.Bool(reachable_);
  w.Key("synced");
  w.Bool(synced_);
  w.Key("endpoint");
  str(w, etcd_.endpoint());
  w.Key("endpoints");
  w.StartArray();
  for (const auto& e : settings_.endpoints)
    str(w, e);
  w.EndArray();
  w.Key("error");
  str(w, reachable_ ? std::string() : lastError_);
  w.Key("since");
  w.Int64(reachableSinceMs_);
  w.Key("revision");
  w.Int64(revision_);
  w.EndObject();
  w.Key("lease");
  w.StartObject();
  w.Key("id");
  w.Int64(leaseId_);
  w.Key("ttl_s");
  w.Int64(leaseTtl_);
  w.Key("renewed_ms_ago");
  w.Int64(lastKeepaliveMs_ ? clockMillisNow() - lastKeepaliveMs_ : -1);
  w.EndObject();
  w.Key("members");
  w.StartArray();
  for (const auto& [node, m] : members_) {
    w.StartObject();
    w.Key("node");
    str(w, node);
    w.Key("lease");
    w.Int64(m.lease);
    w.Key("pid");
    w.Int64(m.pid);
    w.Key("version");
    str(w, m.version);
    w.Key("started_at");
    w.Int64(m.startedAt);
    w.Key("services");
    w.Uint64(m.services.size());
    w.Key("self");
    w.Bool(node == settings_.node);
    w.EndObject();
  }
  w.EndArray();
  w.Key("owners");
  w.StartObject();
  for (const auto& [service, o] : owners_) {
    w.Key(service.c_str(), static_cast<rapidjson::SizeType>(service.size()));
    str(w, o.node);
  }
  w.EndObject();
  w.Key("mismatches");
  w.StartArray();
  for (const auto& m : mismatches_)
    w.RawValue(m.c_str(), m.size(), rapidjson::kObjectType);
  w.EndArray();
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace ondemand::controld
