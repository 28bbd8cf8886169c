#pragma once
// A request on its way through the module: the per-request context, the
// phase handler that decides pass / park / answer, and the ways a parked
// request is woken up again.

#include <cstdint>
#include <string>

#include "ngx_module/conf.hpp"
#include "ngx_module/control_link.hpp"
#include "ngx_module/decision.hpp"
#include "ngx_module/service_table.hpp"

namespace ondemand::module {

// Where a request is with respect to the module. The phase handler runs
// again whenever the request is woken (the re-entry guard of auth_request):
// it reads the phase to know whether it is still waiting, has passed, or
// has an answer to send.
// Body: reading the request body to choose the service ($ondemand_model).
enum class Phase : std::uint8_t { Fresh, Body, Parked, Recheck, Passed, Answer, Answered };

// The body as routing.cpp sees it.
class TopLevelFieldScanner;  // body_scan.hpp

enum class BodyState : std::uint8_t { NotRead, Reading, Read };
// Answers in the API's own shape (routing.cpp) rather than the module's.
enum class RouteAnswer : std::uint8_t { None, BadBody };

inline constexpr int kMaxCountedServices = 4;

// A subrequest's context lives in the request pool. The main request's
// context is the data of a pool cleanup (its memory comes from the worker's
// free list, see newCtx), so it survives internal redirects (which clear
// module contexts) and ends with the request, when its in-flight counts are
// returned.
struct RequestCtx {
  ngx_http_request_t* request;
  ControlLink* link;
  ServiceEntry* service;
  ParkNode node;
  ngx_event_t waitTimer;
  ngx_msec_t parkedAt;    // when the current wait began
  ngx_msec_t waitedMs;    // time spent waiting, all waits together
  ControlLink* waitLink;  // the current wait is counted as held here
  ServiceEntry* waitEntry;
  Phase phase;
  AnswerKind answer;
  bool waitStarted;        // waiting now: the wait timer runs
  bool cleanupAdded;       // the request cleanup that unparks is registered
  bool inHandler;          // the phase handler is on the stack
  bool passive;            // ondemand_passive held for this request (looked at once)
  const char* foundState;  // for $ondemand_state: what the first look found
  // Choosing the service (routing.cpp). `target` is what ondemand_service
  // gave for this location: a service's name, one of its models, or empty.
  ngx_str_t target;
  bool dynamicTarget;  // from a value with variables: unknown names are not kept
  bool modelAsked;     // $ondemand_model was looked at while choosing
  bool fromModel;      // ... and the choice depends on it: answers in OpenAI's shape
  BodyState bodyState;
  bool readingInline;  // ngx_http_read_client_request_body is on the stack: a body read at once goes on there
  RouteAnswer routeAnswer;
  std::uint8_t modelOutcome;    // TopLevelFieldScanner::Result + 1; 0: not scanned
  const ngx_str_t* modelField;  // the field scanned for (ondemand_model_field)
  ngx_str_t model;              // its value, or what is wrong with the body (request pool)
  // While the module reads the body: the scan fed by the request body
  // filter as the bytes arrive (request pool; null when not scanning).
  TopLevelFieldScanner* bodyScanner;
  // Main request only: the services it counts as in flight.
  std::uint8_t countedN;
  ControlLink* countedLink[kMaxCountedServices];
  ServiceEntry* counted[kMaxCountedServices];
};

// The PRECONTENT phase handler.
ngx_int_t precontentHandler(ngx_http_request_t* r);
// The ondemand_status content handler.
ngx_int_t statusHandler(ngx_http_request_t* r);

// Wakes a request taken off its parked list: it runs its phases again and
// the handler acts on ctx->phase (Recheck or Answer).
void resumeRequest(RequestCtx* ctx);

// "GET /path": why a wake was sent, for controld's log and Semaphore.
std::string wakeReason(ngx_http_request_t* r);

// For the variables: the context of this request (or of its main request).
RequestCtx* findRequestCtx(ngx_http_request_t* r);

}  // namespace ondemand::module
