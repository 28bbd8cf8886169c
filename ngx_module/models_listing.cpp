#include "ngx_module/models_listing.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace ondemand::module {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void str(Writer& w, const char* key, std::string_view value) {
  w.Key(key);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

std::string finish(const rapidjson::StringBuffer& buffer) {
  std::string body(buffer.GetString(), buffer.GetSize());
  body.push_back('\n');
  return body;
}

}  // namespace

std::vector<ListedModel> listModels(const ServiceTable& table) {
  std::vector<ListedModel> out;
  for (const ServiceEntry* e : table.sortedByName()) {
    if (!e->known) continue;
    const std::string state(toString(e->state.state));
    if (e->state.models.empty()) {
      out.push_back({e->name, e->name, state, e->state.sinceMs});
      continue;
    }
    for (const std::string& model : e->state.models)
      out.push_back({model, e->name, state, e->state.sinceMs});
  }
  std::sort(out.begin(), out.end(), [](const ListedModel& a, const ListedModel& b) { return a.id < b.id; });
  return out;
}

namespace {

// {<head>, "<arrayKey>": [{<fields of one model>, "service", "state"}, ...]}
template <typename Head, typename Fields>
std::string listing(const std::vector<ListedModel>& models, const char* arrayKey, Head head, Fields fields) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  head(w);
  w.Key(arrayKey);
  w.StartArray();
  for (const ListedModel& m : models) {
    w.StartObject();
    fields(w, m);
    str(w, "service", m.service);
    str(w, "state", m.state);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return finish(buffer);
}

}  // namespace

std::string openaiModelList(const std::vector<ListedModel>& models, std::int64_t nowSeconds) {
  return listing(
      models, "data", [](Writer& w) { str(w, "object", "list"); },
      [nowSeconds](Writer& w, const ListedModel& m) {
        str(w, "id", m.id);
        str(w, "object", "model");
        w.Key("created");
        w.Int64(nowSeconds);
        str(w, "owned_by", m.service);
      });
}

std::string ollamaTags(const std::vector<ListedModel>& models) {
  return listing(
      models, "models", [](Writer&) {},
      [](Writer& w, const ListedModel& m) {
        str(w, "name", m.id);
        str(w, "model", m.id);
        str(w, "modified_at", rfc3339Millis(m.sinceMs));
        w.Key("size");
        w.Int64(0);
        str(w, "digest", "");
        w.Key("details");
        w.StartObject();
        for (const char* key : {"parent_model", "format", "family"})
          str(w, key, "");
        w.Key("families");
        w.StartArray();
        w.EndArray();
        for (const char* key : {"parameter_size", "quantization_level"})
          str(w, key, "");
        w.EndObject();
      });
}

std::string openaiError(std::string_view message, std::string_view param, std::string_view code) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("error");
  w.StartObject();
  str(w, "message", message);
  str(w, "type", "invalid_request_error");
  w.Key("param");
  if (param.empty()) {
    w.Null();
  } else {
    w.String(param.data(), static_cast<rapidjson::SizeType>(param.size()));
  }
  w.Key("code");
  if (code.empty()) {
    w.Null();
  } else {
    w.String(code.data(), static_cast<rapidjson::SizeType>(code.size()));
  }
  w.EndObject();
  w.EndObject();
  return finish(buffer);
}

std::string joinModelNames(const std::vector<ListedModel>& models, std::size_t limit) {
  std::string out;
  std::size_t n = 0;
  for (const ListedModel& m : models) {
    if (n == limit) {
      out += ", … (" + std::to_string(models.size() - limit) + " more)";
      break;
    }
    if (n++ > 0) out += ", ";
    out += m.id;
  }
  return out;
}

std::string rfc3339Millis(std::int64_t unixMs) {
  if (unixMs < 0) unixMs = 0;
  const std::time_t seconds = static_cast<std::time_t>(unixMs / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[40];
  const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(text + n, sizeof text - n, ".%03dZ", static_cast<int>(unixMs % 1000));
  return text;
}

}  // namespace ondemand::module
