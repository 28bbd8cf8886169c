#pragma once
// The client subcommands: status, start, stop (optionally --wait), events,
// metrics; and printing a config's problems. Each returns the exit code.

#include <string>

#include "controld/cli/client.hpp"
#include "controld/config/config.hpp"

namespace ondemand::controld::cli {

int printProblems(const ConfigLoadResult& result);
int startOrStop(const SocketChoice& socket, const std::string& verb, const std::string& service, bool wait, bool json);
int status(const SocketChoice& socket, const std::string& service, bool json);
int metrics(const SocketChoice& socket);
// `controld cluster`: the cluster's members, leases, etcd and owners (docs/CLUSTER.md).
int cluster(const SocketChoice& socket, bool json);
int events(const SocketChoice& socket, bool json);

}  // namespace ondemand::controld::cli
