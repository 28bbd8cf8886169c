#pragma once
// Each service's persisted state in state_dir, one JSON file per service
// (`<state_dir>/services/<name>.json`), replaced atomically: write a temp file,
// fsync it, rename it over the old one, fsync the directory. A crash at any
// point leaves either the old or the new file, never a torn one.
//
// Writes are synchronous on purpose: they happen only on transitions and
// operation progress (never per request), and the order matters — the record of
// an operation must be on disk before the driver does anything irreversible.

#include <map>
#include <optional>
#include <string>

#include "controld/service_machine.hpp"

namespace ondemand::controld {

class StateStore {
 public:
  explicit StateStore(std::string stateDir);

  // Creates the directories. Returns an error text on failure.
  std::optional<std::string> prepare();

  // Returns an error text on failure (logged by the caller; the daemon carries on).
  std::optional<std::string> save(const std::string& service, const MachineSnapshot& snapshot);
  void remove(const std::string& service);

  struct Loaded {
    std::map<std::string, MachineSnapshot> services;
    std::map<std::string, std::string> errors;  // file -> what was wrong (the file is ignored)
  };
  Loaded loadAll() const;

  const std::string& directory() const { return dir_; }

 private:
  std::string servicesDir() const { return dir_ + "/services"; }
  std::string dir_;
};

// JSON text of a snapshot and back; exposed for tests and `status --json`.
std::string snapshotToJson(const MachineSnapshot& snapshot);
std::optional<MachineSnapshot> snapshotFromJson(const std::string& text, std::string& error);

}  // namespace ondemand::controld
