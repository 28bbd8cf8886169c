// `cluster:` in controld.yaml: what it reads, and each mistake named by file,
// line and key.
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "controld/config/config.hpp"

using namespace ondemand::controld;
using namespace std::chrono_literals;

namespace {

struct Dir {
  Dir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "controld-cluster-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~Dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream((path / name).string()) << text;
    return (path / name).string();
  }
  std::filesystem::path path;
};

const std::string kService = "services:\n  a:\n    health_url: http://127.0.0.1:1/h\n    start_command: [\"true\"]\n";

std::string problems(const ConfigLoadResult& r) {
  std::string out;
  for (const auto& p : r.errors)
    out += formatProblem(p) + "\n";
  return out;
}

}  // namespace

TEST_CASE("cluster: endpoints, node, prefix, lease_ttl, auth and TLS files are read") {
  Dir dir;
  dir.write("pw", "secret\n");
  dir.write("ca.pem", "x");
  const auto file = dir.write("controld.yaml",
                              "cluster:\n"
                              "  etcd: [\"http://127.0.0.1:2379/\", \"https://10.0.0.2:2379\"]\n"
                              "  node: edge-1\n"
                              "  prefix: /od\n"
                              "  lease_ttl: 4s\n"
                              "  username: ondemand\n"
                              "  password_file: pw\n"
                              "  ca_file: ca.pem\n" +
                                  kService);
  const auto r = loadConfig(file, {});
  INFO(problems(r));
  REQUIRE(r.config);
  REQUIRE(r.config->cluster);
  const auto& c = *r.config->cluster;
  CHECK(c.endpoints == std::vector<std::string>{"http://127.0.0.1:2379", "https://10.0.0.2:2379"});
  CHECK(c.node == "edge-1");
  CHECK(c.prefix == "/od/");
  CHECK(c.leaseTtl == 4s);
  CHECK(c.username == "ondemand");
  CHECK(c.password == "secret");
  CHECK(c.caFile == (dir.path / "ca.pem").string());
}

TEST_CASE("cluster: the node defaults to the host name, the prefix to /ondemand/") {
  Dir dir;
  const auto r = loadConfig(dir.write("controld.yaml", "cluster:\n  etcd: http://127.0.0.1:2379\n" + kService), {});
  INFO(problems(r));
  REQUIRE(r.config);
  REQUIRE(r.config->cluster);
  CHECK(!r.config->cluster->node.empty());
  CHECK(r.config->cluster->prefix == "/ondemand/");
  CHECK(r.config->cluster->leaseTtl == 10s);
}

TEST_CASE("cluster: mistakes name the file, the line and the key") {
  Dir dir;
  struct Case {
    std::string yaml;
    std::string expected;
  };
  const Case cases[] = {
      {"cluster:\n  node: a\n", "controld.yaml:1: cluster.etcd: missing"},
      {"cluster:\n  etcd: [\"ftp://x\"]\n", "controld.yaml:2: cluster.etcd: expected an http:// or https:// URL"},
      {"cluster:\n  etcd: [\"http://a:1\", \"http://a:1\"]\n",
       "cluster.etcd: the endpoint \"http://a:1\" is listed twice"},
      {"cluster:\n  etcd: http://a:1\n  lease_ttl: 1500ms\n",
       "controld.yaml:3: cluster.lease_ttl: expected whole seconds"},
      {"cluster:\n  etcd: http://a:1\n  lease_ttl: 1s\n", "cluster.lease_ttl: expected whole seconds, at least 2s"},
      {"cluster:\n  etcd: http://a:1\n  username: u\n", "controld.yaml:3: cluster.password_file: missing"},
      {"cluster:\n  etcd: http://a:1\n  password_file: /nonexistent/pw\n", "cluster.password_file: cannot read"},
      {"cluster:\n  etcd: http://a:1\n  cert_file: /nonexistent/c\n", "cluster.cert_file: cannot read"},
      {"cluster:\n  etcd: http://a:1\n  node: \"a b\"\n", "controld.yaml:3: cluster.node: expected a node name"},
      {"cluster:\n  etcd: http://a:1\n  leese_ttl: 3s\n", "cluster.leese_ttl"},
      {"cluster: yes\n", "controld.yaml:1: cluster: expected a mapping"},
  };
  for (const auto& c : cases) {
    INFO(c.yaml);
    const auto r = loadConfig(dir.write("controld.yaml", c.yaml + kService), {});
    CHECK(!r.config);
    CHECK(problems(r).find(c.expected) != std::string::npos);
    INFO(problems(r));
  }
}

TEST_CASE("cluster: and machines: together are refused, naming the machines line") {
  Dir dir;
  const auto r = loadConfig(dir.write("controld.yaml",
                                      "cluster:\n  etcd: http://127.0.0.1:2379\n"
                                      "machines:\n  gpu-01:\n    resources: { vram_gb: 24 }\n" +
                                          kService),
                            {});
  CHECK(!r.config);
  INFO(problems(r));
  CHECK(problems(r).find("controld.yaml:3: machines: machines: and cluster: cannot be used together yet") !=
        std::string::npos);
}
