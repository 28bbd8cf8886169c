#include "controld/cli/client.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>

#include <fstream>
#include <iostream>
#include <iterator>

namespace ondemand::controld::cli {

namespace {

std::string modeString(mode_t mode) {
  std::string out = S_ISSOCK(mode) ? "s" : "-";
  const char* letters = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i)
    out += (mode & (0400 >> i)) ? letters[i] : '-';
  return out;
}

std::string userName(uid_t uid) {
  if (const passwd* pw = ::getpwuid(uid)) return pw->pw_name;
  return std::to_string(uid);
}

std::string groupName(gid_t gid) {
  if (const group* gr = ::getgrgid(gid)) return gr->gr_name;
  return std::to_string(gid);
}

// "R (running)", "T (stopped)", ... from /proc/PID/stat; empty when unknown.
std::string processState(pid_t pid) {
  if (pid <= 0) return {};
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return {};
  return std::string(1, text[close + 2]);
}

}  // namespace

int unreachable(const SocketChoice& socket, const ClientError& error, pid_t peerPid) {
  const std::string& path = socket.path;
  const std::string startHint = "  start it: systemctl start controld (or controld serve --config FILE)";
  const std::string elsewhere =
      socket.defaulted ? "\n  if it listens elsewhere, name that socket: --socket PATH, or --config FILE (its socket:)"
                       : "";
  switch (error.kind) {
    case Unreachable::NoSocket:
      std::cerr << "controld is not running: there is no socket at " << path << " (" << error.detail << ")\n"
                << startHint << elsewhere << "\n";
      break;
    case Unreachable::NotListening:
      std::cerr << "controld is not running: " << path
                << " exists but nothing listens on it (left by a controld that did not shut down cleanly)\n"
                << startHint << "; it replaces the old socket" << elsewhere << "\n";
      break;
    case Unreachable::PermissionDenied: {
      std::cerr << "controld is not reachable: connecting to " << path << " failed: " << error.detail;
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0) {
        std::cerr << " (" << modeString(st.st_mode) << " " << userName(st.st_uid) << " " << groupName(st.st_gid)
                  << "; you are " << userName(::geteuid()) << ")\n";
        const bool groupMay = (st.st_mode & 0060) == 0060;
        std::cerr << "  run the command as root (sudo controld ...)";
        if (st.st_uid != 0) std::cerr << " or as " << userName(st.st_uid);
        if (groupMay) std::cerr << ", or as a member of group " << groupName(st.st_gid);
        std::cerr << "; socket_mode and socket_group in controld.yaml decide who may connect\n";
      } else {
        std::cerr << " (its directory is closed to " << userName(::geteuid()) << ")\n"
                  << "  run the command as root (sudo controld ...), or as the user controld runs as\n";
      }
      break;
    }
    case Unreachable::NoAnswer: {
      std::cerr << "controld did not answer";
      if (peerPid > 0) std::cerr << " (pid " << peerPid << ")";
      std::cerr << " on " << path << ": " << error.detail << "\n";
      if (processState(peerPid) == "T") {
        std::cerr << "  it is stopped (SIGSTOP or SIGTSTP): resume it with kill -CONT " << peerPid << "\n";
      } else {
        std::cerr << "  it runs but does not answer: see its log (journalctl -u controld) and systemctl status "
                     "controld; restart it if it stays stuck\n";
      }
      break;
    }
    case Unreachable::Closed:
      std::cerr << "controld on " << path << " went away: " << error.detail << "\n"
                << "  see its log (journalctl -u controld); systemd restarts it after a crash\n";
      break;
    case Unreachable::Other:
      std::cerr << "controld is not reachable on " << path << ": " << error.detail << "\n";
      break;
  }
  return kExitUnreachable;
}

}  // namespace ondemand::controld::cli
