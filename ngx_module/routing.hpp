#pragma once
// One endpoint, many services: `ondemand_service` with variables resolved
// per request, `$ondemand_model` read from the JSON body without blocking,
// `$ondemand_upstream`, the `ondemand_models` listing, and the answers in
// the API's own shape (OpenAI's error JSON).

#include <string_view>

#include "ngx_module/conf.hpp"
#include "ngx_module/request.hpp"

namespace ondemand::module {

// Sets ctx->target for this pass through the location. NGX_OK: chosen (an
// empty target is off). NGX_DONE: the body is being read; its handler runs
// the phases again. NGX_DECLINED: answer with ctx->routeAnswer (the body is
// not JSON, or lacks the field). Anything else: an error code for nginx.
ngx_int_t chooseTarget(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf);

// The entry ctx->target leads to (a service, or one by its model), created
// for a name the table does not know yet when that is bounded (a fixed name,
// or controld not synced); nullptr: answer "unknown" at once.
ServiceEntry* resolveTarget(ngx_http_request_t* r, RequestCtx* ctx, ControlLink& link);

// "unknown service / model" in the log once per name, for a bounded number
// of names.
void logUnknownName(ngx_http_request_t* r, ControlLink& link, std::string_view name, bool fromModel);

// The answers of routing: 404 model_not_found, 400 for a body without a
// usable field. Returns what the output filters said.
ngx_int_t sendRouteAnswer(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf);

// The request body filter: feeds the body's bytes to the scan of a request
// whose body the module reads, as they arrive (before nginx writes them to
// its temporary file), so the file is never read back.
ngx_int_t installBodyFilter();

// $ondemand_model and $ondemand_upstream.
ngx_int_t modelVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t data);
ngx_int_t upstreamVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t data);

// The ondemand_models content handler.
ngx_int_t modelsHandler(ngx_http_request_t* r);

}  // namespace ondemand::module
