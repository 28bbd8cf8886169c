#pragma once
// Where request contexts live: a subrequest's in its pool; a main request's
// in memory from the worker's free list, owned by a pool cleanup so that it
// survives internal redirects.

#include "ngx_module/request.hpp"

namespace ondemand::module {

// The pool cleanup that owns a main request's context (request.cpp): it
// returns the context to the free list at the end.
void mainPoolCleanup(void* data);
// Gives a main request's context memory back (the free list or the heap).
void releaseMainCtx(RequestCtx* ctx);

RequestCtx* newCtx(ngx_http_request_t* r);
// The main request's context even after an internal redirect cleared the
// module contexts: it is still the data of our pool cleanup.
RequestCtx* existingMainCtx(ngx_http_request_t* r);
RequestCtx* mainCtx(ngx_http_request_t* main);
// A context for this pass of the request through a location.
RequestCtx* attachCtx(ngx_http_request_t* r);

}  // namespace ondemand::module
