#include "ngx_module/request_ctx.hpp"

#include <new>
#include <type_traits>

namespace ondemand::module {

namespace {

// Main requests' contexts come from a free list of the worker, not from the
// request pool: a proxied request has usually filled its pool by the time
// the module runs, and the context would make nginx allocate (and free) a
// whole new pool block for every request. A few hundred are kept for reuse;
// plain globals, so nothing depends on destruction order at exit.
struct FreeCtx {
  FreeCtx* next;
};
FreeCtx* freeCtxs = nullptr;
std::size_t freeCtxCount = 0;
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kMaxFreeCtxs = 0;  // every context freed: AddressSanitizer sees a use after the end
#else
constexpr std::size_t kMaxFreeCtxs = 256;
#endif

void* allocateMainCtx() {
  if (freeCtxs == nullptr) return ::operator new(sizeof(RequestCtx), std::nothrow);
  FreeCtx* memory = freeCtxs;
  freeCtxs = memory->next;
  --freeCtxCount;
  return memory;
}

}  // namespace

void releaseMainCtx(RequestCtx* ctx) {
  if (freeCtxCount >= kMaxFreeCtxs) {
    ::operator delete(ctx);
    return;
  }
  auto* memory = reinterpret_cast<FreeCtx*>(ctx);
  memory->next = freeCtxs;
  freeCtxs = memory;
  ++freeCtxCount;
}

RequestCtx* newCtx(ngx_http_request_t* r) {
  static_assert(sizeof(RequestCtx) >= sizeof(FreeCtx) && std::is_trivially_destructible_v<RequestCtx>);
  void* memory = nullptr;
  if (r == r->main) {
    memory = allocateMainCtx();
    if (memory == nullptr) return nullptr;
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == nullptr) {
      ::operator delete(memory);
      return nullptr;
    }
    cln->handler = mainPoolCleanup;
    cln->data = memory;
  } else {
    memory = ngx_palloc(r->pool, sizeof(RequestCtx));
    if (memory == nullptr) return nullptr;
  }
  auto* ctx = new (memory) RequestCtx{};
  ctx->request = r;
  ctx->node.owner = ctx;
  return ctx;
}

RequestCtx* existingMainCtx(ngx_http_request_t* r) {
  auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_ondemand_module));
  if (ctx != nullptr || !r->internal) return ctx;
  for (ngx_pool_cleanup_t* cln = r->pool->cleanup; cln != nullptr; cln = cln->next) {
    if (cln->handler == mainPoolCleanup) return static_cast<RequestCtx*>(cln->data);
  }
  return nullptr;
}

RequestCtx* mainCtx(ngx_http_request_t* main) {
  RequestCtx* ctx = existingMainCtx(main);
  if (ctx == nullptr) ctx = newCtx(main);
  if (ctx != nullptr && ngx_http_get_module_ctx(main, ngx_http_ondemand_module) != ctx) {
    ngx_http_set_ctx(main, ctx, ngx_http_ondemand_module);
  }
  return ctx;
}

RequestCtx* attachCtx(ngx_http_request_t* r) {
  RequestCtx* ctx = nullptr;
  if (r == r->main) {
    ctx = existingMainCtx(r);
    if (ctx != nullptr) ctx->phase = Phase::Fresh;  // an internal redirect: a new location, a new look
  }
  if (ctx == nullptr) ctx = newCtx(r);
  if (ctx == nullptr) return nullptr;
  ngx_http_set_ctx(r, ctx, ngx_http_ondemand_module);
  return ctx;
}

}  // namespace ondemand::module
