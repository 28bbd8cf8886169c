#pragma once
// Starting and stopping services through Ansible Semaphore task templates.
//
// SemaphoreClient is the one connection to Semaphore (base URL, project,
// credentials) shared by every service's SemaphoreDriver. A driver runs a task
// of the service's start or stop template and follows it until Semaphore says
// it finished; failures come back as reasons a user can act on, with the last
// lines of the task's output. docs/SEMAPHORE.md describes what is sent and
// how failures read; ../shared/spec/SEMAPHORE.md the API facts this follows.

#include <memory>
#include <string>

#include "controld/config/config.hpp"
#include "controld/core/driver.hpp"
#include "controld/drivers/semaphore/semaphore_client.hpp"
#include "controld/drivers/semaphore/semaphore_text.hpp"

namespace ondemand::controld {

// Runs one service's start and stop templates. Start sends a task of
// start_template_id, stop one of stop_template_id (unsupported when 0); the
// task's environment holds service_id, machine_id, action, the operation's id
// (ondemand_operation) and the service's extra_vars.
//
// resume() of an operation whose task id never reached the record (controld
// went away between sending the task and reading Semaphore's answer) looks for
// the task by its operation id in GET …/tasks/last and follows it; only when
// Semaphore certainly has no such task does it send the task again.
class SemaphoreDriver : public Driver {
 public:
  SemaphoreDriver(std::shared_ptr<SemaphoreClient> client, std::string serviceId, SemaphoreServiceSettings settings);
  ~SemaphoreDriver() override;  // stops following the task, leaves it running
  SemaphoreDriver(const SemaphoreDriver&) = delete;
  SemaphoreDriver& operator=(const SemaphoreDriver&) = delete;

  bool supports(OperationKind kind) const override;
  void run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) override;
  void resume(const OperationRecord& record, ProgressCallback progress, DoneCallback done) override;
  // Stops the task with {"force": false} unless it already finished (or, if
  // Semaphore has not answered the creation yet, as soon as it does).
  void cancel() override;
  // Leaves the task running for the next controld to resume.
  void detach() override;

  // The environment string sent with a task: a JSON object text.
  std::string taskEnvironment(OperationKind kind, const std::string& operationId) const;

 private:
  struct Operation;
  std::shared_ptr<Operation> begin(OperationKind kind, ProgressCallback progress, DoneCallback done);
  // Why a task of this kind cannot be sent at all; empty when it can.
  std::string cannotRun(OperationKind kind) const;
  std::string taskBody(OperationKind kind, const std::string& operationId, const std::string& why) const;

  std::shared_ptr<SemaphoreClient> client_;
  std::string serviceId_;
  SemaphoreServiceSettings settings_;
  std::shared_ptr<Operation> op_;
};

}  // namespace ondemand::controld
