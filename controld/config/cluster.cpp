// cluster: in controld.yaml (docs/CONFIGURATION.md, docs/CLUSTER.md).

#include <unistd.h>

#include <chrono>

#include "controld/config/loader.hpp"

namespace ondemand::controld::config_detail {

using namespace std::chrono_literals;

// A token or password kept in a file: read now, whitespace trimmed; an
// unreadable or empty file is an error that names it.
void Loader::secretFile(const Setting& s, const char* what, std::string& out) {
  std::string file;
  if (!path(s, file)) return;
  std::string why;
  const auto content = readFile_(file, why);
  if (!content) {
    read_.error(s, std::string("cannot read the ") + what + " file " + quote(file) + ": " + why);
  } else if (trim(*content).empty()) {
    read_.error(s, std::string("the ") + what + " file " + quote(file) + " is empty");
  } else {
    out = trim(*content);
  }
}

void Loader::readCluster(const Setting& s, Config& config) {
  if (!s.node.IsMap()) {
    read_.expected(s, "a mapping with etcd (the endpoints), node, prefix and lease_ttl");
    return;
  }
  ClusterSettings cluster;
  auto readFileSetting = [&](const Setting& v, std::string& out) {
    if (!path(v, out)) return;
    std::string why;
    if (!readFile_(out, why)) read_.error(v, "cannot read " + quote(out) + ": " + why);
  };
  readMapping(
      problems_, s.node, s.key,
      {
          {"etcd",
           [&](const Setting& v) {
             constexpr std::string_view what = "a list of etcd client URLs, e.g. [\"http://10.0.0.1:2379\"]";
             std::vector<YAML::Node> items;
             if (v.node.IsScalar()) {
               items.push_back(v.node);
             } else if (v.node.IsSequence() && v.node.size() > 0) {
               for (const YAML::Node& item : v.node)
                 items.push_back(item);
             } else {
               read_.expected(v, what);
               return;
             }
             for (const YAML::Node& item : items) {
               const Setting one{v.key, keyLine(item) ? keyLine(item) : v.line, item, {}};
               std::string url;
               if (!read_.url(one, url)) return;
               while (endsWith(url, "/"))
                 url.pop_back();
               if (std::find(cluster.endpoints.begin(), cluster.endpoints.end(), url) != cluster.endpoints.end()) {
                 read_.error(one, "the endpoint " + quote(url) + " is listed twice");
                 return;
               }
               cluster.endpoints.push_back(url);
             }
           }},
          {"node",
           [&](const Setting& v) {
             if (!read_.text(v, cluster.node, "a node name")) return;
             if (!isValidServiceName(cluster.node)) {
               read_.expected(v, "a node name of letters, digits, '-', '_' or '.'");
             }
           }},
          {"prefix",
           [&](const Setting& v) {
             if (!read_.text(v, cluster.prefix, "a key prefix like /ondemand/")) return;
             if (cluster.prefix.find_first_of(" \t\r\n") != std::string::npos) {
               read_.expected(v, "a key prefix without spaces, like /ondemand/");
             } else if (!endsWith(cluster.prefix, "/")) {
               cluster.prefix.push_back('/');
             }
           }},
          {"lease_ttl",
           [&](const Setting& v) {
             if (!read_.duration(v, cluster.leaseTtl, DefaultUnit::Seconds, false)) return;
             if (cluster.leaseTtl < 2s || cluster.leaseTtl.count() % 1000 != 0) {
               read_.expected(v, "whole seconds, at least 2s (etcd's leases count seconds)");
             }
           }},
          {"request_timeout",
           [&](const Setting& v) { read_.duration(v, cluster.requestTimeout, DefaultUnit::Seconds, false); }},
          {"username", [&](const Setting& v) { read_.text(v, cluster.username, "an etcd user name"); }},
          {"password_file", [&](const Setting& v) { secretFile(v, "password", cluster.password); }},
          {"ca_file", [&](const Setting& v) { readFileSetting(v, cluster.caFile); }},
          {"cert_file", [&](const Setting& v) { readFileSetting(v, cluster.certFile); }},
          {"key_file", [&](const Setting& v) { readFileSetting(v, cluster.keyFile); }},
      });
  auto line = [&](const std::string& k) {
    auto it = problems_.lines.find(s.key + "." + k);
    return it != problems_.lines.end() ? it->second : s.line;
  };
  if (!problems_.lines.count(s.key + ".etcd")) {
    problems_.error(s.line, s.key + ".etcd", "missing: the etcd endpoints controld coordinates through");
  }
  if (problems_.lines.count(s.key + ".username") != problems_.lines.count(s.key + ".password_file")) {
    const bool hasUser = problems_.lines.count(s.key + ".username");
    problems_.error(line(hasUser ? "username" : "password_file"), s.key + (hasUser ? ".password_file" : ".username"),
                    hasUser ? "missing: username needs password_file" : "missing: password_file needs username");
  }
  if (problems_.lines.count(s.key + ".cert_file") != problems_.lines.count(s.key + ".key_file")) {
    const bool hasCert = problems_.lines.count(s.key + ".cert_file");
    problems_.error(line(hasCert ? "cert_file" : "key_file"), s.key + (hasCert ? ".key_file" : ".cert_file"),
                    "cert_file and key_file go together");
  }
  if (cluster.node.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) == 0) cluster.node = host;
    if (cluster.node.empty() || !isValidServiceName(cluster.node)) {
      problems_.error(s.line, s.key + ".node",
                      "missing, and the host name " + quote(cluster.node) + " is no usable node name; set node");
    }
  }
  config.cluster = std::move(cluster);
}

}  // namespace ondemand::controld::config_detail
