#include "controld/daemon/service_registry.hpp"

#include "controld/drivers/command_driver.hpp"
#include "controld/drivers/semaphore/semaphore_driver.hpp"

namespace ondemand::controld {

ServiceRegistry::ServiceRegistry(uv_loop_t* loop, HttpClient& http, const StateStore& store)
    : loop_(loop), http_(http), store_(store), semaphore_(loop, http) {}

void ServiceRegistry::useConfig(const Config& config) {
  historySize_ = config.historySize;
  semaphoreSettings_ = config.semaphore;
}

std::unique_ptr<Driver> ServiceRegistry::makeDriver(const ServiceConfig& c) {
  switch (c.driverKind()) {
    case ServiceConfig::DriverKind::Command:
      return std::make_unique<CommandDriver>(loop_, c.startCommand, c.stopCommand, c.startTimeout, c.stopTimeout,
                                             c.name, store_.commandOutputPath(c.name), c.environment);
    case ServiceConfig::DriverKind::Semaphore:
      if (!c.semaphore || !semaphoreSettings_) return nullptr;  // the config loader does not let this happen
      return std::make_unique<SemaphoreDriver>(semaphore_.client(*semaphoreSettings_), c.name, *c.semaphore);
    case ServiceConfig::DriverKind::None:
      return nullptr;
  }
  return nullptr;
}

MachineSettings ServiceRegistry::machineSettings(const ServiceConfig& c, const Driver* driver) {
  MachineSettings s;
  s.startTimeout = c.startTimeout;
  s.idleTimeout = c.idleTimeout;
  s.failureBackoff = c.failureBackoff;
  s.warmup = c.warmup;
  s.hasStartDriver = driver && driver->supports(OperationKind::Start);
  s.hasStopDriver = driver && driver->supports(OperationKind::Stop);
  s.hasHealthCheck = !c.healthUrl.empty();
  s.driverFindsUnconfirmed = driver && c.driverKind() == ServiceConfig::DriverKind::Semaphore;
  return s;
}

std::unique_ptr<HealthChecker> ServiceRegistry::makeHealthChecker(const ServiceConfig& c) {
  if (c.healthUrl.empty()) return nullptr;
  return std::make_unique<HealthChecker>(http_, loop_, c.healthUrl, c.healthInterval, c.healthTimeout);
}

Service& ServiceRegistry::add(const ServiceConfig& c) {
  auto driver = makeDriver(c);
  auto service = std::make_unique<Service>(loop_, c, machineSettings(c, driver.get()), historySize_);
  service->driver = std::move(driver);
  service->health = makeHealthChecker(c);
  service->machine.raiseEpoch(epochFloor_);
  service->eventEpoch = service->machine.epoch();
  auto& slot = services_[c.name];
  slot = std::move(service);
  return *slot;
}

Service* ServiceRegistry::find(const std::string& name) {
  auto it = services_.find(name);
  return it == services_.end() ? nullptr : it->second.get();
}

const Service* ServiceRegistry::find(const std::string& name) const {
  auto it = services_.find(name);
  return it == services_.end() ? nullptr : it->second.get();
}

bool ServiceRegistry::holds(const Service* service) const {
  auto it = services_.find(service->config.name);
  return it != services_.end() && it->second.get() == service;
}

void ServiceRegistry::clear() {
  services_.clear();
}

std::vector<ServiceRegistry::Change> ServiceRegistry::reload(const Config& next,
                                                             const std::function<void(Service&)>& removing) {
  for (auto it = services_.begin(); it != services_.end();) {
    if (next.services.count(it->first)) {
      ++it;
      continue;
    }
    removing(*it->second);
    it = services_.erase(it);
  }
  useConfig(next);
  std::vector<Change> changes;
  for (const auto& [name, c] : next.services) {
    if (Service* s = find(name)) {
      const bool routingChanged = s->config.models != c.models || s->config.baseUrl != c.baseUrl;
      s->config.models = c.models;
      s->config.baseUrl = c.baseUrl;
      s->pendingConfig = c;
      changes.push_back({s, false, routingChanged});
    } else {
      changes.push_back({&add(c), true});
    }
  }
  return changes;
}

bool ServiceRegistry::applyPendingConfig(Service& s) {
  if (!s.pendingConfig || s.machine.phase() != Phase::None) return false;
  ServiceConfig next = std::move(*s.pendingConfig);
  s.pendingConfig.reset();
  s.config = next;
  s.driver = makeDriver(next);
  s.health = makeHealthChecker(next);
  s.machine.updateSettings(machineSettings(next, s.driver.get()));
  return true;
}

}  // namespace ondemand::controld
