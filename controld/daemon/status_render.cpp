#include "controld/daemon/status_render.hpp"

#include <unistd.h>

#include "controld/daemon/telemetry.hpp"
#include "controld/io/clock.hpp"
#include "controld/io/state_store.hpp"
#include "controld/version.hpp"

namespace ondemand::controld {

namespace {

std::int64_t retryAt(const Service& s) {
  return toWallMs(s.machine.retryAtMs().value_or(0));
}

protocol::StatusReply::Daemon daemonStatus(const StatusSources& src) {
  protocol::StatusReply::Daemon d;
  d.version = versionString();
  d.pid = ::getpid();
  d.startedAtMs = toWallMs(src.startedAtMs);
  d.config = src.config.sourceFile;
  d.workerConnections = src.server.connectionCount("worker");
  d.cliConnections = src.server.connectionCount("cli");
  for (const auto& [type, count] : src.server.messagesReceived())
    d.messagesReceived.emplace_back(type, count);
  return d;
}

// The persisted record: the operation under way, the last one, the history.
void addRecord(protocol::StatusReply::Service& out, const MachineSnapshot& machineSnapshot) {
  const MachineSnapshot snap = withTimes(machineSnapshot, toWallMs);  // shown: the wall clock
  if (const auto& op = snap.operation) {
    out.operation = protocol::StatusReply::Operation{toString(op->kind), op->driver,     op->taskId, op->pid,
                                                     op->startedAtMs,    op->operationId};
  }
  if (const auto& op = snap.lastOperation) {
    out.lastOperation = protocol::StatusReply::LastOperation{toString(op->kind), op->startedAtMs, op->endedAtMs, op->ok,
                                                             op->reason,         op->taskId,      op->taskStatus};
  }
  for (const Transition& t : snap.history) {
    out.history.push_back({t.atMs, t.from, t.to, toString(t.cause), t.detail, t.taskId, t.taskStatus});
  }
}

protocol::StatusReply::Service serviceStatus(const Service& s, const StatusSources& src) {
  const auto& snap = s.machine.snapshot();
  protocol::StatusReply::Service out;
  out.name = s.config.name;
  out.state = snap.state;
  out.phase = toString(snap.phase);
  out.epoch = snap.epoch;
  out.sinceMs = toWallMs(snap.sinceMs);
  out.cause = toString(snap.cause);
  out.reason = snap.reason;
  out.startingSinceMs = toWallMs(snap.startingSinceMs);
  out.retryAtMs = retryAt(s);
  out.startsOk = snap.startsOk;
  out.startsFailed = snap.startsFailed;
  out.lastStartMs = snap.lastStartMs;
  out.inFlight = s.machine.inFlight();
  out.startedTotal = s.startedTotal;
  out.requestsWaiting = src.ledger.held(s.config.name);
  src.telemetry.fill(s.config.name, out);
  if (const auto at = s.machine.idleStopAtMs()) out.idleStopAtMs = toWallMs(*at);
  out.driver = driverName(s.config);
  out.machine = s.config.machine;
  out.healthUrl = withoutCredentials(s.config.healthUrl);  // a password in it is not for whoever reads status
  out.baseUrl = withoutCredentials(s.config.baseUrl);
  out.idleTimeoutMs = s.config.idleTimeout.count();
  out.queued = src.machineQueue.waiting(s.config.machine, s.config.name) || src.placement.queued(s.config.name);
  if (src.cluster) out.owner = src.cluster->ownerOf(s.config.name);
  out.needs.assign(s.config.needs.begin(), s.config.needs.end());
  out.evictable = s.config.evictable;
  if (src.placement.queued(s.config.name)) out.waitingFor = src.placement.waitReason(s.config.name);
  addRecord(out, snap);
  return out;
}

protocol::StatusReply::Machine machineStatus(const std::string& name, const StatusSources& src) {
  const MachineUsage u = src.placement.usage(name);
  protocol::StatusReply::Machine m;
  m.name = name;
  if (const auto it = src.config.machines.find(name); it != src.config.machines.end()) {
    m.minWarmMs = it->second.minWarm.count();
  }
  for (const auto& [resource, total] : u.total) {
    const auto used = u.used.find(resource);
    m.resources.push_back({resource, total, used == u.used.end() ? 0 : used->second});
  }
  for (const auto& h : u.holders)
    m.holders.push_back({h.service, h.state, {h.needs.begin(), h.needs.end()}});
  for (const auto& q : u.queue)
    m.queue.push_back({q.service, q.sinceMs, q.reason});
  return m;
}

}  // namespace

protocol::StatePush statePush(const Service& s, std::int64_t etcdUnreachableSinceMs) {
  const auto& snap = s.machine.snapshot();
  protocol::StatePush p;
  p.service = s.config.name;
  p.state = snap.state;
  p.epoch = snap.epoch;
  p.sinceMs = toWallMs(snap.sinceMs);
  p.startingSinceMs = toWallMs(snap.startingSinceMs);
  p.cause = toString(snap.cause);
  p.reason = snap.reason;
  if (snap.operation && snap.operation->taskId) {
    p.taskId = snap.operation->taskId;
  } else if (snap.lastOperation) {
    p.taskId = snap.lastOperation->taskId;
  }
  p.retryAtMs = retryAt(s);
  if (snap.startsOk > 0) p.lastStartMs = snap.lastStartMs;
  p.models = s.config.models;
  p.upstream = upstreamOf(s.config.baseUrl);
  if (snap.state == ServiceState::Starting) p.waiting = s.waitReason;
  p.etcdUnreachableSinceMs = etcdUnreachableSinceMs;
  return p;
}

std::string eventLine(const Service& s, const Transition& t, std::uint64_t epoch) {
  return protocol::encode(
      protocol::Event{s.config.name, toWallMs(t.atMs), t.from, t.to, toString(t.cause), t.detail, t.taskId, epoch, {}});
}

// nowMs is controld's monotonic clock (clockMillisNow); the event shows wall time.
std::string waitingEventLine(const Service& s, const std::string& machine, std::int64_t nowMs) {
  const ServiceState state = s.machine.state();
  const bool waiting = !s.waitReason.empty();
  return protocol::encode(protocol::Event{s.config.name, toWallMs(nowMs), state, state, waiting ? "waiting" : "room",
                                          waiting ? s.waitReason : "room found on " + machine, 0, s.machine.epoch(),
                                          machine});
}

std::string replyLine(std::int64_t id, bool ok, const std::string& error, const Service* s) {
  protocol::Reply reply{id, ok, error, std::nullopt};
  if (s) reply.service = protocol::Reply::Service{s->machine.state(), s->machine.epoch(), s->machine.snapshot().reason};
  return protocol::encode(reply);
}

std::optional<protocol::StatusReply> statusReply(std::int64_t id, const std::string& only, const StatusSources& src,
                                                 std::string& error) {
  if (!only.empty() && !src.services.contains(only)) {
    error = "unknown service \"" + only + "\"";
    return std::nullopt;
  }
  protocol::StatusReply reply;
  reply.id = id;
  reply.nowMs = unixMillisNow();
  reply.daemon = daemonStatus(src);
  if (src.cluster) reply.clusterJson = src.cluster->statusJson();
  for (const auto& [name, s] : src.services) {
    if (only.empty() || name == only) reply.services.push_back(serviceStatus(*s, src));
  }
  for (const auto& machine : src.placement.machineNames())
    reply.machines.push_back(machineStatus(machine, src));
  return reply;
}

std::string statusReplyLine(std::int64_t id, const std::string& only, const StatusSources& src, std::string& error) {
  const auto reply = statusReply(id, only, src, error);
  return reply ? protocol::encode(*reply) : std::string();
}

}  // namespace ondemand::controld
