#include "controld/drivers/semaphore/semaphore_driver.hpp"

#include "controld/drivers/semaphore/semaphore_task.hpp"
#include "controld/io/clock.hpp"
#include "shared/json_read.hpp"

namespace ondemand::controld {

SemaphoreDriver::SemaphoreDriver(std::shared_ptr<SemaphoreClient> client, std::string serviceId,
                                 SemaphoreServiceSettings settings)
    : client_(std::move(client)), serviceId_(std::move(serviceId)), settings_(std::move(settings)) {}

SemaphoreDriver::~SemaphoreDriver() {
  if (op_) op_->abandon(false);
}

bool SemaphoreDriver::supports(OperationKind kind) const {
  return kind == OperationKind::Start ? settings_.startTemplateId != 0 : settings_.stopTemplateId != 0;
}

std::string SemaphoreDriver::taskEnvironment(OperationKind kind, const std::string& operationId) const {
  JsonWriter w;
  w.startObject().str("service_id", serviceId_).str("machine_id", settings_.machineId).str("action", toString(kind));
  w.str(kOperationKey, operationId);
  rapidjson::Document extra;
  if (parseJson(extra, settings_.extraVarsJson).empty() && extra.IsObject()) {
    for (const auto& member : extra.GetObject()) {
      const std::string_view name(member.name.GetString(), member.name.GetStringLength());
      if (name == "service_id" || name == "machine_id" || name == "action" || name == kOperationKey)
        continue;  // controld's own say
      w.key(name);
      member.value.Accept(w.raw());
    }
  }
  return w.endObject().text();
}

std::shared_ptr<SemaphoreDriver::Operation> SemaphoreDriver::begin(OperationKind kind, ProgressCallback progress,
                                                                   DoneCallback done) {
  if (op_) cancel();  // one operation at a time: a new one replaces (and stops) the old
  const std::int64_t templateId = kind == OperationKind::Start ? settings_.startTemplateId : settings_.stopTemplateId;
  op_ = std::make_shared<Operation>(*client_, kind, templateId, settings_.taskTimeout, settings_.pollInterval);
  op_->serviceId = serviceId_;
  op_->progress = std::move(progress);
  op_->done = std::move(done);
  op_->record.kind = kind;
  op_->record.driver = "semaphore";
  return op_;
}

std::string SemaphoreDriver::cannotRun(OperationKind kind) const {
  if (!supports(kind)) return "service " + serviceId_ + " has no Semaphore " + toString(kind) + " template";
  if (!settings_.extraVarsJson.empty()) {
    rapidjson::Document extra;
    if (!parseJson(extra, settings_.extraVarsJson).empty() || !extra.IsObject())
      return "extra_vars of service " + serviceId_ + " is not a JSON object";
  }
  return {};
}

std::string SemaphoreDriver::taskBody(OperationKind kind, const std::string& operationId,
                                      const std::string& why) const {
  JsonWriter w;
  w.startObject().i64("template_id",
                      kind == OperationKind::Start ? settings_.startTemplateId : settings_.stopTemplateId);
  // A string holding JSON, not an object: Semaphore answers 400 to an object.
  w.str("environment", taskEnvironment(kind, operationId));
  if (!settings_.machineId.empty()) w.str("limit", settings_.machineId);
  std::string message = "ondemand: " + std::string(toString(kind)) + " " + serviceId_;
  if (!why.empty()) message += " (" + why + ")";
  w.str("message", message);
  return w.endObject().text();
}

void SemaphoreDriver::run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) {
  const auto op = begin(request.kind, std::move(progress), std::move(done));
  op->record.startedAtMs = clockMillisNow();
  if (std::string problem = cannotRun(request.kind); !problem.empty()) {
    op->report();
    if (op->active) op->failSoon(std::move(problem));
    return;
  }
  op->record.operationId =
      request.operationId.empty() ? newOperationId(serviceId_, op->record.startedAtMs) : request.operationId;
  op->body = taskBody(request.kind, op->record.operationId, request.why);
  op->report();  // persisted before Semaphore hears of it
  if (!op->active) return;
  op->create();
}

void SemaphoreDriver::resume(const OperationRecord& record, ProgressCallback progress, DoneCallback done) {
  const auto op = begin(record.kind, std::move(progress), std::move(done));
  op->record = record;
  op->record.driver = "semaphore";
  if (record.startedAtMs <= 0) op->record.startedAtMs = clockMillisNow();
  if (record.taskId > 0) {
    op->follow(true);
    return;
  }
  if (record.operationId.empty()) {
    // Recorded by a controld that sent no operation id with its tasks: a task
    // of this operation, if there is one, cannot be told from any other, and
    // starting another could run the playbook twice.
    op->failSoon(op->unconfirmed() + "; not running a second one (check Semaphore's task history)");
    return;
  }
  // The previous controld stopped between sending the task and recording
  // Semaphore's answer: the task may or may not exist. Look for it.
  op->cannotPost = cannotRun(record.kind);
  if (op->cannotPost.empty()) op->body = taskBody(record.kind, record.operationId, kSentAgain);
  op->lookUp();
}

void SemaphoreDriver::cancel() {
  if (!op_) return;
  auto op = std::move(op_);
  op->abandon(true);
}

void SemaphoreDriver::detach() {
  if (!op_) return;
  auto op = std::move(op_);
  op->abandon(false);
}

}  // namespace ondemand::controld
