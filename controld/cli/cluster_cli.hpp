#pragma once
// The cluster's part of `controld status` and `controld cluster`
// (docs/CLUSTER.md), read from the status reply's "cluster" object.

#include <rapidjson/document.h>

#include <cstdint>
#include <ostream>

namespace ondemand::controld {

// A few lines under the status table: this node, etcd's health, owners, mismatches.
void printClusterSummary(std::ostream& out, const rapidjson::Value& reply);
// `controld cluster`: members and their leases, etcd, owners.
void printClusterMembers(std::ostream& out, const rapidjson::Value& reply);

}  // namespace ondemand::controld
