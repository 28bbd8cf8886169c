// The seams between the daemon and the cluster (docs/CLUSTER.md): the owner
// of a service acts on it; every other node mirrors the owner's state to its
// workers and forwards what they say (wakes, activity, stopping-acks).

#include <algorithm>

#include "controld/daemon/daemon.hpp"
#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"
#include "controld/io/state_store.hpp"

namespace ondemand::controld {

bool Daemon::acting(const Service& s) const {
  return !cluster_ || cluster_->owns(s.config.name);
}

std::uint64_t Daemon::inFlight(const std::string& service) const {
  return ledger_.inFlight(service) + (cluster_ ? cluster_->remoteInFlight(service) : 0);
}

std::int64_t Daemon::etcdUnreachableSinceMs() const {
  return cluster_ ? cluster_->unreachableSinceMs() : 0;
}

void Daemon::clusterServices() {
  std::map<std::string, std::string> summaries;
  for (const auto& [name, c] : config_.services)
    summaries[name] = serviceSummary(c);
  cluster_->setServices(std::move(summaries));
}

void Daemon::startCluster() {
  cluster_ = std::make_unique<Cluster>(loop_, *http_, *config_.cluster, *this);
  clusterServices();
  LogLine(LogLevel::Info, "cluster_join")
      .kv("node", config_.cluster->node)
      .kv("prefix", config_.cluster->prefix)
      .kv("etcd", config_.cluster->endpoints.front());
  cluster_->start();
}

void Daemon::publishToCluster(Service& s, std::function<void()> launch) {
  // etcd holds wall-clock times: every node reads them back against its own clock.
  cluster_->publishState(s.config.name, withTimes(s.machine.snapshot(), toWallMs),
                         [this, service = &s, launch](bool ok) {
                           if (!launch || !ok || shuttingDown_ || !services_->holds(service) || !acting(*service))
                             return;
                           launch();
                         });
}

void Daemon::clusterGained(const std::string& name, std::optional<MachineSnapshot> snapshot,
                           const std::string& writer) {
  Service* s = services_->find(name);
  if (!s) return;
  const auto now = clockMillisNow();
  const bool restored = snapshot.has_value();
  Effects e;
  e.persist = true;  // nothing in etcd yet: this node's (fresh) state becomes the truth
  if (restored) {
    if (snapshot->operation && writer != config_.cluster->node && snapshot->operation->driver == "command") {
      // The command ran under another controld, maybe on another host: its pid
      // means nothing here. The health check follows it until start_timeout.
      snapshot->operation->pid = 0;
    }
    // Never below this node's floor (epochs do not go back on this node's workers).
    snapshot->epoch = std::max(snapshot->epoch, services_->epochFloor());
    s->eventEpoch = snapshot->epoch;
    e = s->machine.restore(now, withTimes(std::move(*snapshot), fromWallMs));
  }
  // Wakes sent while no node owned the service, or to an owner that had died,
  // reached nobody: an owner acts only on the wakes it sees while it owns.
  // Under a new epoch, every worker still holding requests for the cold
  // service, on any node, sends its wake again.
  if (s->machine.state() == ServiceState::Cold) {
    e |= s->machine.renewEpoch();
    s->eventEpoch = s->machine.epoch();  // no transition, so no event
  }
  apply(*s, e);
  if (restored) apply(*s, s->machine.activity(now, inFlight(name), false));
}

void Daemon::clusterLost(const std::string& name) {
  Service* s = services_->find(name);
  if (!s) return;
  LogLine(LogLevel::Warning, "cluster_not_owner").kv("service", name).kv("owner", cluster_->ownerOf(name));
  if (s->driver) s->driver->detach();  // whatever runs goes on; the next owner follows it
  if (s->holdsMachine) {
    s->holdsMachine = false;
    machineQueue_.release(s->config.machine, name);
  }
  if (s->health) s->health->stop();
  s->timer.stop();
  ledger_.forgetDrain(name);
}

void Daemon::clusterMirror(const std::string& name, MachineSnapshot snapshot) {
  Service* s = services_->find(name);
  if (!s || acting(*s)) return;
  const bool draining = snapshot.state == ServiceState::Stopping && snapshot.phase == Phase::Draining;
  const bool newAnnouncement = draining && snapshot.epoch != s->machine.epoch();
  s->machine.mirror(withTimes(std::move(snapshot), fromWallMs));
  publish(*s);
  if (!forwardedStops_.empty()) answerForwardedStops();
  if (newAnnouncement) {
    beginDrain(*s);  // this node's workers answer; the ack goes to the owner through etcd
  } else if (!draining) {
    ledger_.forgetDrain(name);
  }
}

void Daemon::clusterWake(const std::string& name, const std::string& reason) {
  Service* s = services_->find(name);
  if (!s || !acting(*s)) return;
  apply(*s, s->machine.wake(clockMillisNow(), Cause::Request, reason), reason);
}

void Daemon::clusterStop(const std::string& name, const std::string& reason) {
  Service* s = services_->find(name);
  if (!s || !acting(*s) || !s->driver || !s->driver->supports(OperationKind::Stop)) return;
  apply(*s, s->machine.stopRequested(clockMillisNow()), reason);
}

void Daemon::forwardStop(ControlConnection& c, const protocol::Command& command, Service& s) {
  auto answer = [&](bool ok, const std::string& error) { c.send(replyLine(command.id, ok, error, &s)); };
  if (!cluster_->reachable()) return answer(false, "etcd is unreachable: this node stops nothing");
  const ServiceState state = s.machine.state();
  if (state == ServiceState::Cold) return answer(true, "");  // nothing to stop, as on the owner
  cluster_->forwardStop(s.config.name, "controld stop (cli)");
  if (state == ServiceState::Stopping) return answer(true, "");  // under way: --wait follows it to cold
  // The answer waits for the owner's next state (stopping), as the owner's own answer would say it.
  forwardedStops_.push_back(ForwardedStop{c.id(), command.id, s.config.name, s.machine.epoch(),
                                          clockMillisNow() + 2 * config_.cluster->requestTimeout.count()});
  answerForwardedStops();
}

void Daemon::answerForwardedStops() {
  const auto now = clockMillisNow();
  std::vector<ForwardedStop> waiting;
  std::int64_t next = 0;
  for (const auto& f : forwardedStops_) {
    const Service* s = services_->find(f.service);
    const bool acted = s && s->machine.epoch() != f.epoch;
    if (s && !acted && now < f.deadlineMs) {
      next = next ? std::min(next, f.deadlineMs) : f.deadlineMs;
      waiting.push_back(f);
      continue;
    }
    const std::string line =
        acted || !s ? replyLine(f.commandId, acted, acted ? "" : "service \"" + f.service + "\" is gone", s)
                    : replyLine(f.commandId, false,
                                "node \"" + cluster_->ownerOf(f.service) + "\", which owns service \"" + f.service +
                                    "\", did not act on the stop in time: run controld stop there",
                                s);
    server_->forEach([&](ControlConnection& c) {
      if (c.id() == f.connection) c.send(line);
    });
  }
  forwardedStops_ = std::move(waiting);
  if (!next) return;
  if (!forwardedStopTimer_) forwardedStopTimer_ = std::make_unique<Timer>(loop_);
  forwardedStopTimer_->start(std::chrono::milliseconds(next - now), [this] { answerForwardedStops(); });
}

void Daemon::clusterActivity(const std::string& name, bool requestsStarted) {
  Service* s = services_->find(name);
  if (!s || !acting(*s)) return;
  apply(*s, s->machine.activity(clockMillisNow(), inFlight(name), requestsStarted));
  maybeFinishDrain(*s);
}

void Daemon::clusterCaughtUp() {
  for (auto& [name, s] : *services_)
    publish(*s);  // workers stop saying etcd is away, and ask again for what they want
}

void Daemon::clusterReachability(bool reachable) {
  for (auto& [name, s] : *services_) {
    if (!reachable) publish(*s);  // workers say so in their answers and pages
    if (reachable && acting(*s)) {
      Effects e;  // what changed while etcd was away goes there now
      e.persist = true;
      apply(*s, e);
    } else {
      reschedule(*s);
    }
  }
}

}  // namespace ondemand::controld
