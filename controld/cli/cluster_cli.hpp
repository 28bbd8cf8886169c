#pragma once
// The cluster's part of `controld status` and `controld cluster`
// (docs/CLUSTER.md), read from the status reply's "cluster" object.

#include <ostream>

#include "shared/protocol.hpp"

namespace ondemand::controld {

// A few lines under the status table: this node, etcd's health, owners, mismatches.
void printClusterSummary(std::ostream& out, const protocol::StatusReply& reply);
// `controld cluster`: members and their leases, etcd, owners.
void printClusterMembers(std::ostream& out, const protocol::StatusReply& reply);

}  // namespace ondemand::controld
