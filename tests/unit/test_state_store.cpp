#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "controld/io/state_store.hpp"

using namespace ondemand;
using namespace ondemand::controld;

namespace {

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/ondemand-store-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

}  // namespace

TEST_CASE("a snapshot written to state_dir reads back the same, operation and history included") {
  TempDir dir;
  StateStore store(dir.path + "/state");
  REQUIRE_FALSE(store.prepare());

  MachineSnapshot s;
  s.state = ServiceState::Starting;
  s.phase = Phase::Driver;
  s.epoch = 12;
  s.sinceMs = 1000;
  s.startingSinceMs = 900;
  s.cause = Cause::Request;
  s.startsOk = 7;
  s.startsFailed = 2;
  s.lastStartMs = 41'250;
  s.operation = OperationRecord{OperationKind::Start, "semaphore", 42, 0, 950, "comfyui-950-0badf00d"};
  s.lastOperation = OperationSummary{OperationKind::Stop, 10, 20, false, "stop failed: \"x\"", 41, "error"};
  s.history.push_back(Transition{900, ServiceState::Cold, ServiceState::Starting, Cause::Request, "GET /", 0, ""});
  REQUIRE_FALSE(store.save("comfyui", s));

  const auto loaded = store.loadAll();
  REQUIRE(loaded.errors.empty());
  REQUIRE(loaded.services.count("comfyui") == 1);
  const auto& back = loaded.services.at("comfyui");
  CHECK(back.state == ServiceState::Starting);
  CHECK(back.phase == Phase::Driver);
  CHECK(back.epoch == 12);
  CHECK(back.startingSinceMs == 900);
  CHECK(back.startsOk == 7);
  CHECK(back.startsFailed == 2);
  CHECK(back.lastStartMs == 41'250);
  REQUIRE(back.operation);
  CHECK(back.operation->driver == "semaphore");
  CHECK(back.operation->taskId == 42);
  CHECK(back.operation->operationId == "comfyui-950-0badf00d");
  REQUIRE(back.lastOperation);
  CHECK(back.lastOperation->reason == "stop failed: \"x\"");
  CHECK(back.lastOperation->taskStatus == "error");
  REQUIRE(back.history.size() == 1);
  CHECK(back.history[0].detail == "GET /");

  // No temp file is left behind.
  CHECK_FALSE(std::filesystem::exists(dir.path + "/state/services/comfyui.json.tmp"));
}

TEST_CASE("an operation recorded by a controld without operation ids still loads") {
  TempDir dir;
  StateStore store(dir.path);
  REQUIRE_FALSE(store.prepare());
  std::ofstream(dir.path + "/services/comfyui.json")
      << R"({"format":1,"state":"starting","phase":"driver","epoch":3,"operation":)"
      << R"({"kind":"start","driver":"semaphore","task_id":0,"pid":0,"started_at":950}})";
  const auto loaded = store.loadAll();
  REQUIRE(loaded.errors.empty());
  const auto& back = loaded.services.at("comfyui");
  REQUIRE(back.operation);
  CHECK(back.operation->driver == "semaphore");
  CHECK(back.operation->startedAtMs == 950);
  CHECK(back.operation->operationId.empty());
}

TEST_CASE("a damaged state file is reported and skipped, not fatal") {
  TempDir dir;
  StateStore store(dir.path);
  REQUIRE_FALSE(store.prepare());
  std::ofstream(dir.path + "/services/broken.json") << "{not json";
  REQUIRE_FALSE(store.save("fine", MachineSnapshot{}));
  const auto loaded = store.loadAll();
  CHECK(loaded.services.count("fine") == 1);
  CHECK(loaded.services.count("broken") == 0);
  CHECK(loaded.errors.size() == 1);
}

TEST_CASE("an unwritable state_dir gives an error naming it") {
  StateStore store("/proc/ondemand-cannot-exist");
  const auto error = store.prepare();
  REQUIRE(error);
  CHECK(error->find("/proc/ondemand-cannot-exist") != std::string::npos);
}

TEST_CASE("a snapshot that cannot be written is reported to its waiter and written once state_dir allows it") {
  TempDir dir;
  StateStore store(dir.path);
  REQUIRE_FALSE(store.prepare());
  // Where the temp file goes, a directory: the write fails as on a full disk.
  const std::string blocker = dir.path + "/services/svc.json.tmp";
  std::filesystem::create_directory(blocker);
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    StateWriter writer(&loop, store, Millis(20));
    MachineSnapshot snapshot;
    snapshot.state = ServiceState::Failed;
    snapshot.epoch = 3;
    std::optional<std::string> reported;
    writer.save("svc", snapshot, [&](const std::string& error) { reported = error; });
    while (!reported)
      uv_run(&loop, UV_RUN_ONCE);
    CHECK(reported->find(blocker) != std::string::npos);
    CHECK(writer.failing() == 1);
    CHECK(store.loadAll().services.empty());

    std::filesystem::remove(blocker);
    while (writer.failing() > 0)
      uv_run(&loop, UV_RUN_ONCE);
    const auto loaded = store.loadAll();
    REQUIRE(loaded.services.count("svc") == 1);
    CHECK(loaded.services.at("svc").epoch == 3);
    CHECK(loaded.services.at("svc").state == ServiceState::Failed);

    std::optional<std::string> second;
    writer.save("svc", snapshot, [&](const std::string& error) { second = error; });
    while (!second)
      uv_run(&loop, UV_RUN_ONCE);
    CHECK(second->empty());
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

TEST_CASE("a state file with an epoch no controld reaches is refused, not wrapped") {
  std::string error;
  CHECK_FALSE(snapshotFromJson(R"({"state":"warm","phase":"none","epoch":18446744073709551615})", error));
  CHECK(error.find("epoch") != std::string::npos);
  CHECK(snapshotFromJson(R"({"state":"warm","phase":"none","epoch":9007199254740991})", error));
}
