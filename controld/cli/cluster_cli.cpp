#include "controld/cli/cluster_cli.hpp"

#include <string>

#include "controld/io/json_fields.hpp"

namespace ondemand::controld {

namespace {

std::string etcdLine(const rapidjson::Value& etcd) {
  if (!etcd.IsObject()) return "unknown";
  const bool reachable = etcd.HasMember("reachable") && etcd["reachable"].IsBool() && etcd["reachable"].GetBool();
  if (!reachable)
    return "UNREACHABLE (" + jsonString(etcd, "error") +
           "): serving from the last state, starting and stopping nothing";
  return "reachable via " + jsonString(etcd, "endpoint") + ", revision " + std::to_string(jsonInt64(etcd, "revision"));
}

void printOwnersAndMismatches(std::ostream& out, const rapidjson::Value& cluster) {
  if (cluster.HasMember("owners") && cluster["owners"].IsObject()) {
    out << "owners:\n";
    for (const auto& o : cluster["owners"].GetObject())
      out << "  " << o.name.GetString() << " -> " << (o.value.IsString() ? o.value.GetString() : "?") << "\n";
  }
  if (cluster.HasMember("mismatches") && cluster["mismatches"].IsArray()) {
    for (const auto& m : cluster["mismatches"].GetArray()) {
      std::string nodes, keys;
      if (m.HasMember("nodes") && m["nodes"].IsArray())
        for (const auto& n : m["nodes"].GetArray())
          nodes += (nodes.empty() ? "" : " and ") + std::string(n.IsString() ? n.GetString() : "?");
      if (m.HasMember("keys") && m["keys"].IsArray())
        for (const auto& k : m["keys"].GetArray())
          keys += (keys.empty() ? "" : ", ") + std::string(k.IsString() ? k.GetString() : "?");
      out << "CONFIG MISMATCH: service " << jsonString(m, "service") << " differs between nodes " << nodes << " ("
          << keys << ")\n";
    }
  }
}

}  // namespace

void printClusterSummary(std::ostream& out, const rapidjson::Value& reply) {
  if (!reply.HasMember("cluster") || !reply["cluster"].IsObject()) return;
  const auto& c = reply["cluster"];
  std::size_t members = c.HasMember("members") && c["members"].IsArray() ? c["members"].Size() : 0;
  out << "\ncluster: node " << jsonString(c, "node") << ", " << members << " nodes; etcd "
      << etcdLine(c.HasMember("etcd") ? c["etcd"] : c) << "\n";
  printOwnersAndMismatches(out, c);
}

void printClusterMembers(std::ostream& out, const rapidjson::Value& reply) {
  if (!reply.HasMember("cluster") || !reply["cluster"].IsObject()) {
    out << "not in a cluster (no cluster: in the configuration)\n";
    return;
  }
  const auto& c = reply["cluster"];
  out << "node:    " << jsonString(c, "node") << "\n"
      << "prefix:  " << jsonString(c, "prefix") << "\n"
      << "etcd:    " << etcdLine(c.HasMember("etcd") ? c["etcd"] : c) << "\n";
  if (c.HasMember("lease") && c["lease"].IsObject()) {
    const auto& l = c["lease"];
    out << "lease:   " << jsonInt64(l, "id") << " (ttl " << jsonInt64(l, "ttl_s") << "s, renewed "
        << jsonInt64(l, "renewed_ms_ago") << " ms ago)\n";
  }
  out << "\nNODE                LEASE                 PID       SERVICES  VERSION\n";
  if (c.HasMember("members") && c["members"].IsArray()) {
    for (const auto& m : c["members"].GetArray()) {
      std::string node = jsonString(m, "node");
      if (m.HasMember("self") && m["self"].IsBool() && m["self"].GetBool()) node += " *";
      std::string lease = std::to_string(jsonInt64(m, "lease"));
      std::string pid = std::to_string(jsonInt64(m, "pid"));
      std::string services = std::to_string(jsonInt64(m, "services"));
      node.resize(std::max<std::size_t>(node.size() + 1, 20), ' ');
      lease.resize(std::max<std::size_t>(lease.size() + 1, 22), ' ');
      pid.resize(std::max<std::size_t>(pid.size() + 1, 10), ' ');
      services.resize(std::max<std::size_t>(services.size() + 1, 10), ' ');
      out << node << lease << pid << services << jsonString(m, "version") << "\n";
    }
  }
  out << "\n";
  printOwnersAndMismatches(out, c);
}

}  // namespace ondemand::controld
