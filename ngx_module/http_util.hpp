#pragma once
// Small pieces of nginx's HTTP API the module's handlers share: a request
// header, a string in a pool, an output header, a whole response.

#include <string_view>

#include "ngx_module/ngx.hpp"
#include "ngx_module/service_table.hpp"

namespace ondemand::module {

std::string_view headerValue(ngx_http_request_t* r, std::string_view name);
ngx_str_t poolString(ngx_pool_t* pool, std::string_view text);
bool addHeader(ngx_http_request_t* r, std::string_view key, std::string_view value);
ngx_int_t sendBody(ngx_http_request_t* r, ngx_uint_t status, std::string_view contentType, std::string_view body);
// "unknown" for a service controld has not named, else its state.
const char* stateNameFor(const ServiceEntry& entry);

}  // namespace ondemand::module
