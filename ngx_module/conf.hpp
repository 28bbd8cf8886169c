#pragma once
// The module's configuration as nginx stores it: plain structs, so the stock
// slot setters can write into them by offset. C++ objects they point to
// (the compiled waiting page) are owned by the configuration pool.

#include "ngx_module/decision.hpp"
#include "ngx_module/ngx.hpp"
#include "ngx_module/page_template.hpp"

extern "C" {
extern ngx_module_t ngx_http_ondemand_module;
}

namespace ondemand::module {

inline constexpr char kDefaultControl[] = "unix:/run/controld/controld.sock";
inline constexpr ngx_msec_t kDefaultWaitMs = 60000;
inline constexpr ngx_uint_t kDefaultMaxWaiting = 1024;

// A controld socket some server uses. Workers open one connection to each
// endpoint that a location actually needs.
struct Endpoint {
  ngx_str_t name;  // "unix:/path", as written
  sockaddr* address;
  socklen_t addressLength;
  ngx_flag_t used;
};

struct MainConf {
  ngx_array_t endpoints;  // of Endpoint
};

struct SrvConf {
  ngx_str_t control;    // ondemand_control
  ngx_uint_t endpoint;  // index into MainConf::endpoints, set when merged
  ngx_str_t eventsUri;  // the first ondemand_events location of the server: the pages follow it (empty: none)
};

// ondemand_models: the shape of the listing.
enum class ModelsShape : ngx_uint_t { None, OpenAI, Ollama };

struct LocConf {
  ngx_str_t service;  // ondemand_service: data == nullptr unset, len == 0 off (or a variable value)
  ngx_http_complex_value_t* serviceValue;  // ondemand_service with variables; nullptr: a fixed name
  ngx_flag_t serviceIsModel;               // ... and it is exactly $ondemand_model: the body's field, not evaluated
  ngx_str_t modelField;                    // ondemand_model_field: the body's field for $ondemand_model
  ngx_uint_t models;                       // ondemand_models (ModelsShape)
  ngx_msec_t wait;                         // ondemand_wait
  ngx_uint_t mode;                         // ondemand_mode (Mode)
  ngx_int_t maxWaiting;                    // ondemand_max_waiting
  ngx_uint_t daemonDown;                   // ondemand_daemon_down (DaemonDownPolicy)
  PageTemplate* page;                      // ondemand_page; nullptr: the built-in page
  ngx_array_t* passive;                    // ondemand_passive: its predicates; nullptr: not passive
  ngx_flag_t status;                       // ondemand_status
  ngx_flag_t events;                       // ondemand_events
  ngx_uint_t maxViewers;                   // ondemand_events max=N: streams per worker on this location
  ngx_flag_t reasons;                      // ondemand_reasons: failure reasons in answers and status pages
  ngx_uint_t endpoint;                     // from the server's ondemand_control, set when merged
};

inline LocConf* locConf(ngx_http_request_t* r) {
  return static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_ondemand_module));
}

inline std::string_view view(const ngx_str_t& s) {
  return {reinterpret_cast<const char*>(s.data), s.len};
}

}  // namespace ondemand::module
