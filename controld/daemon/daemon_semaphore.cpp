// The daemon's side of the Semaphore driver: one SemaphoreClient for every
// service, replaced when a reload changes the connection settings (drivers
// still finishing an operation keep the client they started with).

#include "controld/daemon/daemon.hpp"
#include "controld/drivers/semaphore/semaphore_driver.hpp"

namespace ondemand::controld {

namespace {

bool sameConnection(const SemaphoreSettings& a, const SemaphoreSettings& b) {
  auto trimmed = [](std::string url) {
    while (!url.empty() && url.back() == '/')
      url.pop_back();
    return url;
  };
  return trimmed(a.baseUrl) == trimmed(b.baseUrl) && a.projectId == b.projectId && a.apiToken == b.apiToken &&
         a.username == b.username && a.password == b.password && a.httpTimeout == b.httpTimeout;
}

}  // namespace

std::unique_ptr<Driver> Daemon::makeSemaphoreDriver(const ServiceConfig& config) {
  if (!config.semaphore || !config_.semaphore) return nullptr;  // the config loader does not let this happen
  if (!semaphore_ || !sameConnection(semaphore_->settings(), *config_.semaphore)) {
    semaphore_ = std::make_shared<SemaphoreClient>(loop_, *http_, *config_.semaphore);
  }
  return std::make_unique<SemaphoreDriver>(semaphore_, config.name, *config.semaphore);
}

}  // namespace ondemand::controld
