#include "controld/cli/install_units.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace ondemand::controld {

namespace {

// /var/lib/NAME -> "NAME" (systemd's StateDirectory=), else "".
std::string underDir(const std::string& path, const std::string& base) {
  const std::string prefix = base + "/";
  if (path.rfind(prefix, 0) != 0) return {};
  const std::string rest = path.substr(prefix.size());
  return rest.empty() || rest.find('/') != std::string::npos ? std::string() : rest;
}

std::string octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode));
  return buf;
}

}  // namespace

UnitFiles renderUnits(const Config& config, const UnitOptions& o) {
  const std::string socketDir = std::filesystem::path(config.socketPath).parent_path().string();
  const std::string runtimeDir = underDir(socketDir, "/run");
  const std::string stateDir = underDir(config.stateDir, "/var/lib");
  UnitFiles u;
  u.service = "# Written by `controld install-units --config " + o.configPath +
              "`.\n"
              "# docs/OPERATIONS.md explains every setting; change them with a drop-in\n"
              "# (systemctl edit controld) rather than here.\n"
              "[Unit]\n"
              "Description=ondemand control daemon (wake-on-request for nginx)\n"
              "Documentation=man:controld(8)\n"
              "After=network-online.target controld.socket\n"
              "Wants=network-online.target\n"
              "Requires=controld.socket\n"
              "Before=nginx.service\n"
              "\n"
              "[Service]\n"
              "Type=notify\n"
              "NotifyAccess=main\n";
  if (!o.user.empty()) {
    u.service += "User=" + o.user + "\nGroup=" + o.group + "\n";
    if (!config.socketGroup.empty()) u.service += "SupplementaryGroups=" + config.socketGroup + "\n";
  } else {
    u.service += "# Runs as root: install-units --user NAME for a user of its own.\n";
  }
  u.service +=
      "EnvironmentFile=-/etc/default/controld\n"
      "ExecStartPre=" +
      o.binary + " check-config --config " + o.configPath + "\nExecStart=" + o.binary + " serve --config " +
      o.configPath + "\nExecReload=" + o.binary + " check-config --config " + o.configPath +
      "\nExecReload=/bin/kill -HUP $MAINPID\n"
      "Restart=on-failure\n"
      "RestartSec=2s\n"
      "RestartPreventExitStatus=2\n"
      "WatchdogSec=30s\n"
      "KillMode=process\n"
      "TimeoutStopSec=30s\n";
  if (!runtimeDir.empty()) {
    u.service += "RuntimeDirectory=" + runtimeDir + "\nRuntimeDirectoryMode=0755\nRuntimeDirectoryPreserve=yes\n";
  }
  if (!stateDir.empty()) u.service += "StateDirectory=" + stateDir + "\nStateDirectoryMode=0750\n";
  u.service +=
      "UMask=0027\n"
      "LimitNOFILE=65536\n"
      "NoNewPrivileges=yes\n"
      "ProtectSystem=strict\n"
      "ProtectHome=read-only\n"
      "PrivateTmp=yes\n"
      "ProtectControlGroups=yes\n";
  if (stateDir.empty()) u.service += "ReadWritePaths=" + config.stateDir + "\n";
  if (runtimeDir.empty()) u.service += "ReadWritePaths=" + socketDir + "\n";
  u.service += "\n[Install]\nWantedBy=multi-user.target\n";

  u.socket = "# Written by `controld install-units --config " + o.configPath +
             "`: controld's control socket,\n"
             "# held by systemd so nginx workers are never refused while controld restarts.\n"
             "[Unit]\n"
             "Description=ondemand control socket (wake-on-request for nginx)\n"
             "Documentation=man:controld(8)\n"
             "\n"
             "[Socket]\n"
             "ListenStream=" +
             config.socketPath + "\n";
  if (!o.user.empty()) u.socket += "SocketUser=" + o.user + "\n";
  if (!config.socketGroup.empty()) u.socket += "SocketGroup=" + config.socketGroup + "\n";
  u.socket += "SocketMode=" + octal(config.socketMode.value_or(0660)) +
              "\n"
              "DirectoryMode=0755\n"
              "RemoveOnStop=yes\n"
              "\n[Install]\nWantedBy=sockets.target\n";
  return u;
}

int installUnits(const std::string& configPath, const std::string& dir, std::string binary, const std::string& user) {
  auto result = loadConfig(configPath, processEnvironment());
  if (!result.config) {
    for (const auto& e : result.errors)
      std::cerr << formatProblem(e) << "\n";
    return 2;
  }
  std::string primaryGroup;
  if (!user.empty()) {
    const passwd* pw = ::getpwnam(user.c_str());
    if (!pw) {
      std::cerr << "controld install-units: there is no user " << user
                << " (create it first, e.g. adduser --system --group " << user << ")\n";
      return 2;
    }
    const struct group* gr = ::getgrgid(pw->pw_gid);
    primaryGroup = gr ? gr->gr_name : std::to_string(pw->pw_gid);
  }
  std::error_code ec;
  if (binary.empty()) binary = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  const std::string config = std::filesystem::absolute(configPath, ec).lexically_normal().string();
  const UnitFiles units = renderUnits(*result.config, UnitOptions{binary, config, user, primaryGroup});
  std::filesystem::create_directories(dir, ec);
  for (const auto& [name, text] : {std::pair{"controld.service", &units.service}, {"controld.socket", &units.socket}}) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    std::ofstream out(path, std::ios::trunc);
    out << *text;
    out.close();
    if (!out) {
      std::cerr << "controld install-units: cannot write " << path << "\n";
      return 1;
    }
    std::cout << "wrote " << path << "\n";
  }
  std::cout << "next: systemctl daemon-reload && systemctl enable --now controld.socket controld.service\n";
  return 0;
}

}  // namespace ondemand::controld
