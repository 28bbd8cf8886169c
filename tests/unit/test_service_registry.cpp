#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "controld/daemon/service_registry.hpp"
#include "controld/drivers/semaphore/semaphore_driver.hpp"
#include "uv_test_support.hpp"

using namespace ondemand;
using namespace ondemand::controld;
using namespace ondemand::testing;

namespace {

struct StateDir {
  StateDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "controld-registry-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~StateDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

ServiceConfig commandService(const std::string& name, Millis idle, bool canStop = true) {
  ServiceConfig c;
  c.name = name;
  c.idleTimeout = idle;
  c.startCommand = {"true"};
  if (canStop) c.stopCommand = {"true"};
  return c;
}

Config configOf(std::initializer_list<ServiceConfig> services) {
  Config config;
  for (const auto& s : services)
    config.services[s.name] = s;
  return config;
}

struct Fixture {
  TestLoop loop;
  StateDir dir;
  StateStore store{dir.path};
  HttpClient http{loop.get()};
  ServiceRegistry registry{loop.get(), http, store};
};

}  // namespace

TEST_CASE("registry: builds each service's driver and settings from its configuration", "[registry]") {
  Fixture f;
  ServiceConfig none;
  none.name = "watched";
  none.healthUrl = "http://127.0.0.1:1/healthz";
  const Config config = configOf({commandService("a", Millis(60'000), false), none});
  f.registry.useConfig(config);
  for (const auto& [name, c] : config.services)
    f.registry.add(c);

  Service* a = f.registry.find("a");
  REQUIRE(a);
  REQUIRE(a->driver);
  CHECK(a->driver->supports(OperationKind::Start));
  CHECK_FALSE(a->driver->supports(OperationKind::Stop));
  CHECK(a->machine.settings().hasStartDriver);
  CHECK_FALSE(a->machine.settings().hasStopDriver);
  CHECK(a->machine.settings().idleTimeout == Millis(60'000));
  CHECK_FALSE(a->health);
  CHECK(std::string(driverName(a->config)) == "command");

  Service* w = f.registry.find("watched");
  REQUIRE(w);
  CHECK_FALSE(w->driver);
  CHECK(w->health);
  CHECK(w->machine.settings().hasHealthCheck);
  CHECK(std::string(driverName(w->config)) == "none");
  CHECK(f.registry.find("nope") == nullptr);
  CHECK(f.registry.holds(a));
}

TEST_CASE("registry: a reload removes, adds and hands the others their new configuration", "[registry]") {
  Fixture f;
  const Config first = configOf({commandService("gone", Millis(1000)), commandService("kept", Millis(1000))});
  f.registry.useConfig(first);
  for (const auto& [name, c] : first.services)
    f.registry.add(c);
  Service* kept = f.registry.find("kept");
  const Driver* keptDriver = kept->driver.get();

  const Config next = configOf({commandService("kept", Millis(5000), false), commandService("new", Millis(2000))});
  std::vector<std::string> removed;
  const auto changes = f.registry.reload(next, [&](Service& s) { removed.push_back(s.config.name); });

  CHECK(removed == std::vector<std::string>{"gone"});
  CHECK_FALSE(f.registry.contains("gone"));
  REQUIRE(changes.size() == 2);
  CHECK(changes[0].service == kept);  // the same service object: its state machine carries on
  CHECK_FALSE(changes[0].added);
  CHECK(changes[1].added);
  CHECK(changes[1].service == f.registry.find("new"));
  CHECK(changes[1].service->machine.settings().idleTimeout == Millis(2000));

  // The kept service's configuration waits until nothing is under way ...
  REQUIRE(kept->pendingConfig);
  CHECK(kept->machine.settings().idleTimeout == Millis(1000));
  CHECK(kept->driver.get() == keptDriver);
  // ... and, the service being still (cold), applies when asked.
  CHECK(f.registry.applyPendingConfig(*kept));
  CHECK_FALSE(kept->pendingConfig);
  CHECK(kept->machine.settings().idleTimeout == Millis(5000));
  CHECK_FALSE(kept->machine.settings().hasStopDriver);
  REQUIRE(kept->driver);
  CHECK_FALSE(kept->driver->supports(OperationKind::Stop));
  CHECK_FALSE(f.registry.applyPendingConfig(*kept));  // nothing left to apply
}

TEST_CASE("registry: a reload waits for the operation under way", "[registry]") {
  Fixture f;
  const Config first = configOf({commandService("svc", Millis(1000))});
  f.registry.useConfig(first);
  Service& s = f.registry.add(first.services.at("svc"));
  s.machine.wake(1000, Cause::Cli, "test");  // starting: the start driver's phase
  REQUIRE(s.machine.phase() == Phase::Driver);

  f.registry.reload(configOf({commandService("svc", Millis(9000))}), [](Service&) {});
  CHECK_FALSE(f.registry.applyPendingConfig(s));
  CHECK(s.machine.settings().idleTimeout == Millis(1000));
  CHECK(s.pendingConfig);
}

TEST_CASE("registry: Semaphore services share one client until its connection settings change", "[registry]") {
  Fixture f;
  auto semaphoreConfig = [](const std::string& url, const std::string& token) {
    Config config;
    SemaphoreSettings settings;
    settings.baseUrl = url;
    settings.projectId = 1;
    settings.apiToken = token;
    config.semaphore = settings;
    ServiceConfig c;
    c.name = "gpu";
    c.semaphore = SemaphoreServiceSettings{};
    c.semaphore->startTemplateId = 7;
    config.services[c.name] = c;
    return config;
  };
  const Config first = semaphoreConfig("http://127.0.0.1:1", "t1");
  f.registry.useConfig(first);
  f.registry.add(first.services.at("gpu"));
  const auto client = f.registry.semaphore().client(*first.semaphore);
  REQUIRE(f.registry.find("gpu")->driver);
  CHECK(f.registry.find("gpu")->driver->supports(OperationKind::Start));

  // The same settings up to a trailing slash: the same client.
  CHECK(f.registry.semaphore().client(semaphoreConfig("http://127.0.0.1:1/", "t1").semaphore.value()) == client);
  // Another token: a new client; the old one lives on with whoever holds it.
  const Config next = semaphoreConfig("http://127.0.0.1:1", "t2");
  f.registry.reload(next, [](Service&) {});
  REQUIRE(f.registry.applyPendingConfig(*f.registry.find("gpu")));
  const auto replaced = f.registry.semaphore().client(*next.semaphore);
  CHECK(replaced != client);
  CHECK(replaced->settings().apiToken == "t2");
  CHECK(client->settings().apiToken == "t1");
}
