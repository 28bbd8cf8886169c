#pragma once
// controld's daemon: one libuv loop that owns every service's state machine,
// its driver and health checker, the control socket, and the state store. It
// is the glue between them: inputs (messages, driver callbacks, health
// answers, timers, signals) go to a ServiceMachine; the Effects that come back
// are carried out here, in one place (apply()). The pieces it wires live
// beside it: the service registry (services built from config), the activity
// ledger (core/), status rendering, signals and the reloaded configuration.

#include <sys/types.h>
#include <uv.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "controld/cluster/cluster.hpp"
#include "controld/config/config.hpp"
#include "controld/core/activity_ledger.hpp"
#include "controld/core/machine_queue.hpp"
#include "controld/core/placement.hpp"
#include "controld/core/service_machine.hpp"
#include "controld/daemon/config_swap.hpp"
#include "controld/daemon/service_registry.hpp"
#include "controld/daemon/signals.hpp"
#include "controld/daemon/status_render.hpp"
#include "controld/daemon/telemetry.hpp"
#include "controld/io/control_server.hpp"
#include "controld/io/http_client.hpp"
#include "controld/io/state_store.hpp"
#include "controld/io/systemd.hpp"

namespace ondemand::controld {

class Daemon : public ControlServer::Handler, public ClusterHost {
 public:
  Daemon(Config config, Environment environment, ServeOverrides overrides = {});
  ~Daemon() override;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until SIGTERM/SIGINT. Returns the process exit code.
  int run();

  // ControlServer::Handler
  void onHello(ControlConnection& connection) override;
  void onMessage(ControlConnection& connection, protocol::Message&& message) override;
  void onClosed(ControlConnection& connection) override;

  // ClusterHost (daemon_cluster.cpp)
  void clusterGained(const std::string& service, std::optional<MachineSnapshot> snapshot,
                     const std::string& writer) override;
  void clusterLost(const std::string& service) override;
  void clusterMirror(const std::string& service, MachineSnapshot snapshot) override;
  void clusterWake(const std::string& service, const std::string& reason) override;
  void clusterStop(const std::string& service, const std::string& reason) override;
  void clusterActivity(const std::string& service, bool requestsStarted) override;
  void clusterReachability(bool reachable) override;
  void clusterCaughtUp() override;

 private:
  void restoreFromDisk();

  void apply(Service& service, Effects effects, const std::string& why = {});
  void launchWhenDurable(Service& service, const Effects& effects, const std::string& why);
  void runOperation(Service& service, OperationKind kind, const std::string& why);
  void launchOperation(Service& service, OperationKind kind, const std::string& why);
  void resumeOperation(Service& service);
  void operationFinished(Service& service, OperationOutcome outcome);
  void beginDrain(Service& service);
  void maybeFinishDrain(Service& service);
  void reschedule(Service& service);
  void publish(Service& service);
  void sendToSubscribers(const std::string& line);

  void handleWake(ControlConnection& connection, const protocol::Wake& wake);
  void handleActivity(ControlConnection& connection, const protocol::Activity& activity);
  void handleStoppingAck(ControlConnection& connection, const protocol::StoppingAck& ack);
  void handleCommand(ControlConnection& connection, const protocol::Command& command);

  // Shared machines (daemon_placement.cpp).
  void configurePlacement();
  void placementAfter(Service& service);  // after every input: tell placement, queue a start that needs room
  bool startGoesAhead(Service& service, const std::string& why);  // false: placement holds the start back
  void pumpMachine(const std::string& machine);
  void publishWaitReasons(const std::string& machine);
  void evictionStopFailed(Service& service, const std::string& forService, const std::string& reason);

  void reload();
  void shutdown();
  void warnIfStateDirNotWritable() const;
  StatusSources statusSources() const;
  std::string metricsPage() const;
  static ControlServer::Limits connectionLimits();
  void resolveAdmins();
  bool isAdmin(const ControlConnection& connection) const;

  // In a cluster (daemon_cluster.cpp) this node acts on a service only while
  // it owns it and etcd answers; alone, always.
  bool acting(const Service& service) const;
  // Requests in flight for a service: this node's workers, and in a cluster
  // every other node's too.
  std::uint64_t inFlight(const std::string& service) const;
  // In a cluster: since when etcd does not answer (pushed with every state); 0: it does.
  std::int64_t etcdUnreachableSinceMs() const;
  void startCluster();
  void clusterServices();
  // Owner: the state goes to etcd (fenced); `launch` runs once it is there.
  void publishToCluster(Service& service, std::function<void()> launch);
  // Not owner: `controld stop` goes to the owner; answered once it acted.
  void forwardStop(ControlConnection& connection, const protocol::Command& command, Service& service);
  void answerForwardedStops();

  uv_loop_t* loop_;
  uv_loop_t loopStorage_;
  Config config_;
  Environment environment_;
  ServeOverrides overrides_;
  StateStore store_;
  std::unique_ptr<StateWriter> writer_;
  bool shuttingDown_ = false;
  std::unique_ptr<HttpClient> http_;
  std::unique_ptr<ServiceRegistry> services_;
  std::unique_ptr<ControlServer> server_;
  std::unique_ptr<Telemetry> telemetry_;
  std::unique_ptr<Cluster> cluster_;  // with `cluster:` only
  MachineQueue machineQueue_;
  ActivityLedger ledger_;
  Placement placement_;
  bool restoring_ = false;                                       // placement waits until every state file is read
  std::set<std::string> pumping_, pumpAgain_;                    // machines whose placement is being decided
  std::map<std::string, std::unique_ptr<Timer>> machineTimers_;  // a min_warm guard runs out
  std::map<std::string, std::uint64_t> unknownWakes_;            // unknown service name -> count (logged once), bounded
  std::uint64_t unknownWakesOther_ = 0;                          // wakes for unknown names past that bound
  std::set<uid_t> adminUids_;                                    // admin_users, resolved
  std::set<gid_t> adminGids_;                                    // admin_groups, resolved
  struct ForwardedStop {                                         // a `controld stop` the owner was asked to act on
    std::uint64_t connection = 0;
    std::int64_t commandId = 0;
    std::string service;
    std::uint64_t epoch = 0;  // the service's epoch when it was forwarded
    std::int64_t deadlineMs = 0;
  };
  std::vector<ForwardedStop> forwardedStops_;
  std::unique_ptr<Timer> forwardedStopTimer_;
  DaemonSignals signals_;
  Watchdog watchdog_;
  std::int64_t startedAtMs_ = 0;
  int exitCode_ = 0;
};

// The client commands (`controld status`, `start`, ...), each returning the
// process exit code: 0 ok, 1 the operation failed, 2 usage or config error,
// 3 daemon not reachable.
int cliMain(int argc, char** argv);

}  // namespace ondemand::controld
