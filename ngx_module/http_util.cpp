#include "ngx_module/http_util.hpp"

#include <cstring>

#include "ngx_module/conf.hpp"

namespace ondemand::module {

std::string_view headerValue(ngx_http_request_t* r, std::string_view name) {
  ngx_list_part_t* part = &r->headers_in.headers.part;
  auto* headers = static_cast<ngx_table_elt_t*>(part->elts);
  for (ngx_uint_t i = 0;; ++i) {
    if (i >= part->nelts) {
      if (part->next == nullptr) break;
      part = part->next;
      headers = static_cast<ngx_table_elt_t*>(part->elts);
      i = 0;
      if (part->nelts == 0) continue;
    }
    const ngx_table_elt_t& h = headers[i];
    if (h.key.len == name.size() &&
        ngx_strncasecmp(h.key.data, reinterpret_cast<u_char*>(const_cast<char*>(name.data())), name.size()) == 0) {
      return view(h.value);
    }
  }
  return {};
}

ngx_str_t poolString(ngx_pool_t* pool, std::string_view text) {
  ngx_str_t out{0, nullptr};
  auto* data = static_cast<u_char*>(ngx_pnalloc(pool, text.size() ? text.size() : 1));
  if (data == nullptr) return out;
  std::memcpy(data, text.data(), text.size());
  out.data = data;
  out.len = text.size();
  return out;
}

bool addHeader(ngx_http_request_t* r, std::string_view key, std::string_view value) {
  auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
  if (h == nullptr) return false;
  *h = ngx_table_elt_t{};
  h->hash = 1;
  h->key = poolString(r->pool, key);
  h->value = poolString(r->pool, value);
  return h->key.data != nullptr && h->value.data != nullptr;
}

// Sends a complete response with the given body; returns what the output
// filters said, for ngx_http_finalize_request.
ngx_int_t sendBody(ngx_http_request_t* r, ngx_uint_t status, std::string_view contentType, std::string_view body) {
  r->headers_out.status = status;
  r->headers_out.content_length_n = static_cast<off_t>(body.size());
  r->headers_out.content_type = poolString(r->pool, contentType);
  r->headers_out.content_type_len = contentType.size();
  r->headers_out.content_type_lowcase = nullptr;
  if (r->headers_out.content_type.data == nullptr) return NGX_ERROR;

  ngx_int_t rc = ngx_http_send_header(r);
  if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;

  ngx_buf_t* b = ngx_create_temp_buf(r->pool, body.size() ? body.size() : 1);
  if (b == nullptr) return NGX_ERROR;
  b->last = ngx_cpymem(b->last, body.data(), body.size());
  b->last_buf = (r == r->main) ? 1 : 0;
  b->last_in_chain = 1;
  ngx_chain_t out{b, nullptr};
  return ngx_http_output_filter(r, &out);
}

const char* stateNameFor(const ServiceEntry& entry) {
  if (!entry.known) return "unknown";
  return toString(entry.state.state).data();  // views of string literals: NUL-terminated
}

}  // namespace ondemand::module
