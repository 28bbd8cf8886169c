// ngx_http_ondemand_module: holds requests for a service that is not warm
// while controld starts it, and lets them through once it is ready.
//
// This file is the module as nginx sees it, in nginx's usual order: the
// directives, the module context, the module, then the functions behind
// them. The request path is in request.cpp, the connection to controld in
// control_link.cpp, the per-worker state in worker.cpp.

#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

#include "ngx_module/conf.hpp"
#include "ngx_module/events.hpp"
#include "ngx_module/request.hpp"
#include "ngx_module/routing.hpp"
#include "ngx_module/worker.hpp"
#include "shared/service_name.hpp"

namespace ondemand::module {
namespace {

void* createMainConf(ngx_conf_t* cf);
void* createSrvConf(ngx_conf_t* cf);
char* mergeSrvConf(ngx_conf_t* cf, void* parent, void* child);
void* createLocConf(ngx_conf_t* cf);
char* mergeLocConf(ngx_conf_t* cf, void* parent, void* child);
ngx_int_t addVariables(ngx_conf_t* cf);
ngx_int_t postConfiguration(ngx_conf_t* cf);

char* setControl(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setService(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setChoice(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setPage(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setStatus(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setEvents(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setPassive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setModelField(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* setModels(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* checkWait(ngx_conf_t* cf, void* post, void* data);
char* checkMaxWaiting(ngx_conf_t* cf, void* post, void* data);

ngx_int_t initProcess(ngx_cycle_t* cycle);
void exitProcess(ngx_cycle_t* cycle);

// No exception may reach nginx: every configuration callback goes through
// one of these.
char* confException(ngx_conf_t* cf, const char* what) {
  ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "ondemand: %s", what);
  return static_cast<char*>(NGX_CONF_ERROR);
}

template <char* (*Setter)(ngx_conf_t*, ngx_command_t*, void*)>
char* guardedSetter(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
  try {
    return Setter(cf, cmd, conf);
  } catch (const std::exception& e) {
    return confException(cf, e.what());
  } catch (...) {
    return confException(cf, "unexpected exception");
  }
}

template <char* (*Merge)(ngx_conf_t*, void*, void*)>
char* guardedMerge(ngx_conf_t* cf, void* parent, void* child) {
  try {
    return Merge(cf, parent, child);
  } catch (const std::exception& e) {
    return confException(cf, e.what());
  } catch (...) {
    return confException(cf, "unexpected exception");
  }
}

ngx_conf_enum_t kModes[] = {
    {ngx_string("auto"), static_cast<ngx_uint_t>(Mode::Auto)},
    {ngx_string("block"), static_cast<ngx_uint_t>(Mode::Block)},
    {ngx_string("page"), static_cast<ngx_uint_t>(Mode::Page)},
    {ngx_string("reject"), static_cast<ngx_uint_t>(Mode::Reject)},
    {ngx_null_string, 0},
};

ngx_conf_enum_t kDaemonDownPolicies[] = {
    {ngx_string("last_known"), static_cast<ngx_uint_t>(DaemonDownPolicy::LastKnown)},
    {ngx_string("open"), static_cast<ngx_uint_t>(DaemonDownPolicy::Open)},
    {ngx_string("closed"), static_cast<ngx_uint_t>(DaemonDownPolicy::Closed)},
    {ngx_null_string, 0},
};

ngx_conf_enum_t kModelsShapes[] = {
    {ngx_string("openai"), static_cast<ngx_uint_t>(ModelsShape::OpenAI)},
    {ngx_string("ollama"), static_cast<ngx_uint_t>(ModelsShape::Ollama)},
    {ngx_null_string, 0},
};

ngx_conf_post_t kWaitPost = {checkWait};
ngx_conf_post_t kMaxWaitingPost = {checkMaxWaiting};

constexpr ngx_uint_t kAnyLevel = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

ngx_command_t kCommands[] = {
    {ngx_string("ondemand_control"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_TAKE1, guardedSetter<setControl>,
     NGX_HTTP_SRV_CONF_OFFSET, 0, nullptr},
    {ngx_string("ondemand_service"), NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, guardedSetter<setService>,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("ondemand_wait"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, wait), &kWaitPost},
    {ngx_string("ondemand_mode"), kAnyLevel | NGX_CONF_TAKE1, guardedSetter<setChoice>, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, mode), kModes},
    {ngx_string("ondemand_page"), kAnyLevel | NGX_CONF_TAKE1, guardedSetter<setPage>, NGX_HTTP_LOC_CONF_OFFSET, 0,
     nullptr},
    {ngx_string("ondemand_max_waiting"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, maxWaiting), &kMaxWaitingPost},
    {ngx_string("ondemand_daemon_down"), kAnyLevel | NGX_CONF_TAKE1, guardedSetter<setChoice>, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, daemonDown), kDaemonDownPolicies},
    {ngx_string("ondemand_passive"), kAnyLevel | NGX_CONF_1MORE, guardedSetter<setPassive>, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, passive), nullptr},
    {ngx_string("ondemand_status"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, guardedSetter<setStatus>,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("ondemand_events"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1, guardedSetter<setEvents>,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("ondemand_reasons"), kAnyLevel | NGX_CONF_FLAG, ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, reasons), nullptr},
    {ngx_string("ondemand_model_field"), kAnyLevel | NGX_CONF_TAKE1, guardedSetter<setModelField>,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("ondemand_models"), NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, guardedSetter<setModels>,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, models), kModelsShapes},
    ngx_null_command,
};

ngx_http_module_t kModuleCtx = {
    addVariables,                // preconfiguration
    postConfiguration,           // postconfiguration
    createMainConf,              // create main configuration
    nullptr,                     // init main configuration
    createSrvConf,               // create server configuration
    guardedMerge<mergeSrvConf>,  // merge server configuration
    createLocConf,               // create location configuration
    guardedMerge<mergeLocConf>,  // merge location configuration
};

}  // namespace
}  // namespace ondemand::module

extern "C" {
ngx_module_t ngx_http_ondemand_module = {
    NGX_MODULE_V1,
    &ondemand::module::kModuleCtx,  // module context
    ondemand::module::kCommands,    // module directives
    NGX_HTTP_MODULE,                // module type
    nullptr,                        // init master
    nullptr,                        // init module
    ondemand::module::initProcess,  // init process
    nullptr,                        // init thread
    nullptr,                        // exit thread
    ondemand::module::exitProcess,  // exit process
    nullptr,                        // exit master
    NGX_MODULE_V1_PADDING,
};
}

namespace ondemand::module {
namespace {

// --- configuration ------------------------------------------------------------

// A directive error, printed by nginx as: "<directive>" directive <message>.
char* confError(ngx_conf_t* cf, const std::string& message) {
  auto* text = static_cast<char*>(ngx_pnalloc(cf->pool, message.size() + 1));
  if (text == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
  std::memcpy(text, message.c_str(), message.size() + 1);
  return text;
}

ngx_str_t* args(ngx_conf_t* cf) {
  return static_cast<ngx_str_t*>(cf->args->elts);
}

// The index of the endpoint for "unix:PATH", added to the main conf when
// new. `error` is set when the address is not a usable Unix socket.
ngx_uint_t endpointIndex(ngx_conf_t* cf, ngx_str_t name, std::string& error) {
  auto* mcf = static_cast<MainConf*>(ngx_http_conf_get_module_main_conf(cf, ngx_http_ondemand_module));
  auto* endpoints = static_cast<Endpoint*>(mcf->endpoints.elts);
  for (ngx_uint_t i = 0; i < mcf->endpoints.nelts; ++i) {
    if (view(endpoints[i].name) == view(name)) return i;
  }
  if (view(name).substr(0, 5) != "unix:") {
    error = "must be a Unix socket, \"unix:/path/to/controld.sock\", not \"" + std::string(view(name)) + "\"";
    return NGX_CONF_UNSET_UINT;
  }
  ngx_url_t u{};
  u.url = name;
  u.no_resolve = 1;
  if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
    error = "has an invalid socket \"" + std::string(view(name)) + "\"" + (u.err ? std::string(": ") + u.err : "");
    return NGX_CONF_UNSET_UINT;
  }
  auto* endpoint = static_cast<Endpoint*>(ngx_array_push(&mcf->endpoints));
  if (endpoint == nullptr) {
    error = "cannot allocate memory";
    return NGX_CONF_UNSET_UINT;
  }
  endpoint->name = name;
  endpoint->address = u.addrs[0].sockaddr;
  endpoint->addressLength = u.addrs[0].socklen;
  endpoint->used = 0;
  return mcf->endpoints.nelts - 1;
}

void* createMainConf(ngx_conf_t* cf) {
  auto* conf = static_cast<MainConf*>(ngx_pcalloc(cf->pool, sizeof(MainConf)));
  if (conf == nullptr) return nullptr;
  if (ngx_array_init(&conf->endpoints, cf->pool, 2, sizeof(Endpoint)) != NGX_OK) return nullptr;
  return conf;
}

void* createSrvConf(ngx_conf_t* cf) {
  auto* conf = static_cast<SrvConf*>(ngx_pcalloc(cf->pool, sizeof(SrvConf)));
  if (conf == nullptr) return nullptr;
  conf->endpoint = NGX_CONF_UNSET_UINT;
  return conf;
}

char* mergeSrvConf(ngx_conf_t* cf, void* parent, void* child) {
  auto* prev = static_cast<SrvConf*>(parent);
  auto* conf = static_cast<SrvConf*>(child);
  if (conf->control.data == nullptr) {
    conf->control = prev->control;
    conf->endpoint = prev->endpoint;
  }
  if (conf->control.data == nullptr) {
    conf->control.data = reinterpret_cast<u_char*>(const_cast<char*>(kDefaultControl));
    conf->control.len = sizeof(kDefaultControl) - 1;
  }
  if (conf->endpoint == NGX_CONF_UNSET_UINT) {
    std::string error;
    conf->endpoint = endpointIndex(cf, conf->control, error);
    if (conf->endpoint == NGX_CONF_UNSET_UINT) return confError(cf, "ondemand_control " + error);
  }
  return NGX_CONF_OK;
}

void* createLocConf(ngx_conf_t* cf) {
  auto* conf = static_cast<LocConf*>(ngx_pcalloc(cf->pool, sizeof(LocConf)));
  if (conf == nullptr) return nullptr;
  conf->wait = NGX_CONF_UNSET_MSEC;
  conf->mode = NGX_CONF_UNSET_UINT;
  conf->maxWaiting = NGX_CONF_UNSET;
  conf->daemonDown = NGX_CONF_UNSET_UINT;
  conf->page = static_cast<PageTemplate*>(NGX_CONF_UNSET_PTR);
  conf->passive = static_cast<ngx_array_t*>(NGX_CONF_UNSET_PTR);
  conf->endpoint = NGX_CONF_UNSET_UINT;
  conf->reasons = NGX_CONF_UNSET;
  return conf;
}

char* mergeLocConf(ngx_conf_t* cf, void* parent, void* child) {
  auto* prev = static_cast<LocConf*>(parent);
  auto* conf = static_cast<LocConf*>(child);
  if (conf->service.data == nullptr) {
    conf->service = prev->service;
    conf->serviceValue = prev->serviceValue;
    conf->serviceIsModel = prev->serviceIsModel;
  }
  if (conf->service.data == nullptr) conf->service = ngx_str_t{0, reinterpret_cast<u_char*>(const_cast<char*>(""))};
  ngx_conf_merge_str_value(conf->modelField, prev->modelField, "model");
  ngx_conf_merge_msec_value(conf->wait, prev->wait, kDefaultWaitMs);
  ngx_conf_merge_uint_value(conf->mode, prev->mode, static_cast<ngx_uint_t>(Mode::Auto));
  ngx_conf_merge_value(conf->maxWaiting, prev->maxWaiting, static_cast<ngx_int_t>(kDefaultMaxWaiting));
  ngx_conf_merge_uint_value(conf->daemonDown, prev->daemonDown, static_cast<ngx_uint_t>(DaemonDownPolicy::LastKnown));
  ngx_conf_merge_ptr_value(conf->page, prev->page, nullptr);
  ngx_conf_merge_ptr_value(conf->passive, prev->passive, nullptr);
  ngx_conf_merge_value(conf->reasons, prev->reasons, 1);

  // The controld of the server this location is in: only endpoints that
  // some location needs get a connection in the workers.
  auto* scf = static_cast<SrvConf*>(ngx_http_conf_get_module_srv_conf(cf, ngx_http_ondemand_module));
  conf->endpoint = scf->endpoint;
  const bool needsControld =
      conf->service.len > 0 || conf->serviceValue != nullptr || conf->status || conf->events || conf->models;
  if (needsControld && conf->endpoint != NGX_CONF_UNSET_UINT) {
    auto* mcf = static_cast<MainConf*>(ngx_http_conf_get_module_main_conf(cf, ngx_http_ondemand_module));
    static_cast<Endpoint*>(mcf->endpoints.elts)[conf->endpoint].used = 1;
  }
  return NGX_CONF_OK;
}

char* setControl(ngx_conf_t* cf, ngx_command_t*, void* conf) {
  auto* scf = static_cast<SrvConf*>(conf);
  if (scf->control.data != nullptr) return const_cast<char*>("is duplicate");
  std::string error;
  const ngx_uint_t index = endpointIndex(cf, args(cf)[1], error);
  if (index == NGX_CONF_UNSET_UINT) return confError(cf, error);
  scf->control = args(cf)[1];
  scf->endpoint = index;
  return NGX_CONF_OK;
}

char* setService(ngx_conf_t* cf, ngx_command_t*, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->service.data != nullptr) return const_cast<char*>("is duplicate");
  ngx_str_t value = args(cf)[1];
  if (view(value) == "off") {
    lcf->service = ngx_str_t{0, reinterpret_cast<u_char*>(const_cast<char*>(""))};
    return NGX_CONF_OK;
  }
  if (ngx_http_script_variables_count(&value) > 0) {
    // Resolved per request (routing.cpp): a service's name, one of its
    // models, or empty for off.
    auto* cv = static_cast<ngx_http_complex_value_t*>(ngx_pcalloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (cv == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    ngx_http_compile_complex_value_t ccv{};
    ccv.cf = cf;
    ccv.value = &value;
    ccv.complex_value = cv;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) return static_cast<char*>(NGX_CONF_ERROR);
    lcf->service = ngx_str_t{0, reinterpret_cast<u_char*>(const_cast<char*>(""))};
    lcf->serviceValue = cv;
    // The usual one-endpoint setting: the value is the body's field itself,
    // so a request needs neither a first look at it nor an evaluation.
    lcf->serviceIsModel = view(value) == "$ondemand_model" || view(value) == "${ondemand_model}";
    return NGX_CONF_OK;
  }
  if (!isValidServiceName(view(value)) && !isValidModelName(view(value))) {
    return confError(cf, "has an invalid service name \"" + std::string(view(value)) +
                             "\": use a service's name (1 to 64 letters, digits, '-', '_' or '.', not starting "
                             "with '.'), one of its models, or a variable");
  }
  lcf->service = value;
  return NGX_CONF_OK;
}

// ngx_conf_set_enum_slot, but the error names the directive and the choices.
char* setChoice(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
  auto* field = reinterpret_cast<ngx_uint_t*>(static_cast<char*>(conf) + cmd->offset);
  if (*field != NGX_CONF_UNSET_UINT) return const_cast<char*>("is duplicate");
  const ngx_str_t value = args(cf)[1];
  std::string choices;
  for (const auto* e = static_cast<const ngx_conf_enum_t*>(cmd->post); e->name.len != 0; ++e) {
    if (view(e->name) == view(value)) {
      *field = e->value;
      return NGX_CONF_OK;
    }
    if (!choices.empty()) choices += ", ";
    choices += view(e->name);
  }
  return confError(cf, "has an invalid value \"" + std::string(view(value)) + "\": use one of " + choices);
}

char* setPage(ngx_conf_t* cf, ngx_command_t*, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->page != NGX_CONF_UNSET_PTR) return const_cast<char*>("is duplicate");
  ngx_str_t path = args(cf)[1];
  if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) return static_cast<char*>(NGX_CONF_ERROR);
  const std::string file(view(path));

  std::ifstream in(file, std::ios::binary);
  if (!in) return confError(cf, "cannot read \"" + file + "\": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  std::string error;
  std::optional<PageTemplate> page = PageTemplate::compile(text.str(), error);
  if (!page) return confError(cf, "has a template error in \"" + file + "\": " + error);

  // Owned by the configuration pool: freed with the configuration.
  ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
  if (cln == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
  lcf->page = new PageTemplate(std::move(*page));
  cln->handler = [](void* data) { delete static_cast<PageTemplate*>(data); };
  cln->data = lcf->page;
  return NGX_CONF_OK;
}

char* setStatus(ngx_conf_t* cf, ngx_command_t*, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->status) return const_cast<char*>("is duplicate");
  lcf->status = 1;
  auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
  clcf->handler = statusHandler;
  return NGX_CONF_OK;
}

// ondemand_events [max=N]: N streams at most per worker on this location.
char* setEvents(ngx_conf_t* cf, ngx_command_t*, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->events) return const_cast<char*>("is duplicate");
  lcf->maxViewers = kDefaultMaxViewers;
  if (cf->args->nelts == 2) {
    const std::string_view value = view(args(cf)[1]);
    const std::string_view number = value.substr(0, 4) == "max=" ? value.substr(4) : std::string_view();
    const ngx_int_t n = number.empty()
                            ? NGX_ERROR
                            : ngx_atoi(reinterpret_cast<u_char*>(const_cast<char*>(number.data())), number.size());
    if (n < 1 || n > 100000) {
      return confError(cf, "has an invalid value \"" + std::string(value) +
                               "\": use max=N, the most event streams one worker serves here (1 to 100000)");
    }
    lcf->maxViewers = static_cast<ngx_uint_t>(n);
  }
  lcf->events = 1;
  auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
  clcf->handler = eventsHandler;
  // The server's pages follow the first such location they can name.
  auto* scf = static_cast<SrvConf*>(ngx_http_conf_get_module_srv_conf(cf, ngx_http_ondemand_module));
  if (scf->eventsUri.len == 0 && clcf->regex == nullptr && !clcf->named && clcf->name.len > 0) {
    scf->eventsUri = clcf->name;
  }
  return NGX_CONF_OK;
}

// `ondemand_passive off;` turns an inherited setting off: read as a
// predicate, "off" would be a non-empty value, so passive.
char* setPassive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->passive != NGX_CONF_UNSET_PTR) return const_cast<char*>("is duplicate");
  if (cf->args->nelts == 2 && view(args(cf)[1]) == "off") {
    lcf->passive = nullptr;
    return NGX_CONF_OK;
  }
  return ngx_http_set_predicate_slot(cf, cmd, conf);
}

char* setModelField(ngx_conf_t* cf, ngx_command_t*, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->modelField.data != nullptr) return const_cast<char*>("is duplicate");
  const ngx_str_t value = args(cf)[1];
  if (value.len == 0) return confError(cf, "needs a field name, e.g. \"model\"");
  lcf->modelField = value;
  return NGX_CONF_OK;
}

char* setModels(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
  auto* lcf = static_cast<LocConf*>(conf);
  if (lcf->models != 0) return const_cast<char*>("is duplicate");
  lcf->models = NGX_CONF_UNSET_UINT;
  char* rc = setChoice(cf, cmd, conf);  // (writes lcf->models)
  if (rc != NGX_CONF_OK) return rc;
  auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
  clcf->handler = modelsHandler;
  return NGX_CONF_OK;
}

char* checkWait(ngx_conf_t*, void*, void* data) {
  if (*static_cast<ngx_msec_t*>(data) == 0) return const_cast<char*>("must be longer than 0");
  return NGX_CONF_OK;
}

char* checkMaxWaiting(ngx_conf_t*, void*, void* data) {
  if (*static_cast<ngx_int_t*>(data) < 1) return const_cast<char*>("must be at least 1");
  return NGX_CONF_OK;
}

// --- the phase handler and variables ------------------------------------------

ngx_int_t postConfiguration(ngx_conf_t* cf) {
  auto* cmcf = static_cast<ngx_http_core_main_conf_t*>(ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
  ngx_array_t* handlers = &cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers;
  auto* slot = static_cast<ngx_http_handler_pt*>(ngx_array_push(handlers));
  if (slot == nullptr) return NGX_ERROR;
  // Handlers of a phase run in the reverse order of this array. Going first
  // in it, ours runs after try_files and mirror; the whole PRECONTENT phase
  // runs after ACCESS (allow/deny, auth_basic, auth_request), so a request
  // that is refused never wakes a service, and it runs for subrequests too.
  auto* first = static_cast<ngx_http_handler_pt*>(handlers->elts);
  std::memmove(first + 1, first, (handlers->nelts - 1) * sizeof(ngx_http_handler_pt));
  first[0] = precontentHandler;
  return installBodyFilter();
}

ngx_int_t serviceVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) {
  const RequestCtx* ctx = findRequestCtx(r);
  if (ctx == nullptr || ctx->service == nullptr) {
    v->not_found = 1;
    return NGX_OK;
  }
  return setVariable(v, ctx->service->name.data(), ctx->service->name.size());
}

ngx_int_t stateVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) {
  const RequestCtx* ctx = findRequestCtx(r);
  if (ctx == nullptr || ctx->foundState == nullptr) {
    v->not_found = 1;
    return NGX_OK;
  }
  return setVariable(v, ctx->foundState, std::strlen(ctx->foundState));
}

ngx_int_t waitVariable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) {
  const RequestCtx* ctx = findRequestCtx(r);
  if (ctx == nullptr || ctx->service == nullptr) {
    v->not_found = 1;
    return NGX_OK;
  }
  ngx_msec_t waited = ctx->waitedMs;
  if (ctx->waitStarted) waited += ngx_current_msec - ctx->parkedAt;
  auto* data = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT_T_LEN));
  if (data == nullptr) return NGX_ERROR;
  return setVariable(v, data, ngx_sprintf(data, "%M", waited) - data);
}

ngx_http_variable_t kVariables[] = {
    {ngx_string("ondemand_service"), nullptr, serviceVariable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ondemand_state"), nullptr, stateVariable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ondemand_wait_ms"), nullptr, waitVariable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ondemand_model"), nullptr, modelVariable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ondemand_upstream"), nullptr, upstreamVariable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    ngx_http_null_variable,
};

ngx_int_t addVariables(ngx_conf_t* cf) {
  for (ngx_http_variable_t* v = kVariables; v->name.len != 0; ++v) {
    ngx_http_variable_t* var = ngx_http_add_variable(cf, &v->name, v->flags);
    if (var == nullptr) return NGX_ERROR;
    var->get_handler = v->get_handler;
    var->data = v->data;
  }
  return NGX_OK;
}

// --- worker processes -----------------------------------------------------------

ngx_int_t initProcess(ngx_cycle_t* cycle) {
  // Cache manager and loader processes run init_process too; they serve no
  // requests.
  if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return NGX_OK;
  auto* mcf = static_cast<MainConf*>(ngx_http_cycle_get_module_main_conf(cycle, ngx_http_ondemand_module));
  try {
    Worker::start(cycle, mcf);
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "ondemand: cannot start: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "ondemand: cannot start: unexpected exception");
  }
  return NGX_OK;
}

void exitProcess(ngx_cycle_t* cycle) {
  try {
    Worker::stop();
  } catch (const std::exception& e) {
    ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "ondemand: stopping: %s", e.what());
  } catch (...) {
    ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "ondemand: stopping: unexpected exception");
  }
}

}  // namespace
}  // namespace ondemand::module
