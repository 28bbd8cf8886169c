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
