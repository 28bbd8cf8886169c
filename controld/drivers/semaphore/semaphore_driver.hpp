#pragma once
// Starting and stopping services through Ansible Semaphore task templates.
//
// SemaphoreClient is the one connection to Semaphore (base URL, project,
// credentials) shared by every service's SemaphoreDriver. A driver runs a task
// of the service's start or stop template and follows it until Semaphore says
// it finished; failures come back as reasons a user can act on, with the last
// lines of the task's output. docs/SEMAPHORE.md describes what is sent and
// how failures read; ../shared/spec/SEMAPHORE.md the API facts this follows.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "controld/config/config.hpp"
#include "controld/core/driver.hpp"
#include "controld/io/http_client.hpp"
#include "controld/drivers/semaphore/semaphore_live.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

// What a Semaphore call came back with.
struct SemaphoreReply {
  HttpResponse http;
  // Set when Semaphore refused the credentials (401/403, or a failed session
  // login): a sentence for the user naming the URL and the kind of credential.
  std::string refused;
};

// Authenticated, non-blocking calls to one Semaphore project. With an API
// token every call carries "Authorization: Bearer <token>". With only a
// username and password, the first call logs in (POST /api/auth/login) and
// later calls reuse the session cookie; calls made while a login is under way
// wait for that one login, and only a 401 leads to a new login (and one retry
// of the refused call). The HttpClient must outlive every call; the client
// itself may go away at any time (drivers share it through a shared_ptr, so a
// configuration reload can bring a new one while old drivers finish).
class SemaphoreClient {
 public:
  using RequestId = std::uint64_t;
  using Callback = std::function<void(SemaphoreReply)>;

  SemaphoreClient(uv_loop_t* loop, HttpClient& http, SemaphoreSettings settings);
  ~SemaphoreClient();  // abandons every call: no callback runs afterwards
  SemaphoreClient(const SemaphoreClient&) = delete;
  SemaphoreClient& operator=(const SemaphoreClient&) = delete;

  // METHOD base_url + path ("/api/..."); `body` is JSON text or empty. The
  // callback runs on the loop, never from inside send().
  RequestId send(std::string method, std::string path, std::string body, Callback callback);
  void cancel(RequestId id);  // no callback for it afterwards

  uv_loop_t* loop() const { return loop_; }
  const SemaphoreSettings& settings() const { return settings_; }
  std::string projectPath() const;  // "/api/project/1"

  // Live updates (semaphore_live.hpp): `callback` runs with the status
  // Semaphore announced for the task, or with "" when the connection (re)opened
  // and announcements may have been missed. The connection is open while a
  // task is watched, and a while after, so that back-to-back operations share it.
  using WatchId = std::uint64_t;
  using TaskCallback = std::function<void(const std::string& status)>;
  WatchId watchTask(std::int64_t taskId, TaskCallback callback);
  void unwatchTask(WatchId id);

 private:
  struct Call {
    std::string method;
    std::string path;
    std::string body;
    Callback callback;
    HttpClient::RequestId httpId = 0;
    std::uint64_t session = 0;  // the login the call was sent with
    bool retried = false;
  };

  bool usesSession() const;
  void dispatch(RequestId id);
  void onResponse(RequestId id, HttpResponse response);
  void startLogin();
  void onLogin(HttpResponse response);
  void finish(RequestId id, HttpResponse response, std::string refused);
  std::string refusal(long status) const;
  void onLiveEvent(const SemaphoreLiveUpdates::Event& event);

  uv_loop_t* loop_;
  HttpClient& http_;
  SemaphoreSettings settings_;
  std::map<RequestId, Call> calls_;
  std::vector<RequestId> awaitingLogin_;
  HttpClient::RequestId loginId_ = 0;
  std::string cookie_;  // "semaphore=…", empty when not logged in
  std::uint64_t sessionGeneration_ = 0;
  RequestId nextId_ = 1;

  struct Watch {
    std::int64_t taskId = 0;
    TaskCallback callback;
  };
  std::map<WatchId, Watch> watches_;
  WatchId nextWatch_ = 1;
  std::unique_ptr<SemaphoreLiveUpdates> live_;  // created with the first watch
  std::unique_ptr<Timer> liveLinger_;           // closes the connection a while after the last watch
  bool liveConnected_ = false;
  std::string liveProblemLogged_;  // the last "unavailable" reason logged, to log each only once

  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

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

// Removes ANSI escape sequences (colours, cursor movement) and the control
// characters but tab from task output.
std::string stripAnsi(std::string_view text);

// The last `maxLines` non-blank lines of a GET …/tasks/{id}/output answer (an
// array of {"output": …} objects, or null), ANSI removed. nullopt when the
// body is not such an answer.
std::optional<std::vector<std::string>> lastOutputLines(std::string_view body, std::size_t maxLines);

// What a GET …/tasks/last answer says about the task of one operation: the
// task whose environment (a JSON object text) has "ondemand_operation" equal
// to `operationId`. nullopt when the body is not a list of tasks.
struct TaskSearch {
  std::int64_t taskId = 0;  // 0: none listed; of several, the first created
  std::string status;
  std::size_t listed = 0;            // how many tasks the answer holds
  std::int64_t oldestCreatedMs = 0;  // when the oldest of them was created (unix ms), 0 if unknown
};
std::optional<TaskSearch> searchTaskList(std::string_view body, std::string_view operationId);

// Semaphore's timestamps ("2024-10-25T08:00:00.123Z", RFC 3339 with any
// fraction and Z or an offset) as unix ms; nullopt for anything else.
std::optional<std::int64_t> rfc3339Millis(std::string_view text);

}  // namespace ondemand::controld
