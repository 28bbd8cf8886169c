#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "controld/config/config.hpp"

using namespace ondemand;
using namespace ondemand::controld;
using namespace std::chrono_literals;

namespace {

// A fresh directory for the files one test writes; removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "controld-config-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string file = (path_ / name).string();
    std::ofstream(file) << text;
    return file;
  }
  std::string path(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct Loaded {
  TempDir dir;
  std::string file;
  ConfigLoadResult result;
};

std::unique_ptr<Loaded> load(const std::string& text, const Environment& env = {},
                             const std::string& name = "controld.yaml") {
  auto l = std::make_unique<Loaded>();
  l->file = l->dir.write(name, text);
  l->result = loadConfig(l->file, env);
  return l;
}

std::string allProblems(const std::vector<ConfigProblem>& problems) {
  std::string out;
  for (const auto& p : problems)
    out += formatProblem(p) + "\n";
  return out;
}

// The contract's example points at /etc/controld/semaphore.token, which a
// build machine does not have.
const FileReader kReaderWithToken = [](const std::string& path, std::string& error) -> std::optional<std::string> {
  if (path == "/etc/controld/semaphore.token") return "token-from-file\n";
  return readWholeFile(path, error);
};

const ConfigProblem* findProblem(const std::vector<ConfigProblem>& problems, const std::string& key) {
  for (const auto& p : problems)
    if (p.key == key) return &p;
  return nullptr;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

void requireSameMeaning(const Config& a, const Config& b) {
  REQUIRE(a.semaphore.has_value() == b.semaphore.has_value());
  if (a.semaphore) {
    CHECK(a.semaphore->baseUrl == b.semaphore->baseUrl);
    CHECK(a.semaphore->projectId == b.semaphore->projectId);
    CHECK(a.semaphore->apiToken == b.semaphore->apiToken);
    CHECK(a.semaphore->username == b.semaphore->username);
    CHECK(a.semaphore->password == b.semaphore->password);
    CHECK(a.semaphore->httpTimeout == b.semaphore->httpTimeout);
  }
  REQUIRE(a.services.size() == b.services.size());
  for (const auto& [name, x] : a.services) {
    INFO("service " << name);
    REQUIRE(b.services.count(name) == 1);
    const ServiceConfig& y = b.services.at(name);
    CHECK(x.baseUrl == y.baseUrl);
    CHECK(x.healthUrl == y.healthUrl);
    CHECK(x.warmup == y.warmup);
    CHECK(x.startTimeout == y.startTimeout);
    CHECK(x.idleTimeout == y.idleTimeout);
    CHECK(x.failureBackoff == y.failureBackoff);
    CHECK(x.healthInterval == y.healthInterval);
    CHECK(x.healthTimeout == y.healthTimeout);
    CHECK(x.stopTimeout == y.stopTimeout);
    CHECK(x.machine == y.machine);
    CHECK(x.startCommand == y.startCommand);
    CHECK(x.stopCommand == y.stopCommand);
    REQUIRE(x.semaphore.has_value() == y.semaphore.has_value());
    if (x.semaphore) {
      CHECK(x.semaphore->startTemplateId == y.semaphore->startTemplateId);
      CHECK(x.semaphore->stopTemplateId == y.semaphore->stopTemplateId);
      CHECK(x.semaphore->taskTimeout == y.semaphore->taskTimeout);
      CHECK(x.semaphore->pollInterval == y.semaphore->pollInterval);
      CHECK(x.semaphore->machineId == y.semaphore->machineId);
      CHECK(x.semaphore->extraVarsJson == y.semaphore->extraVarsJson);
    }
  }
}

}  // namespace

TEST_CASE("the contract's example controld.yaml loads with the values it says") {
  const std::string file = std::string(ONDEMAND_SOURCE_DIR) + "/conf/controld.yaml";
  const auto result = loadConfig(file, {}, kReaderWithToken);
  INFO(allProblems(result.errors) << allProblems(result.warnings));
  REQUIRE(result.errors.empty());
  CHECK(result.warnings.empty());
  const Config& c = *result.config;
  CHECK(c.format == ConfigFormat::Native);
  CHECK(c.socketPath == "/run/controld/controld.sock");
  CHECK(c.socketMode == mode_t{0660});
  CHECK(c.socketGroup == "www-data");
  CHECK(c.stateDir == "/var/lib/controld");
  CHECK(c.historySize == 20);

  REQUIRE(c.semaphore);
  CHECK(c.semaphore->baseUrl == "http://semaphore.internal:3000");
  CHECK(c.semaphore->projectId == 1);
  CHECK(c.semaphore->apiToken == "token-from-file");
  CHECK(c.semaphore->httpTimeout == 30s);

  REQUIRE(c.services.size() == 2);
  const ServiceConfig& comfy = c.services.at("comfyui");
  CHECK(comfy.name == "comfyui");
  CHECK(comfy.where.file == file);
  CHECK(comfy.where.line > 0);
  CHECK(comfy.baseUrl == "http://gpu-01:8188");
  CHECK(comfy.healthUrl == "http://gpu-01:8188/system_stats");
  CHECK(comfy.idleTimeout == 15min);
  CHECK(comfy.startTimeout == 10min);
  CHECK(comfy.machine == "gpu-01");
  CHECK(comfy.driverKind() == ServiceConfig::DriverKind::Semaphore);
  REQUIRE(comfy.semaphore);
  CHECK(comfy.semaphore->startTemplateId == 22);
  CHECK(comfy.semaphore->stopTemplateId == 23);
  CHECK(comfy.semaphore->taskTimeout == 10min);
  CHECK(comfy.semaphore->pollInterval == 2s);
  CHECK(comfy.semaphore->machineId == "gpu-01");
  CHECK(comfy.semaphore->extraVarsJson == R"({"model_name":"sdxl"})");

  const ServiceConfig& notes = c.services.at("notes-app");
  CHECK(notes.healthUrl == "http://127.0.0.1:9001/healthz");
  CHECK(notes.idleTimeout == 5min);
  CHECK(notes.driverKind() == ServiceConfig::DriverKind::Command);
  CHECK(notes.startCommand == std::vector<std::string>{"systemctl", "start", "notes-app"});
  CHECK(notes.stopCommand == std::vector<std::string>{"systemctl", "stop", "notes-app"});
  // Defaults, for what the example leaves out.
  CHECK(notes.startTimeout == 10min);
  CHECK(notes.failureBackoff == 30s);
  CHECK(notes.warmup == 0ms);
  CHECK(!notes.semaphore);
}

TEST_CASE("every example under conf/ loads without errors") {
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(ONDEMAND_SOURCE_DIR) + "/conf")) {
    const std::string ext = entry.path().extension().string();
    if (ext != ".yaml" && ext != ".yml") continue;
    ++files;
    const auto result = loadConfig(entry.path().string(), {}, kReaderWithToken);
    INFO(entry.path().string() << "\n" << allProblems(result.errors));
    CHECK(result.errors.empty());
    CHECK(result.config.has_value());
  }
  CHECK(files >= 2);
}

TEST_CASE("durations are read in every form, plain numbers in the unit the key names") {
  const auto l = load(R"(
services:
  a:
    health_url: http://127.0.0.1:1/health
    warmup_ms: 1500
    start_timeout: 90
    idle_timeout: 0
    failure_backoff: 1.5s
    health_interval: 250ms
    health_timeout: 2s
    stop_timeout: 1h
  b:
    health_url: http://127.0.0.1:2/health
    warmup: 3
    idle_timeout: 5m
    start_timeout: 1.5
)");
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.config);
  const ServiceConfig& a = l->result.config->services.at("a");
  CHECK(a.warmup == 1500ms);
  CHECK(a.startTimeout == 90s);
  CHECK(a.idleTimeout == 0ms);
  CHECK(a.failureBackoff == 1500ms);
  CHECK(a.healthInterval == 250ms);
  CHECK(a.healthTimeout == 2s);
  CHECK(a.stopTimeout == 1h);
  const ServiceConfig& b = l->result.config->services.at("b");
  CHECK(b.warmup == 3s);  // "warmup" has no unit in its name: seconds
  CHECK(b.idleTimeout == 5min);
  CHECK(b.startTimeout == 1500ms);
}

TEST_CASE("a mistyped key, a wrong type and a bad duration give exactly those three errors") {
  const auto l = load(R"(services:
  comfyui:
    health_url: http://gpu-01:8188/health
    idle_timout: 15m
    start_command: systemctl start comfyui
    start_timeout: 5 minutes
)");
  const auto& errors = l->result.errors;
  INFO(allProblems(errors));
  REQUIRE(errors.size() == 3);
  CHECK(!l->result.config);

  CHECK(errors[0].where.file == l->file);
  CHECK(errors[0].where.line == 4);
  CHECK(errors[0].key == "services.comfyui.idle_timout");
  CHECK(errors[0].message == "unknown key \"idle_timout\" (did you mean \"idle_timeout\"?)");

  CHECK(errors[1].where.line == 5);
  CHECK(errors[1].key == "services.comfyui.start_command");
  CHECK(contains(errors[1].message, "a list of arguments, e.g. [\"systemctl\", \"start\", \"x\"]"));
  CHECK(contains(errors[1].message, "got \"systemctl start comfyui\""));

  CHECK(errors[2].where.line == 6);
  CHECK(errors[2].key == "services.comfyui.start_timeout");
  CHECK(contains(errors[2].message, "expected a duration"));
  CHECK(contains(errors[2].message, "got \"5 minutes\""));

  CHECK(formatProblem(errors[2]) == l->file + ":6: services.comfyui.start_timeout: " + errors[2].message);
}

TEST_CASE("a key far from any known key lists what is expected") {
  const auto l = load("services: {}\nlisten: /tmp/x.sock\n");
  REQUIRE(l->result.errors.size() == 1);
  CHECK(l->result.errors[0].where.line == 2);
  CHECK(contains(l->result.errors[0].message, "expected one of: socket, socket_mode"));
}

TEST_CASE("a Hestia config with environment overrides means the same as the equivalent controld.yaml") {
  const Environment env = {
      {"SEMAPHORE_BASE_URL", "http://semaphore.other:3000/"},
      {"COMFY_UI_SEMAPHORE_ENABLED", "true"},
      {"COMFY_UI_IDLE_TIMEOUT_MS", "60000"},
      {"COMFY_UI_SEMAPHORE_POLL_INTERVAL", "5.0"},
      {"OLLAMA_WARMUP_MS", "2500"},
  };
  const auto hestia = load(R"(
semaphore_base_url: http://semaphore.internal:3000
semaphore_timeout: 20
semaphore_api_key: secret-token
services:
  comfy-ui:
    base_url: http://gpu-01:8188
    health_url: http://gpu-01:8188/system_stats
    warmup_ms: 1500
    idle_timeout_ms: 900000
    semaphore_enabled: false
    semaphore_machine_id: gpu-01
    semaphore_start_template_id: 22
    semaphore_task_timeout: 600
  ollama:
    base_url: http://localhost:11434
    health_url: http://localhost:11434/api/tags
)",
                           env, "hestia_config.yml");
  const auto native = load(R"(
semaphore:
  base_url: http://semaphore.other:3000
  api_token: secret-token
  http_timeout: 20s
services:
  comfy-ui:
    base_url: http://gpu-01:8188
    health_url: http://gpu-01:8188/system_stats
    warmup_ms: 1500
    idle_timeout: 1m
    start_timeout: 20m     # Hestia: the task's 10m, then the usual 10m to become healthy
    machine: gpu-01
    semaphore:
      start_template_id: 22
      stop_template_id: 2  # Hestia's default
      task_timeout: 10m
      poll_interval: 5s
  ollama:
    base_url: http://localhost:11434
    health_url: http://localhost:11434/api/tags
    warmup: 2.5s
    idle_timeout: 0        # Hestia's default: never stop
)");
  INFO(allProblems(hestia->result.errors) << allProblems(native->result.errors));
  REQUIRE(hestia->result.config);
  REQUIRE(native->result.config);
  CHECK(hestia->result.config->format == ConfigFormat::Hestia);
  CHECK(native->result.config->format == ConfigFormat::Native);
  CHECK(hestia->result.warnings.empty());
  requireSameMeaning(*hestia->result.config, *native->result.config);
}

TEST_CASE("Hestia's defaults apply to what a Hestia service leaves out") {
  const auto l = load(R"(
semaphore_base_url: http://semaphore.internal:3000
semaphore_username: controld
semaphore_password: pw
services:
  vm:
    health_url: http://vm:8080/health
    semaphore_enabled: true
    semaphore_machine_id: vm-01
    request_timeout_seconds: 45
)",
                      {}, "hestia_config.yml");
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.config);
  const ServiceConfig& vm = l->result.config->services.at("vm");
  CHECK(vm.idleTimeout == 0ms);
  CHECK(vm.waitHint == 45s);
  CHECK(vm.machine == "vm-01");
  REQUIRE(vm.semaphore);
  CHECK(vm.semaphore->startTemplateId == 1);
  CHECK(vm.semaphore->stopTemplateId == 2);
  CHECK(vm.semaphore->taskTimeout == 300s);
  CHECK(vm.semaphore->pollInterval == 2s);
  CHECK(vm.semaphore->machineId == "vm-01");
  CHECK(vm.startTimeout == 15min);
  CHECK(l->result.config->semaphore->username == "controld");
  CHECK(l->result.config->semaphore->httpTimeout == 30s);
  // The wait itself is nginx's: the warning says which directive.
  const ConfigProblem* w = findProblem(l->result.warnings, "services.vm.request_timeout_seconds");
  REQUIRE(w);
  CHECK(contains(w->message, "ondemand_wait 45s;"));
}

TEST_CASE("Hestia keys that are nginx's job are accepted with a warning naming the directive") {
  const auto l = load(R"(services:
  api:
    health_url: http://primary:8080/health
    retry_count: 2
    retry_delay_ms: 1000
    fallback_url: http://secondary:8080
    queue_size: 500
    strategy: load_balancer
    instances:
      - url: http://api-1:8080
    routing:
      algorithm: round_robin
)",
                      {{"API_RETRY_COUNT", "4"}}, "hestia_config.yml");
  INFO(allProblems(l->result.errors) << allProblems(l->result.warnings));
  REQUIRE(l->result.errors.empty());
  const auto& w = l->result.warnings;
  const auto warningAt = [&](const std::string& key, int line, const std::string& directive) {
    INFO(key);
    const ConfigProblem* p = findProblem(w, key);
    REQUIRE(p);
    CHECK(p->where.line == line);
    CHECK(contains(p->message, directive));
  };
  warningAt("services.api.retry_count", 4, "proxy_next_upstream_tries 3;");
  warningAt("services.api.retry_delay_ms", 5, "proxy_next_upstream_timeout");
  warningAt("services.api.fallback_url", 6, "server secondary:8080 backup;");
  warningAt("services.api.queue_size", 7, "ondemand_max_waiting 500;");
  warningAt("services.api.strategy", 8, "least_conn");
  warningAt("services.api.instances", 9, "upstream");
  warningAt("services.api.routing", 11, "map");
  // The environment's value is reported too, naming its variable.
  bool fromEnv = false;
  for (const auto& p : w)
    fromEnv =
        fromEnv || (contains(p.message, "API_RETRY_COUNT") && contains(p.message, "proxy_next_upstream_tries 5;"));
  CHECK(fromEnv);
}

TEST_CASE("a bad value in a Hestia environment override is an error naming the variable") {
  const auto l =
      load(R"(services:
  comfyui:
    health_url: http://gpu:8188/
    idle_timeout_ms: 1000
)",
           {{"COMFYUI_IDLE_TIMEOUT_MS", "soon"}, {"COMFYUI_SEMAPHORE_ENABLED", "maybe"}}, "hestia_config.yml");
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.errors.size() == 2);
  const ConfigProblem* idle = findProblem(l->result.errors, "services.comfyui.idle_timeout_ms");
  REQUIRE(idle);
  CHECK(idle->where.line == 4);
  CHECK(contains(idle->message, "from environment variable COMFYUI_IDLE_TIMEOUT_MS"));
  CHECK(contains(idle->message, "got \"soon\""));
  const ConfigProblem* enabled = findProblem(l->result.errors, "services.comfyui.semaphore_enabled");
  REQUIRE(enabled);
  CHECK(enabled->where.line == 2);  // not in the file: the service's line
  CHECK(contains(enabled->message, "COMFYUI_SEMAPHORE_ENABLED"));
}

TEST_CASE("Hestia: an override for a service the file lacks is reported, not turned into a service") {
  const auto l =
      load("services:\n  ollama:\n    health_url: http://localhost:11434/api/tags\n    warmup_ms: 0\n",
           {{"DEV_ENV_SEMAPHORE_ENABLED", "true"}, {"SEMAPHORE_BASE_URL", "http://s:3000"}}, "hestia_config.yml");
  INFO(allProblems(l->result.errors) << allProblems(l->result.warnings));
  REQUIRE(l->result.config);
  // Only keys both formats have: the file's name makes it Hestia's.
  CHECK(l->result.config->format == ConfigFormat::Hestia);
  CHECK(l->result.config->services.size() == 1);
  REQUIRE(l->result.warnings.size() == 1);
  CHECK(contains(l->result.warnings[0].message, "DEV_ENV_SEMAPHORE_ENABLED"));
  CHECK(contains(l->result.warnings[0].message, "\"dev-env:\""));
}

TEST_CASE("Hestia: Semaphore enabled without a machine or a server is an error") {
  const auto l = load(R"(services:
  vm:
    idle_timeout_ms: 60000
    semaphore_enabled: true
)",
                      {}, "hestia_config.yml");
  INFO(allProblems(l->result.errors));
  const ConfigProblem* machine = findProblem(l->result.errors, "services.vm.semaphore_machine_id");
  REQUIRE(machine);
  CHECK(machine->where.line == 4);

  const auto noServer =
      load("services:\n  vm:\n    semaphore_enabled: true\n    semaphore_machine_id: vm\n", {}, "hestia_config.yml");
  REQUIRE(noServer->result.errors.size() == 1);
  CHECK(noServer->result.errors[0].key == "services.vm.semaphore_enabled");
  CHECK(contains(noServer->result.errors[0].message, "SEMAPHORE_BASE_URL"));
}

TEST_CASE("a key of the other format says which format the file is read as") {
  const auto l = load(R"(semaphore_base_url: http://s:3000
semaphore_api_key: t
services:
  vm:
    idle_timeout: 5m
    semaphore_enabled: true
    semaphore_machine_id: vm
)",
                      {}, "hestia_config.yml");
  REQUIRE(l->result.errors.size() == 1);
  const ConfigProblem& p = l->result.errors[0];
  CHECK(p.where.line == 5);
  CHECK(contains(p.message, "did you mean \"idle_timeout_ms\"?"));
  CHECK(contains(p.message, "controld.yaml key"));
  CHECK(contains(p.message, "\"semaphore_base_url\" at line 1"));
}

TEST_CASE("the Semaphore token is read from api_token_file, trimmed; an unreadable file is named") {
  TempDir dir;
  dir.write("semaphore.token", "  abc123\n\n");
  const std::string config = R"(
semaphore:
  base_url: http://semaphore:3000/
  api_token_file: semaphore.token
services:
  vm:
    health_url: http://vm/health
    semaphore: { start_template_id: 3 }
)";
  const auto ok = loadConfig(dir.write("controld.yaml", config), {});
  INFO(allProblems(ok.errors));
  REQUIRE(ok.config);
  CHECK(ok.config->semaphore->apiToken == "abc123");
  CHECK(ok.config->semaphore->baseUrl == "http://semaphore:3000");

  std::filesystem::remove(dir.path("semaphore.token"));
  const auto missing = loadConfig(dir.path("controld.yaml"), {});
  REQUIRE(missing.errors.size() == 1);
  CHECK(missing.errors[0].where.line == 4);
  CHECK(missing.errors[0].key == "semaphore.api_token_file");
  CHECK(contains(missing.errors[0].message, dir.path("semaphore.token")));
  CHECK(contains(missing.errors[0].message, "No such file or directory"));
}

TEST_CASE("SEMAPHORE_API_TOKEN is the token when the file gives no credentials") {
  const std::string config = R"(
semaphore:
  base_url: http://semaphore:3000
services:
  vm:
    health_url: http://vm/health
    semaphore: { start_template_id: 3 }
)";
  const auto withEnv = load(config, {{"SEMAPHORE_API_TOKEN", "from-env\n"}});
  REQUIRE(withEnv->result.config);
  CHECK(withEnv->result.config->semaphore->apiToken == "from-env");

  const auto without = load(config);
  REQUIRE(without->result.errors.size() == 1);
  CHECK(without->result.errors[0].key == "semaphore");
  CHECK(contains(without->result.errors[0].message, "no credentials"));
}

TEST_CASE("a config file that does not exist is an error naming it") {
  TempDir dir;
  const std::string file = dir.path("nope.yaml");
  const auto result = loadConfig(file, {});
  REQUIRE(result.errors.size() == 1);
  CHECK(!result.config);
  CHECK(contains(formatProblem(result.errors[0]), file));
  CHECK(contains(result.errors[0].message, "No such file or directory"));
}

TEST_CASE("invalid YAML is an error with its line") {
  const auto l = load("services:\n  a:\n    health_url: [http://x\n    idle_timeout: 5m\n");
  REQUIRE(l->result.errors.size() == 1);
  CHECK(l->result.errors[0].where.line >= 3);
  CHECK(contains(l->result.errors[0].message, "invalid YAML"));
  CHECK(contains(formatProblem(l->result.errors[0]), l->file + ":"));
}

TEST_CASE("a tab in the indentation is named as the cause, with its line and column") {
  const auto l = load("services:\n  a:\n    health_url: http://127.0.0.1:1/h\n\tidle_timeout: 5m\n");
  REQUIRE(l->result.errors.size() == 1);
  CHECK(l->result.errors[0].where.line == 4);
  CHECK(contains(l->result.errors[0].message, "a tab in the indentation (column 1)"));
  CHECK(contains(l->result.errors[0].message, "YAML does not allow tabs there: indent with spaces"));
  // A tab inside a value is no indentation: the YAML error stays the parser's.
  const auto quoted = load("services:\n  a:\n    health_url: [\"http://x\t\"\n");
  REQUIRE(quoted->result.errors.size() == 1);
  CHECK(!contains(quoted->result.errors[0].message, "tab"));
}

TEST_CASE("an empty file or a file that is not a mapping is an error") {
  CHECK(load("")->result.errors.size() == 1);
  CHECK(load("# nothing\n")->result.errors.size() == 1);
  CHECK(load("- a\n- b\n")->result.errors.size() == 1);
}

TEST_CASE("a service has one driver and a way to tell it is ready") {
  const auto l = load(R"(semaphore:
  base_url: http://semaphore:3000
  api_token: t
services:
  both:
    health_url: http://x/health
    start_command: ["run"]
    semaphore:
      stop_template_id: 4
  blind:
    idle_timeout: 5m
  stop-only:
    health_url: http://y/health
    stop_command: ["systemctl", "stop", "y"]
)");
  const auto& e = l->result.errors;
  INFO(allProblems(e));
  REQUIRE(e.size() == 4);
  const ConfigProblem* both = findProblem(e, "services.both.start_command");
  REQUIRE(both);
  CHECK(both->where.line == 7);
  const ConfigProblem* noStart = findProblem(e, "services.both.semaphore");
  REQUIRE(noStart);
  CHECK(noStart->where.line == 8);
  CHECK(contains(noStart->message, "start_template_id is missing"));
  const ConfigProblem* blind = findProblem(e, "services.blind");
  REQUIRE(blind);
  CHECK(blind->where.line == 10);
  CHECK(contains(blind->message, "no driver and no health_url"));
  const ConfigProblem* stopOnly = findProblem(e, "services.stop-only.stop_command");
  REQUIRE(stopOnly);
  CHECK(stopOnly->where.line == 14);
}

TEST_CASE("a semaphore service without a top-level semaphore section is an error") {
  const auto l = load(R"(services:
  vm:
    health_url: http://vm/health
    semaphore:
      start_template_id: 5
)");
  REQUIRE(l->result.errors.size() == 1);
  CHECK(l->result.errors[0].key == "services.vm.semaphore");
  CHECK(l->result.errors[0].where.line == 4);
  CHECK(contains(l->result.errors[0].message, "no top-level \"semaphore:\" section"));
}

TEST_CASE("invalid service names and duplicate keys are errors") {
  const auto l = load(R"(services:
  "bad name":
    health_url: http://x/
  good:
    health_url: http://x/
    health_url: http://y/
)");
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.errors.size() == 2);
  CHECK(l->result.errors[0].where.line == 2);
  CHECK(contains(l->result.errors[0].message, "invalid service name \"bad name\""));
  CHECK(l->result.errors[1].where.line == 6);
  CHECK(l->result.errors[1].message == "given twice (first at line 5)");
}

TEST_CASE("socket_mode is octal whether quoted or not; relative paths follow the config file") {
  const auto quoted = load("socket_mode: \"0660\"\nstate_dir: state\nservices: {}\n");
  REQUIRE(quoted->result.config);
  CHECK(quoted->result.config->socketMode == mode_t{0660});
  CHECK(quoted->result.config->stateDir == (std::filesystem::path(quoted->file).parent_path() / "state").string());
  // No services is allowed, but said.
  CHECK(quoted->result.warnings.size() == 1);

  const auto plain = load("socket_mode: 0600\nservices: {}\n");
  REQUIRE(plain->result.config);
  CHECK(plain->result.config->socketMode == mode_t{0600});

  const auto bad = load("socket_mode: 0999\nservices: {}\n");
  REQUIRE(bad->result.errors.size() == 1);
  CHECK(contains(bad->result.errors[0].message, "octal"));
}

TEST_CASE("extra_vars become a JSON object, typed as Ansible would read them") {
  const auto l = load(R"(semaphore: { base_url: "http://s:3000", api_token: t }
services:
  vm:
    health_url: http://vm/
    semaphore:
      start_template_id: 1
      extra_vars:
        model: sdxl
        gpus: 2
        ratio: 0.5
        warm: yes
        quoted: "42"
        mode: 0755
        nothing: ~
        nested: { list: [1, two], deep: { x: false } }
)");
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.config);
  CHECK(l->result.config->services.at("vm").semaphore->extraVarsJson ==
        R"({"model":"sdxl","gpus":2,"ratio":0.5,"warm":true,"quoted":"42","mode":"0755","nothing":null,)"
        R"("nested":{"list":[1,"two"],"deep":{"x":false}}})");
}

TEST_CASE("extra_vars may not set the variables controld sets itself") {
  const auto l = load(R"(semaphore: { base_url: "http://s:3000", api_token: t }
services:
  vm:
    health_url: http://vm/
    semaphore:
      start_template_id: 1
      extra_vars: { service_id: other, ondemand_operation: mine }
)");
  REQUIRE(l->result.errors.size() == 2);
  CHECK(l->result.errors[0].key == "services.vm.semaphore.extra_vars.service_id");
  CHECK(l->result.errors[0].where.line == 7);
  CHECK(l->result.errors[1].key == "services.vm.semaphore.extra_vars.ondemand_operation");
}

TEST_CASE("formatProblem leaves out what it does not know") {
  CHECK(formatProblem({{"c.yaml", 3}, "services.a", "bad"}) == "c.yaml:3: services.a: bad");
  CHECK(formatProblem({{"c.yaml", 0}, "", "cannot read"}) == "c.yaml: cannot read");
}

TEST_CASE("processEnvironment sees the real environment") {
  setenv("CONTROLD_CONFIG_TEST_VAR", "a=b", 1);
  const Environment env = processEnvironment();
  REQUIRE(env.count("CONTROLD_CONFIG_TEST_VAR") == 1);
  CHECK(env.at("CONTROLD_CONFIG_TEST_VAR") == "a=b");
  unsetenv("CONTROLD_CONFIG_TEST_VAR");
}

TEST_CASE("Hestia: two services with one environment prefix are an error only when a variable is set") {
  const std::string config = R"(services:
  my-svc:
    health_url: http://a/
    idle_timeout_ms: 0
  my_svc:
    health_url: http://b/
)";
  CHECK(load(config, {{"MY_SVC_UNRELATED", "x"}}, "hestia_config.yml")->result.errors.empty());
  const auto l = load(config, {{"MY_SVC_HEALTH_URL", "http://c/"}}, "hestia_config.yml");
  REQUIRE(l->result.errors.size() == 1);
  CHECK(l->result.errors[0].where.line == 5);
  CHECK(contains(l->result.errors[0].message, "MY_SVC_HEALTH_URL could belong to either"));
}

TEST_CASE("a Semaphore-driven service whose base_url is controld's Semaphore server is an error naming both") {
  const std::string config = R"(
semaphore:
  base_url: http://Semaphore.internal:3000/
  api_token: abc
services:
  semaphore:
    base_url: http://semaphore.internal:3000/auth/login
    health_url: http://semaphore.internal:3000/api/ping
    semaphore: { start_template_id: 3, stop_template_id: 4 }
  other:
    base_url: http://semaphore.internal:3001
    health_url: http://gpu/health
    semaphore: { start_template_id: 5 }
)";
  const auto loaded = load(config);
  REQUIRE(loaded->result.errors.size() == 1);
  const auto& e = loaded->result.errors[0];
  INFO(formatProblem(e));
  CHECK(e.key == "services.semaphore.base_url");
  CHECK(e.where.line == 7);
  CHECK(contains(e.message, "http://semaphore.internal:3000/auth/login is the Semaphore server controld uses"));
  CHECK(contains(e.message, "semaphore.base_url http://Semaphore.internal:3000, line 3"));
}

TEST_CASE("an alias bomb in extra_vars is refused with one error, not expanded") {
  std::string config = R"(
semaphore:
  base_url: http://semaphore:3000
  api_token: abc
x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]
)";
  for (int i = 1; i < 10; ++i) {
    config += "x" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int j = 0; j < 9; ++j)
      config += std::string(j ? ", " : "") + "*a" + std::to_string(i - 1);
    config += "]\n";
  }
  config += R"(services:
  vm:
    health_url: http://vm/health
    semaphore:
      start_template_id: 3
      extra_vars: { bomb: *a9 }
)";
  // 9^10 values once expanded: about 3.5 billion.
  const auto loaded = load(config);
  INFO(allProblems(loaded->result.errors));
  REQUIRE_FALSE(loaded->result.config);
  bool found = false;
  for (const auto& e : loaded->result.errors) {
    if (e.key.rfind("services.vm.semaphore.extra_vars", 0) == 0) {
      CHECK(contains(e.message, "once YAML aliases are expanded"));
      CHECK_FALSE(found);  // one error
      found = true;
    }
  }
  CHECK(found);
}

TEST_CASE("models are read per service; a model claimed twice names both services") {
  const auto ok = load(R"(services:
  llm-a:
    base_url: http://127.0.0.1:8001
    health_url: http://127.0.0.1:8001/health
    models: [m-a, "qwen2.5:14b"]
  llm-b:
    base_url: https://models.internal/v1
    health_url: http://127.0.0.1:8002/health
    models:
      - m-b
      - Qwen/Qwen2.5-7B-Instruct
)");
  INFO(allProblems(ok->result.errors));
  REQUIRE(ok->result.config);
  CHECK(ok->result.config->services.at("llm-a").models == std::vector<std::string>{"m-a", "qwen2.5:14b"});
  CHECK(ok->result.config->services.at("llm-b").models == std::vector<std::string>{"m-b", "Qwen/Qwen2.5-7B-Instruct"});

  const auto clash = load(R"(services:
  llm-a:
    health_url: http://127.0.0.1:8001/health
    models: [m-a, shared]
  llm-b:
    health_url: http://127.0.0.1:8002/health
    models: [shared]
)");
  REQUIRE(clash->result.errors.size() == 1);
  const ConfigProblem& e = clash->result.errors[0];
  CHECK(e.key == "services.llm-b.models");
  CHECK(e.where.line == 7);
  CHECK(contains(e.message, "\"shared\" is claimed by two services, \"llm-a\" and \"llm-b\""));

  const auto serviceName = load(R"(services:
  llm-a:
    health_url: http://127.0.0.1:8001/health
  llm-b:
    health_url: http://127.0.0.1:8002/health
    models: [llm-a]
)");
  REQUIRE(serviceName->result.errors.size() == 1);
  CHECK(contains(serviceName->result.errors[0].message, "\"llm-a\" is the name of service \"llm-a\""));

  const auto bad = load(R"(services:
  llm-a:
    health_url: http://127.0.0.1:8001/health
    models: ["two words", x]
  llm-b:
    health_url: http://127.0.0.1:8002/health
    models: [x, x]
  llm-c:
    health_url: http://127.0.0.1:8003/health
    models: llama3
)");
  REQUIRE(bad->result.errors.size() == 3);
  CHECK(contains(bad->result.errors[0].message, "without spaces"));
  CHECK(contains(bad->result.errors[1].message, "\"x\" is listed twice"));
  CHECK(contains(bad->result.errors[2].message, "a list of model names"));
}

TEST_CASE("a base_url gives workers host:port, the port defaulted from the scheme") {
  CHECK(upstreamOf("http://127.0.0.1:8001") == "127.0.0.1:8001");
  CHECK(upstreamOf("http://gpu-01:8188/some/path?x=1") == "gpu-01:8188");
  CHECK(upstreamOf("http://models.internal/v1") == "models.internal:80");
  CHECK(upstreamOf("https://models.internal") == "models.internal:443");
  CHECK(upstreamOf("http://[::1]:8080/") == "[::1]:8080");
  CHECK(upstreamOf("http://[::1]/") == "[::1]:80");
  CHECK(upstreamOf("http://user:secret@host:9000/") == "host:9000");
  CHECK(upstreamOf("") == "");
}

// --- shared machines -----------------------------------------------------------

namespace {
std::string gpuBox(const std::string& bNeeds, const std::string& extra = "") {
  return "machines:\n"
         "  gpu-01:\n"
         "    resources: { vram_gb: 24, gpu_slots: 2 }\n"
         "    min_warm: 5s\n"
         "services:\n"
         "  a:\n"
         "    machine: gpu-01\n"
         "    needs: { vram_gb: 16, gpu_slots: 1 }\n"
         "    start_command: [\"true\"]\n"
         "    stop_command: [\"true\"]\n"
         "  b:\n"
         "    machine: gpu-01\n"
         "    needs: " +
         bNeeds +
         "\n"
         "    start_command: [\"true\"]\n"
         "    stop_command: [\"true\"]\n"
         "  e:\n"
         "    machine: gpu-01\n"
         "    needs: { vram_gb: 2.5 }\n"
         "    evictable: false\n"
         "    start_command: [\"true\"]\n"
         "    stop_command: [\"true\"]\n" +
         extra;
}
}  // namespace

TEST_CASE("machines: resources, needs and evictable are read as written") {
  auto l = load(gpuBox("{ vram_gb: 12, gpu_slots: 1 }"));
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.config);
  const Config& c = *l->result.config;
  REQUIRE(c.machines.count("gpu-01"));
  const MachineConfig& m = c.machines.at("gpu-01");
  CHECK(m.resources.at("vram_gb") == 24);
  CHECK(m.resources.at("gpu_slots") == 2);
  CHECK(m.minWarm == 5s);
  CHECK(m.where.line == 2);
  CHECK(c.services.at("a").needs.at("vram_gb") == 16);
  CHECK(c.services.at("a").evictable);
  CHECK(c.services.at("e").needs.at("vram_gb") == 2.5);
  CHECK_FALSE(c.services.at("e").evictable);
  CHECK(MachineConfig{}.minWarm == 30s);  // the documented default
}

TEST_CASE("needs beyond the machine name file, line, key and the machine's amount") {
  auto l = load(gpuBox("{ vram_gb: 40 }"));
  REQUIRE_FALSE(l->result.config);
  REQUIRE(l->result.errors.size() == 1);
  const std::string text = formatProblem(l->result.errors[0]);
  CHECK(text == l->file +
                    ":13: services.b.needs.vram_gb: needs 40, more than machine \"gpu-01\" has (vram_gb: 24): "
                    "it could never start");
}

TEST_CASE("a resource the machine does not declare is an error listing what it has") {
  auto l = load(gpuBox("{ ram_gb: 4 }"));
  REQUIRE_FALSE(l->result.config);
  const ConfigProblem* p = findProblem(l->result.errors, "services.b.needs.ram_gb");
  REQUIRE(p);
  CHECK(p->where.line == 13);
  CHECK(contains(p->message, "declares no resource \"ram_gb\" (it has gpu_slots: 2, vram_gb: 24)"));
}

TEST_CASE("needs without a machine, or on an undeclared machine, are errors") {
  auto l = load(
      "services:\n"
      "  x:\n"
      "    needs: { vram_gb: 1 }\n"
      "    start_command: [\"true\"]\n");
  REQUIRE_FALSE(l->result.config);
  const ConfigProblem* p = findProblem(l->result.errors, "services.x.needs");
  REQUIRE(p);
  CHECK(p->where.line == 3);
  CHECK(contains(p->message, "needs without a machine"));

  auto undeclared = load(gpuBox("{ vram_gb: 1 }",
                                "  z:\n"
                                "    machine: gpu-02\n"
                                "    needs: { vram_gb: 1 }\n"
                                "    start_command: [\"true\"]\n"));
  REQUIRE_FALSE(undeclared->result.config);
  const ConfigProblem* q = findProblem(undeclared->result.errors, "services.z.machine");
  REQUIRE(q);
  CHECK(q->where.line == 23);
  CHECK(contains(q->message,
                 "\"gpu-02\" is not declared under machines:, so its resources are unknown (declared: gpu-01)"));
}

TEST_CASE("a resource amount that is not a number, or is negative, is an error") {
  for (const std::string bad : {"lots", "-4", "1e3", "[1]", "1.2.3"}) {
    auto l = load(gpuBox("{ vram_gb: " + bad + " }"));
    INFO(bad);
    REQUIRE_FALSE(l->result.config);
    const ConfigProblem* p = findProblem(l->result.errors, "services.b.needs.vram_gb");
    REQUIRE(p);
    CHECK(p->where.line == 13);
    CHECK(contains(p->message, "expected a number, 0 or more"));
  }
  auto machine = load(
      "machines:\n"
      "  gpu-01:\n"
      "    resources: { vram_gb: many }\n"
      "services: {}\n");
  const ConfigProblem* p = findProblem(machine->result.errors, "machines.gpu-01.resources.vram_gb");
  REQUIRE(p);
  CHECK(p->where.line == 3);
  auto noResources = load(
      "machines:\n"
      "  gpu-01: { min_warm: 5s }\n"
      "services: {}\n");
  CHECK(findProblem(noResources->result.errors, "machines.gpu-01.resources"));
}

TEST_CASE("needs on a service controld neither starts nor stops is an error") {
  auto l = load(
      "machines:\n"
      "  gpu-01: { resources: { vram_gb: 24 } }\n"
      "services:\n"
      "  watched:\n"
      "    machine: gpu-01\n"
      "    needs: { vram_gb: 4 }\n"
      "    health_url: http://127.0.0.1:9/healthz\n");
  REQUIRE_FALSE(l->result.config);
  const ConfigProblem* p = findProblem(l->result.errors, "services.watched.needs");
  REQUIRE(p);
  CHECK(p->where.line == 6);
}

TEST_CASE("Hestia: semaphore_machine_id is the service's machine") {
  auto l = load(
      "semaphore_base_url: http://semaphore.internal:3000\n"
      "semaphore_api_key: k\n"
      "services:\n"
      "  comfyui:\n"
      "    health_url: http://gpu:8188/\n"
      "    semaphore_enabled: true\n"
      "    semaphore_machine_id: gpu-server-01\n",
      {}, "hestia_config.yml");
  INFO(allProblems(l->result.errors));
  REQUIRE(l->result.config);
  CHECK(l->result.config->services.at("comfyui").machine == "gpu-server-01");
}
