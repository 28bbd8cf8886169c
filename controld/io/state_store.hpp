#pragma once
// Each service's persisted state in state_dir, one JSON file per service
// (`<state_dir>/services/<name>.json`), replaced atomically: write a temp file,
// fsync it, rename it over the old one, fsync the directory. A crash at any
// point leaves either the old or the new file, never a torn one.
//
// state_dir also holds the output of each service's start and stop commands,
// `<state_dir>/<name>.command.log` (see CommandDriver). Service names are
// plain file names that never start with a dot (isValidServiceName), so these
// paths stay inside state_dir and meet neither `services/` nor the dot files
// of the controld user's home, which state_dir is when packaged.
//
// StateStore itself is synchronous; inside the daemon, StateWriter runs its
// writes on libuv's thread pool so an fsync never stalls the event loop, and
// tells the caller when a snapshot is durable — the record of an operation
// must be on disk before the driver does anything irreversible.

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "controld/core/service_machine.hpp"
#include "controld/io/uv.hpp"

namespace ondemand::controld {

class StateStore {
 public:
  explicit StateStore(std::string stateDir);

  // Creates the directories. Returns an error text on failure.
  std::optional<std::string> prepare();

  // What in state_dir this process cannot write to: state_dir itself,
  // services/, and the files in them (state files, command logs). Each one
  // would fail every write later; said once at start-up instead.
  struct NotWritable {
    std::string path;
    std::string owner;  // "root:root"
    std::string mode;   // "0755"
  };
  std::vector<NotWritable> notWritable() const;

  // Returns an error text on failure (logged by the caller; the daemon carries on).
  std::optional<std::string> save(const std::string& service, const MachineSnapshot& snapshot);
  // The same with the JSON text already made; safe to call from another thread.
  std::optional<std::string> writeText(const std::string& service, const std::string& text) const;
  void remove(const std::string& service);

  struct Loaded {
    std::map<std::string, MachineSnapshot> services;
    std::map<std::string, std::string> errors;  // file -> what was wrong (the file is ignored)
  };
  Loaded loadAll() const;

  const std::string& directory() const { return dir_; }
  std::string commandOutputPath(const std::string& service) const { return dir_ + "/" + service + ".command.log"; }

 private:
  std::string servicesDir() const { return dir_ + "/services"; }
  std::string dir_;
};

// Saves snapshots off the event loop. Writes of one service are coalesced (a
// newer snapshot replaces one still waiting) and never overlap; different
// services write in parallel. `durable` runs on the loop once a snapshot at
// least as new as the one given is on disk (with an empty error), or once
// writing it failed (with what failed: state_dir full or unwritable). A
// failed write is logged and tried again every retryEvery until it lands, so
// nothing is lost once space returns.
class StateWriter {
 public:
  using Durable = std::function<void(const std::string& error)>;
  StateWriter(uv_loop_t* loop, const StateStore& store, Millis retryEvery = Millis(1000));
  ~StateWriter();  // waits for writes under way

  void save(const std::string& service, const MachineSnapshot& snapshot, Durable durable = {});
  bool idle() const;
  // Services whose newest snapshot is not on disk because writing it failed.
  std::size_t failing() const;

 private:
  struct Pending;
  struct Job;
  void launch(const std::string& service);
  void finished(Job* job);
  void retryFailed();

  uv_loop_t* loop_;
  const StateStore& store_;
  Millis retryEvery_;
  std::map<std::string, std::unique_ptr<Pending>> services_;
  std::size_t running_ = 0;
  std::unique_ptr<Timer> retry_;
};

// The largest epoch a state file may hold: 2^53 - 1, exact in every JSON
// reader, and a billion years of a transition a second from wrapping.
inline constexpr std::uint64_t kMaxEpoch = (std::uint64_t{1} << 53) - 1;

// The snapshot with every point in time (not the durations) passed through
// convert: toWallMs to persist or show it, fromWallMs after loading it.
MachineSnapshot withTimes(MachineSnapshot snapshot, std::int64_t (*convert)(std::int64_t));

// JSON text of a snapshot and back; exposed for tests and `status --json`.
std::string snapshotToJson(const MachineSnapshot& snapshot);
std::optional<MachineSnapshot> snapshotFromJson(const std::string& text, std::string& error);

}  // namespace ondemand::controld
