#pragma once
// ondemand_events: a content handler that streams the state of every
// service as Server-Sent Events, from the table controld pushes to the
// worker. A viewer costs its connection and a few buffers: no connection to
// controld, no timer, nothing polled. The worker tells the streams what
// changed (worker.cpp); each stream writes without blocking and is dropped
// when its client does not read.

#include <cstddef>
#include <string>

#include "ngx_module/control_link.hpp"
#include "ngx_module/ngx.hpp"
#include "ngx_module/service_table.hpp"
#include "shared/json_writer.hpp"

namespace ondemand::module {

inline constexpr ngx_uint_t kDefaultMaxViewers = 64;
// A viewer with this much not yet sent is not reading: it is dropped.
inline constexpr std::size_t kMaxViewerBacklog = 256 * 1024;
// A comment line this often keeps proxies and the browser from closing an
// idle stream (and closes the streams of a worker that is shutting down).
inline constexpr ngx_msec_t kHeartbeatMs = 15000;
// EventSource's reconnect delay, sent as "retry:".
inline constexpr int kEventRetryMs = 2000;

ngx_int_t eventsHandler(ngx_http_request_t* r);

// What the worker tells the streams.
void eventsStateChanged(ControlLink& link, const ServiceEntry& entry);
void eventsRemoved(ControlLink& link, const ServiceEntry& entry);
void eventsLinkChanged(ControlLink& link);
// Worker exit: every stream ends.
void eventsCloseAll();
std::size_t eventsViewerCount();

// The state of a service as the events, the status page and the pages say
// it: state, epoch, since, starting_since, cause, reason, task_id, retry_at,
// last_start_ms. The caller writes the name.
void writeServiceState(JsonWriter& w, const ServiceEntry& entry, bool reasons);
// The link as the events and the status page say it: status, socket,
// daemon, unreachable_since.
void writeLinkState(JsonWriter& w, const ControlLink& link);
const char* linkStatusName(LinkStatus status);

}  // namespace ondemand::module
