#pragma once
// The one place nginx's headers are included. nginx is C; everything the
// module needs from it comes through here, inside extern "C".

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_http.h>
}

namespace ondemand::module {

// nginx's event macros expand to several statements; these keep them from
// meeting an unbraced `if`.
inline void postEvent(ngx_event_t* ev) {
  if (!ev->posted) {
    ngx_post_event(ev, &ngx_posted_events);
  }
}

inline void unpostEvent(ngx_event_t* ev) {
  if (ev->posted) {
    ngx_delete_posted_event(ev);
  }
}

// A variable's value for this request: `data` lives as long as the request.
inline ngx_int_t setVariable(ngx_http_variable_value_t* v, const void* data, std::size_t len) {
  v->data = static_cast<u_char*>(const_cast<void*>(data));
  v->len = static_cast<unsigned>(len);
  v->valid = 1;
  v->no_cacheable = 0;
  v->not_found = 0;
  return NGX_OK;
}

inline void stopTimer(ngx_event_t* ev) {
  if (ev->timer_set) {
    ngx_del_timer(ev);
  }
}

}  // namespace ondemand::module
