#include <catch2/catch.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "controld/cli/install_units.hpp"
#include "controld/cli/packaged_units.hpp"

using namespace ondemand::controld;

namespace {

std::vector<std::string> linesOf(std::string_view text) {
  std::vector<std::string> lines;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  return lines;
}

bool hasLine(const std::string& text, const std::string& line) {
  for (const auto& l : linesOf(text))
    if (l == line) return true;
  return false;
}

bool hasKey(const std::string& text, const std::string& key) {
  for (const auto& l : linesOf(text))
    if (l.rfind(key + "=", 0) == 0) return true;
  return false;
}

// Every setting of the packaged unit that install-units has no reason to
// change is in the written unit, word for word: a setting added to
// packaging/ reaches source installs without anyone touching install-units.
void keepsThePackagedSettings(std::string_view packaged, const std::string& written,
                              const std::set<std::string>& rewritten) {
  for (const auto& line : linesOf(packaged)) {
    if (line.empty() || line.front() == '#') continue;
    const std::string key = line.substr(0, line.find('='));
    if (rewritten.count(key)) continue;
    INFO(line);
    CHECK(hasLine(written, line));
  }
}

Config configAt(const std::string& socket, const std::string& stateDir, const std::string& group) {
  Config c;
  c.socketPath = socket;
  c.stateDir = stateDir;
  c.socketGroup = group;
  c.socketMode = 0660;
  return c;
}

const std::set<std::string> kServiceRewrites = {"Documentation", "User",      "Group",      "SupplementaryGroups",
                                                "ExecStartPre",  "ExecStart", "ExecReload", "RuntimeDirectory",
                                                "StateDirectory"};
const std::set<std::string> kSocketRewrites = {"Documentation", "ListenStream", "SocketUser", "SocketGroup",
                                               "SocketMode"};

}  // namespace

TEST_CASE("install-units: a user of its own, socket under /run, state under /var/lib") {
  const UnitFiles u = renderUnits(configAt("/run/od/od.sock", "/var/lib/od", "www-data"),
                                  UnitOptions{"/opt/od/bin/controld", "/etc/od/controld.yaml", "od", "od"});
  CHECK(hasLine(u.service, "User=od"));
  CHECK(hasLine(u.service, "Group=od"));
  CHECK(hasLine(u.service, "SupplementaryGroups=www-data"));
  CHECK(hasLine(u.service, "ExecStartPre=/opt/od/bin/controld check-config --config /etc/od/controld.yaml"));
  CHECK(hasLine(u.service, "ExecStart=/opt/od/bin/controld serve --config /etc/od/controld.yaml"));
  CHECK(hasLine(u.service, "ExecReload=/opt/od/bin/controld check-config --config /etc/od/controld.yaml"));
  CHECK(hasLine(u.service, "ExecReload=/bin/kill -HUP $MAINPID"));
  CHECK(hasLine(u.service, "RuntimeDirectory=od"));
  CHECK(hasLine(u.service, "StateDirectory=od"));
  CHECK_FALSE(hasKey(u.service, "ReadWritePaths"));
  CHECK(u.service.find("/usr/bin/controld") == std::string::npos);
  CHECK(u.service.find("/etc/controld/controld.yaml") == std::string::npos);
  keepsThePackagedSettings(kPackagedService, u.service, kServiceRewrites);

  CHECK(hasLine(u.socket, "ListenStream=/run/od/od.sock"));
  CHECK(hasLine(u.socket, "SocketUser=od"));
  CHECK(hasLine(u.socket, "SocketGroup=www-data"));
  CHECK(hasLine(u.socket, "SocketMode=0660"));
  keepsThePackagedSettings(kPackagedSocket, u.socket, kSocketRewrites);
}

TEST_CASE("install-units: as root, with the socket and the state elsewhere") {
  Config c = configAt("/srv/od/run/c.sock", "/srv/od/state", "");
  c.socketMode = 0600;
  const UnitFiles u = renderUnits(c, UnitOptions{"/usr/local/bin/controld", "/srv/od/controld.yaml", "", ""});
  for (const char* key : {"User", "Group", "SupplementaryGroups", "RuntimeDirectory", "RuntimeDirectoryMode",
                          "RuntimeDirectoryPreserve", "StateDirectory", "StateDirectoryMode"}) {
    INFO(key);
    CHECK_FALSE(hasKey(u.service, key));
  }
  CHECK(u.service.find("# Runs as root") != std::string::npos);
  // systemd makes neither directory: ProtectSystem=strict is told both, in
  // [Service], before [Install].
  const auto install = u.service.find("\n\n[Install]\n");
  REQUIRE(install != std::string::npos);
  CHECK(u.service.find("ReadWritePaths=/srv/od/state\n") < install);
  CHECK(u.service.find("ReadWritePaths=/srv/od/run\n") < install);
  CHECK(hasLine(u.service, "WantedBy=multi-user.target"));
  std::set<std::string> rewrites = kServiceRewrites;
  rewrites.insert({"RuntimeDirectoryMode", "RuntimeDirectoryPreserve", "StateDirectoryMode"});
  keepsThePackagedSettings(kPackagedService, u.service, rewrites);

  CHECK_FALSE(hasKey(u.socket, "SocketUser"));
  CHECK_FALSE(hasKey(u.socket, "SocketGroup"));
  CHECK(hasLine(u.socket, "SocketMode=0600"));
  CHECK(hasLine(u.socket, "ListenStream=/srv/od/run/c.sock"));
}

TEST_CASE("install-units: the written units carry no comment of the package's") {
  const UnitFiles u =
      renderUnits(configAt("/run/controld/controld.sock", "/var/lib/controld", "www-data"),
                  UnitOptions{"/usr/bin/controld", "/etc/controld/controld.yaml", "controld", "controld"});
  // The packaged comments speak of the package's paths; only the header stays.
  std::size_t comments = 0;
  for (const auto& line : linesOf(u.service))
    comments += !line.empty() && line.front() == '#';
  CHECK(comments == 3);
  CHECK(u.service.rfind("# Written by `controld install-units --config /etc/controld/controld.yaml`", 0) == 0);
  CHECK(u.service.find("\n\n\n") == std::string::npos);
  CHECK(u.service.find("\n\n[Install]\n") != std::string::npos);
}
