#include "controld/cli/cluster_cli.hpp"

#include <algorithm>
#include <string>

namespace ondemand::controld {

namespace {

using protocol::ClusterStatus;

std::string etcdLine(const ClusterStatus::Etcd& etcd) {
  if (!etcd.reachable)
    return "UNREACHABLE (" + etcd.error + "): serving from the last state, starting and stopping nothing";
  return "reachable via " + etcd.endpoint + ", revision " + std::to_string(etcd.revision);
}

std::string joined(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (const auto& item : items)
    out += (out.empty() ? "" : separator) + item;
  return out;
}

void printOwnersAndMismatches(std::ostream& out, const ClusterStatus& cluster) {
  if (cluster.owners) {
    out << "owners:\n";
    for (const auto& [service, node] : *cluster.owners)
      out << "  " << service << " -> " << node << "\n";
  }
  for (const auto& m : cluster.mismatches) {
    out << "CONFIG MISMATCH: service " << m.service << " differs between nodes " << joined(m.nodes, " and ") << " ("
        << joined(m.keys, ", ") << ")\n";
  }
}

// The reply's cluster object; nullopt (and a line saying why, when it is
// unreadable) when there is none.
std::optional<ClusterStatus> clusterOf(std::ostream& out, const protocol::StatusReply& reply) {
  if (reply.clusterJson.empty()) return std::nullopt;
  auto cluster = protocol::decodeClusterStatus(reply.clusterJson);
  if (!cluster.value) out << "\ncluster: unreadable status (" << cluster.error << ")\n";
  return std::move(cluster.value);
}

std::string padded(std::string text, std::size_t width) {
  text.resize(std::max<std::size_t>(text.size() + 1, width), ' ');
  return text;
}

}  // namespace

void printClusterSummary(std::ostream& out, const protocol::StatusReply& reply) {
  const auto c = clusterOf(out, reply);
  if (!c) return;
  out << "\ncluster: node " << c->node << ", " << c->members.size() << " nodes; etcd " << etcdLine(c->etcd) << "\n";
  printOwnersAndMismatches(out, *c);
}

void printClusterMembers(std::ostream& out, const protocol::StatusReply& reply) {
  if (reply.clusterJson.empty()) {
    out << "not in a cluster (no cluster: in the configuration)\n";
    return;
  }
  const auto c = clusterOf(out, reply);
  if (!c) return;
  out << "node:    " << c->node << "\n"
      << "prefix:  " << c->prefix << "\n"
      << "etcd:    " << etcdLine(c->etcd) << "\n";
  if (const auto& l = c->lease) {
    out << "lease:   " << l->id << " (ttl " << l->ttlS << "s, renewed " << l->renewedMsAgo << " ms ago)\n";
  }
  out << "\nNODE                LEASE                 PID       SERVICES  VERSION\n";
  for (const auto& m : c->members) {
    out << padded(m.node + (m.self ? " *" : ""), 20) << padded(std::to_string(m.lease), 22)
        << padded(std::to_string(m.pid), 10) << padded(std::to_string(m.services), 10) << m.version << "\n";
  }
  out << "\n";
  printOwnersAndMismatches(out, *c);
}

}  // namespace ondemand::controld
