// The module's routing by model, without nginx: the service table's model
// index and the listings and errors in OpenAI's and Ollama's shapes.

#include <rapidjson/document.h>

#include <catch2/catch.hpp>

#include "ngx_module/models_listing.hpp"
#include "ngx_module/service_table.hpp"

using namespace ondemand;
using namespace ondemand::module;

namespace {

protocol::StatePush push(const std::string& service, std::vector<std::string> models,
                         ServiceState state = ServiceState::Cold) {
  protocol::StatePush p;
  p.service = service;
  p.state = state;
  p.models = std::move(models);
  p.sinceMs = 1764625000123;
  return p;
}

}  // namespace

TEST_CASE("routing: a name resolves to the service by its name, then by its models") {
  ServiceTable table;
  table.applyPush(push("svc-a", {"m-a"}));
  table.applyPush(push("svc-b", {"m-b", "m-b-alias"}));
  CHECK(table.resolve("svc-a")->name == "svc-a");
  CHECK(table.resolve("m-a")->name == "svc-a");
  CHECK(table.resolve("m-b-alias")->name == "svc-b");
  CHECK(table.resolve("nosuch") == nullptr);
  CHECK(table.size() == 2);

  // A push with other models: the old ones lead nowhere, the new ones here.
  table.applyPush(push("svc-b", {"m-b2"}));
  CHECK(table.resolve("m-b") == nullptr);
  CHECK(table.resolve("m-b2")->name == "svc-b");

  // A model that moves (a reload): whichever push comes first, it ends up
  // with its new service.
  table.applyPush(push("svc-a", {"m-a", "m-b2"}));
  table.applyPush(push("svc-b", {}));
  CHECK(table.resolve("m-b2")->name == "svc-a");

  // A service that is gone takes its models with it.
  table.forget(*table.find("svc-a"));
  CHECK(table.resolve("m-a") == nullptr);
  CHECK(table.resolve("svc-a")->known == false);  // the entry stays (requests may point at it)
}

TEST_CASE("routing: the listings have every model with its service and state, in the clients' shapes") {
  ServiceTable table;
  table.applyPush(push("svc-b", {"m-b", "alias"}, ServiceState::Warm));
  table.applyPush(push("plain", {}));
  table.get("never-pushed");  // not known to controld: not listed
  const std::vector<ListedModel> models = listModels(table);
  REQUIRE(models.size() == 3);
  CHECK(models[0].id == "alias");
  CHECK(models[1].id == "m-b");
  CHECK(models[2].id == "plain");  // no models: its own name
  CHECK(models[0].service == "svc-b");
  CHECK(models[0].state == "warm");
  CHECK(joinModelNames(models) == "alias, m-b, plain");
  CHECK(joinModelNames(models, 2) == "alias, m-b, … (1 more)");

  rapidjson::Document openai;
  openai.Parse(openaiModelList(models, 1764625000).c_str());
  REQUIRE(openai.IsObject());
  CHECK(std::string(openai["object"].GetString()) == "list");
  REQUIRE(openai["data"].Size() == 3);
  const auto& first = openai["data"][0];
  CHECK(std::string(first["id"].GetString()) == "alias");
  CHECK(std::string(first["object"].GetString()) == "model");
  CHECK(first["created"].GetInt64() == 1764625000);
  CHECK(std::string(first["owned_by"].GetString()) == "svc-b");
  CHECK(std::string(first["state"].GetString()) == "warm");

  rapidjson::Document ollama;
  ollama.Parse(ollamaTags(models).c_str());
  REQUIRE(ollama["models"].Size() == 3);
  const auto& tag = ollama["models"][2];
  CHECK(std::string(tag["name"].GetString()) == "plain");
  CHECK(std::string(tag["model"].GetString()) == "plain");
  CHECK(std::string(tag["modified_at"].GetString()) == "2025-12-01T21:36:40.123Z");
  CHECK(tag["details"].IsObject());
  CHECK(tag["size"].GetInt64() == 0);
}

TEST_CASE("routing: errors in OpenAI's shape, null where there is no param or code") {
  rapidjson::Document e;
  e.Parse(openaiError("The model `x` does not exist.", "model", "model_not_found").c_str());
  CHECK(std::string(e["error"]["message"].GetString()) == "The model `x` does not exist.");
  CHECK(std::string(e["error"]["type"].GetString()) == "invalid_request_error");
  CHECK(std::string(e["error"]["param"].GetString()) == "model");
  CHECK(std::string(e["error"]["code"].GetString()) == "model_not_found");
  e.Parse(openaiError("bad", "", "").c_str());
  CHECK(e["error"]["param"].IsNull());
  CHECK(e["error"]["code"].IsNull());
}
