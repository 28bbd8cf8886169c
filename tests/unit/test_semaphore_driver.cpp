// SemaphoreDriver against the Semaphore double (tests/support/semaphore_double.py)
// running as a separate process, on a real libuv loop with the real HttpClient.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <rapidjson/document.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "controld/drivers/semaphore/semaphore_check.hpp"
#include "controld/drivers/semaphore/semaphore_driver.hpp"

extern char** environ;

using namespace ondemand;
using namespace ondemand::controld;
using namespace std::chrono_literals;

namespace {

constexpr const char* kToken = "test-token-0123456789abcdefghijklmnopqrstuvw";

// One HTTP/1.1 exchange with Connection: close, blocking: for the double's
// admin endpoints, independent of the HttpClient under test.
std::string adminCall(int port, const std::string& method, const std::string& path, const std::string& body = "") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string request = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" +
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  for (std::size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::write(fd, request.data() + sent, request.size() - sent);
    REQUIRE(n > 0);
    sent += static_cast<std::size_t>(n);
  }
  std::string answer;
  char buffer[65536];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;)
    answer.append(buffer, static_cast<std::size_t>(n));
  ::close(fd);
  const auto split = answer.find("\r\n\r\n");
  REQUIRE(split != std::string::npos);
  return answer.substr(split + 4);
}

// A port nothing listens on.
int closedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct LoggedRequest {
  std::string method;
  std::string path;
  std::string body;
  std::string authorization;
  std::string cookie;
  std::string accept;
};

// The double as a child process, one per test.
class SemaphoreDouble {
 public:
  explicit SemaphoreDouble(std::vector<std::string> args) {
    char dirTemplate[] = "/tmp/semaphore-double-XXXXXX";
    REQUIRE(::mkdtemp(dirTemplate) != nullptr);
    dir_ = dirTemplate;
    const std::string portFile = dir_ + "/port";
    std::vector<std::string> argv = {
        "/usr/bin/python3", std::string(ONDEMAND_SOURCE_DIR) + "/tests/support/semaphore_double.py",
        "--port",           "0",
        "--port-file",      portFile,
        "--queue-delay-ms", "50"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv)
      cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    REQUIRE(posix_spawn(&pid_, argv[0].c_str(), &actions, nullptr, cargv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!std::filesystem::exists(portFile)) {
      int status = 0;
      REQUIRE(::waitpid(pid_, &status, WNOHANG) == 0);  // the double must not have exited
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(10ms);
    }
    std::ifstream(portFile) >> port_;
  }
  ~SemaphoreDouble() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 500 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i)
      std::this_thread::sleep_for(10ms);
    if (::waitpid(pid_, &status, WNOHANG) == 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
    std::filesystem::remove_all(dir_);
  }
  SemaphoreDouble(const SemaphoreDouble&) = delete;
  SemaphoreDouble& operator=(const SemaphoreDouble&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::vector<LoggedRequest> requests() const {
    const std::string body = adminCall(port_, "GET", "/__double/requests");
    rapidjson::Document doc;
    doc.Parse(body.c_str());
    REQUIRE(doc.IsArray());
    std::vector<LoggedRequest> out;
    for (const auto& r : doc.GetArray()) {
      LoggedRequest entry;
      entry.method = r["method"].GetString();
      entry.path = r["path"].GetString();
      entry.body = r["body"].GetString();
      const auto& headers = r["headers"];
      auto header = [&headers](const char* name) {
        return headers.HasMember(name) ? std::string(headers[name].GetString()) : std::string();
      };
      entry.authorization = header("authorization");
      entry.cookie = header("cookie");
      entry.accept = header("accept");
      out.push_back(entry);
    }
    return out;
  }

  std::vector<LoggedRequest> requests(const std::string& method, const std::string& path) const {
    std::vector<LoggedRequest> out;
    for (auto& r : requests())
      if (r.method == method && r.path == path) out.push_back(r);
    return out;
  }

  // The task as the double sees it now (its status, e.g. after a stop).
  std::string taskStatus(std::int64_t id) const {
    const std::string body = adminCall(port_, "GET", "/__double/tasks");
    rapidjson::Document doc;
    doc.Parse(body.c_str());
    REQUIRE(doc.IsArray());
    for (const auto& t : doc.GetArray())
      if (t["id"].GetInt64() == id) return t["status"].GetString();
    return "";
  }

  void expireSessions() const { adminCall(port_, "POST", "/__double/sessions/expire"); }

  // Live updates (GET /api/ws).
  void setWebsocket(bool on) const {
    adminCall(port_, "POST", "/__double/config", on ? R"({"websocket": true})" : R"({"websocket": false})");
  }
  void closeWebsockets() const { adminCall(port_, "POST", "/__double/websockets/close"); }
  void pingWebsockets() const { adminCall(port_, "POST", "/__double/websockets/ping"); }
  // {"connections", "pings", "pongs"}
  std::int64_t websockets(const char* what) const {
    const std::string body = adminCall(port_, "GET", "/__double/websockets");
    rapidjson::Document doc;
    doc.Parse(body.c_str());
    REQUIRE(doc.IsObject());
    return doc[what].GetInt64();
  }

 private:
  std::string dir_;
  pid_t pid_ = 0;
  int port_ = 0;
};

// The loop, the HTTP client and the Semaphore client of one test.
struct Daemon {
  explicit Daemon(SemaphoreSettings settings) {
    uv_loop_init(&loop);
    http = std::make_unique<HttpClient>(&loop);
    client = std::make_shared<SemaphoreClient>(&loop, *http, std::move(settings));
  }
  ~Daemon() {
    client.reset();
    http.reset();
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT) != 0; ++i)
      std::this_thread::sleep_for(1ms);
    closeLoop(&loop);
  }

  // Runs the loop until `done` holds or `limit` passes; false on timeout.
  bool runUntil(const std::function<bool()>& done, Millis limit = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      uv_run(&loop, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(2ms);
    }
    return true;
  }
  void runFor(Millis d) {
    runUntil([] { return false; }, d);
  }

  uv_loop_t loop{};
  std::unique_ptr<HttpClient> http;
  std::shared_ptr<SemaphoreClient> client;
};

SemaphoreSettings tokenSettings(const SemaphoreDouble& semaphore, Millis httpTimeout = 5s) {
  SemaphoreSettings s;
  s.baseUrl = semaphore.url();
  s.projectId = 1;
  s.apiToken = kToken;
  s.httpTimeout = httpTimeout;
  return s;
}

SemaphoreServiceSettings serviceSettings(std::int64_t startTemplate, std::int64_t stopTemplate = 0) {
  SemaphoreServiceSettings s;
  s.startTemplateId = startTemplate;
  s.stopTemplateId = stopTemplate;
  s.taskTimeout = 10s;
  s.pollInterval = 200ms;
  s.machineId = "gpu-01";
  s.extraVarsJson = "{}";
  return s;
}

// What one operation reported.
struct Observed {
  std::vector<OperationRecord> progress;
  std::optional<OperationOutcome> outcome;
  int doneCalls = 0;

  Driver::ProgressCallback onProgress() {
    return [this](const OperationRecord& r) { progress.push_back(r); };
  }
  Driver::DoneCallback onDone() {
    return [this](OperationOutcome o) {
      ++doneCalls;
      outcome = std::move(o);
    };
  }
};

OperationRequest startRequest(std::string why = "GET /api/generate") {
  return OperationRequest{OperationKind::Start, std::move(why), {}};
}

rapidjson::Document parse(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str());
  REQUIRE_FALSE(doc.HasParseError());
  return doc;
}

}  // namespace

TEST_CASE("a start sends one task whose environment is a JSON string, then follows it to success") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "succeed", "after_ms": 100})"});
  Daemon daemon(tokenSettings(semaphore));
  auto settings = serviceSettings(22, 23);
  settings.extraVarsJson = R"({"model_name": "sdxl", "gpus": [0, 1], "service_id": "not-this"})";
  SemaphoreDriver driver(daemon.client, "comfyui", settings);

  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(seen.progress.size() == 1);  // persisted before anything is sent
  CHECK(seen.progress[0].taskId == 0);
  CHECK(seen.progress[0].driver == "semaphore");
  CHECK(seen.progress[0].kind == OperationKind::Start);
  CHECK(seen.progress[0].startedAtMs > 0);
  const std::string operationId = seen.progress[0].operationId;
  CHECK(operationId.rfind("comfyui-" + std::to_string(seen.progress[0].startedAtMs) + "-", 0) == 0);
  CHECK(operationId.size() == std::string("comfyui-").size() + std::to_string(seen.progress[0].startedAtMs).size() + 9);

  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->ok);
  CHECK(seen.outcome->taskStatus == "success");
  REQUIRE(seen.progress.size() == 2);
  CHECK(seen.progress[1].taskId == seen.outcome->taskId);
  CHECK(seen.progress[1].operationId == operationId);
  CHECK(seen.outcome->taskId > 0);

  const auto posts = semaphore.requests("POST", "/api/project/1/tasks");
  REQUIRE(posts.size() == 1);
  CHECK(posts[0].authorization == std::string("Bearer ") + kToken);
  CHECK(posts[0].accept == "application/json");
  const auto body = parse(posts[0].body);
  REQUIRE(body.IsObject());
  CHECK(body["template_id"].IsInt64());
  CHECK(body["template_id"].GetInt64() == 22);
  CHECK(std::string(body["limit"].GetString()) == "gpu-01");
  CHECK(std::string(body["message"].GetString()) == "ondemand: start comfyui (GET /api/generate)");
  REQUIRE(body["environment"].IsString());  // a string holding JSON, never an object
  const auto env = parse(body["environment"].GetString());
  REQUIRE(env.IsObject());
  CHECK(std::string(env["service_id"].GetString()) == "comfyui");
  CHECK(std::string(env["machine_id"].GetString()) == "gpu-01");
  CHECK(std::string(env["action"].GetString()) == "start");
  CHECK(std::string(env["ondemand_operation"].GetString()) == operationId);
  CHECK(std::string(env["model_name"].GetString()) == "sdxl");
  CHECK(env["gpus"].IsArray());
  CHECK(env.MemberCount() == 6);

  const auto polls = semaphore.requests("GET", "/api/project/1/tasks/" + std::to_string(seen.outcome->taskId));
  CHECK(polls.size() >= 2);
  CHECK(seen.doneCalls == 1);
}

TEST_CASE("a machine-less service sends no limit, and the stop template gets action stop") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 23, "run": "succeed", "after_ms": 0})"});
  Daemon daemon(tokenSettings(semaphore));
  auto settings = serviceSettings(22, 23);
  settings.machineId.clear();
  SemaphoreDriver driver(daemon.client, "notes", settings);
  CHECK(driver.supports(OperationKind::Stop));

  Observed seen;
  driver.run(OperationRequest{OperationKind::Stop, "idle for 15m", {}}, seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->ok);
  const auto posts = semaphore.requests("POST", "/api/project/1/tasks");
  REQUIRE(posts.size() == 1);
  const auto body = parse(posts[0].body);
  CHECK(body["template_id"].GetInt64() == 23);
  CHECK_FALSE(body.HasMember("limit"));
  CHECK(std::string(body["message"].GetString()) == "ondemand: stop notes (idle for 15m)");
  const auto env = parse(body["environment"].GetString());
  CHECK(std::string(env["action"].GetString()) == "stop");
  CHECK(std::string(env["machine_id"].GetString()).empty());
}

TEST_CASE("the operation id the daemon recorded before the run is the one sent with the task") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "succeed", "after_ms": 0})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22, 23));
  Observed seen;
  driver.run(OperationRequest{OperationKind::Start, "GET /", "comfyui-1700000000000-0badf00d"}, seen.onProgress(),
             seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.progress.at(0).operationId == "comfyui-1700000000000-0badf00d");
  const auto posts = semaphore.requests("POST", "/api/project/1/tasks");
  REQUIRE(posts.size() == 1);
  const auto env = parse(parse(posts[0].body)["environment"].GetString());
  CHECK(std::string(env["ondemand_operation"].GetString()) == "comfyui-1700000000000-0badf00d");
}

TEST_CASE("without a stop template the driver cannot stop, and says so when asked") {
  SemaphoreDouble semaphore({"--token", kToken});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22, 0));
  CHECK(driver.supports(OperationKind::Start));
  CHECK_FALSE(driver.supports(OperationKind::Stop));

  Observed seen;
  driver.run(OperationRequest{OperationKind::Stop, "cli", {}}, seen.onProgress(), seen.onDone());
  CHECK_FALSE(seen.outcome);  // never from inside run()
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "service comfyui has no Semaphore stop template");
  CHECK(semaphore.requests().empty());
}

TEST_CASE("a failed task's reason carries the last lines of its output, colours removed") {
  std::string lines;
  for (int i = 1; i <= 12; ++i)
    lines += (i > 1 ? ", " : "") + std::string("\"\\u001b[0;31mstep ") + std::to_string(i) + "\\u001b[0m\"";
  SemaphoreDouble semaphore(
      {"--token", kToken, "--template",
       R"({"id": 22, "run": "fail", "after_ms": 50, "exit_status": 2, "output": [)" + lines + R"(, "", "   "]})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));

  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  const auto& outcome = *seen.outcome;
  CHECK_FALSE(outcome.ok);
  CHECK(outcome.taskStatus == "error");
  const std::string id = std::to_string(outcome.taskId);
  CHECK(outcome.reason == "Semaphore task " + id +
                              " ended with status error: step 4\nstep 5\nstep 6\nstep 7\nstep 8\nstep 9\nstep 10\n"
                              "step 11\nstep 12\nRunning app failed: exit status 2");
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/" + id + "/output").size() == 1);
}

TEST_CASE("statuses controld does not know are not taken as the end of a task") {
  SemaphoreDouble semaphore(
      {"--token", kToken, "--template",
       R"({"id": 22, "statuses": ["waiting_confirmation", "confirmed", "levitating"], "status_ms": 150, "after_ms": 50})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->ok);
  CHECK(seen.outcome->taskStatus == "success");
}

TEST_CASE("a task that never finishes is stopped with force false when task_timeout passes") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "hang"})"});
  Daemon daemon(tokenSettings(semaphore));
  auto settings = serviceSettings(22);
  settings.taskTimeout = 1s;
  SemaphoreDriver driver(daemon.client, "comfyui", settings);

  Observed seen;
  const auto began = std::chrono::steady_clock::now();
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  const auto took = std::chrono::steady_clock::now() - began;
  CHECK(took >= 1s);
  CHECK(took < 3s);
  const std::string id = std::to_string(seen.outcome->taskId);
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason ==
        "Semaphore task " + id + " did not finish within 1s; stopped it (it was still running)");
  const auto stops = semaphore.requests("POST", "/api/project/1/tasks/" + id + "/stop");
  REQUIRE(stops.size() == 1);
  CHECK(stops[0].body == R"({"force":false})");
  daemon.runFor(300ms);
  CHECK(semaphore.taskStatus(seen.outcome->taskId) == "error");  // a non-forced stop ends as error
}

TEST_CASE("a refused token is reported with Semaphore's address, and nothing is retried") {
  SemaphoreDouble semaphore({"--token", "another-token", "--template", R"({"id": 22})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason ==
        "Semaphore at " + semaphore.url() + " refused the API token (HTTP 401): check semaphore api_token");
  CHECK(seen.outcome->taskId == 0);
  CHECK(semaphore.requests().size() == 1);
}

TEST_CASE("a user who may only read is told so") {
  SemaphoreDouble semaphore({"--user", "gail:pw:guest", "--template", R"({"id": 22})"});
  SemaphoreSettings settings = tokenSettings(semaphore);
  settings.apiToken.clear();
  settings.username = "gail";
  settings.password = "pw";
  Daemon daemon(settings);
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->reason == "Semaphore at " + semaphore.url() +
                                    " refused user \"gail\" (HTTP 403): the user may not run tasks in project 1");
}

TEST_CASE("an unknown template is reported with its id and project") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(99));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason == "Semaphore at " + semaphore.url() +
                                    " could not run template 99 of project 1 (HTTP 500, no details): check that the "
                                    "template exists in that project");
  CHECK(seen.progress.size() == 1);  // never a task id
}

TEST_CASE("an unreachable Semaphore fails the start with curl's error") {
  SemaphoreSettings settings;
  settings.baseUrl = "http://127.0.0.1:" + std::to_string(closedPort());
  settings.apiToken = kToken;
  settings.httpTimeout = 2s;
  Daemon daemon(settings);
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  const auto began = std::chrono::steady_clock::now();
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }, 5s));
  CHECK(std::chrono::steady_clock::now() - began < 2s);
  CHECK_FALSE(seen.outcome->ok);
  const std::string prefix = "could not reach Semaphore at " + settings.baseUrl + ": ";
  INFO(seen.outcome->reason);
  CHECK(seen.outcome->reason.rfind(prefix, 0) == 0);
  CHECK(seen.outcome->reason.find("Connection refused") != std::string::npos);
  CHECK(seen.outcome->reason.size() > prefix.size());
}

TEST_CASE("a Semaphore that does not answer fails the start once http_timeout passes") {
  SemaphoreDouble semaphore({"--token", kToken, "--response-delay-ms", "5000", "--template", R"({"id": 22})"});
  Daemon daemon(tokenSettings(semaphore, 500ms));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  const auto began = std::chrono::steady_clock::now();
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }, 4s));
  const auto took = std::chrono::steady_clock::now() - began;
  CHECK(took >= 400ms);
  CHECK(took < 2s);
  INFO(seen.outcome->reason);
  CHECK(seen.outcome->reason.rfind("could not reach Semaphore at " + semaphore.url() + ": ", 0) == 0);
  CHECK(seen.outcome->reason.find("timed out") != std::string::npos);
}

TEST_CASE("with a username and password, controld logs in once and again only after a 401") {
  SemaphoreDouble semaphore({"--user", "alice:wonderland", "--template", R"({"id": 22, "after_ms": 100})", "--template",
                             R"({"id": 32, "after_ms": 100})"});
  SemaphoreSettings settings = tokenSettings(semaphore);
  settings.apiToken.clear();
  settings.username = "alice";
  settings.password = "wonderland";
  Daemon daemon(settings);
  SemaphoreDriver comfy(daemon.client, "comfyui", serviceSettings(22));
  SemaphoreDriver ollama(daemon.client, "ollama", serviceSettings(32));

  Observed a, b;
  comfy.run(startRequest(), a.onProgress(), a.onDone());
  ollama.run(startRequest(), b.onProgress(), b.onDone());
  REQUIRE(daemon.runUntil([&] { return a.outcome && b.outcome; }));
  CHECK(a.outcome->ok);
  CHECK(b.outcome->ok);
  auto logins = semaphore.requests("POST", "/api/auth/login");
  REQUIRE(logins.size() == 1);  // both drivers waited for the same login
  const auto login = parse(logins[0].body);
  CHECK(std::string(login["auth"].GetString()) == "alice");
  CHECK(std::string(login["password"].GetString()) == "wonderland");
  std::string cookie;
  for (const auto& r : semaphore.requests()) {
    if (r.path == "/api/auth/login") continue;
    CHECK(r.authorization.empty());
    CHECK(r.cookie.rfind("semaphore=", 0) == 0);
    if (cookie.empty()) cookie = r.cookie;
    CHECK(r.cookie == cookie);
  }

  semaphore.expireSessions();  // e.g. Semaphore restarted
  Observed c;
  comfy.run(startRequest(), c.onProgress(), c.onDone());
  REQUIRE(daemon.runUntil([&] { return c.outcome.has_value(); }));
  CHECK(c.outcome->ok);
  logins = semaphore.requests("POST", "/api/auth/login");
  CHECK(logins.size() == 2);
  const auto posts = semaphore.requests("POST", "/api/project/1/tasks");
  REQUIRE(posts.size() == 4);  // two starts, then one refused and repeated after the new login
  CHECK(posts[2].cookie == cookie);
  CHECK(posts[3].cookie != cookie);
  CHECK(semaphore.taskStatus(3) == "success");
  CHECK(semaphore.taskStatus(4) == "");  // the refused POST created nothing
}

TEST_CASE("a refused login is reported and not repeated for the same call") {
  SemaphoreDouble semaphore({"--user", "alice:wonderland", "--template", R"({"id": 22})"});
  SemaphoreSettings settings = tokenSettings(semaphore);
  settings.apiToken.clear();
  settings.username = "alice";
  settings.password = "guess";
  Daemon daemon(settings);
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->reason == "Semaphore at " + semaphore.url() +
                                    " refused the login of user \"alice\" (HTTP 401): check semaphore username and "
                                    "password");
  CHECK(semaphore.requests().size() == 1);
}

TEST_CASE("after a restart, resume follows the recorded task instead of creating a second one") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "after_ms": 700})"});
  Daemon daemon(tokenSettings(semaphore));
  auto first = std::make_unique<SemaphoreDriver>(daemon.client, "comfyui", serviceSettings(22));

  // The first controld goes away (here: its driver is destroyed from inside
  // the callback) once the task id is recorded.
  Observed before;
  std::optional<OperationRecord> recorded;
  first->run(
      startRequest(),
      [&](const OperationRecord& r) {
        if (r.taskId) {
          recorded = r;
          first.reset();
        }
      },
      before.onDone());
  REQUIRE(daemon.runUntil([&] { return recorded.has_value(); }));
  daemon.runFor(300ms);
  CHECK_FALSE(before.outcome);

  SemaphoreDriver second(daemon.client, "comfyui", serviceSettings(22));
  Observed after;
  second.resume(*recorded, after.onProgress(), after.onDone());
  REQUIRE(daemon.runUntil([&] { return after.outcome.has_value(); }));
  CHECK(after.outcome->ok);
  CHECK(after.outcome->taskId == recorded->taskId);
  CHECK(semaphore.requests("POST", "/api/project/1/tasks").size() == 1);
  CHECK(semaphore.requests("POST", "/api/project/1/tasks/" + std::to_string(recorded->taskId) + "/stop").empty());
}

TEST_CASE("resume of a Semaphore record without a task id or operation id refuses to run a second task") {
  // Written by a controld that sent no operation id: a task, if any, cannot
  // be told from another.
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  OperationRecord record;
  record.driver = "semaphore";
  record.startedAtMs = 1;
  Observed seen;
  driver.resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason ==
        "controld restarted before Semaphore confirmed the start task of service comfyui; not running a second one "
        "(check Semaphore's task history)");
  CHECK(semaphore.requests().empty());
}

namespace {

// The record a controld leaves behind when it goes away after sending the
// task and before reading Semaphore's answer: the POST went (the double has
// logged it), the driver is destroyed without hearing back.
OperationRecord sentButNotAnswered(Daemon& daemon, SemaphoreDouble& semaphore, const std::function<bool()>& killWhen) {
  auto first = std::make_unique<SemaphoreDriver>(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  first->run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(seen.progress.size() == 1);
  REQUIRE(daemon.runUntil([&] { return !semaphore.requests("POST", "/api/project/1/tasks").empty() && killWhen(); }));
  first.reset();
  REQUIRE(seen.progress.size() == 1);  // the task id never reached the record
  CHECK(seen.progress[0].taskId == 0);
  CHECK_FALSE(seen.progress[0].operationId.empty());
  return seen.progress[0];
}

OperationRecord unsentRecord(const std::string& operationId) {
  OperationRecord record;
  record.driver = "semaphore";
  record.startedAtMs = unixMillisNow();
  record.operationId = operationId;
  return record;
}

// A new driver resumes `record`, as the next controld would, up to the outcome.
Observed resumeToEnd(Daemon& daemon, const OperationRecord& record) {
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  return seen;
}

std::string environmentOf(const LoggedRequest& post) {
  const auto body = parse(post.body);
  const auto env = parse(body["environment"].GetString());
  return env["ondemand_operation"].GetString();
}

}  // namespace

TEST_CASE("a Semaphore task whose creation was never confirmed is found by its operation id and followed") {
  // Semaphore created the task at once; its answer is slow on the way back.
  SemaphoreDouble semaphore(
      {"--token", kToken, "--answer-delay-ms", "2000", "--template", R"({"id": 22, "after_ms": 300})"});
  Daemon daemon(tokenSettings(semaphore));
  const OperationRecord record = sentButNotAnswered(daemon, semaphore, [&] { return semaphore.taskStatus(1) != ""; });

  const Observed after = resumeToEnd(daemon, record);
  CHECK(after.outcome->ok);
  CHECK(after.outcome->taskId == 1);
  CHECK(after.outcome->taskStatus == "success");
  REQUIRE_FALSE(after.progress.empty());
  CHECK(after.progress[0].taskId == 1);  // recorded before it is followed
  CHECK(after.progress[0].operationId == record.operationId);
  CHECK(after.progress[0].startedAtMs == record.startedAtMs);  // task_timeout counts from the first POST
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/last").size() == 1);
  CHECK(semaphore.requests("POST", "/api/project/1/tasks").size() == 1);
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/1").size() >= 1);
}

namespace {

// One start of template 22 by a fresh driver, to its outcome.
Observed startToEnd(Daemon& daemon) {
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }, 10s));
  return seen;
}

}  // namespace

TEST_CASE("a task whose POST answer is lost, a 500 or unreadable is looked up by its operation id, not sent twice") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "after_ms": 200})"});
  Daemon daemon(tokenSettings(semaphore, 1s));
  SECTION("no answer within http_timeout") {
    adminCall(semaphore.port(), "POST", "/__double/config", R"({"answer_delay_ms": 3000})");
  }
  SECTION("HTTP 500 after creating it") {
    adminCall(semaphore.port(), "POST", "/__double/config", R"({"task_post_answer": "500"})");
  }
  SECTION("a truncated answer") {
    adminCall(semaphore.port(), "POST", "/__double/config", R"({"task_post_answer": "truncated"})");
  }
  const Observed seen = startToEnd(daemon);
  INFO(seen.outcome->reason);
  CHECK(seen.outcome->ok);
  CHECK(seen.outcome->taskId == 1);
  CHECK(semaphore.requests("POST", "/api/project/1/tasks").size() == 1);
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/last").size() == 1);
}

TEST_CASE("a task POST that created nothing still fails the start with what Semaphore answered") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "after_ms": 200})"});
  Daemon daemon(tokenSettings(semaphore, 300ms));
  adminCall(semaphore.port(), "POST", "/__double/config", R"({"drop_task_posts": true})");
  const Observed seen = startToEnd(daemon);
  INFO(seen.outcome->reason);
  CHECK_FALSE(seen.outcome->ok);
  CHECK(seen.outcome->reason.rfind("could not reach Semaphore at " + semaphore.url(), 0) == 0);
  CHECK(semaphore.requests("POST", "/api/project/1/tasks").size() == 1);
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/last").size() == 2);  // at once and after http_timeout
}

TEST_CASE("a Semaphore task created only after the restart is found by the second look, not sent twice") {
  // Semaphore is slow: it creates the task 700 ms after the POST arrived,
  // after the first look of the restarted controld.
  SemaphoreDouble semaphore(
      {"--token", kToken, "--response-delay-ms", "700", "--template", R"({"id": 22, "after_ms": 100})"});
  Daemon daemon(tokenSettings(semaphore, 1500ms));
  const OperationRecord record = sentButNotAnswered(daemon, semaphore, [] { return true; });
  adminCall(semaphore.port(), "POST", "/__double/config", R"({"response_delay_ms": 0})");  // for what follows

  const Observed after = resumeToEnd(daemon, record);
  CHECK(after.outcome->ok);
  CHECK(after.outcome->taskId == 1);
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/last").size() == 2);
  CHECK(semaphore.requests("POST", "/api/project/1/tasks").size() == 1);
}

TEST_CASE("a Semaphore task that was never created is sent once after the restart, with the same operation id") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "after_ms": 50})"});
  Daemon daemon(tokenSettings(semaphore, 500ms));
  // Another service's task of the same template is not taken for it.
  SemaphoreDriver other(daemon.client, "ollama", serviceSettings(22));
  Observed otherSeen;
  other.run(startRequest(), otherSeen.onProgress(), otherSeen.onDone());
  REQUIRE(daemon.runUntil([&] { return otherSeen.outcome.has_value(); }));
  REQUIRE(otherSeen.outcome->taskId == 1);

  const OperationRecord record = unsentRecord("comfyui-" + std::to_string(unixMillisNow()) + "-0badf00d");
  const auto began = std::chrono::steady_clock::now();
  const Observed seen = resumeToEnd(daemon, record);
  CHECK(std::chrono::steady_clock::now() - began >= 500ms);  // looked twice, http_timeout apart
  CHECK(seen.outcome->ok);
  CHECK(seen.outcome->taskId == 2);
  CHECK(semaphore.requests("GET", "/api/project/1/tasks/last").size() == 2);

  const auto posts = semaphore.requests("POST", "/api/project/1/tasks");
  REQUIRE(posts.size() == 2);  // the other service's, then this one, once
  CHECK(environmentOf(posts[1]) == record.operationId);
  CHECK(std::string(parse(posts[1].body)["message"].GetString()) ==
        "ondemand: start comfyui (sent again after a restart of controld: the first request created no task)");
  REQUIRE(seen.progress.size() == 2);
  CHECK(seen.progress[0].taskId == 0);  // persisted before the POST
  CHECK(seen.progress[0].operationId == record.operationId);
  CHECK(seen.progress[0].startedAtMs >= record.startedAtMs);
  CHECK(seen.progress[1].taskId == 2);
}

TEST_CASE("an unconfirmed Semaphore task is not sent again when the look-up fails") {
  const std::string id = "comfyui-" + std::to_string(unixMillisNow()) + "-0badf00d";
  const std::string start =
      "controld restarted before Semaphore confirmed the start task of service comfyui, and "
      "could not look for it in Semaphore's task history (GET /api/project/1/tasks/last): ";
  const std::string end = "; not running a second one";
  auto endsWith = [](const std::string& text, const std::string& tail) {
    return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
  };

  SECTION("Semaphore cannot be reached") {
    SemaphoreSettings settings;
    settings.baseUrl = "http://127.0.0.1:" + std::to_string(closedPort());
    settings.projectId = 1;
    settings.apiToken = kToken;
    settings.httpTimeout = 2s;
    Daemon daemon(settings);
    const Observed seen = resumeToEnd(daemon, unsentRecord(id));
    CHECK_FALSE(seen.outcome->ok);
    INFO(seen.outcome->reason);
    CHECK(seen.outcome->reason.rfind(start + "could not reach Semaphore at " + settings.baseUrl + ": ", 0) == 0);
    CHECK(seen.outcome->reason.find("Connection refused") != std::string::npos);
    CHECK(endsWith(seen.outcome->reason, end));
  }
  SECTION("Semaphore refuses the token") {
    SemaphoreDouble semaphore({"--token", "another-token", "--template", R"({"id": 22})"});
    Daemon daemon(tokenSettings(semaphore));
    const Observed seen = resumeToEnd(daemon, unsentRecord(id));
    CHECK(seen.outcome->reason == start + "Semaphore at " + semaphore.url() +
                                      " refused the API token (HTTP 401): check semaphore api_token" + end);
    CHECK(semaphore.requests("POST", "/api/project/1/tasks").empty());
    CHECK(seen.progress.empty());
  }
}

TEST_CASE("a full list of Semaphore's last tasks proves nothing unless it reaches back to the first POST") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "after_ms": 50})"});
  Daemon daemon(tokenSettings(semaphore, 300ms));
  const OperationRecord record = unsentRecord("comfyui-" + std::to_string(unixMillisNow()) + "-0badf00d");
  // 200 finished tasks of another operation, all created at `created`.
  const auto resumeAfter200 = [&](const std::string& created) {
    adminCall(semaphore.port(), "POST", "/__double/tasks",
              R"({"template_id": 22, "count": 200, "created": ")" + created + R"("})");
    return resumeToEnd(daemon, record);
  };

  SECTION("all created since: the task may be older than all of them") {
    const Observed seen = resumeAfter200("2999-01-01T00:00:00.000Z");
    CHECK_FALSE(seen.outcome->ok);
    CHECK(seen.outcome->reason ==
          "controld restarted before Semaphore confirmed the start task of service comfyui, and Semaphore's last 200 "
          "tasks of project 1 do not reach back to when it was sent; not running a second one (check Semaphore's "
          "task history)");
    CHECK(semaphore.requests("POST", "/api/project/1/tasks").empty());
  }
  SECTION("reaching back far enough: the task was never created") {
    const Observed seen = resumeAfter200("2001-01-01T00:00:00.000Z");
    CHECK(seen.outcome->ok);
    CHECK(seen.outcome->taskId == 201);
    CHECK(semaphore.requests("POST", "/api/project/1/tasks").size() == 1);
  }
}

TEST_CASE("Semaphore task lists are searched by the operation id in each task's environment") {
  const std::string body = R"([
    {"id": 9, "template_id": 22, "status": "running", "created": "2024-10-25T08:00:02Z",
     "environment": "{\"ondemand_operation\": \"gpu-1-0badf00d\"}"},
    {"id": 8, "template_id": 22, "status": "success", "created": "2024-10-25T08:00:01.5Z",
     "environment": "{\"ondemand_operation\": \"gpu-1-00000000\"}"},
    {"id": 7, "template_id": 23, "status": "waiting", "created": "2024-10-25T10:00:00.123+02:00",
     "environment": "{\"service_id\": \"gpu\", \"ondemand_operation\": \"gpu-1-0badf00d\"}"},
    {"id": 6, "template_id": 22, "status": "error", "created": "2024-10-25T08:00:03Z", "environment": "not json"},
    {"id": 5, "template_id": 22, "status": "error", "created": "2024-10-25T08:00:04Z", "environment": ""}
  ])";
  const auto found = searchTaskList(body, "gpu-1-0badf00d");
  REQUIRE(found);
  CHECK(found->taskId == 7);  // of two, the first created: the other was run again by hand
  CHECK(found->status == "waiting");
  CHECK(found->listed == 5);
  CHECK(found->oldestCreatedMs == 1729843200123);

  const auto missing = searchTaskList(body, "gpu-1-0badf00");
  REQUIRE(missing);
  CHECK(missing->taskId == 0);
  CHECK(searchTaskList("[]", "x")->listed == 0);
  CHECK(searchTaskList(R"([{"id": 1}])", "x")->oldestCreatedMs == 0);  // no date: the list's reach is unknown
  CHECK_FALSE(searchTaskList(R"({"id": 1})", "x"));
  CHECK_FALSE(searchTaskList("", "x"));

  CHECK(rfc3339Millis("1970-01-01T00:00:00Z") == 0);
  CHECK(rfc3339Millis("2024-10-25T08:00:00.123Z") == 1729843200123);
  CHECK(rfc3339Millis("2024-10-25T08:00:00.123456789Z") == 1729843200123);
  CHECK(rfc3339Millis("2024-02-29T23:59:59Z") == 1709251199000);
  CHECK(rfc3339Millis("2024-10-25T06:30:00.123-01:30") == 1729843200123);
  CHECK_FALSE(rfc3339Millis("2023-02-29T00:00:00Z"));
  CHECK_FALSE(rfc3339Millis("2024-10-25 08:00:00Z"));
  CHECK_FALSE(rfc3339Millis("2024-10-25T08:00:00"));
  CHECK_FALSE(rfc3339Millis("2024-10-25T08:00:00.123"));  // no zone
  CHECK_FALSE(rfc3339Millis("2024-10-25T08:00:00.123+0200"));
  CHECK_FALSE(rfc3339Millis("2024-10-25T08:00:00Zjunk"));
  CHECK_FALSE(rfc3339Millis(""));
}

TEST_CASE("resume of a task whose timeout passed while controld was down looks before stopping it") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "after_ms": 0})"});
  Daemon daemon(tokenSettings(semaphore));
  Observed created;
  SemaphoreDriver starter(daemon.client, "comfyui", serviceSettings(22));
  starter.run(startRequest(), created.onProgress(), created.onDone());
  REQUIRE(daemon.runUntil([&] { return created.outcome.has_value(); }));

  // It succeeded meanwhile: reported as such, not overwritten by a stop.
  OperationRecord record = created.progress.back();
  record.startedAtMs -= 60'000;
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.resume(record, seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->ok);
  CHECK(semaphore.taskStatus(record.taskId) == "success");
}

TEST_CASE("cancel stops a running task with force false and calls nothing back") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "hang"})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.progress.size() == 2; }));
  const auto taskId = seen.progress[1].taskId;
  daemon.runFor(200ms);
  driver.cancel();
  REQUIRE(daemon.runUntil([&] { return semaphore.taskStatus(taskId) == "error"; }, 5s));
  daemon.runFor(300ms);
  CHECK_FALSE(seen.outcome);
  const auto stops = semaphore.requests("POST", "/api/project/1/tasks/" + std::to_string(taskId) + "/stop");
  REQUIRE(stops.size() == 1);
  CHECK(stops[0].body == R"({"force":false})");
}

TEST_CASE("cancel before Semaphore answered the creation stops the task once it exists") {
  SemaphoreDouble semaphore(
      {"--token", kToken, "--response-delay-ms", "300", "--template", R"({"id": 22, "run": "hang"})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  daemon.runFor(100ms);
  driver.cancel();
  REQUIRE(daemon.runUntil([&] { return semaphore.requests("POST", "/api/project/1/tasks/1/stop").size() == 1; }));
  CHECK(seen.progress.size() == 1);
  CHECK_FALSE(seen.outcome);
}

TEST_CASE("a finished task is never stopped") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "fail", "after_ms": 0})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  driver.cancel();  // too late: nothing to do
  daemon.runFor(200ms);
  CHECK(semaphore.taskStatus(seen.outcome->taskId) == "error");
  for (const auto& r : semaphore.requests())
    CHECK(r.path.find("/stop") == std::string::npos);
}

TEST_CASE("ANSI sequences and control characters are removed from task output") {
  CHECK(stripAnsi("\x1b[0;31mfatal: [gpu-01]\x1b[0m") == "fatal: [gpu-01]");
  CHECK(stripAnsi("a\x1b[1;35;40mb\x1b[Kc\r") == "abc");
  CHECK(stripAnsi("\x1b]0;title\x07text") == "text");
  CHECK(stripAnsi("\x1b]8;;http://x\x1b\\link") == "link");
  CHECK(stripAnsi("tab\tkept, bell\x07 gone") == "tab\tkept, bell gone");
  CHECK(stripAnsi("dangling \x1b") == "dangling ");
  CHECK(stripAnsi("caf\xc3\xa9") == "caf\xc3\xa9");
}

TEST_CASE("task output answers are read defensively") {
  CHECK(lastOutputLines("null", 10) == std::vector<std::string>{});
  CHECK(lastOutputLines("[]", 10) == std::vector<std::string>{});
  CHECK_FALSE(lastOutputLines("{\"output\": \"x\"}", 10));
  CHECK_FALSE(lastOutputLines("not json", 10));
  CHECK(lastOutputLines(R"([{"output": 5}, 7, {"output": "a\nb  "}, {"output": " "}, {"output": "c"}])", 2) ==
        std::vector<std::string>{"b", "c"});
}

TEST_CASE("detach leaves the task running for the next controld and calls nothing back") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "hang"})"});
  Daemon daemon(tokenSettings(semaphore));
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.progress.size() == 2; }));
  driver.detach();
  daemon.runFor(500ms);
  CHECK_FALSE(seen.outcome);
  CHECK(semaphore.taskStatus(seen.progress[1].taskId) == "running");
  for (const auto& r : semaphore.requests())
    CHECK(r.path.find("/stop") == std::string::npos);
}

namespace {

Config onlineConfig(const std::string& baseUrl, std::int64_t secondStart) {
  Config config;
  SemaphoreSettings semaphore;
  semaphore.baseUrl = baseUrl;
  semaphore.apiToken = kToken;
  semaphore.httpTimeout = 2s;
  config.semaphore = semaphore;
  ServiceConfig a;
  a.name = "comfyui";
  a.where = {"controld.yaml", 12};
  a.semaphore = serviceSettings(22, 23);
  ServiceConfig b;
  b.name = "ollama";
  b.where = {"controld.yaml", 20};
  b.semaphore = serviceSettings(secondStart, 0);
  ServiceConfig c;
  c.name = "notes";
  c.startCommand = {"true"};
  config.services = {{a.name, a}, {b.name, b}, {c.name, c}};
  return config;
}

}  // namespace

TEST_CASE("check-config --online asks Semaphore for the credentials and every template") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22})", "--template", R"({"id": 23})",
                             "--template", R"({"id": 31, "project_id": 2})"});
  std::ostringstream out, err;
  CHECK(checkSemaphoreOnline(onlineConfig(semaphore.url(), 22), out, err) == 0);
  INFO(err.str());
  CHECK(out.str().find("Semaphore at " + semaphore.url() + " (v2.10.22-double): reachable, credentials accepted") !=
        std::string::npos);
  CHECK(out.str().find("Semaphore templates: 2 found in project 1") != std::string::npos);

  std::ostringstream out2, err2;
  CHECK(checkSemaphoreOnline(onlineConfig(semaphore.url(), 31), out2, err2) == 1);
  CHECK(err2.str() ==
        "controld.yaml:20: services.ollama.semaphore.start_template_id: template 31 does not exist in Semaphore "
        "project 1\n");

  auto wrongToken = onlineConfig(semaphore.url(), 22);
  wrongToken.semaphore->apiToken = "nope";
  std::ostringstream out3, err3;
  CHECK(checkSemaphoreOnline(wrongToken, out3, err3) == 1);
  CHECK(err3.str() ==
        "Semaphore at " + semaphore.url() + " refused the API token (HTTP 401): check semaphore api_token\n");

  std::ostringstream out4, err4;
  CHECK(checkSemaphoreOnline(onlineConfig("http://127.0.0.1:" + std::to_string(closedPort()), 22), out4, err4) == 3);
  CHECK(err4.str().rfind("cannot reach Semaphore at http://127.0.0.1:", 0) == 0);
}

// --- live updates ------------------------------------------------------------

namespace {

// Runs one start of a task that takes `taskMs` and returns how long the
// driver took to report it, in ms.
long long timedStart(Daemon& daemon, SemaphoreDriver& driver, Observed& seen) {
  const auto started = std::chrono::steady_clock::now();
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }, 20s));
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
}

}  // namespace

TEST_CASE("a task's end announced on Semaphore's WebSocket is seen at once, not at the next poll") {
  // 800 ms of task after 50 ms of queue: polls go at 100, 300, 700 and 1500 ms.
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "succeed", "after_ms": 800})"});
  Daemon daemon(tokenSettings(semaphore));
  auto settings = serviceSettings(22);
  settings.pollInterval = 1s;
  SemaphoreDriver driver(daemon.client, "comfyui", settings);

  SECTION("with live updates") {
    Observed seen;
    const auto ms = timedStart(daemon, driver, seen);
    CHECK(seen.outcome->ok);
    CHECK(ms >= 850);
    CHECK(ms < 1300);
    const auto ws = semaphore.requests("GET", "/api/ws");
    REQUIRE(ws.size() == 1);
    CHECK(ws[0].authorization == std::string("Bearer ") + kToken);
    // The poll still decides: the announcement only made it come sooner.
    CHECK(semaphore.requests("GET", "/api/project/1/tasks/1").size() == 4);

    SECTION("and the connection is shared by the next operations") {
      Observed again;
      timedStart(daemon, driver, again);
      CHECK(again.outcome->ok);
      CHECK(semaphore.requests("GET", "/api/ws").size() == 1);
      CHECK(semaphore.websockets("connections") == 1);
    }
  }
  SECTION("behind a proxy that drops the Upgrade, polling alone finds the end") {
    semaphore.setWebsocket(false);
    Observed seen;
    const auto ms = timedStart(daemon, driver, seen);
    CHECK(seen.outcome->ok);
    CHECK(ms >= 1450);
    CHECK(semaphore.websockets("connections") == 0);
  }
}

TEST_CASE("a dropped live-update connection is reopened and the followed task looked at again") {
  // Polls at 100, 300, 700, 1500, 3100, 6300 ms; the task ends at about 3.6 s.
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "succeed", "after_ms": 3500})"});
  Daemon daemon(tokenSettings(semaphore));
  auto settings = serviceSettings(22);
  settings.pollInterval = 10s;
  settings.taskTimeout = 30s;
  SemaphoreDriver driver(daemon.client, "comfyui", settings);

  Observed seen;
  const auto started = std::chrono::steady_clock::now();
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return semaphore.websockets("connections") == 1; }, 5s));
  semaphore.closeWebsockets();  // Semaphore restarted, or the network dropped it
  const auto polls = semaphore.requests("GET", "/api/project/1/tasks/1").size();
  REQUIRE(daemon.runUntil([&] { return semaphore.websockets("connections") == 1; }, 5s));
  // Announcements may have been missed meanwhile: one look at once.
  REQUIRE(daemon.runUntil([&] { return semaphore.requests("GET", "/api/project/1/tasks/1").size() > polls; }, 1s));
  CHECK(semaphore.requests("GET", "/api/ws").size() == 2);

  // Semaphore pings now and then; controld answers.
  semaphore.pingWebsockets();
  REQUIRE(daemon.runUntil([&] { return semaphore.websockets("pongs") == 1; }, 3s));

  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }, 10s));
  CHECK(seen.outcome->ok);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  CHECK(ms < 5000);  // the announcement, not the poll at 6.3 s
}

TEST_CASE("a live-update frame of a million open brackets neither crashes controld nor stops the task being followed") {
  SemaphoreDouble semaphore({"--token", kToken, "--template", R"({"id": 22, "run": "succeed", "after_ms": 1500})"});
  Daemon daemon(tokenSettings(semaphore));
  auto settings = serviceSettings(22);
  settings.pollInterval = 10s;
  SemaphoreDriver driver(daemon.client, "comfyui", settings);
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return semaphore.websockets("connections") == 1; }, 5s));
  // Whatever answers on a plain-http base_url can send this (the frame limit is 1 MiB).
  adminCall(semaphore.port(), "POST", "/__double/websockets/send", R"({"text": "[", "repeat": 1048570})");
  adminCall(semaphore.port(), "POST", "/__double/websockets/send",
            R"({"text": "{\"type\":\"update\",\"task_id\":1,\"status\":[[[[[[[[[[[[[[]]]]]]]]]]]]]]}"})");
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }, 20s));
  CHECK(seen.outcome->ok);
  CHECK(semaphore.websockets("connections") == 1);  // the connection carried on
}

TEST_CASE("with a username and password, the live-update connection carries the session cookie") {
  SemaphoreDouble semaphore({"--user", "alice:wonderland", "--template", R"({"id": 22, "after_ms": 300})"});
  SemaphoreSettings settings = tokenSettings(semaphore);
  settings.apiToken.clear();
  settings.username = "alice";
  settings.password = "wonderland";
  Daemon daemon(settings);
  SemaphoreDriver driver(daemon.client, "comfyui", serviceSettings(22));
  Observed seen;
  driver.run(startRequest(), seen.onProgress(), seen.onDone());
  REQUIRE(daemon.runUntil([&] { return seen.outcome.has_value(); }));
  CHECK(seen.outcome->ok);
  REQUIRE(daemon.runUntil([&] { return semaphore.websockets("connections") == 1; }, 3s));
  const auto ws = semaphore.requests("GET", "/api/ws");
  REQUIRE(ws.size() == 1);
  CHECK(ws[0].authorization.empty());
  CHECK(ws[0].cookie == semaphore.requests("POST", "/api/project/1/tasks")[0].cookie);
  CHECK(semaphore.requests("POST", "/api/auth/login").size() == 1);
}

TEST_CASE("of a task output of any size only the end is read") {
  std::string body = "[";
  for (int i = 0; i < 20000; ++i)
    body += R"({"task_id":1,"time":"2024-01-01T00:00:00Z","output":"TASK [step )" + std::to_string(i) +
            R"(] },{\"not\":\"an entry\"}"},)";
  body += R"({"task_id":1,"time":"2024-01-01T00:00:00Z","output":"fatal: out of memory"}])";
  REQUIRE(body.size() > 2 * kOutputTailBytes);
  const std::string tail = body.substr(body.size() - kOutputTailBytes);
  const auto lines = lastOutputLines(tail, 3, true);
  REQUIRE(lines);
  CHECK(*lines == std::vector<std::string>{"TASK [step 19998] },{\"not\":\"an entry\"}",
                                           "TASK [step 19999] },{\"not\":\"an entry\"}", "fatal: out of memory"});
  CHECK(lastOutputLines(body, 1) == std::vector<std::string>{"fatal: out of memory"});
  CHECK_FALSE(lastOutputLines("no entries at all", 3, true));
}
