#include "ngx_module/models_listing.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "shared/json_writer.hpp"

namespace ondemand::module {

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
  JsonWriter w;
  w.startObject();
  head(w);
  w.key(arrayKey).startArray();
  for (const ListedModel& m : models) {
    w.startObject();
    fields(w, m);
    w.str("service", m.service).str("state", m.state);
    w.endObject();
  }
  w.endArray().endObject();
  return w.line();
}

}  // namespace

std::string openaiModelList(const std::vector<ListedModel>& models, std::int64_t nowSeconds) {
  return listing(
      models, "data", [](JsonWriter& w) { w.str("object", "list"); },
      [nowSeconds](JsonWriter& w, const ListedModel& m) {
        w.str("id", m.id).str("object", "model").i64("created", nowSeconds).str("owned_by", m.service);
      });
}

std::string ollamaTags(const std::vector<ListedModel>& models) {
  return listing(
      models, "models", [](JsonWriter&) {},
      [](JsonWriter& w, const ListedModel& m) {
        w.str("name", m.id).str("model", m.id).str("modified_at", rfc3339Millis(m.sinceMs));
        w.i64("size", 0).str("digest", "");
        w.key("details").startObject();
        w.str("parent_model", "").str("format", "").str("family", "");
        w.key("families").startArray().endArray();
        w.str("parameter_size", "").str("quantization_level", "");
        w.endObject();
      });
}

std::string openaiError(std::string_view message, std::string_view param, std::string_view code) {
  JsonWriter w;
  w.startObject().key("error").startObject();
  w.str("message", message).str("type", "invalid_request_error");
  w.key("param");
  if (param.empty()) {
    w.null();
  } else {
    w.string(param);
  }
  w.key("code");
  if (code.empty()) {
    w.null();
  } else {
    w.string(code);
  }
  w.endObject().endObject();
  return w.line();
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
