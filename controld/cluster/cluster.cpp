// The cluster's core: its settings and services, whether etcd answers, and
// what it reports (status, configuration mismatches). Holding the lease and
// owning services is in cluster_ownership.cpp; reading and watching etcd and
// mirroring the other nodes (their states, activity, wakes) in
// cluster_mirror.cpp.
#include "controld/cluster/cluster.hpp"

#include <rapidjson/document.h>

#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::controld {

std::string serviceSummary(const ServiceConfig& c) {
  JsonWriter w;
  auto strings = [&](const char* k, const std::vector<std::string>& values) {
    w.key(k).startArray();
    for (const auto& v : values)
      w.string(v);
    w.endArray();
  };
  w.startObject()
      .i64("idle_timeout_ms", c.idleTimeout.count())
      .i64("start_timeout_ms", c.startTimeout.count())
      .i64("stop_timeout_ms", c.stopTimeout.count())
      .i64("failure_backoff_ms", c.failureBackoff.count())
      .i64("warmup_ms", c.warmup.count())
      .str("health_url", c.healthUrl)
      .str("machine", c.machine)
      .str("driver", driverName(c));
  strings("start_command", c.startCommand);
  strings("stop_command", c.stopCommand);
  if (c.semaphore) {
    w.i64("start_template_id", c.semaphore->startTemplateId).i64("stop_template_id", c.semaphore->stopTemplateId);
  }
  return w.endObject().text();
}

Cluster::Cluster(uv_loop_t* loop, HttpClient& http, const ClusterSettings& settings, ClusterHost& host)
    : settings_(settings),
      host_(host),
      etcd_(http, settings),
      keepaliveTimer_(loop),
      retryTimer_(loop),
      repairTimer_(loop),
      watchTimer_(loop),
      leaveTimer_(loop) {}

Cluster::~Cluster() {
  lifetime_.end();
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
  // Workers send their wakes again once etcd is back; a stop is not replayed.
  if (!reachable) unsent_.clear();
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

void Cluster::failed(const EtcdClient::Reply& reply, const std::string& what) {
  if (reply.transport || reply.refused) {
    setReachable(false, reply.error);
  } else {
    LogLine(LogLevel::Warning, "etcd_error").kv("request", what).kv("why", reply.error);
  }
}

// --- reporting --------------------------------------------------------------

namespace {

// The keys whose values differ between two services' summaries.
std::vector<std::string> differingKeys(const std::string& mine, const std::string& theirs) {
  rapidjson::Document a, b;
  a.Parse(mine.c_str());
  b.Parse(theirs.c_str());
  std::vector<std::string> keys;
  if (a.IsObject() && b.IsObject()) {
    for (auto& entry : a.GetObject()) {
      auto other = b.FindMember(entry.name);
      if (other == b.MemberEnd() || !(other->value == entry.value)) keys.push_back(entry.name.GetString());
    }
  }
  return keys;
}

}  // namespace

void Cluster::checkMismatches() {
  std::vector<std::string> found;
  for (const auto& [service, mine] : services_) {
    for (const auto& [node, m] : members_) {
      if (node == settings_.node) continue;
      auto theirs = m.services.find(service);
      if (theirs == m.services.end() || theirs->second == mine) continue;
      const std::vector<std::string> keys = differingKeys(mine, theirs->second);
      JsonWriter w;
      w.startObject().str("service", service);
      w.key("nodes").startArray().string(settings_.node).string(node).endArray();
      w.key("keys").startArray();
      for (const auto& k : keys)
        w.string(k);
      w.endArray();
      w.key("mine").json(mine).key("theirs").json(theirs->second).endObject();
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
      found.push_back(w.text());
    }
  }
  mismatches_ = std::move(found);
}

std::string Cluster::statusJson() const {
  JsonWriter w;
  w.startObject().str("node", settings_.node).str("prefix", settings_.prefix);
  w.key("etcd").startObject().flag("reachable", reachable_).flag("synced", synced_).str("endpoint", etcd_.endpoint());
  w.key("endpoints").startArray();
  for (const auto& e : settings_.endpoints)
    w.string(e);
  w.endArray();
  w.str("error", reachable_ ? std::string() : lastError_)
      .i64("since", reachableSinceMs_)
      .i64("revision", revision_)
      .endObject();
  w.key("lease")
      .startObject()
      .i64("id", leaseId_)
      .i64("ttl_s", leaseTtl_)
      .i64("renewed_ms_ago", lastKeepaliveMs_ ? clockMillisNow() - lastKeepaliveMs_ : -1)
      .endObject();
  w.key("members").startArray();
  for (const auto& [node, m] : members_) {
    w.startObject()
        .str("node", node)
        .i64("lease", m.lease)
        .i64("pid", m.pid)
        .str("version", m.version)
        .i64("started_at", m.startedAt)
        .u64("services", m.services.size())
        .flag("self", node == settings_.node)
        .endObject();
  }
  w.endArray().key("owners").startObject();
  for (const auto& [service, o] : owners_)
    w.str(service, o.node);
  w.endObject().key("mismatches").startArray();
  for (const auto& m : mismatches_)
    w.json(m);
  return w.endArray().endObject().text();
}

}  // namespace ondemand::controld
