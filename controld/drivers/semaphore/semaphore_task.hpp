#pragma once
// One Semaphore start or stop operation (SemaphoreDriver::Operation): the
// task's POST, following it (live updates and polls), reading its output,
// stopping it, and resuming one a previous controld began. Internal to
// controld/drivers/semaphore/ (semaphore_driver.cpp is its one user).

#include <rapidjson/document.h>

#include <chrono>
#include <memory>
#include <random>
#include <utility>

#include "controld/drivers/semaphore/semaphore_common.hpp"
#include "controld/drivers/semaphore/semaphore_driver.hpp"
#include "controld/io/clock.hpp"
#include "controld/io/log.hpp"
#include "controld/io/uv.hpp"
#include "shared/json_read.hpp"

namespace ondemand::controld {

using namespace semaphore_detail;

// --- SemaphoreDriver ---------------------------------------------------------

// One start or stop, from the POST to the final outcome. Shared with the
// callbacks in flight so that abandoning it (cancel, destruction) is safe from
// inside any of them; `active` turns false once nobody may be called back.
// Its code runs either while the driver (and so the client) exists, or from a
// callback of the client: the plain reference to the client is always valid.
struct SemaphoreDriver::Operation : std::enable_shared_from_this<Operation> {
  enum class Phase { LookingUp, Creating, Following, ReadingOutput, Stopping, Over };

  Operation(SemaphoreClient& c, OperationKind k, std::int64_t templ, Millis timeout, Millis interval)
      : client(c),
        kind(k),
        templateId(templ),
        taskTimeout(timeout),
        pollInterval(interval),
        timer(c.loop()),
        deadline(c.loop()) {}

  SemaphoreClient& client;
  OperationKind kind;
  std::int64_t templateId;
  Millis taskTimeout;
  Millis pollInterval;
  std::string serviceId;
  OperationRecord record;
  ProgressCallback progress;
  DoneCallback done;
  std::string body;        // of the task's POST
  std::string cannotPost;  // why the task cannot be sent (when `body` is empty)

  Phase phase = Phase::Creating;
  bool active = true;
  bool stopWhenCreated = false;  // cancelled while Semaphore had not answered the creation (or look-up) yet
  bool secondLook = false;       // the look-up for an unconfirmed task is being repeated (onLookedUp)
  std::string createProblem;     // the POST's answer was lost or unreadable: the reason if no task is found
  bool deadlinePassed = false;
  std::string lastStatus;       // as last read from Semaphore
  std::string lastPollProblem;  // why the last poll could not read the status
  int polls = 0;
  SemaphoreClient::RequestId request = 0;
  SemaphoreClient::WatchId watch = 0;  // live updates for the task
  bool lookAgain = false;              // a live update came while a poll was under way
  Timer timer;                         // next poll, or an outcome delivered later
  Timer deadline;                      // task_timeout

  std::string url() const { return client.settings().baseUrl; }
  void report() {
    if (progress) progress(record);
  }
  std::string taskPath() const { return client.projectPath() + "/tasks/" + std::to_string(record.taskId); }
  std::string taskName() const { return "Semaphore task " + std::to_string(record.taskId); }

  void create() {
    phase = Phase::Creating;
    request = client.send("POST", client.projectPath() + "/tasks", body,
                          [self = shared_from_this()](SemaphoreReply reply) { self->onCreated(std::move(reply)); });
  }

  void onCreated(SemaphoreReply reply) {
    request = 0;
    const HttpResponse& http = reply.http;
    std::int64_t taskId = 0;
    if (http.ok()) {
      rapidjson::Document doc;
      if (parseJson(doc, http.body).empty() && doc.IsObject()) {
        const auto id = doc.FindMember("id");
        if (id != doc.MemberEnd() && id->value.IsInt64() && id->value.GetInt64() > 0) taskId = id->value.GetInt64();
      }
    }
    if (!active) {
      if (stopWhenCreated && taskId) {
        record.taskId = taskId;
        client.send("POST", taskPath() + "/stop", kStopBody, [](SemaphoreReply) {});
      }
      return;
    }
    const std::string what =
        "template " + std::to_string(templateId) + " of project " + std::to_string(client.settings().projectId);
    std::string problem;
    if (!reply.refused.empty()) {
      problem = reply.refused;
    } else if (http.status == 0) {
      problem = "could not reach Semaphore at " + url() + ": " + http.error;
    } else if (taskId == 0 && http.ok()) {
      problem =
          "Semaphore at " + url() + " answered the task for " + what + " without a task id: " + excerpt(http.body);
    } else if (http.status == 500) {
      problem = "Semaphore at " + url() + " could not run " + what +
                " (HTTP 500, no details): check that the template exists in that project";
    } else if (http.status == 404) {
      problem = "Semaphore at " + url() + " has no project " + std::to_string(client.settings().projectId) +
                " for this user (HTTP 404)";
    } else if (!http.ok()) {
      problem = "Semaphore at " + url() + " answered HTTP " + std::to_string(http.status) + " to the task for " + what +
                ": " + excerpt(http.body);
    }
    if (!problem.empty()) {
      // A POST that got no answer (a timeout, a dropped connection), a 5xx or
      // a 2xx without a readable id may still have created the task: it is
      // looked up by its operation id before the start fails, so it is never
      // left running unseen while the next wake sends another.
      const bool mayExist =
          reply.refused.empty() && (http.status == 0 || http.status >= 500 || http.ok()) && !record.operationId.empty();
      if (!mayExist) return fail(problem);
      LogLine(LogLevel::Warning, "semaphore_task_unconfirmed")
          .kv("service", serviceId)
          .kv("operation_id", record.operationId)
          .kv("why", problem)
          .kv("then", "looking it up by its operation id");
      createProblem = problem;
      // Without an answer, the POST may still be on its way through Semaphore.
      secondLook = http.status != 0;
      return lookUp();
    }

    record.taskId = taskId;
    lastStatus = "waiting";
    report();
    if (!active) return;
    follow(false);
  }

  // --- resuming an operation whose task id never reached the record ---------

  std::string lastTasksPath() const { return client.projectPath() + "/tasks/last"; }
  std::string unconfirmed() const {
    return "controld restarted before Semaphore confirmed the " + std::string(toString(kind)) + " task of service " +
           serviceId;
  }

  // Semaphore got the POST or not; its task list says which. The task carries
  // the operation id in its environment (taskEnvironment).
  void lookUp() {
    phase = Phase::LookingUp;
    request = client.send("GET", lastTasksPath(), "",
                          [self = shared_from_this()](SemaphoreReply reply) { self->onLookedUp(std::move(reply)); });
  }

  void onLookedUp(SemaphoreReply reply) {
    request = 0;
    std::optional<TaskSearch> search;
    if (reply.refused.empty() && reply.http.ok()) search = searchTaskList(reply.http.body, record.operationId);
    if (!active) {
      // Cancelled meanwhile: stop the task found, as one whose creation is
      // answered after a cancel is.
      if (stopWhenCreated && search && search->taskId && !isFinished(search->status)) {
        record.taskId = search->taskId;
        client.send("POST", taskPath() + "/stop", kStopBody, [](SemaphoreReply) {});
      }
      return;
    }
    if (!createProblem.empty() && !search) {
      // Semaphore cannot be asked either: what the POST met is the reason.
      return fail(createProblem);
    }
    if (!search) {
      const std::string why =
          !reply.refused.empty()   ? reply.refused
          : reply.http.status == 0 ? "could not reach Semaphore at " + url() + ": " + reply.http.error
          : reply.http.ok()        ? "Semaphore at " + url() + " answered no task list: " + excerpt(reply.http.body)
                                   : "Semaphore at " + url() + " answered HTTP " + std::to_string(reply.http.status);
      return fail(unconfirmed() + ", and could not look for it in Semaphore's task history (GET " + lastTasksPath() +
                  "): " + why + "; not running a second one");
    }
    if (search->taskId) {
      LogLine(LogLevel::Info, "semaphore_task_found")
          .kv("service", serviceId)
          .kv("operation_id", record.operationId)
          .kv("task_id", search->taskId)
          .kv("status", search->status);
      record.taskId = search->taskId;
      report();
      if (!active) return;
      return follow(true);
    }
    if (!secondLook) {
      // Not listed yet does not mean never: a POST the previous controld sent
      // just before it went away may still be on its way through Semaphore.
      // That controld would have waited http_timeout for the answer, and no
      // longer; so look once more when that much time has passed since now.
      secondLook = true;
      timer.start(client.settings().httpTimeout, [this] {
        auto self = shared_from_this();
        lookUp();
      });
      return;
    }
    if (!createProblem.empty()) return fail(createProblem);  // no such task: the POST created none
    // Semaphore lists only its last tasks: with a full list, the absence of
    // the task means something only if the list reaches back to when it was
    // sent (with room for the two clocks to differ).
    const bool reachesBack =
        search->oldestCreatedMs > 0 && search->oldestCreatedMs <= toWallMs(record.startedAtMs) - kClockSlack.count();
    if (search->listed >= kLastTasks && !reachesBack)
      return fail(unconfirmed() + ", and Semaphore's last " + std::to_string(search->listed) + " tasks of project " +
                  std::to_string(client.settings().projectId) +
                  " do not reach back to when it was sent; not running a second one (check Semaphore's task history)");
    if (body.empty()) return fail(cannotPost);
    // Sending the task now cannot make a second one: any task of this
    // operation carries its id, which no other operation has, and Semaphore
    // lists none, in a list that holds every task created since before the
    // first POST (all of the project's, or the last ones reaching back that
    // far), read http_timeout after the previous controld could last have
    // sent anything. The task goes with the same id, recorded first, so a
    // restart during this POST looks for it the same way.
    LogLine(LogLevel::Info, "semaphore_task_not_found")
        .kv("service", serviceId)
        .kv("operation_id", record.operationId)
        .kv("then", "sending it now");
    record.startedAtMs = clockMillisNow();  // task_timeout counts from this POST, the one that creates the task
    report();
    if (!active) return;
    create();
  }

  // Polls the task until it finishes; with `now`, the first poll goes at once.
  // Semaphore's live updates make it look at once when the task ends.
  void follow(bool now) {
    phase = Phase::Following;
    if (!watch) {
      std::weak_ptr<Operation> weak = shared_from_this();
      watch = client.watchTask(record.taskId, [weak](const std::string& status) {
        if (auto self = weak.lock()) self->onLiveUpdate(status);
      });
    }
    const auto remaining = Millis(record.startedAtMs) + taskTimeout - Millis(clockMillisNow());
    deadline.start(std::max(remaining, Millis(0)), [this] {
      auto self = shared_from_this();
      deadlinePassed = true;
      if (phase == Phase::Following && request == 0) {  // between two polls: look once more now
        timer.stop();
        poll();
      }
    });
    if (now) {
      poll();
    } else {
      schedulePoll();
    }
  }

  void schedulePoll() {
    const int doublings = std::min(polls++, 16);
    const Millis delay = std::min(kFirstPoll * (1 << doublings), pollInterval);
    timer.start(delay, [this] {
      auto self = shared_from_this();
      poll();
    });
  }

  // "" after a reconnect (announcements may have been missed), else the
  // status Semaphore announced. Only an end is worth a look.
  void onLiveUpdate(const std::string& status) {
    if (!active || phase != Phase::Following) return;
    if (!status.empty() && !isFinished(status)) return;
    if (request) {
      lookAgain = true;  // that poll may have left before the task ended
      return;
    }
    timer.stop();
    poll();
  }

  void unwatch() {
    if (watch) client.unwatchTask(std::exchange(watch, 0));
  }

  void poll() {
    request = client.send("GET", taskPath(), "",
                          [self = shared_from_this()](SemaphoreReply reply) { self->onPolled(std::move(reply)); });
  }

  void onPolled(SemaphoreReply reply) {
    request = 0;
    if (!active) return;
    const HttpResponse& http = reply.http;
    if (!reply.refused.empty()) return fail(reply.refused);
    if (http.status == 400 || http.status == 404)
      return fail("Semaphore at " + url() + " no longer knows task " + std::to_string(record.taskId) + " of project " +
                  std::to_string(client.settings().projectId) + " (HTTP " + std::to_string(http.status) + ")");
    if (http.status == 0 || http.status >= 500) {
      // Semaphore restarting or a network blip: keep following until the
      // task timeout, which bounds how long this may last.
      lastPollProblem = http.status == 0 ? "could not reach Semaphore at " + url() + ": " + http.error
                                         : "Semaphore at " + url() + " answered HTTP " + std::to_string(http.status);
      return deadlinePassed ? stopForTimeout() : schedulePoll();
    }
    std::string status;
    if (http.ok()) {
      rapidjson::Document doc;
      if (parseJson(doc, http.body).empty() && doc.IsObject()) {
        const auto s = doc.FindMember("status");
        if (s != doc.MemberEnd() && s->value.IsString())
          status.assign(s->value.GetString(), s->value.GetStringLength());
      }
    }
    if (status.empty())
      return fail("Semaphore at " + url() + " answered GET " + taskPath() + " with HTTP " +
                  std::to_string(http.status) + " and no task status: " + excerpt(http.body));
    lastStatus = status;
    lastPollProblem.clear();
    if (status == "success") return succeed();
    if (isFinished(status)) return readOutput();
    // waiting, starting, running, waiting_confirmation, ... or a status this
    // version of controld does not know: still going.
    if (deadlinePassed) return stopForTimeout();
    if (std::exchange(lookAgain, false)) return poll();
    return schedulePoll();
  }

  void readOutput() {
    phase = Phase::ReadingOutput;
    deadline.stop();
    // Only the end matters (the reason quotes the last lines): a log of any
    // size costs kOutputTailBytes of memory and of parsing.
    request = client.send(
        "GET", taskPath() + "/output", "",
        [self = shared_from_this()](SemaphoreReply reply) { self->onOutput(std::move(reply)); }, kOutputTailBytes);
  }

  void onOutput(SemaphoreReply reply) {
    request = 0;
    if (!active) return;
    std::string reason = taskName() + " ended with status " + lastStatus;
    std::optional<std::vector<std::string>> lines;
    if (reply.http.ok()) lines = lastOutputLines(reply.http.body, kOutputLines, reply.http.bodyCut);
    if (!lines) return fail(reason + " (its output could not be read: " + problem(reply) + ")");
    std::size_t bytes = 0;
    std::size_t first = lines->size();
    while (first > 0 && bytes + (*lines)[first - 1].size() + 1 <= kMaxOutputBytes)
      bytes += (*lines)[--first].size() + 1;
    if (first == lines->size()) return fail(reason + " (no output)");
    reason += ": " + (*lines)[first];  // then the other lines, one per line of the reason
    for (std::size_t i = first + 1; i < lines->size(); ++i)
      reason += "\n" + (*lines)[i];
    fail(reason);
  }

  void stopForTimeout() {
    phase = Phase::Stopping;
    timer.stop();
    std::string reason = taskName() + " did not finish within " + formatDuration(taskTimeout) + "; stopped it";
    if (!lastPollProblem.empty()) {
      reason += " (its status could not be read: " + lastPollProblem + ")";
    } else if (!lastStatus.empty()) {
      reason += " (it was still " + lastStatus + ")";
    }
    request =
        client.send("POST", taskPath() + "/stop", kStopBody, [self = shared_from_this(), reason](SemaphoreReply reply) {
          self->request = 0;
          if (!self->active) return;
          if (reply.http.ok()) return self->fail(reason);
          self->fail(reason.substr(0, reason.find("; stopped it")) + "; stopping it failed: " + problem(reply));
        });
  }

  void succeed() {
    OperationOutcome outcome;
    outcome.ok = true;
    outcome.taskId = record.taskId;
    outcome.taskStatus = lastStatus;
    finish(std::move(outcome));
  }

  void fail(std::string reason) {
    OperationOutcome outcome;
    outcome.ok = false;
    outcome.reason = std::move(reason);
    outcome.taskId = record.taskId;
    outcome.taskStatus = isFinished(lastStatus) ? lastStatus : std::string();
    finish(std::move(outcome));
  }

  // Reports on the next loop iteration, never from inside run()/resume().
  void failSoon(std::string reason) {
    phase = Phase::Over;
    timer.start(Millis(0), [this, reason = std::move(reason)] {
      auto self = shared_from_this();
      fail(reason);
    });
  }

  void finish(OperationOutcome outcome) {
    if (!active) return;
    active = false;
    phase = Phase::Over;
    timer.stop();
    deadline.stop();
    unwatch();
    auto callback = std::move(done);
    progress = nullptr;
    if (callback) callback(std::move(outcome));
  }

  // No callback after this. With `stopTask`, a task that may still run is
  // stopped; otherwise it is left alone (controld going away: the next one
  // resumes it from the record).
  void abandon(bool stopTask) {
    if (!active) return;
    active = false;
    timer.stop();
    deadline.stop();
    unwatch();
    progress = nullptr;
    done = nullptr;
    switch (phase) {
      case Phase::LookingUp:  // as Creating: a look-up under way may still name a task to stop
      case Phase::Creating:
        if (stopTask) {
          stopWhenCreated = true;  // the POST goes on; its answer names the task to stop
        } else if (request) {
          client.cancel(request);
        }
        break;
      case Phase::Following:
        if (request) client.cancel(request);
        if (stopTask) client.send("POST", taskPath() + "/stop", kStopBody, [](SemaphoreReply) {});
        break;
      case Phase::ReadingOutput:  // the task already finished
        if (request) client.cancel(request);
        break;
      case Phase::Stopping:  // the stop is on its way; let it arrive
      case Phase::Over:
        break;
    }
    phase = Phase::Over;
  }
};

}  // namespace ondemand::controld
