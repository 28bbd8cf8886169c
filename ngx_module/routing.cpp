#include "ngx_module/routing.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "ngx_module/body_scan.hpp"
#include "ngx_module/http_util.hpp"
#include "ngx_module/models_listing.hpp"
#include "ngx_module/worker.hpp"
#include "shared/service_name.hpp"

namespace ondemand::module {

namespace {

using Scan = TopLevelFieldScanner::Result;

// A model name longer than this is not looked up (and answered 400).
constexpr std::size_t kMaxModelBytes = 1024;
// Entries for names from variables that controld does not know (yet): only
// while the table is not current, and no more than this many in all.
constexpr std::size_t kMaxTableEntries = 4096;
// Unknown names logged once each, up to this many.
constexpr std::size_t kMaxLoggedNames = 100;
// The body in a temporary file is read in pieces of this size.
constexpr std::size_t kFileChunk = 64 * 1024;

ngx_str_t poolCopy(ngx_pool_t* pool, std::string_view text) {
  auto* data = static_cast<u_char*>(ngx_pnalloc(pool, text.size() ? text.size() : 1));
  if (data == nullptr) return ngx_str_t{0, nullptr};
  std::memcpy(data, text.data(), text.size());
  return ngx_str_t{text.size(), data};
}

bool mayHaveBody(ngx_http_request_t* r) {
  if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) return true;
#if (NGX_HTTP_V2)
  if (r->stream != nullptr && !r->stream->in_closed) return true;
#endif
  return false;
}

Scan outcome(const RequestCtx* ctx) {
  return static_cast<Scan>(ctx->modelOutcome - 1);
}

bool scanned(const RequestCtx* ctx, const LocConf* lcf) {
  return ctx->modelOutcome != 0 && ctx->modelField != nullptr && view(*ctx->modelField) == view(lcf->modelField);
}

// Evaluating the value caches every variable it touches in r->variables;
// when it turns out to need the body, that first look is undone so that a
// `map` over $ondemand_model is evaluated again once the body is read.
class VariablesSnapshot {
 public:
  explicit VariablesSnapshot(ngx_http_request_t* r) : r_(r) {
    auto* cmcf = static_cast<ngx_http_core_main_conf_t*>(ngx_http_get_module_main_conf(r, ngx_http_core_module));
    count_ = cmcf->variables.nelts;
    saved().assign(r->variables, r->variables + count_);
  }
  void restore() { std::copy(saved().begin(), saved().begin() + count_, r_->variables); }

 private:
  // One worker, one request evaluated at a time: the storage is reused.
  static std::vector<ngx_http_variable_value_t>& saved() {
    static std::vector<ngx_http_variable_value_t> values;
    return values;
  }
  ngx_http_request_t* r_;
  std::size_t count_;
};

std::string describeProblem(Scan result, std::string_view field, std::string_view error) {
  const std::string quoted = "\"" + std::string(field) + "\"";
  switch (result) {
    case Scan::NotJson:
      return "The request body is not JSON: " + std::string(error) + ".";
    case Scan::NotObject:
      return "The request body is not a JSON object.";
    case Scan::Missing:
      return "The request body has no " + quoted + " field: it is needed to choose the model.";
    case Scan::NotString:
      return "The " + quoted + " field of the request body is not a string.";
    case Scan::TooLong:
      return "The " + quoted + " field of the request body is longer than " + std::to_string(kMaxModelBytes) +
             " bytes.";
    case Scan::NeedMore:
    case Scan::Found:
      break;
  }
  return "The request body cannot be read.";
}

const char* problemCode(Scan result) {
  switch (result) {
    case Scan::NotJson:
    case Scan::NotObject:
      return "invalid_json";
    case Scan::Missing:
      return "missing_required_parameter";
    case Scan::NotString:
      return "invalid_type";
    case Scan::TooLong:
      return "string_above_max_length";
    case Scan::NeedMore:
    case Scan::Found:
      break;
  }
  return "invalid_request_body";
}

ngx_http_request_body_filter_pt nextBodyFilter;

// The body filter feeds this scan while the module reads the body.
void destroyScanner(void* data) {
  static_cast<TopLevelFieldScanner*>(data)->~TopLevelFieldScanner();
}

TopLevelFieldScanner* startScanner(ngx_http_request_t* r, const LocConf* lcf) {
  ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(TopLevelFieldScanner));
  if (cln == nullptr) return nullptr;
  auto* scanner = new (cln->data) TopLevelFieldScanner(view(lcf->modelField), kMaxModelBytes);
  cln->handler = destroyScanner;
  return scanner;
}

ngx_int_t bodyFilter(ngx_http_request_t* r, ngx_chain_t* in) {
  auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_ondemand_module));
  if (ctx != nullptr && ctx->bodyScanner != nullptr && ctx->bodyState == BodyState::Reading) {
    TopLevelFieldScanner& scanner = *ctx->bodyScanner;
    try {
      for (ngx_chain_t* cl = in; cl != nullptr && scanner.result() == Scan::NeedMore; cl = cl->next) {
        const ngx_buf_t* b = cl->buf;
        if (!ngx_buf_in_memory(b)) {
          ctx->bodyScanner = nullptr;  // (not seen from nginx's readers): the body is scanned once read
          break;
        }
        scanner.feed(
            std::string_view(reinterpret_cast<const char*>(b->pos), static_cast<std::size_t>(b->last - b->pos)));
      }
    } catch (const std::exception& e) {
      ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: body scan: %s", e.what());
      ctx->bodyScanner = nullptr;  // scanned again once read
    }
  }
  return nextBodyFilter(r, in);
}

// Walks the body nginx has read (memory buffers and/or its temporary file)
// through the scanner: NGX_OK, or NGX_ERROR when the file cannot be read.
// Only for a body the filter did not see (read before the module asked).
ngx_int_t walkBody(ngx_http_request_t* r, TopLevelFieldScanner& scanner) {
  static std::array<u_char, kFileChunk> chunk;  // one worker, one scan at a time
  const ngx_http_request_body_t* rb = r->request_body;
  for (ngx_chain_t* cl = rb != nullptr ? rb->bufs : nullptr; cl != nullptr && scanner.result() == Scan::NeedMore;
       cl = cl->next) {
    ngx_buf_t* b = cl->buf;
    if (ngx_buf_in_memory(b)) {
      scanner.feed(std::string_view(reinterpret_cast<const char*>(b->pos), static_cast<std::size_t>(b->last - b->pos)));
      continue;
    }
    if (!b->in_file || b->file == nullptr) continue;
    // A short read of a file nginx has just written, in bounded pieces, and
    // only until the field is found.
    for (off_t at = b->file_pos; at < b->file_last && scanner.result() == Scan::NeedMore;) {
      const auto want = static_cast<std::size_t>(std::min<off_t>(b->file_last - at, kFileChunk));
      const ssize_t n = ngx_read_file(b->file, chunk.data(), want, at);
      if (n == NGX_ERROR) return NGX_ERROR;
      if (n == 0) break;
      scanner.feed(std::string_view(reinterpret_cast<const char*>(chunk.data()), static_cast<std::size_t>(n)));
      at += n;
    }
  }
  return NGX_OK;
}

// The field of the body: from the scan the filter fed while the body was
// read, or by walking the body.
ngx_int_t scanBody(ngx_http_request_t* r, RequestCtx* ctx, const LocConf* lcf) {
  std::optional<TopLevelFieldScanner> walked;
  TopLevelFieldScanner* fed = ctx->bodyScanner;
  ctx->bodyScanner = nullptr;
  if (fed == nullptr || fed->field() != view(lcf->modelField)) {
    walked.emplace(view(lcf->modelField), kMaxModelBytes);
    if (walkBody(r, *walked) != NGX_OK) return NGX_ERROR;
  }
  TopLevelFieldScanner& scanner = walked ? *walked : *fed;
  const Scan result = scanner.finish();
  ctx->modelOutcome = static_cast<std::uint8_t>(static_cast<int>(result) + 1);
  ctx->modelField = &lcf->modelField;
  const std::string text =
      result == Scan::Found ? scanner.value() : describeProblem(result, view(lcf->modelField), scanner.error());
  ctx->model = poolCopy(r->pool, text);
  if (ctx->model.data == nullptr) return NGX_ERROR;
  ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0, "ondemand: body scan: %s \"%V\"", toString(result),
                 &ctx->model);
  return NGX_OK;
}

void onBodyRead(ngx_http_request_t* r) {
  auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_ondemand_module));
  if (ctx != nullptr) ctx->bodyState = BodyState::Read;
  // As mirror does: the body stays for the upstream, and the phases go on
  // where they stopped (our handler, which now chooses).
  r->preserve_body = 1;
  r->write_event_handler = ngx_http_core_run_phases;
  // Read at once (it was all there): readBody goes on choosing on its own
  // stack, without a second pass through the phases.
  if (ctx != nullptr && ctx->readingInline) return;
  ngx_http_core_run_phases(r);
}

// Reads the body for the scan. NGX_OK: read (at once, or before the module
// asked); NGX_DONE: being read, its handler runs the phases again; anything
// else: an error code for nginx.
ngx_int_t readBody(ngx_http_request_t* r, RequestCtx* ctx, const LocConf* lcf) {
  if (ctx->bodyState != BodyState::NotRead || r->request_body != nullptr) {
    ctx->bodyState = BodyState::Read;
    return NGX_OK;
  }
  ctx->bodyState = BodyState::Reading;
  ctx->phase = Phase::Body;
  ctx->bodyScanner = startScanner(r, lcf);
  if (ctx->bodyScanner == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  ctx->readingInline = true;
  const ngx_int_t rc = ngx_http_read_client_request_body(r, onBodyRead);
  ctx->readingInline = false;
  if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
  // read_client_request_body counted the request once more: undone here, as
  // mirror and auth_request users do (finalizing with NGX_DONE; when the
  // body is already read, the count alone: the request goes on here).
  if (ctx->bodyState == BodyState::Read) {
    --r->main->count;
    return NGX_OK;
  }
  ngx_http_finalize_request(r, NGX_DONE);
  return NGX_DONE;
}

std::string printable(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 120)) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f && c != '"' ? c : '?');
  }
  if (name.size() > 120) out += "...";
  return out;
}

}  // namespace

ngx_int_t chooseTarget(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) {
  ctx->routeAnswer = RouteAnswer::None;
  if (lcf->serviceValue == nullptr) {
    ctx->target = lcf->service;
    ctx->dynamicTarget = false;
    ctx->fromModel = false;
    return NGX_OK;
  }
  ctx->dynamicTarget = true;
  const bool body = mayHaveBody(r);
  ngx_str_t value{0, nullptr};
  for (;;) {
    const bool firstLook = body && !scanned(ctx, lcf);
    if (lcf->serviceIsModel) {
      // Exactly $ondemand_model: the field once scanned, and empty (off)
      // without a body, as the variable gives.
      ctx->modelAsked = true;
      if (!firstLook) {
        if (body && outcome(ctx) == Scan::Found) value = ctx->model;
        break;
      }
    } else {
      ctx->modelAsked = false;
      std::optional<VariablesSnapshot> snapshot;
      if (firstLook) snapshot.emplace(r);
      if (ngx_http_complex_value(r, lcf->serviceValue, &value) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
      if (!firstLook || !ctx->modelAsked) break;
      snapshot->restore();
    }
    // The choice depends on the body's field: read the body, scan it, and
    // look again.
    const ngx_int_t rc = readBody(r, ctx, lcf);
    if (rc != NGX_OK) return rc;
    if (scanBody(r, ctx, lcf) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  ctx->fromModel = ctx->modelAsked;
  if (ctx->modelAsked && body && outcome(ctx) != Scan::Found) {
    ctx->routeAnswer = RouteAnswer::BadBody;
    return NGX_DECLINED;
  }
  ctx->target = value;
  return NGX_OK;
}

ServiceEntry* resolveTarget(ngx_http_request_t*, RequestCtx* ctx, ControlLink& link) {
  ServiceTable& table = link.services();
  const std::string_view name = view(ctx->target);
  if (ServiceEntry* entry = table.resolve(name)) return entry;
  if (!ctx->dynamicTarget) return &table.get(name);  // names in nginx.conf: as many as it has
  // A name from a request that controld does not know. While the table is
  // current that is final; while it is not (controld away, or not synced
  // yet) the request waits like any other, on an entry of its own.
  if (link.status() == LinkStatus::Up || table.size() >= kMaxTableEntries) return nullptr;
  if (!isValidServiceName(name) && !isValidModelName(name)) return nullptr;
  return &table.get(name);
}

void logUnknownName(ngx_http_request_t* r, ControlLink& link, std::string_view name, bool fromModel) {
  static std::unordered_set<std::string> logged;
  if (logged.size() > kMaxLoggedNames) return;
  if (logged.size() == kMaxLoggedNames) {
    logged.insert(std::string());  // (one past the bound: this line once)
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "ondemand: %uz unknown names logged; further ones are not (their requests are still answered)",
                  kMaxLoggedNames);
    return;
  }
  if (!logged.insert(std::string(name)).second) return;
  const std::string shown = printable(name);
  if (fromModel) {
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "ondemand: no service of controld at \"%s\" has the model \"%s\"; its requests are answered 404 "
                  "(logged once per name)",
                  link.name().c_str(), shown.c_str());
  } else {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "ondemand: controld at \"%s\" has no service or model \"%s\" (ondemand_service); its requests are "
                  "answered 502 (logged once per name)",
                  link.name().c_str(), shown.c_str());
  }
}

ngx_int_t sendRouteAnswer(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) {
  const std::string_view field = view(lcf->modelField);
  ngx_uint_t status = NGX_HTTP_BAD_REQUEST;
  std::string body;
  if (ctx->routeAnswer == RouteAnswer::BadBody) {
    body = openaiError(view(ctx->model), outcome(ctx) == Scan::NotJson || outcome(ctx) == Scan::NotObject ? "" : field,
                       problemCode(outcome(ctx)));
  } else {
    status = NGX_HTTP_NOT_FOUND;
    const std::string_view asked = outcome(ctx) == Scan::Found ? view(ctx->model) : view(ctx->target);
    const std::vector<ListedModel> models = listModels(ctx->link->services());
    std::string message = "The model `" + std::string(asked) + "` does not exist.";
    message += models.empty() ? " No models are available." : " Available models: " + joinModelNames(models) + ".";
    body = openaiError(message, field, "model_not_found");
  }
  if (!addHeader(r, "X-Ondemand-State", status == NGX_HTTP_NOT_FOUND ? "unknown" : "none") ||
      !addHeader(r, "Cache-Control", "no-store")) {
    return NGX_ERROR;
  }
  return sendBody(r, status, "application/json", body);
}

ngx_int_t modelVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) {
  RequestCtx* ctx = findRequestCtx(r);
  if (ctx == nullptr) {
    v->not_found = 1;
    return NGX_OK;
  }
  ctx->modelAsked = true;
  if (ctx->modelOutcome == 0 || outcome(ctx) != Scan::Found) {
    v->not_found = 1;
    return NGX_OK;
  }
  return setVariable(v, ctx->model.data, ctx->model.len);
}

ngx_int_t upstreamVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) {
  const RequestCtx* ctx = findRequestCtx(r);
  if (ctx == nullptr || ctx->service == nullptr || ctx->service->state.upstream.empty()) {
    v->not_found = 1;
    return NGX_OK;
  }
  const std::string& upstream = ctx->service->state.upstream;
  return setVariable(v, upstream.data(), upstream.size());
}

ngx_int_t installBodyFilter() {
  nextBodyFilter = ngx_http_top_request_body_filter;
  ngx_http_top_request_body_filter = bodyFilter;
  return NGX_OK;
}

// --- ondemand_models --------------------------------------------------------------

namespace {

ngx_int_t handleModels(ngx_http_request_t* r) {
  if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
  const ngx_int_t rc = ngx_http_discard_request_body(r);
  if (rc != NGX_OK) return rc;
  const LocConf* lcf = locConf(r);
  Worker* worker = Worker::current();
  ControlLink* link = worker != nullptr ? worker->link(lcf->endpoint) : nullptr;
  if (!addHeader(r, "Cache-Control", "no-store")) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  if (link == nullptr || !link->everSynced()) {
    // Never heard from controld: no list to give, and an empty one would be
    // a lie.
    const std::string body =
        openaiError("controld at " + (link != nullptr ? link->name() : std::string("?")) +
                        " has not answered yet, so the models are not known; try again in a moment",
                    "", "service_unavailable");
    return sendBody(r, NGX_HTTP_SERVICE_UNAVAILABLE, "application/json", body);
  }
  const std::vector<ListedModel> models = listModels(link->services());
  const std::string body = static_cast<ModelsShape>(lcf->models) == ModelsShape::Ollama
                               ? ollamaTags(models)
                               : openaiModelList(models, static_cast<std::int64_t>(ngx_time()));
  return sendBody(r, NGX_HTTP_OK, "application/json", body);
}

}  // namespace

ngx_int_t modelsHandler(ngx_http_request_t* r) {
  try {
    return handleModels(r);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: models: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ondemand: models: unexpected exception");
  }
  return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

}  // namespace ondemand::module
