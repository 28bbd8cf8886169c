#include "controld/drivers/semaphore/semaphore_check.hpp"

#include <rapidjson/document.h>
#include <uv.h>

#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "controld/drivers/semaphore/semaphore_driver.hpp"
#include "controld/io/http_client.hpp"
#include "shared/json_read.hpp"

namespace ondemand::controld {

namespace {

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUnreachable = 3;

// The checks run one after the other on a private loop: this is the CLI, not
// the daemon, so waiting for each answer is what we want.
class OnlineCheck {
 public:
  explicit OnlineCheck(const SemaphoreSettings& settings) : settings_(settings) {
    uv_loop_init(&loop_);
    http_ = std::make_unique<HttpClient>(&loop_);
    client_ = std::make_shared<SemaphoreClient>(&loop_, *http_, settings);
  }
  ~OnlineCheck() {
    client_.reset();
    http_.reset();
    closeLoop(&loop_);
  }
  OnlineCheck(const OnlineCheck&) = delete;
  OnlineCheck& operator=(const OnlineCheck&) = delete;

  HttpResponse ping() {
    std::optional<HttpResponse> answer;
    HttpRequest request;
    request.url = client_->settings().baseUrl + "/api/ping";
    request.timeout = settings_.httpTimeout;
    http_->send(std::move(request), [&answer](HttpResponse r) { answer = std::move(r); });
    while (!answer)
      uv_run(&loop_, UV_RUN_ONCE);
    return std::move(*answer);
  }

  SemaphoreReply get(const std::string& path) {
    std::optional<SemaphoreReply> answer;
    client_->send("GET", path, "", [&answer](SemaphoreReply r) { answer = std::move(r); });
    while (!answer)
      uv_run(&loop_, UV_RUN_ONCE);
    return std::move(*answer);
  }

  const std::string& url() const { return client_->settings().baseUrl; }
  std::string projectPath() const { return client_->projectPath(); }

 private:
  SemaphoreSettings settings_;
  uv_loop_t loop_{};
  std::unique_ptr<HttpClient> http_;
  std::shared_ptr<SemaphoreClient> client_;
};

std::string versionOf(const std::string& body) {
  rapidjson::Document doc;
  if (!parseJson(doc, body).empty() || !doc.IsObject()) return {};
  const auto v = doc.FindMember("version");
  return v != doc.MemberEnd() && v->value.IsString() ? v->value.GetString() : std::string();
}

}  // namespace

int checkSemaphoreOnline(const Config& config, std::ostream& out, std::ostream& err) {
  bool used = false;
  for (const auto& [name, service] : config.services)
    used = used || service.semaphore.has_value();
  if (!config.semaphore || !used) {
    out << "no service uses Semaphore: nothing to check online\n";
    return kOk;
  }
  OnlineCheck check(*config.semaphore);
  const std::string& url = check.url();

  const HttpResponse pong = check.ping();
  if (pong.status == 0) {
    err << "cannot reach Semaphore at " << url << ": " << pong.error << "\n";
    return kUnreachable;
  }
  if (pong.status != 200 || pong.body != "pong") {
    err << url << "/api/ping answered HTTP " << pong.status << " instead of \"pong\": is semaphore.base_url the "
        << "address of Semaphore (without /api)?\n";
    return kFailed;
  }

  const SemaphoreReply info = check.get("/api/info");
  if (!info.refused.empty()) {
    err << info.refused << "\n";
    return kFailed;
  }
  if (!info.http.ok()) {
    err << "Semaphore at " << url << " answered GET /api/info with HTTP " << info.http.status
        << (info.http.status == 0 ? ": " + info.http.error : std::string()) << "\n";
    return info.http.status == 0 ? kUnreachable : kFailed;
  }
  const std::string version = versionOf(info.http.body);
  out << "Semaphore at " << url << (version.empty() ? std::string() : " (" + version + ")")
      << ": reachable, credentials accepted\n";

  const SemaphoreReply project = check.get(check.projectPath());
  if (!project.http.ok()) {
    err << "Semaphore at " << url << " has no project " << config.semaphore->projectId << " for this user (HTTP "
        << project.http.status << ")\n";
    return kFailed;
  }

  int rc = kOk;
  std::set<std::int64_t> seen;
  for (const auto& [name, service] : config.services) {
    if (!service.semaphore) continue;
    const std::pair<const char*, std::int64_t> templates[] = {{"start_template_id", service.semaphore->startTemplateId},
                                                              {"stop_template_id", service.semaphore->stopTemplateId}};
    for (const auto& [key, id] : templates) {
      if (id == 0 || seen.count(id)) continue;
      const SemaphoreReply answer = check.get(check.projectPath() + "/templates/" + std::to_string(id));
      if (answer.http.ok()) {
        seen.insert(id);
        continue;
      }
      ConfigProblem problem;
      problem.where = service.where;
      problem.key = "services." + name + ".semaphore." + key;
      problem.message =
          answer.http.status == 404
              ? "template " + std::to_string(id) + " does not exist in Semaphore project " +
                    std::to_string(config.semaphore->projectId)
              : "could not look up template " + std::to_string(id) + ": " +
                    (answer.http.status == 0 ? answer.http.error : "HTTP " + std::to_string(answer.http.status));
      err << formatProblem(problem) << "\n";
      rc = kFailed;
    }
  }
  if (rc == kOk)
    out << "Semaphore templates: " << seen.size() << " found in project " << config.semaphore->projectId << "\n";
  return rc;
}

}  // namespace ondemand::controld
