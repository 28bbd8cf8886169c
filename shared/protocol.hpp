#pragma once
// The control protocol between controld and its clients (nginx workers and the
// CLI): newline-delimited JSON objects, each with a "type". docs/PROTOCOL.md is
// the reference; this header is its single implementation, compiled into both
// controld and the nginx module.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "shared/service_state.hpp"

namespace ondemand::protocol {

inline constexpr int kVersion = 1;
// A line longer than this is a protocol error: the connection is closed.
inline constexpr std::size_t kMaxMessageBytes = 64 * 1024;
// The limit for the lines controld sends a CLI: a status reply of 10,000
// services with full histories (about 5 KiB each) fits.
inline constexpr std::size_t kMaxReplyBytes = 256 * 1024 * 1024;
// Failure reasons are cut to this size before they travel.
inline constexpr std::size_t kMaxReasonBytes = 4096;

// Splits a byte stream into lines without copying more than once.
class LineFramer {
 public:
  explicit LineFramer(std::size_t maxLineBytes = kMaxMessageBytes) : maxLineBytes_(maxLineBytes) {}

  // Appends received bytes. Returns false when a line (complete or not)
  // exceeds the limit; the caller must then drop the connection.
  [[nodiscard]] bool append(std::string_view bytes);

  // The next complete line without its '\n', or nullopt. The view stays valid
  // until the next call to append() or next().
  std::optional<std::string_view> next();

  std::size_t buffered() const { return buffer_.size() - consumed_; }

 private:
  std::string buffer_;
  std::size_t consumed_ = 0;
  std::size_t maxLineBytes_;
};

// --- messages ---------------------------------------------------------------

// client -> controld, first message on every connection.
struct Hello {
  int version = kVersion;
  std::string role;  // "worker" (nginx) or "cli"
  std::int64_t pid = 0;
};

// controld -> client, answer to hello.
struct Welcome {
  int version = kVersion;
  std::string daemon;  // "controld 0.1.0"
};

// worker/cli -> controld: push me every service's state now and on change.
struct Subscribe {};

// controld -> subscriber: sent once after the initial burst of states, so a
// worker knows its table is complete (a name missing now is unknown).
struct Synced {};

// controld -> subscriber: one service's current state.
struct StatePush {
  std::string service;
  ServiceState state = ServiceState::Cold;
  std::uint64_t epoch = 0;           // increases with every transition of this service
  std::int64_t sinceMs = 0;          // unix ms of the last transition
  std::int64_t startingSinceMs = 0;  // unix ms the current start began, 0 when not starting
  std::string cause;                 // request | idle | cli | recovery | driver | health | timeout | config | evicted
  std::string reason;                // why it failed (failed) or other detail
  std::int64_t taskId = 0;           // Semaphore task of the current/last operation, 0 if none
  std::int64_t retryAtMs = 0;        // failed: unix ms from which a request may wake it again (failure_backoff)
  std::int64_t lastStartMs = 0;      // how long the last good cold start took (wake to warm), 0 if none yet
  std::vector<std::string> models;   // the names clients may ask for instead of the service's (config)
  std::string upstream;              // "host:port" of the service's base_url, empty when it has none
  std::string waiting;  // starting, held back for room: "waiting for room on gpu-01: comfyui has 2 requests in flight"
  // In a cluster: unix ms since when this controld cannot reach etcd (it
  // starts and stops nothing until it can), 0 while it can or without one.
  std::int64_t etcdUnreachableSinceMs = 0;
};

// controld -> subscriber: the service no longer exists (config reload).
struct Removed {
  std::string service;
};

// worker/cli -> controld: a request wants this service; start it if needed.
// Duplicates are harmless.
struct Wake {
  std::string service;
  std::string reason;  // "GET /api/generate" — shown in logs and Semaphore's task message
};

// The buckets in which workers count how long requests were held (ms, upper
// bounds, inclusive); one more bucket counts the waits above the last bound.
// controld's ondemand_wait_duration_seconds histogram uses the same bounds.
inline constexpr std::array<std::uint64_t, 11> kWaitBucketsMs = {100,   250,   500,   1000,   2500,  5000,
                                                                 10000, 30000, 60000, 120000, 300000};
inline constexpr std::size_t kWaitBucketCount = kWaitBucketsMs.size() + 1;

// Waits that ended (the request went on or was answered), counted per bucket
// (not cumulative), with their total.
struct WaitCounts {
  std::array<std::uint64_t, kWaitBucketCount> buckets{};
  std::uint64_t sumMs = 0;

  void add(std::uint64_t ms);
  void add(const WaitCounts& other);
  std::uint64_t count() const;
  bool empty() const { return count() == 0; }
};

// worker -> controld, coalesced: requests started since the last report,
// requests in flight and held (waiting for the service) now, and the waits
// that ended since the last report, per service.
struct Activity {
  struct Entry {
    std::string service;
    std::uint64_t started = 0;
    std::uint64_t inFlight = 0;
    std::uint64_t held = 0;
    WaitCounts waited;
  };
  std::vector<Entry> entries;
};

// worker -> controld: answer to a pushed `stopping` state of the given epoch.
struct StoppingAck {
  std::string service;
  std::uint64_t epoch = 0;
  std::uint64_t inFlight = 0;
};

// cli -> controld: a request that gets one reply with the same id.
struct Command {
  std::int64_t id = 0;
  std::string verb;     // status | start | stop | stats
  std::string service;  // empty = all (status only)
};

// controld -> client: the other side did something wrong; the connection is
// closed after this.
struct Error {
  std::string message;
};

using Message =
    std::variant<Hello, Welcome, Subscribe, Synced, StatePush, Removed, Wake, Activity, StoppingAck, Command, Error>;

struct Decoded {
  std::optional<Message> message;  // set on success
  std::string error;               // set on failure: what was wrong, for the log
};

// Parses one line. Never throws.
Decoded decode(std::string_view line);

// Each returns one complete line including the trailing '\n'.
std::string encode(const Hello&);
std::string encode(const Welcome&);
std::string encode(const Subscribe&);
std::string encode(const Synced&);
std::string encode(const StatePush&);
std::string encode(const Removed&);
std::string encode(const Wake&);
std::string encode(const Activity&);
std::string encode(const StoppingAck&);
std::string encode(const Command&);
std::string encode(const Error&);

// --- controld's answers to the CLI -------------------------------------------
// Only controld sends these, so they are not Messages: controld encodes them,
// its CLI and the module's status page decode them (below);
// docs/PROTOCOL.md describes each.

// controld -> cli: the answer to a command, with the same id.
struct Reply {
  std::int64_t id = 0;
  bool ok = false;
  std::string error;  // empty: no error
  // start/stop: the service's state right after the command.
  struct Service {
    ServiceState state = ServiceState::Cold;
    std::uint64_t epoch = 0;
    std::string reason;
  };
  std::optional<Service> service;
};

// controld -> a client that asked for `events`: one transition of a service.
struct Event {
  std::string service;
  std::int64_t atMs = 0;
  ServiceState from = ServiceState::Cold;
  ServiceState to = ServiceState::Cold;
  std::string cause;
  std::string detail;
  std::int64_t taskId = 0;
  std::uint64_t epoch = 0;
  std::string machine;  // waits for room ("waiting"/"room" events): the machine; empty otherwise
};

// controld -> cli: the reply to `status`, what `controld status --json` prints
// (without type, id and ok). Its fields are defined here, not by the state file.
struct StatusReply {
  std::int64_t id = 0;
  std::int64_t nowMs = 0;
  struct Daemon {
    std::string version;
    std::int64_t pid = 0;
    std::int64_t startedAtMs = 0;
    std::string config;  // the configuration file
    std::uint64_t workerConnections = 0;
    std::uint64_t cliConnections = 0;
    std::vector<std::pair<std::string, std::uint64_t>> messagesReceived;  // by type
  } daemon;
  // The driver operation under way.
  struct Operation {
    std::string kind;  // start | stop
    std::string driver;
    std::int64_t taskId = 0;
    std::int64_t pid = 0;
    std::int64_t startedAtMs = 0;
    std::string operationId;
  };
  // The last operation and how it ended.
  struct LastOperation {
    std::string kind;
    std::int64_t startedAtMs = 0;
    std::int64_t endedAtMs = 0;
    bool ok = false;
    std::string reason;
    std::int64_t taskId = 0;
    std::string taskStatus;
  };
  struct Transition {
    std::int64_t atMs = 0;
    ServiceState from = ServiceState::Cold;
    ServiceState to = ServiceState::Cold;
    std::string cause;
    std::string detail;
    std::int64_t taskId = 0;
    std::string taskStatus;
  };
  // Per bucket (not cumulative), one count more than bounds (above the last).
  struct Histogram {
    std::vector<std::uint64_t> boundsMs;
    std::vector<std::uint64_t> counts;
    std::uint64_t sumMs = 0;
  };
  struct Service {
    std::string name;
    ServiceState state = ServiceState::Cold;
    std::string phase;
    std::uint64_t epoch = 0;
    std::int64_t sinceMs = 0;
    std::string cause;
    std::string reason;
    std::int64_t startingSinceMs = 0;
    std::int64_t retryAtMs = 0;
    std::uint64_t startsOk = 0;
    std::uint64_t startsFailed = 0;
    std::int64_t lastStartMs = 0;
    std::uint64_t inFlight = 0;
    std::uint64_t startedTotal = 0;
    std::uint64_t requestsWaiting = 0;                         // held by the workers now
    std::vector<std::pair<std::string, std::uint64_t>> stops;  // finished stops, by reason
    Histogram coldStart, wait;
    std::optional<std::int64_t> idleStopAtMs;
    std::string driver;
    std::string machine;
    std::string healthUrl;
    std::string baseUrl;
    std::int64_t idleTimeoutMs = 0;
    bool queued = false;
    std::optional<std::string> owner;  // in a cluster: the node that owns its operations
    // Shared machines: what it holds of its machine while starting, warm or
    // stopping (empty: nothing), whether it may be evicted, and what its
    // start waits for (empty when it does not wait).
    std::vector<std::pair<std::string, double>> needs;
    bool evictable = true;
    std::string waitingFor;
    std::optional<Operation> operation;
    std::optional<LastOperation> lastOperation;
    std::vector<Transition> history;  // oldest first
  };
  std::vector<Service> services;
  std::string clusterJson;  // in a cluster: the "cluster" object (docs/CLUSTER.md), as JSON text
  // Shared machines (`machines:`): per resource, who holds it, who waits.
  struct Machine {
    std::string name;
    std::int64_t minWarmMs = 0;
    struct Resource {
      std::string name;
      double total = 0;
      double used = 0;
    };
    std::vector<Resource> resources;
    struct Holder {
      std::string service;
      ServiceState state = ServiceState::Cold;
      std::vector<std::pair<std::string, double>> needs;
    };
    std::vector<Holder> holders;
    struct Waiter {
      std::string service;
      std::int64_t sinceMs = 0;
      std::string reason;
    };
    std::vector<Waiter> queue;  // first in line first
  };
  std::vector<Machine> machines;
};

std::string encode(const Reply&);
std::string encode(const Event&);
std::string encode(const StatusReply&);

// `controld status --json`: the status reply without type, id and ok, as one
// line of JSON without the '\n'.
std::string statusJson(const StatusReply&);

// The "cluster" object of a status reply (docs/CLUSTER.md), the fields the CLI
// shows. controld's cluster writes it (StatusReply::clusterJson).
struct ClusterStatus {
  std::string node;
  std::string prefix;
  struct Etcd {
    bool reachable = false;
    std::string endpoint;
    std::string error;
    std::int64_t revision = 0;
  } etcd;
  struct Lease {
    std::int64_t id = 0;
    std::int64_t ttlS = 0;
    std::int64_t renewedMsAgo = 0;  // -1: never renewed
  };
  std::optional<Lease> lease;
  struct Member {
    std::string node;
    std::int64_t lease = 0;
    std::int64_t pid = 0;
    std::string version;
    std::uint64_t services = 0;
    bool self = false;
  };
  std::vector<Member> members;
  std::optional<std::vector<std::pair<std::string, std::string>>> owners;  // service -> node
  struct Mismatch {
    std::string service;
    std::vector<std::string> nodes;
    std::vector<std::string> keys;
  };
  std::vector<Mismatch> mismatches;
};

// --- reading controld's answers ----------------------------------------------
// Each decode function reads one line (its '\n' may be there or not) and never
// throws on malformed input: it returns what was wrong instead. A field that
// is missing reads as its default unless the message means nothing without
// it; a field of the wrong type is always an error.

template <typename T>
struct Parsed {
  std::optional<T> value;  // set on success
  std::string error;       // set on failure
};

// What a client needs to know of a line before reading the rest: its type
// and, for a reply, its id, ok and error; for an error message, its message
// (in `error`). Read without parsing what follows, so a status reply of
// 10,000 services is parsed once, by decodeStatusReply.
struct Envelope {
  std::string type;
  std::int64_t id = 0;
  bool ok = false;
  std::string error;
};

Parsed<Envelope> decodeEnvelope(std::string_view line);
Parsed<Reply> decodeReply(std::string_view line);
Parsed<Event> decodeEvent(std::string_view line);
// A status reply, or what `status --json` prints (the same without type, id
// and ok). A reply with "ok": false is an error saying controld's error.
Parsed<StatusReply> decodeStatusReply(std::string_view line);
// StatusReply::clusterJson.
Parsed<ClusterStatus> decodeClusterStatus(std::string_view json);

// The type name a message carries on the wire ("state", "wake", ...).
std::string_view typeName(const Message&);

// Cuts UTF-8 text to at most maxBytes without splitting a character.
std::string truncateUtf8(std::string_view text, std::size_t maxBytes);

}  // namespace ondemand::protocol
