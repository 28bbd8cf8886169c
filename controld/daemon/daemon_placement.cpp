// Shared machines: the daemon's side of placement (core/placement.hpp). It
// tells placement what every service on a declared machine does (after each
// input, from apply()), holds back starts that need room until placement
// lets them go, carries out the evictions it decides through the two-phase
// stop, and publishes what a waiting start waits for (state push, events,
// log). docs/CONFIGURATION.md "Shared machines" is the user's view.

#include "controld/daemon/daemon.hpp"
#include "controld/daemon/status_render.hpp"
#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"

namespace ondemand::controld {

void Daemon::configurePlacement() {
  std::map<std::string, PlacementMachine> machines;
  for (const auto& [name, m] : config_.machines)
    machines[name] = PlacementMachine{m.resources, m.minWarm};
  std::map<std::string, PlacementService> services;
  for (const auto& [name, c] : config_.services) {
    if (!config_.machines.count(c.machine)) continue;
    const bool canStop = !c.stopCommand.empty() || (c.semaphore && c.semaphore->stopTemplateId > 0);
    services[name] = PlacementService{c.machine, c.needs, c.evictable, canStop};
  }
  placement_.configure(std::move(machines), std::move(services));
  for (auto it = machineTimers_.begin(); it != machineTimers_.end();) {
    it = config_.machines.count(it->first) ? std::next(it) : machineTimers_.erase(it);
  }
  // A start queued for room on a machine that is gone from the configuration
  // has nothing left to wait for.
  for (auto& [name, s] : *services_) {
    if (placement_.manages(name) || !s->machine.startPending() || s->startPlaced) continue;
    s->waitReason.clear();
    if (s->startRecorded) launchOperation(*s, OperationKind::Start, s->startWhy);
  }
}

void Daemon::placementAfter(Service& s) {
  const std::string& name = s.config.name;
  if (!placement_.manages(name)) return;
  const auto& snap = s.machine.snapshot();
  placement_.update(name, snap.state, s.machine.inFlight(), snap.lastActivityMs, snap.sinceMs);
  if (snap.state != ServiceState::Stopping) s.evictedFor.clear();
  if (!s.machine.startPending()) {
    placement_.dequeue(name);
    s.startPlaced = false;
    s.startRecorded = false;
  } else if (!s.startPlaced && !placement_.queued(name)) {
    placement_.enqueue(name, snap.startingSinceMs ? snap.startingSinceMs : clockMillisNow());
    LogLine(LogLevel::Info, "room_wanted").kv("service", name).kv("machine", placement_.machineOf(name));
  }
  pumpMachine(placement_.machineOf(name));
}

bool Daemon::startGoesAhead(Service& s, const std::string& why) {
  if (!placement_.manages(s.config.name)) return true;
  // The start's record is on disk; it begins once placement has found room.
  s.startRecorded = true;
  s.startWhy = why;
  if (s.startPlaced) return true;
  pumpMachine(placement_.machineOf(s.config.name));
  return false;
}

void Daemon::pumpMachine(const std::string& machine) {
  if (restoring_ || shuttingDown_ || machine.empty()) return;
  if (pumping_.count(machine)) {
    pumpAgain_.insert(machine);
    return;
  }
  pumping_.insert(machine);
  // Each round's actions change what the next one sees; a round with nothing
  // new to do ends it (an eviction makes its victim stopping, a start takes
  // its service out of the queue).
  for (int round = 0; round < 16; ++round) {
    pumpAgain_.erase(machine);
    const auto now = clockMillisNow();
    const PlacementDecision d = placement_.decide(machine, now);
    for (const auto& [victim, forService] : d.evict) {
      Service* v = services_->find(victim);
      if (!v) continue;
      LogLine(LogLevel::Info, "evicting").kv("service", victim).kv("machine", machine).kv("for", forService);
      v->evictedFor = forService;
      apply(*v, v->machine.evict(now, forService));
    }
    for (const auto& name : d.start) {
      Service* s = services_->find(name);
      if (!s) continue;
      s->startPlaced = true;
      LogLine(LogLevel::Info, "room_found").kv("service", name).kv("machine", machine);
      if (s->startRecorded && s->machine.startPending()) launchOperation(*s, OperationKind::Start, s->startWhy);
    }
    auto& timer = machineTimers_[machine];
    if (!timer) timer = std::make_unique<Timer>(loop_);
    if (d.retryAtMs) {
      timer->start(Millis(std::max<std::int64_t>(0, *d.retryAtMs - now)), [this, machine] { pumpMachine(machine); });
    } else {
      timer->stop();
    }
    if (!pumpAgain_.count(machine)) break;
  }
  pumping_.erase(machine);
  publishWaitReasons(machine);
}

void Daemon::publishWaitReasons(const std::string& machine) {
  for (auto& [name, sp] : *services_) {
    Service& s = *sp;
    if (placement_.machineOf(name) != machine) continue;
    const std::string reason = placement_.queued(name) ? placement_.waitReason(name) : std::string();
    if (reason == s.waitReason) continue;
    s.waitReason = reason;
    if (!reason.empty()) {
      LogLine(LogLevel::Info, "waiting_for_room").kv("service", name).kv("machine", machine).kv("why", reason);
    }
    // Workers get the state again (same epoch: no transition); event
    // followers a `waiting` event.
    const std::string line = protocol::encode(statePush(s));
    const std::string event = waitingEventLine(s, machine, clockMillisNow());
    server_->forEach([&](ControlConnection& c) {
      if (c.subscribed) c.send(line);
      if (c.wantsEvents) c.send(event);
    });
  }
}

void Daemon::evictionStopFailed(Service& s, const std::string& forService, const std::string& reason) {
  const std::string& machine = placement_.machineOf(s.config.name);
  LogLine(LogLevel::Warning, "eviction_failed")
      .kv("service", s.config.name)
      .kv("machine", machine)
      .kv("for", forService)
      .kv("why", reason);
  Service* waiting = services_->find(forService);
  if (!waiting || !placement_.queued(forService)) return;
  apply(*waiting, waiting->machine.roomFailed(clockMillisNow(), "could not make room on " + machine + ": the stop of " +
                                                                    s.config.name + " failed: " + reason));
}

}  // namespace ondemand::controld
