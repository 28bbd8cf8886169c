#pragma once
// What `ondemand_models openai | ollama;` answers, and the module's answers
// in the OpenAI error shape (an unknown model, a body that names none). Plain
// C++ (no nginx), unit-tested on its own.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ngx_module/service_table.hpp"

namespace ondemand::module {

// One name a client may ask for.
struct ListedModel {
  std::string id;       // the model name
  std::string service;  // the service it wakes
  std::string state;    // cold | starting | warm | stopping | failed
  std::int64_t sinceMs = 0;
};

// Every model of every service controld has, sorted by name: a service's
// `models`, or its own name when it lists none.
std::vector<ListedModel> listModels(const ServiceTable& table);

// OpenAI's GET /v1/models: {"object":"list","data":[{"id","object":"model",
// "created","owned_by"}...]}, each entry with the service and its state too.
std::string openaiModelList(const std::vector<ListedModel>& models, std::int64_t nowSeconds);
// Ollama's GET /api/tags: {"models":[{"name","model","modified_at","size",
// "digest","details"}...]}, with the service and its state too.
std::string ollamaTags(const std::vector<ListedModel>& models);

// {"error":{"message","type":"invalid_request_error","param","code"}}; an
// empty param or code is null.
std::string openaiError(std::string_view message, std::string_view param, std::string_view code);

// "m-a, m-b, m-c" (at most `limit` names, then ", … (N more)").
std::string joinModelNames(const std::vector<ListedModel>& models, std::size_t limit = 50);

// 2026-12-01T21:00:00.123Z
std::string rfc3339Millis(std::int64_t unixMs);

}  // namespace ondemand::module
