#include "controld/cli/install_units.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string_view>
#include <vector>

#include "controld/cli/packaged_units.hpp"

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

void replaceAll(std::string& text, std::string_view from, const std::string& to) {
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

// What a setting of the packaged unit becomes: kept as it is, dropped, or
// replaced by these lines (each "Key=value").
struct Rewritten {
  enum class How { Keep, Drop, Replace } how = How::Keep;
  std::vector<std::string> lines;
};
Rewritten keep() {
  return {};
}
Rewritten drop() {
  return {Rewritten::How::Drop, {}};
}
Rewritten replace(std::vector<std::string> lines) {
  return {Rewritten::How::Replace, std::move(lines)};
}
Rewritten replaceIf(bool wanted, std::string line) {
  return wanted ? replace({std::move(line)}) : drop();
}

using Rule = std::function<Rewritten(std::string_view key, const std::string& value)>;

// The packaged unit, line by line: its comments go (they speak of the
// package's paths and users), its sections and settings stay, rewritten by
// `rule`; `beforeInstall` lines end the section before [Install].
std::string rewriteUnit(std::string_view packaged, const std::string& header, const Rule& rule,
                        const std::vector<std::string>& beforeInstall = {}) {
  std::string out = header;
  bool blank = false;  // collapse the blank lines the comments leave behind
  auto emit = [&](const std::string& line) {
    if (line.empty()) {
      blank = !out.empty();
      return;
    }
    if (blank && line.front() == '[') out += "\n";
    blank = false;
    out += line + "\n";
  };
  std::size_t pos = 0;
  while (pos < packaged.size()) {
    std::size_t eol = packaged.find('\n', pos);
    if (eol == std::string_view::npos) eol = packaged.size();
    const std::string line(packaged.substr(pos, eol - pos));
    pos = eol + 1;
    if (!line.empty() && line.front() == '#') continue;
    if (line == "[Install]") {
      for (const auto& extra : beforeInstall)
        emit(extra);
      blank = true;  // [Install] stays apart from the last setting before it
    }
    const std::size_t eq = line.find('=');
    if (line.empty() || line.front() == '[' || eq == std::string::npos) {
      emit(line);
      continue;
    }
    const Rewritten r = rule(std::string_view(line).substr(0, eq), line.substr(eq + 1));
    switch (r.how) {
      case Rewritten::How::Keep:
        emit(line);
        break;
      case Rewritten::How::Drop:
        break;
      case Rewritten::How::Replace:
        for (const auto& l : r.lines)
          emit(l);
        break;
    }
  }
  return out;
}

}  // namespace

UnitFiles renderUnits(const Config& config, const UnitOptions& o) {
  const std::string socketDir = std::filesystem::path(config.socketPath).parent_path().string();
  const std::string runtimeDir = underDir(socketDir, "/run");
  const std::string stateDir = underDir(config.stateDir, "/var/lib");
  const bool root = o.user.empty();
  const std::string header = "# Written by `controld install-units --config " + o.configPath +
                             "` from the packaged unit.\n"
                             "# docs/OPERATIONS.md explains every setting; change them with a drop-in\n"
                             "# (systemctl edit controld) rather than here.\n";
  // Outside /run and /var/lib systemd makes no directory: ProtectSystem=strict
  // must be told the paths controld writes.
  std::vector<std::string> writable;
  if (stateDir.empty()) writable.push_back("ReadWritePaths=" + config.stateDir);
  if (runtimeDir.empty()) writable.push_back("ReadWritePaths=" + socketDir);

  UnitFiles u;
  u.service = rewriteUnit(
      kPackagedService, header,
      [&](std::string_view key, const std::string& value) -> Rewritten {
        if (key == "Documentation") return replace({"Documentation=man:controld(8)"});
        if (key == "User") {
          return replace(
              {root ? "# Runs as root: install-units --user NAME for a user of its own." : "User=" + o.user});
        }
        if (key == "Group") return replaceIf(!root, "Group=" + o.group);
        if (key == "SupplementaryGroups") {
          return replaceIf(!root && !config.socketGroup.empty(), "SupplementaryGroups=" + config.socketGroup);
        }
        if (key == "ExecStartPre" || key == "ExecStart" || key == "ExecReload") {
          std::string command = value;
          replaceAll(command, "/usr/bin/controld", o.binary);
          replaceAll(command, "/etc/controld/controld.yaml", o.configPath);
          return replace({std::string(key) + "=" + command});
        }
        if (key == "RuntimeDirectory") return replaceIf(!runtimeDir.empty(), "RuntimeDirectory=" + runtimeDir);
        if (key.rfind("RuntimeDirectory", 0) == 0) return runtimeDir.empty() ? drop() : keep();
        if (key == "StateDirectory") return replaceIf(!stateDir.empty(), "StateDirectory=" + stateDir);
        if (key.rfind("StateDirectory", 0) == 0) return stateDir.empty() ? drop() : keep();
        return keep();
      },
      writable);

  const std::string socketHeader = "# Written by `controld install-units --config " + o.configPath +
                                   "`: controld's control socket,\n"
                                   "# held by systemd so nginx workers are never refused while controld restarts.\n";
  u.socket = rewriteUnit(kPackagedSocket, socketHeader, [&](std::string_view key, const std::string&) -> Rewritten {
    if (key == "Documentation") return replace({"Documentation=man:controld(8)"});
    if (key == "ListenStream") return replace({"ListenStream=" + config.socketPath});
    if (key == "SocketUser") return replaceIf(!root, "SocketUser=" + o.user);
    if (key == "SocketGroup") return replaceIf(!config.socketGroup.empty(), "SocketGroup=" + config.socketGroup);
    if (key == "SocketMode") return replace({"SocketMode=" + octal(config.socketMode.value_or(0660))});
    return keep();
  });
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
