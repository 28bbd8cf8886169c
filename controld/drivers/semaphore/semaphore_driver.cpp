#include "controld/drivers/semaphore/semaphore_driver.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <utility>

#include "controld/io/log.hpp"
#include "controld/io/uv.hpp"
#include "shared/duration.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

namespace {

constexpr std::size_t kOutputLines = 10;
constexpr std::size_t kMaxLineBytes = 400;
constexpr std::size_t kMaxOutputBytes = 2500;
constexpr Millis kFirstPoll{100};
// How long the live-updates connection stays open after the last watched task.
constexpr Millis kLiveLinger{30'000};
// How many tasks GET …/tasks/last lists at most.
constexpr std::size_t kLastTasks = 200;
// How far Semaphore's clock may be from controld's when telling whether a
// full list of the last tasks reaches back to when a task was sent.
constexpr Millis kClockSlack{5 * 60'000};
// The environment key that carries the operation id.
constexpr std::string_view kOperationKey = "ondemand_operation";
// Why a task is sent by a resume (its message says it).
constexpr const char* kSentAgain = "sent again after a restart of controld: the first request created no task";

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

std::string jsonText(const rapidjson::StringBuffer& buffer) {
  return std::string(buffer.GetString(), buffer.GetSize());
}

// A short, printable piece of an unexpected answer for error messages.
std::string excerpt(std::string_view body) {
  std::string clean = stripAnsi(body.substr(0, 300));
  std::replace(clean.begin(), clean.end(), '\t', ' ');
  clean = protocol::truncateUtf8(clean, 200);
  return clean.empty() ? "(empty body)" : clean;
}

// Why a call that should have worked did not, in a few words.
std::string problem(const SemaphoreReply& reply) {
  if (!reply.refused.empty()) return reply.refused;
  if (reply.http.status == 0) return reply.http.error;
  if (reply.http.ok()) return "unexpected answer: " + excerpt(reply.http.body);
  return "HTTP " + std::to_string(reply.http.status);
}

bool isFinished(const std::string& status) {
  return status == "success" || status == "error" || status == "stopped";
}

// {"force": false} is the only stop controld sends: a forced stop would leave
// the task "stopped" instead of "error" and skip Ansible's own cleanup.
constexpr const char* kStopBody = R"({"force":false})";

}  // namespace

// --- output handling ---------------------------------------------------------

std::string stripAnsi(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == 0x1b) {
      if (i + 1 >= text.size()) break;
      const auto kind = static_cast<unsigned char>(text[i + 1]);
      if (kind == '[') {  // CSI: parameters, intermediates, one final byte
        std::size_t j = i + 2;
        while (j < text.size() && static_cast<unsigned char>(text[j]) >= 0x20 &&
               static_cast<unsigned char>(text[j]) <= 0x3f)
          ++j;
        i = j < text.size() ? j : text.size();
      } else if (kind == ']') {  // OSC: up to BEL or ESC '\'
        std::size_t j = i + 2;
        while (j < text.size() && text[j] != '\a' && !(text[j] == 0x1b && j + 1 < text.size() && text[j + 1] == '\\'))
          ++j;
        i = (j < text.size() && text[j] == 0x1b) ? j + 1 : j;
      } else {
        i += 1;  // a two-byte escape
      }
      continue;
    }
    if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) continue;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

std::optional<std::vector<std::string>> lastOutputLines(std::string_view body, std::size_t maxLines) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError()) return std::nullopt;
  std::vector<std::string> lines;
  if (doc.IsNull()) return lines;  // Semaphore answers null for an empty log
  if (!doc.IsArray()) return std::nullopt;
  for (const auto& entry : doc.GetArray()) {
    if (!entry.IsObject()) continue;
    const auto output = entry.FindMember("output");
    if (output == entry.MemberEnd() || !output->value.IsString()) continue;
    const std::string text = stripAnsi(std::string_view(output->value.GetString(), output->value.GetStringLength()));
    std::size_t start = 0;
    while (start <= text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(start, end - start);
      while (!line.empty() && (line.back() == ' ' || line.back() == '\t'))
        line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos)
        lines.push_back(protocol::truncateUtf8(line, kMaxLineBytes));
      start = end + 1;
    }
  }
  if (lines.size() > maxLines) lines.erase(lines.begin(), lines.end() - static_cast<std::ptrdiff_t>(maxLines));
  return lines;
}

// --- finding the task of an operation ---------------------------------------

std::optional<std::int64_t> rfc3339Millis(std::string_view text) {
  const auto digits = [text](std::size_t at, std::size_t count) -> std::optional<int> {
    if (at + count > text.size()) return std::nullopt;
    int value = 0;
    for (std::size_t i = at; i < at + count; ++i) {
      if (text[i] < '0' || text[i] > '9') return std::nullopt;
      value = value * 10 + (text[i] - '0');
    }
    return value;
  };
  if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != 't') || text[13] != ':' ||
      text[16] != ':')
    return std::nullopt;
  const auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2);
  const auto hour = digits(11, 2), minute = digits(14, 2), second = digits(17, 2);
  if (!year || !month || !day || !hour || !minute || !second || *hour > 23 || *minute > 59 || *second > 60)
    return std::nullopt;
  std::size_t i = 19;
  std::int64_t millis = 0;
  if (text[i] == '.') {
    int scale = 100;
    for (++i; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, scale /= 10)
      millis += (text[i] - '0') * scale;
  }
  std::int64_t offsetMinutes = 0;  // the zone is required: a local time would be off by hours
  if (i + 1 == text.size() && (text[i] == 'Z' || text[i] == 'z')) {
    // UTC
  } else if (i + 6 == text.size() && (text[i] == '+' || text[i] == '-') && text[i + 3] == ':') {
    const auto hours = digits(i + 1, 2), minutes = digits(i + 4, 2);
    if (!hours || !minutes) return std::nullopt;
    offsetMinutes = (text[i] == '-' ? -1 : 1) * (*hours * 60 + *minutes);
  } else {
    return std::nullopt;
  }
  const std::chrono::year_month_day date{std::chrono::year(*year), std::chrono::month(static_cast<unsigned>(*month)),
                                         std::chrono::day(static_cast<unsigned>(*day))};
  if (!date.ok()) return std::nullopt;
  const std::int64_t days = std::chrono::sys_days(date).time_since_epoch().count();
  const std::int64_t minutes = (days * 24 + *hour) * 60 + *minute - offsetMinutes;
  return minutes * 60'000 + *second * 1000 + millis;
}

std::optional<TaskSearch> searchTaskList(std::string_view body, std::string_view operationId) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsArray()) return std::nullopt;
  TaskSearch search;
  bool createdKnown = true;
  for (const auto& task : doc.GetArray()) {
    if (!task.IsObject()) return std::nullopt;
    ++search.listed;
    // Semaphore lists the newest first, its API description says otherwise:
    // the order is not relied upon.
    const auto created = task.FindMember("created");
    std::optional<std::int64_t> createdMs;
    if (created != task.MemberEnd() && created->value.IsString())
      createdMs = rfc3339Millis(std::string_view(created->value.GetString(), created->value.GetStringLength()));
    if (!createdMs) {
      createdKnown = false;
    } else if (search.oldestCreatedMs == 0 || *createdMs < search.oldestCreatedMs) {
      search.oldestCreatedMs = *createdMs;
    }

    const auto id = task.FindMember("id");
    const auto environment = task.FindMember("environment");
    if (id == task.MemberEnd() || !id->value.IsInt64() || environment == task.MemberEnd() ||
        !environment->value.IsString())
      continue;
    rapidjson::Document vars;
    vars.Parse(environment->value.GetString(), environment->value.GetStringLength());
    if (vars.HasParseError() || !vars.IsObject()) continue;
    const auto key = vars.FindMember(rapidjson::StringRef(kOperationKey.data(), kOperationKey.size()));
    if (key == vars.MemberEnd() || !key->value.IsString() ||
        std::string_view(key->value.GetString(), key->value.GetStringLength()) != operationId)
      continue;
    // Several only if someone ran it again from Semaphore's task history: the
    // first one is the task controld sent. The template is not compared: the
    // id alone names the operation, and a new configuration may have changed
    // the template since.
    if (search.taskId != 0 && id->value.GetInt64() > search.taskId) continue;
    search.taskId = id->value.GetInt64();
    const auto status = task.FindMember("status");
    search.status = status != task.MemberEnd() && status->value.IsString()
                        ? std::string(status->value.GetString(), status->value.GetStringLength())
                        : std::string();
  }
  if (!createdKnown) search.oldestCreatedMs = 0;
  return search;
}

// --- SemaphoreClient ---------------------------------------------------------

SemaphoreClient::SemaphoreClient(uv_loop_t* loop, HttpClient& http, SemaphoreSettings settings)
    : loop_(loop), http_(http), settings_(std::move(settings)) {
  while (!settings_.baseUrl.empty() && settings_.baseUrl.back() == '/')
    settings_.baseUrl.pop_back();
}

SemaphoreClient::~SemaphoreClient() {
  // The transfers under way finish on their own (or with the HttpClient, which
  // may already be gone at shutdown); their callbacks see alive_ and return.
  *alive_ = false;
  live_.reset();
}

std::string SemaphoreClient::projectPath() const {
  return "/api/project/" + std::to_string(settings_.projectId);
}

bool SemaphoreClient::usesSession() const {
  return settings_.apiToken.empty() && !settings_.username.empty();
}

SemaphoreClient::RequestId SemaphoreClient::send(std::string method, std::string path, std::string body,
                                                 Callback callback) {
  const RequestId id = nextId_++;
  Call call;
  call.method = std::move(method);
  call.path = std::move(path);
  call.body = std::move(body);
  call.callback = std::move(callback);
  calls_.emplace(id, std::move(call));
  if (usesSession() && cookie_.empty()) {
    awaitingLogin_.push_back(id);
    startLogin();
  } else {
    dispatch(id);
  }
  return id;
}

void SemaphoreClient::cancel(RequestId id) {
  const auto it = calls_.find(id);
  if (it == calls_.end()) return;
  if (it->second.httpId) http_.cancel(it->second.httpId);
  calls_.erase(it);  // a pending login simply finds it gone
}

void SemaphoreClient::dispatch(RequestId id) {
  Call& call = calls_.at(id);
  HttpRequest request;
  request.method = call.method;
  request.url = settings_.baseUrl + call.path;
  request.headers.push_back("Accept: application/json");
  if (!call.body.empty()) request.headers.push_back("Content-Type: application/json");
  if (!settings_.apiToken.empty()) {
    request.headers.push_back("Authorization: Bearer " + settings_.apiToken);
  } else if (!cookie_.empty()) {
    request.headers.push_back("Cookie: " + cookie_);
  }
  request.body = call.body;
  request.timeout = settings_.httpTimeout;
  call.session = sessionGeneration_;
  call.httpId = http_.send(std::move(request), [this, alive = alive_, id](HttpResponse response) {
    if (*alive) onResponse(id, std::move(response));
  });
}

void SemaphoreClient::onResponse(RequestId id, HttpResponse response) {
  const auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Call& call = it->second;
  call.httpId = 0;
  if (usesSession() && response.status == 401 && !call.retried) {
    // The session expired (or Semaphore restarted): log in again, once, and
    // repeat the call. A 401 means Semaphore did nothing, so repeating is safe.
    call.retried = true;
    if (call.session == sessionGeneration_) cookie_.clear();
    if (cookie_.empty()) {
      awaitingLogin_.push_back(id);
      startLogin();
    } else {
      dispatch(id);  // another call already logged in again meanwhile
    }
    return;
  }
  std::string refused;
  if (response.status == 401 || response.status == 403) refused = refusal(response.status);
  finish(id, std::move(response), std::move(refused));
}

void SemaphoreClient::startLogin() {
  if (loginId_) return;
  rapidjson::StringBuffer buffer;
  JsonWriter writer(buffer);
  writer.StartObject();
  writer.Key("auth");
  writer.String(settings_.username);
  writer.Key("password");
  writer.String(settings_.password);
  writer.EndObject();

  HttpRequest request;
  request.method = "POST";
  request.url = settings_.baseUrl + "/api/auth/login";
  request.headers = {"Accept: application/json", "Content-Type: application/json"};
  request.body = jsonText(buffer);
  request.timeout = settings_.httpTimeout;
  loginId_ = http_.send(std::move(request), [this, alive = alive_](HttpResponse response) {
    if (*alive) onLogin(std::move(response));
  });
}

void SemaphoreClient::onLogin(HttpResponse response) {
  loginId_ = 0;
  std::string cookie;
  if (response.ok()) {
    for (const auto& [name, value] : response.headers) {
      if (name != "set-cookie") continue;
      std::string pair = value.substr(0, value.find(';'));
      pair.erase(0, pair.find_first_not_of(" \t"));
      if (pair.rfind("semaphore=", 0) == 0 && pair.size() > 10) {
        cookie = pair;
        break;
      }
    }
  }
  auto waiting = std::exchange(awaitingLogin_, {});
  if (!cookie.empty()) {
    cookie_ = std::move(cookie);
    if (live_) live_->setCookie(cookie_);
    ++sessionGeneration_;
    for (const RequestId id : waiting)
      if (calls_.count(id)) dispatch(id);
    return;
  }

  std::string refused;
  const std::string who = "Semaphore at " + settings_.baseUrl;
  if (response.status == 401 || response.status == 403 || response.status == 400) {
    refused = who + " refused the login of user \"" + settings_.username + "\" (HTTP " +
              std::to_string(response.status) + "): check semaphore username and password";
  } else if (response.ok()) {
    refused = who + " accepted the login of user \"" + settings_.username +
              "\" but sent no session cookie (a login that needs a second factor cannot be used: configure an API "
              "token)";
  } else if (response.status != 0) {
    refused = who + " answered HTTP " + std::to_string(response.status) + " to the login of user \"" +
              settings_.username + "\"";
  }
  const auto alive = alive_;
  for (const RequestId id : waiting) {
    if (!*alive) return;
    if (calls_.count(id)) finish(id, response, refused);
  }
}

void SemaphoreClient::finish(RequestId id, HttpResponse response, std::string refused) {
  const auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Callback callback = std::move(it->second.callback);
  calls_.erase(it);
  callback(SemaphoreReply{std::move(response), std::move(refused)});
}

std::string SemaphoreClient::refusal(long status) const {
  const std::string who = "Semaphore at " + settings_.baseUrl;
  const std::string code = " (HTTP " + std::to_string(status) + ")";
  const std::string project = std::to_string(settings_.projectId);
  if (!settings_.apiToken.empty()) {
    if (status == 401) return who + " refused the API token" + code + ": check semaphore api_token";
    return who + " refused the API token" + code + ": its user may not run tasks in project " + project;
  }
  if (usesSession()) {
    if (status == 401) return who + " refused the session of user \"" + settings_.username + "\"" + code;
    return who + " refused user \"" + settings_.username + "\"" + code + ": the user may not run tasks in project " +
           project;
  }
  return who + " asks for credentials" + code + ": configure an API token, or a username and password";
}

// --- live updates ------------------------------------------------------------

SemaphoreClient::WatchId SemaphoreClient::watchTask(std::int64_t taskId, TaskCallback callback) {
  const WatchId id = nextWatch_++;
  watches_.emplace(id, Watch{taskId, std::move(callback)});
  if (!live_) {
    live_ = std::make_unique<SemaphoreLiveUpdates>(
        loop_, settings_, [this](const SemaphoreLiveUpdates::Event& event) { onLiveEvent(event); });
    liveLinger_ = std::make_unique<Timer>(loop_);
  }
  if (!cookie_.empty()) live_->setCookie(cookie_);
  liveLinger_->stop();
  live_->setWanted(true);
  return id;
}

void SemaphoreClient::unwatchTask(WatchId id) {
  if (!watches_.erase(id) || !watches_.empty() || !live_) return;
  liveLinger_->start(kLiveLinger, [this] {
    if (watches_.empty() && live_) live_->setWanted(false);
  });
}

void SemaphoreClient::onLiveEvent(const SemaphoreLiveUpdates::Event& event) {
  using Kind = SemaphoreLiveUpdates::Event::Kind;
  switch (event.kind) {
    case Kind::Connected:
      liveConnected_ = true;
      liveProblemLogged_.clear();
      LogLine(LogLevel::Info, "semaphore_live_updates")
          .kv("state", "connected")
          .kv("url", settings_.baseUrl + "/api/ws");
      break;
    case Kind::Disconnected:
      if (!event.problem.empty() && (liveConnected_ || event.problem != liveProblemLogged_)) {
        LogLine(LogLevel::Info, "semaphore_live_updates")
            .kv("state", "unavailable")
            .kv("url", settings_.baseUrl + "/api/ws")
            .kv("why", event.problem)
            .kv("meanwhile", "tasks are polled every poll_interval");
        liveProblemLogged_ = event.problem;
      }
      liveConnected_ = false;
      return;
    case Kind::Update:
      if (event.projectId != 0 && event.projectId != settings_.projectId) return;
      break;
  }
  // Connected: announcements may have been missed meanwhile, every watched
  // task is worth a look ("").
  const std::string status = event.kind == Kind::Update ? event.status : std::string();
  std::vector<std::pair<WatchId, TaskCallback>> due;
  for (const auto& [id, watch] : watches_) {
    if (event.kind == Kind::Connected || watch.taskId == event.taskId) due.emplace_back(id, watch.callback);
  }
  const auto alive = alive_;
  for (auto& [id, callback] : due) {
    if (!*alive) return;
    if (!watches_.count(id)) continue;  // unwatched by an earlier callback
    callback(status);
  }
}

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
      doc.Parse(http.body.data(), http.body.size());
      if (!doc.HasParseError() && doc.IsObject()) {
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
    if (!reply.refused.empty()) return fail(reply.refused);
    if (http.status == 0) return fail("could not reach Semaphore at " + url() + ": " + http.error);
    if (taskId == 0 && http.ok())
      return fail("Semaphore at " + url() + " answered the task for " + what +
                  " without a task id: " + excerpt(http.body));
    if (http.status == 500)
      return fail("Semaphore at " + url() + " could not run " + what +
                  " (HTTP 500, no details): check that the template exists in that project");
    if (http.status == 404)
      return fail("Semaphore at " + url() + " has no project " + std::to_string(client.settings().projectId) +
                  " for this user (HTTP 404)");
    if (!http.ok())
      return fail("Semaphore at " + url() + " answered HTTP " + std::to_string(http.status) + " to the task for " +
                  what + ": " + excerpt(http.body));

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
    // Semaphore lists only its last tasks: with a full list, the absence of
    // the task means something only if the list reaches back to when it was
    // sent (with room for the two clocks to differ).
    const bool reachesBack =
        search->oldestCreatedMs > 0 && search->oldestCreatedMs <= record.startedAtMs - kClockSlack.count();
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
    record.startedAtMs = unixMillisNow();  // task_timeout counts from this POST, the one that creates the task
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
    const auto remaining = Millis(record.startedAtMs) + taskTimeout - Millis(unixMillisNow());
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
      doc.Parse(http.body.data(), http.body.size());
      if (!doc.HasParseError() && doc.IsObject()) {
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
    request = client.send("GET", taskPath() + "/output", "",
                          [self = shared_from_this()](SemaphoreReply reply) { self->onOutput(std::move(reply)); });
  }

  void onOutput(SemaphoreReply reply) {
    request = 0;
    if (!active) return;
    std::string reason = taskName() + " ended with status " + lastStatus;
    std::optional<std::vector<std::string>> lines;
    if (reply.http.ok()) lines = lastOutputLines(reply.http.body, kOutputLines);
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
  rapidjson::StringBuffer buffer;
  JsonWriter writer(buffer);
  writer.StartObject();
  writer.Key("service_id");
  writer.String(serviceId_);
  writer.Key("machine_id");
  writer.String(settings_.machineId);
  writer.Key("action");
  writer.String(toString(kind));
  writer.Key(kOperationKey.data(), static_cast<rapidjson::SizeType>(kOperationKey.size()));
  writer.String(operationId);
  rapidjson::Document extra;
  extra.Parse(settings_.extraVarsJson.data(), settings_.extraVarsJson.size());
  if (!extra.HasParseError() && extra.IsObject()) {
    for (const auto& member : extra.GetObject()) {
      const std::string_view name(member.name.GetString(), member.name.GetStringLength());
      if (name == "service_id" || name == "machine_id" || name == "action" || name == kOperationKey)
        continue;  // controld's own say
      writer.Key(member.name.GetString(), member.name.GetStringLength());
      member.value.Accept(writer);
    }
  }
  writer.EndObject();
  return jsonText(buffer);
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
    extra.Parse(settings_.extraVarsJson.data(), settings_.extraVarsJson.size());
    if (extra.HasParseError() || !extra.IsObject())
      return "extra_vars of service " + serviceId_ + " is not a JSON object";
  }
  return {};
}

std::string SemaphoreDriver::taskBody(OperationKind kind, const std::string& operationId,
                                      const std::string& why) const {
  rapidjson::StringBuffer buffer;
  JsonWriter writer(buffer);
  writer.StartObject();
  writer.Key("template_id");
  writer.Int64(kind == OperationKind::Start ? settings_.startTemplateId : settings_.stopTemplateId);
  writer.Key("environment");  // a string holding JSON, not an object: Semaphore answers 400 to an object
  writer.String(taskEnvironment(kind, operationId));
  if (!settings_.machineId.empty()) {
    writer.Key("limit");
    writer.String(settings_.machineId);
  }
  writer.Key("message");
  std::string message = "ondemand: " + std::string(toString(kind)) + " " + serviceId_;
  if (!why.empty()) message += " (" + why + ")";
  writer.String(message);
  writer.EndObject();
  return jsonText(buffer);
}

void SemaphoreDriver::run(const OperationRequest& request, ProgressCallback progress, DoneCallback done) {
  const auto op = begin(request.kind, std::move(progress), std::move(done));
  op->record.startedAtMs = unixMillisNow();
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
  if (record.startedAtMs <= 0) op->record.startedAtMs = unixMillisNow();
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
