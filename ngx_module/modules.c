/*
 * The symbol table nginx's load_module looks up with dlsym(). It lives in a
 * C file of its own so that C++ visibility settings cannot hide it.
 */

#include <ngx_config.h>
#include <ngx_core.h>

extern ngx_module_t ngx_http_ondemand_module;

ngx_module_t* ngx_modules[] = {
    &ngx_http_ondemand_module,
    NULL,
};

char* ngx_module_names[] = {
    "ngx_http_ondemand_module",
    NULL,
};
