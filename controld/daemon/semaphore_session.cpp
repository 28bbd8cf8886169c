#include "controld/daemon/semaphore_session.hpp"

#include "controld/drivers/semaphore/semaphore_driver.hpp"

namespace ondemand::controld {

namespace {

bool sameConnection(const SemaphoreSettings& a, const SemaphoreSettings& b) {
  return withoutTrailingSlashes(a.baseUrl) == withoutTrailingSlashes(b.baseUrl) && a.projectId == b.projectId &&
         a.apiToken == b.apiToken && a.username == b.username && a.password == b.password &&
         a.httpTimeout == b.httpTimeout;
}

}  // namespace

std::shared_ptr<SemaphoreClient> SemaphoreSession::client(const SemaphoreSettings& settings) {
  if (!client_ || !sameConnection(client_->settings(), settings)) {
    client_ = std::make_shared<SemaphoreClient>(loop_, http_, settings);
  }
  return client_;
}

}  // namespace ondemand::controld
