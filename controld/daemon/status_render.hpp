#pragma once
// What the daemon says about its services: the state pushed to subscribers,
// the transition events of `controld events`, command replies and the
// `status` reply (docs/PROTOCOL.md).

#include <cstdint>
#include <optional>
#include <string>

#include "controld/cluster/cluster.hpp"
#include "controld/config/config.hpp"
#include "controld/core/activity_ledger.hpp"
#include "controld/core/machine_queue.hpp"
#include "controld/core/placement.hpp"
#include "controld/daemon/service_registry.hpp"
#include "controld/io/control_server.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

class Telemetry;

// etcdUnreachableSinceMs: in a cluster, since when etcd does not answer (0: it does).
protocol::StatePush statePush(const Service& service, std::int64_t etcdUnreachableSinceMs = 0);

// One `event` line for one of the service's transitions, which made `epoch`.
std::string eventLine(const Service& service, const Transition& transition, std::uint64_t epoch);
// One `event` line saying the service's start waits for room (or found it):
// from and to its state, cause `waiting` (or `room`), the reason as detail.
std::string waitingEventLine(const Service& service, const std::string& machine, std::int64_t nowMs);

// A command's reply; with `service`, its state after the command.
std::string replyLine(std::int64_t id, bool ok, const std::string& error, const Service* service);

// Everything `status` reports on.
struct StatusSources {
  const Config& config;
  const ServiceRegistry& services;
  const ControlServer& server;
  const MachineQueue& machineQueue;
  const Placement& placement;
  std::int64_t startedAtMs;
  const ActivityLedger& ledger;      // requests held, per service
  const Telemetry& telemetry;        // histograms and stops
  const Cluster* cluster = nullptr;  // with `cluster:` only
};

// The `status` reply for every service, or only `only`; sets `error` (and
// returns nothing) when `only` is unknown.
std::optional<protocol::StatusReply> statusReply(std::int64_t id, const std::string& only, const StatusSources& sources,
                                                 std::string& error);
std::string statusReplyLine(std::int64_t id, const std::string& only, const StatusSources& sources, std::string& error);

}  // namespace ondemand::controld
