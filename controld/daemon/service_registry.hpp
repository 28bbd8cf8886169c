#pragma once
// The services controld runs, built from the configuration: each one's state
// machine, driver (command or Semaphore, made here: construction happens at
// the edge, the core only knows the Driver interface), health checker and
// timer. A reload is planned here too: services that left the configuration
// go, new ones are built, the others receive their new configuration, which
// applies once nothing is under way for them (applyPendingConfig).

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "controld/config/config.hpp"
#include "controld/core/driver.hpp"
#include "controld/core/service_machine.hpp"
#include "controld/daemon/semaphore_session.hpp"
#include "controld/io/health_checker.hpp"
#include "controld/io/http_client.hpp"
#include "controld/io/state_store.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

struct Service {
  Service(uv_loop_t* loop, const ServiceConfig& c, MachineSettings settings, std::size_t historySize)
      : config(c), machine(c.name, settings, historySize), timer(loop) {}

  ServiceConfig config;
  ServiceMachine machine;
  std::unique_ptr<Driver> driver;
  std::unique_ptr<HealthChecker> health;
  Timer timer;
  bool holdsMachine = false;                   // an operation runs or waits for this service's machine
  std::uint64_t startedTotal = 0;              // requests started, as reported by workers
  std::optional<ServiceConfig> pendingConfig;  // a reload that waits for the operation under way
  std::uint64_t eventEpoch = 0;                // the epoch whose transition was last logged and sent as an event
  // Shared machines: a start that needs room begins once placement lets it
  // (startPlaced) and its record is on disk (startRecorded).
  bool startPlaced = false;
  bool startRecorded = false;
  std::string startWhy;
  std::string waitReason;  // what the queued start waits for, as last published
  std::string evictedFor;  // stopping to make room for this service
};

class ServiceRegistry {
 public:
  using Map = std::map<std::string, std::unique_ptr<Service>>;

  ServiceRegistry(uv_loop_t* loop, HttpClient& http, const StateStore& store);

  // What every service shares: the history size and the Semaphore connection.
  void useConfig(const Config& config);

  // Services built from now on start their epochs at `floor` (Daemon::run).
  void setEpochFloor(std::uint64_t floor) { epochFloor_ = floor; }
  std::uint64_t epochFloor() const { return epochFloor_; }

  Service& add(const ServiceConfig& config);
  Service* find(const std::string& name);
  const Service* find(const std::string& name) const;
  bool contains(const std::string& name) const { return services_.count(name) > 0; }
  std::size_t size() const { return services_.size(); }
  Map::iterator begin() { return services_.begin(); }
  Map::iterator end() { return services_.end(); }
  Map::const_iterator begin() const { return services_.begin(); }
  Map::const_iterator end() const { return services_.end(); }
  // Whether `service` still is the one registered under its name.
  bool holds(const Service* service) const;
  void clear();

  // One service of a reload, in the order of the new configuration.
  struct Change {
    Service* service;
    bool added;                   // built now; else its new configuration waits in pendingConfig
    bool routingChanged = false;  // models or base_url changed: taken at once, to be pushed
  };
  // Takes `next` as the configuration: services missing from it are erased
  // (`removing` runs for each first), new ones built, the others given theirs.
  std::vector<Change> reload(const Config& next, const std::function<void(Service&)>& removing);
  // Applies a configuration that waits for the service to be still (no
  // operation or readiness check under way). True when it did.
  bool applyPendingConfig(Service& service);

  std::unique_ptr<Driver> makeDriver(const ServiceConfig& config);
  static MachineSettings machineSettings(const ServiceConfig& config, const Driver* driver);

  SemaphoreSession& semaphore() { return semaphore_; }

 private:
  std::unique_ptr<HealthChecker> makeHealthChecker(const ServiceConfig& config);

  uv_loop_t* loop_;
  HttpClient& http_;
  const StateStore& store_;
  SemaphoreSession semaphore_;
  std::size_t historySize_ = 20;
  std::uint64_t epochFloor_ = 0;
  std::optional<SemaphoreSettings> semaphoreSettings_;
  Map services_;
};

}  // namespace ondemand::controld
