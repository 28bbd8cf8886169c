#include "controld/core/placement.hpp"

#include <algorithm>
#include <cstdio>

namespace ondemand::controld {

namespace {

constexpr double kEpsilon = 1e-9;

bool fits(const Amounts& needs, const Amounts& used, const Amounts& total) {
  for (const auto& [resource, amount] : needs) {
    const auto t = total.find(resource);
    const double have = t == total.end() ? 0 : t->second;
    const auto u = used.find(resource);
    const double inUse = u == used.end() ? 0 : u->second;
    if (inUse + amount > have + kEpsilon) return false;
  }
  return true;
}

void add(Amounts& to, const Amounts& amounts, double sign = 1) {
  for (const auto& [resource, amount] : amounts)
    to[resource] += sign * amount;
}

std::string seconds(std::int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(std::max<std::int64_t>(ms, 0)) / 1000.0);
  return buf;
}

std::string joinNames(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " and " : ", ";
    out += names[i];
  }
  return out;
}

const std::string kEmpty;

// Takes `items` (each with a `needs` pointer) in order off `used` until
// `wanted` fits, then puts back every one that turns out not to be needed
// (the latest first). Returns the ones taken; `used` is what is left.
template <typename Item>
std::vector<const Item*> fewestToTake(const std::vector<Item>& items, const Amounts& wanted, Amounts& used,
                                      const Amounts& total) {
  std::vector<const Item*> taken;
  for (const Item& item : items) {
    if (fits(wanted, used, total)) break;
    taken.push_back(&item);
    add(used, *item.needs, -1);
  }
  if (!fits(wanted, used, total)) return taken;
  for (auto it = taken.rbegin(); it != taken.rend();) {
    Amounts without = used;
    add(without, *(*it)->needs);
    if (fits(wanted, without, total)) {
      used = without;
      it = decltype(it)(taken.erase(std::next(it).base()));
    } else {
      ++it;
    }
  }
  return taken;
}

}  // namespace

std::string formatAmount(double amount) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", amount);
  return buf;
}

void Placement::configure(std::map<std::string, PlacementMachine> machines,
                          std::map<std::string, PlacementService> services) {
  machines_ = std::move(machines);
  std::map<std::string, Known> next;
  for (auto& [name, config] : services) {
    if (!machines_.count(config.machine)) continue;
    Known k;
    if (auto it = services_.find(name); it != services_.end()) k = it->second;
    k.config = std::move(config);
    next[name] = std::move(k);
  }
  services_ = std::move(next);
  // Queued wakes of services that are no longer managed, or moved machine, leave.
  for (auto q = queues_.begin(); q != queues_.end();) {
    auto& line = q->second;
    line.erase(std::remove_if(line.begin(), line.end(),
                              [&](const Waiting& w) {
                                auto it = services_.find(w.service);
                                return it == services_.end() || it->second.config.machine != q->first;
                              }),
               line.end());
    q = line.empty() ? queues_.erase(q) : std::next(q);
  }
}

bool Placement::manages(const std::string& service) const {
  return services_.count(service) > 0;
}

const std::string& Placement::machineOf(const std::string& service) const {
  auto it = services_.find(service);
  return it == services_.end() ? kEmpty : it->second.config.machine;
}

void Placement::update(const std::string& service, ServiceState state, std::uint64_t inFlight, std::int64_t lastUsedMs,
                       std::int64_t sinceMs) {
  auto it = services_.find(service);
  if (it == services_.end()) return;
  Known& k = it->second;
  if (state != ServiceState::Warm) k.stopFailure.clear();
  k.state = state;
  k.inFlight = inFlight;
  k.lastUsedMs = lastUsedMs;
  k.sinceMs = sinceMs;
}

void Placement::enqueue(const std::string& service, std::int64_t arrivedMs) {
  auto it = services_.find(service);
  if (it == services_.end() || queued(service)) return;
  auto& line = queues_[it->second.config.machine];
  auto pos = std::upper_bound(line.begin(), line.end(), arrivedMs,
                              [](std::int64_t at, const Waiting& w) { return at < w.arrivedMs; });
  line.insert(pos, Waiting{service, arrivedMs, {}});
}

void Placement::dequeue(const std::string& service) {
  const std::string& machine = machineOf(service);
  auto q = queues_.find(machine);
  if (q == queues_.end()) return;
  auto& line = q->second;
  line.erase(std::remove_if(line.begin(), line.end(), [&](const Waiting& w) { return w.service == service; }),
             line.end());
  if (line.empty()) queues_.erase(q);
}

bool Placement::queued(const std::string& service) const {
  auto q = queues_.find(machineOf(service));
  if (q == queues_.end()) return false;
  return std::any_of(q->second.begin(), q->second.end(), [&](const Waiting& w) { return w.service == service; });
}

std::string Placement::waitReason(const std::string& service) const {
  auto q = queues_.find(machineOf(service));
  if (q == queues_.end()) return {};
  for (const Waiting& w : q->second)
    if (w.service == service) return w.reason;
  return {};
}

void Placement::stopFailed(const std::string& service, const std::string& reason) {
  auto it = services_.find(service);
  if (it != services_.end()) it->second.stopFailure = reason.empty() ? "its stop failed" : reason;
}

bool Placement::holds(const std::string& name, const Known& k) const {
  switch (k.state) {
    case ServiceState::Starting:
      return !queued(name);
    case ServiceState::Warm:
    case ServiceState::Stopping:
      return true;
    case ServiceState::Cold:
    case ServiceState::Failed:
      return false;
  }
  return false;
}

std::string Placement::whyNotEvictable(const std::string& name, const Known& k, const PlacementMachine& m,
                                       std::int64_t nowMs) const {
  if (k.state == ServiceState::Starting) return name + " is starting";
  if (k.state != ServiceState::Warm) return name + " is " + std::string(toString(k.state));
  if (k.inFlight > 0) {
    return name + " has " + std::to_string(k.inFlight) + (k.inFlight == 1 ? " request" : " requests") + " in flight";
  }
  if (!k.config.evictable) return name + " is not evictable";
  if (!k.config.canStop) return name + " cannot be stopped by controld (no stop driver)";
  if (!k.stopFailure.empty()) return name + "'s stop failed: " + k.stopFailure;
  if (nowMs - k.sinceMs < m.minWarm.count()) {
    return name + " has been warm for " + seconds(nowMs - k.sinceMs) + ", less than min_warm " +
           formatDuration(m.minWarm);
  }
  return {};
}

PlacementDecision Placement::decide(const std::string& machine, std::int64_t nowMs) {
  PlacementDecision d;
  auto mit = machines_.find(machine);
  auto q = queues_.find(machine);
  if (mit == machines_.end() || q == queues_.end()) return d;
  const PlacementMachine& m = mit->second;
  auto& line = q->second;

  while (!line.empty()) {
    Waiting& head = line.front();
    const Known& wanted = services_.at(head.service);

    // What the others hold, and what of it is already on its way out.
    Amounts used;
    Amounts leaving;
    std::vector<std::string> stopping;
    struct Candidate {
      std::string name;
      std::int64_t lastUsedMs;
      const Amounts* needs;
    };
    std::vector<Candidate> evictable;
    struct Blocker {
      std::string why;
      int rank;  // which to name first: what passes by itself, then what may, then what never does
      const Amounts* needs;
    };
    std::vector<Blocker> blockers;
    for (const auto& [name, k] : services_) {
      if (k.config.machine != machine || name == head.service || !holds(name, k)) continue;
      add(used, k.config.needs);
      if (k.state == ServiceState::Stopping) {
        add(leaving, k.config.needs);
        stopping.push_back(name);
        continue;
      }
      std::string why = whyNotEvictable(name, k, m, nowMs);
      if (why.empty()) {
        evictable.push_back({name, k.lastUsedMs, &k.config.needs});
        continue;
      }
      int rank = 2;
      if (k.state == ServiceState::Warm && (k.inFlight > 0 || nowMs - k.sinceMs < m.minWarm.count())) rank = 0;
      if (k.state == ServiceState::Starting) rank = 1;
      if (k.state == ServiceState::Warm && k.inFlight == 0 && k.config.evictable && k.config.canStop &&
          k.stopFailure.empty() && nowMs - k.sinceMs < m.minWarm.count()) {
        const std::int64_t at = k.sinceMs + m.minWarm.count();
        d.retryAtMs = d.retryAtMs ? std::min(*d.retryAtMs, at) : at;
      }
      blockers.push_back({std::move(why), rank, &k.config.needs});
    }
    const std::string prefix = "waiting for room on " + machine + ": ";

    if (fits(wanted.config.needs, used, m.resources)) {
      d.start.push_back(head.service);
      services_.at(head.service).state = ServiceState::Starting;  // holds from now on
      line.pop_front();
      continue;
    }

    Amounts after = used;
    add(after, leaving, -1);
    if (fits(wanted.config.needs, after, m.resources)) {
      head.reason = prefix + joinNames(stopping) + (stopping.size() == 1 ? " is" : " are") + " stopping";
      break;
    }

    // Least recently used first, then by name; then drop every one not needed.
    std::sort(evictable.begin(), evictable.end(), [](const Candidate& a, const Candidate& b) {
      return a.lastUsedMs != b.lastUsedMs ? a.lastUsedMs < b.lastUsedMs : a.name < b.name;
    });
    Amounts trial = after;
    const auto chosen = fewestToTake(evictable, wanted.config.needs, trial, m.resources);
    if (fits(wanted.config.needs, trial, m.resources)) {
      std::vector<std::string> names;
      for (const Candidate* c : chosen) {
        d.evict.emplace_back(c->name, head.service);
        names.push_back(c->name);
      }
      head.reason = prefix + "stopping " + joinNames(names) + " to make room";
      break;
    }

    // No room can be made now: name what would have to go (besides every
    // evictable one) and why it cannot.
    std::stable_sort(blockers.begin(), blockers.end(),
                     [](const Blocker& a, const Blocker& b) { return a.rank < b.rank; });
    // (All evictable ones are already off `trial`.)
    const auto needed = fewestToTake(blockers, wanted.config.needs, trial, m.resources);
    std::string why;
    for (const Blocker* b : needed)
      why += (why.empty() ? "" : ", ") + b->why;
    head.reason = prefix + (why.empty() ? "the machine is too small" : why);
    break;
  }
  // The others wait behind the first in line.
  for (std::size_t i = 1; i < line.size(); ++i)
    line[i].reason = "waiting for room on " + machine + ": behind " + line.front().service + " (first in line)";
  if (line.empty()) queues_.erase(q);
  return d;
}

MachineUsage Placement::usage(const std::string& machine) const {
  MachineUsage u;
  u.name = machine;
  auto mit = machines_.find(machine);
  if (mit == machines_.end()) return u;
  u.total = mit->second.resources;
  for (const auto& [resource, amount] : u.total)
    u.used[resource] = 0;
  for (const auto& [name, k] : services_) {
    if (k.config.machine != machine || !holds(name, k)) continue;
    add(u.used, k.config.needs);
    u.holders.push_back({name, k.state, k.config.needs});
  }
  if (auto q = queues_.find(machine); q != queues_.end()) {
    for (const Waiting& w : q->second)
      u.queue.push_back({w.service, w.arrivedMs, w.reason});
  }
  return u;
}

std::vector<std::string> Placement::machineNames() const {
  std::vector<std::string> out;
  for (const auto& [name, m] : machines_)
    out.push_back(name);
  return out;
}

}  // namespace ondemand::controld
