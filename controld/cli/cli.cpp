// The client side of `controld`: status, start, stop, events, check-config,
// version, and serve (which hands over to the Daemon). Client commands talk to
// the daemon over the control socket with the same protocol as nginx workers.
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>

#include "controld/cli/metrics.hpp"
#include "controld/config/config.hpp"
#include "controld/daemon/daemon.hpp"
#include "controld/drivers/semaphore/semaphore_check.hpp"
#include "controld/io/fd.hpp"
#include "controld/io/json_fields.hpp"
#include "controld/io/log.hpp"
#include "controld/io/uv.hpp"
#include "controld/version.hpp"
#include "shared/duration.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr const char* kDefaultSocket = "/run/controld/controld.sock";

// Every wait for controld is bounded: a daemon that does not answer within
// this long (stopped with SIGSTOP, wedged) is "not reachable" (exit 3).
constexpr int kAnswerTimeoutMs = 3000;
// While following (start --wait, events), a silent connection is checked
// this often: controld must answer a command within kAnswerTimeoutMs.
constexpr int kFollowCheckMs = 2000;
constexpr int kEventsCheckMs = 15000;

// Why the daemon could not be reached; each has its own next step.
enum class Unreachable { NoSocket, NotListening, PermissionDenied, NoAnswer, Closed, Other };

struct ClientError {
  Unreachable kind = Unreachable::Other;
  std::string detail;
};

// A connection to the daemon: fine for a command-line tool, but never an
// unbounded wait (non-blocking socket, every wait through poll).
class ControlClient {
 public:
  enum class Read { Line, Timeout, Closed };

  // Connects and exchanges hello/welcome. Returns why, when it cannot.
  std::optional<ClientError> connect(const std::string& path) {
    path_ = path;
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd_) return ClientError{Unreachable::Other, std::string("socket(): ") + std::strerror(errno)};
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) return ClientError{Unreachable::Other, "socket path too long: " + path};
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      const int err = errno;
      switch (err) {
        case ENOENT:
        case ENOTDIR:
          return ClientError{Unreachable::NoSocket, std::strerror(err)};
        case ECONNREFUSED:
          return ClientError{Unreachable::NotListening, std::strerror(err)};
        case EACCES:
        case EPERM:
          return ClientError{Unreachable::PermissionDenied, std::strerror(err)};
        case EAGAIN:  // its listen queue is full: it does not accept
          return ClientError{Unreachable::NoAnswer, "it does not accept connections"};
        default:
          return ClientError{Unreachable::Other, std::string("connect(): ") + std::strerror(err)};
      }
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) peerPid_ = cred.pid;
    if (!send(protocol::encode(protocol::Hello{protocol::kVersion, "cli", ::getpid()}))) return error_;
    std::string welcome;
    switch (readLine(welcome, kAnswerTimeoutMs)) {
      case Read::Timeout:
        return ClientError{Unreachable::NoAnswer, "no welcome within " + seconds(kAnswerTimeoutMs)};
      case Read::Closed:
        return ClientError{Unreachable::Closed, "it closed the connection before its welcome"};
      case Read::Line:
        break;
    }
    rapidjson::Document doc;
    doc.Parse(welcome.c_str());
    if (!doc.IsObject() || jsonString(doc, "type") != "welcome") {
      return ClientError{Unreachable::Other, "unexpected answer: " + welcome};
    }
    return std::nullopt;
  }

  const std::string& path() const { return path_; }
  pid_t peerPid() const { return peerPid_; }
  const ClientError& error() const { return error_; }

  bool send(const std::string& line) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(kAnswerTimeoutMs);
    std::size_t sent = 0;
    while (sent < line.size()) {
      const ssize_t n = ::send(fd_.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        pollfd p{fd_.get(), POLLOUT, 0};
        if (::poll(&p, 1, remainingMs(deadline)) > 0) continue;
        return fail(Unreachable::NoAnswer, "it does not read what it is sent");
      }
      return fail(Unreachable::Closed, std::string("the connection broke: ") + std::strerror(errno));
    }
    return true;
  }

  // The next line (lines put aside by command() first), within timeoutMs
  // (-1: no limit).
  Read readLine(std::string& out, int timeoutMs) {
    if (!pending_.empty()) {
      out = std::move(pending_.front());
      pending_.pop_front();
      return Read::Line;
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeoutMs < 0 ? 0 : timeoutMs);
    for (;;) {
      if (auto line = framer_.next()) {
        out.assign(line->data(), line->size());
        return Read::Line;
      }
      pollfd p{fd_.get(), POLLIN, 0};
      const int rc = ::poll(&p, 1, timeoutMs < 0 ? -1 : remainingMs(deadline));
      if (rc < 0 && errno == EINTR) continue;
      if (rc < 0) return Read::Closed;
      if (rc == 0) return Read::Timeout;
      char buf[65536];
      const ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return Read::Closed;
      if (!framer_.append(std::string_view(buf, static_cast<std::size_t>(n)))) return Read::Closed;
    }
  }

  // Sends a command and returns its reply, within kAnswerTimeoutMs. Other
  // lines that arrive meanwhile are kept for readLine(), in order. On
  // failure, error() says why.
  std::optional<rapidjson::Document> command(const std::string& verb, const std::string& service) {
    const std::int64_t id = nextId_++;
    if (!send(protocol::encode(protocol::Command{id, verb, service}))) return std::nullopt;
    const auto deadline = Clock::now() + std::chrono::milliseconds(kAnswerTimeoutMs);
    std::deque<std::string> other;
    for (;;) {
      std::string line;
      const Read r = readFromSocket(line, remainingMs(deadline));
      if (r == Read::Timeout) {
        fail(Unreachable::NoAnswer, "no answer to \"" + verb + "\" within " + seconds(kAnswerTimeoutMs));
        return std::nullopt;
      }
      if (r == Read::Closed) {
        fail(Unreachable::Closed, "it closed the connection before answering \"" + verb + "\"");
        return std::nullopt;
      }
      rapidjson::Document doc;
      doc.Parse(line.c_str());
      const std::string type = doc.IsObject() ? jsonString(doc, "type") : "";
      if (type == "reply" && jsonInt64(doc, "id") == id) {
        for (auto& l : other)
          pending_.push_back(std::move(l));
        return doc;
      }
      if (type == "error") {
        fail(Unreachable::Closed, "it refused the connection: " + jsonString(doc, "message"));
        return std::nullopt;
      }
      other.push_back(std::move(line));
    }
  }

 private:
  using Clock = std::chrono::steady_clock;

  static int remainingMs(Clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
  }
  static std::string seconds(int ms) { return formatDuration(Millis(ms)); }

  // readLine() without the lines put aside.
  Read readFromSocket(std::string& out, int timeoutMs) {
    std::deque<std::string> keep;
    keep.swap(pending_);
    const Read r = readLine(out, timeoutMs);
    keep.swap(pending_);
    return r;
  }

  bool fail(Unreachable kind, std::string detail) {
    error_ = ClientError{kind, std::move(detail)};
    return false;
  }

  std::string path_;
  ScopedFd fd_;
  pid_t peerPid_ = 0;
  protocol::LineFramer framer_;
  std::deque<std::string> pending_;
  ClientError error_;
  std::int64_t nextId_ = 1;
};

std::string clockTime(std::int64_t unixMs) {
  const std::time_t secs = unixMs / 1000;
  std::tm tm{};
  localtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string ago(std::int64_t now, std::int64_t then) {
  if (then <= 0) return "-";
  return formatDuration(Millis(std::max<std::int64_t>(0, now - then)));
}

std::string padRight(const std::string& s, std::size_t width) {
  return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' ');
}

std::string describeOperation(const rapidjson::Value& service, std::int64_t now) {
  const auto it = service.FindMember("operation");
  if (it != service.MemberEnd() && it->value.IsObject()) {
    const auto& op = it->value;
    std::string out = jsonString(op, "kind") + " running for " + ago(now, jsonInt64(op, "started_at"));
    if (jsonInt64(op, "task_id")) out += " (task " + std::to_string(jsonInt64(op, "task_id")) + ")";
    return out;
  }
  const auto last = service.FindMember("last_operation");
  if (last == service.MemberEnd() || !last->value.IsObject()) return "-";
  const auto& op = last->value;
  const bool ok = op.HasMember("ok") && op["ok"].IsBool() && op["ok"].GetBool();
  std::string out = jsonString(op, "kind") + (ok ? " ok" : " failed");
  if (jsonInt64(op, "task_id")) {
    out += " (task " + std::to_string(jsonInt64(op, "task_id"));
    if (!jsonString(op, "task_status").empty()) out += " " + jsonString(op, "task_status");
    out += ")";
  }
  out += ", " + ago(now, jsonInt64(op, "ended_at")) + " ago";
  return out;
}

void printTable(const rapidjson::Document& reply) {
  const std::int64_t now = jsonInt64(reply, "now");
  std::cout << padRight("SERVICE", 20) << padRight("STATE", 10) << padRight("SINCE", 10) << padRight("IDLE-STOP IN", 14)
            << padRight("IN FLIGHT", 11) << "LAST OPERATION\n";
  std::vector<std::string> reasons;
  for (const auto& s : reply["services"].GetArray()) {
    std::string idle = "-";
    if (s.HasMember("idle_stop_at") && s["idle_stop_at"].IsInt64()) {
      idle = formatDuration(Millis(std::max<std::int64_t>(0, s["idle_stop_at"].GetInt64() - now)));
    }
    std::string state = jsonString(s, "state");
    if (s.HasMember("queued") && s["queued"].IsBool() && s["queued"].GetBool()) state += "*";
    std::cout << padRight(jsonString(s, "name"), 20) << padRight(state, 10)
              << padRight(ago(now, jsonInt64(s, "since")), 10) << padRight(idle, 14)
              << padRight(std::to_string(jsonInt64(s, "in_flight")), 11) << describeOperation(s, now) << "\n";
    if (!jsonString(s, "reason").empty()) reasons.push_back(jsonString(s, "name") + ": " + jsonString(s, "reason"));
  }
  for (const auto& r : reasons)
    std::cout << "\n" << r << "\n";
}

void printDetail(const rapidjson::Document& reply) {
  const std::int64_t now = jsonInt64(reply, "now");
  for (const auto& s : reply["services"].GetArray()) {
    std::cout << "service:        " << jsonString(s, "name") << "\n"
              << "state:          " << jsonString(s, "state") << " since " << clockTime(jsonInt64(s, "since")) << " ("
              << ago(now, jsonInt64(s, "since")) << " ago, cause " << jsonString(s, "cause") << ")\n";
    if (!jsonString(s, "reason").empty()) std::cout << "reason:         " << jsonString(s, "reason") << "\n";
    if (jsonInt64(s, "starting_since"))
      std::cout << "starting for:   " << ago(now, jsonInt64(s, "starting_since")) << "\n";
    if (jsonInt64(s, "retry_at") > now) {
      std::cout << "next try:       requests wait " << formatDuration(Millis(jsonInt64(s, "retry_at") - now))
                << " (failure_backoff) before waking it again\n";
    }
    if (jsonInt64(s, "starts_ok") + jsonInt64(s, "starts_failed") > 0) {
      std::cout << "starts:         " << jsonInt64(s, "starts_ok") << " ok, " << jsonInt64(s, "starts_failed")
                << " failed";
      if (jsonInt64(s, "starts_ok") > 0)
        std::cout << "; the last took " << formatDuration(Millis(jsonInt64(s, "last_start_ms")));
      std::cout << "\n";
    }
    std::cout << "driver:         " << jsonString(s, "driver") << "\n";
    if (!jsonString(s, "machine").empty()) std::cout << "machine:        " << jsonString(s, "machine") << "\n";
    if (!jsonString(s, "health_url").empty()) std::cout << "health:         " << jsonString(s, "health_url") << "\n";
    std::cout << "in flight:      " << jsonInt64(s, "in_flight")
              << " (requests started: " << jsonInt64(s, "started_total") << ")\n";
    if (s.HasMember("idle_stop_at") && s["idle_stop_at"].IsInt64()) {
      std::cout << "idle stop in:   "
                << formatDuration(Millis(std::max<std::int64_t>(0, s["idle_stop_at"].GetInt64() - now))) << "\n";
    }
    std::cout << "operation:      " << describeOperation(s, now) << "\n";
    const auto& last = s["last_operation"];
    if (last.IsObject() && !jsonString(last, "reason").empty())
      std::cout << "last reason:    " << jsonString(last, "reason") << "\n";
    std::cout << "history:\n";
    if (s["history"].IsArray()) {
      const auto& history = s["history"].GetArray();
      for (auto it = history.End(); it != history.Begin();) {
        --it;
        std::string line = "  " + clockTime(jsonInt64(*it, "at")) + "  " + jsonString(*it, "from") + " -> " +
                           jsonString(*it, "to") + "  (" + jsonString(*it, "cause");
        if (!jsonString(*it, "detail").empty()) line += ": " + jsonString(*it, "detail");
        line += ")";
        if (jsonInt64(*it, "task_id")) line += " task " + std::to_string(jsonInt64(*it, "task_id"));
        std::cout << line << "\n";
      }
    }
  }
}

// Where the client looks for the daemon, and how it got there (for hints).
struct SocketChoice {
  std::string path;
  bool defaulted = false;  // no --socket, --config or $CONTROLD_SOCKET
};

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

int unreachable(const SocketChoice& socket, const ClientError& error, pid_t peerPid = 0) {
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

int printProblems(const ConfigLoadResult& result) {
  for (const auto& e : result.errors)
    std::cerr << formatProblem(e) << "\n";
  for (const auto& w : result.warnings)
    std::cerr << "warning: " << formatProblem(w) << "\n";
  return result.errors.empty() ? kExitOk : kExitUsage;
}

std::string timeOfDay(std::int64_t unixMs) {
  return clockTime(unixMs).substr(11);
}

// One line saying what a starting or stopping service is doing, from its
// status: "starting since 21:40:02 (4.1s), waiting for health: http://…".
// `what` gets the part that changes only when something happens.
std::string progressLine(const rapidjson::Value& s, std::int64_t now, std::string& what) {
  const std::string state = jsonString(s, "state");
  const std::string phase = jsonString(s, "phase");
  const auto* op = jsonMember(s, "operation");
  const std::int64_t taskId = op && op->IsObject() ? jsonInt64(*op, "task_id") : 0;
  const bool semaphore = jsonString(s, "driver") == "semaphore";
  const auto* queued = jsonMember(s, "queued");
  if (queued && queued->IsBool() && queued->GetBool()) {
    what = "queued: another operation on machine " + jsonString(s, "machine") + " runs first";
  } else if (state == "starting" && phase == "driver") {
    what = semaphore
               ? (taskId ? "Semaphore task " + std::to_string(taskId) + " running" : "creating its Semaphore task")
               : "start command running";
  } else if (state == "starting" && phase == "readiness") {
    what = jsonString(s, "health_url").empty() ? "warming up (warmup)"
                                               : "waiting for health: " + jsonString(s, "health_url");
    if (taskId) what = "task " + std::to_string(taskId) + " done, " + what;
  } else if (state == "stopping" && phase == "draining") {
    what = "waiting for nginx workers to confirm";
  } else if (state == "stopping") {
    what = semaphore
               ? (taskId ? "Semaphore task " + std::to_string(taskId) + " running" : "creating its Semaphore task")
               : "stop command running";
  } else {
    what.clear();
  }
  const std::int64_t since =
      state == "starting" && jsonInt64(s, "starting_since") ? jsonInt64(s, "starting_since") : jsonInt64(s, "since");
  std::string line = jsonString(s, "name") + ": " + state;
  if (since > 0) line += " since " + timeOfDay(since) + " (" + ago(now, since) + ")";
  if (!what.empty()) line += ", " + what;
  return line;
}

// start/stop, optionally waiting for the outcome. While it waits, what the
// service is doing goes to stderr whenever it changes (and every 10 s); the
// outcome goes to stdout once.
int startOrStop(const SocketChoice& socket, const std::string& verb, const std::string& service, bool wait, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  if (wait && !client.send(protocol::encode(protocol::Subscribe{}))) {
    return unreachable(socket, client.error(), client.peerPid());
  }
  auto reply = client.command(verb, service);
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld " << verb << ": " << jsonString(*reply, "error") << "\n";
    return jsonString(*reply, "error").rfind("unknown service", 0) == 0 ? kExitUsage : kExitFailed;
  }
  std::string state = jsonString(*reply, "state");
  std::string reason = jsonString(*reply, "reason");
  std::int64_t epoch = jsonInt64(*reply, "epoch");
  const bool isStart = verb == "start";
  auto finished = [&](const std::string& s) {
    return isStart ? (s == "warm" || s == "failed") : (s == "cold" || s == "warm");
  };
  if (wait && !finished(state)) {
    std::string lastWhat = "-";
    std::string lastState;
    auto lastPrinted = std::chrono::steady_clock::now();
    // Asks for the service's status: progress, and proof that controld answers.
    auto progress = [&]() -> bool {
      auto st = client.command("status", service);
      if (!st) return false;
      const auto* services = jsonMember(*st, "services");
      if (!services || !services->IsArray() || services->Empty()) return true;
      const auto& s = (*services)[0];
      if (finished(jsonString(s, "state"))) return true;  // the push says it, next
      std::string what;
      const std::string line = progressLine(s, jsonInt64(*st, "now"), what);
      const auto now = std::chrono::steady_clock::now();
      if (what != lastWhat || jsonString(s, "state") != lastState || now - lastPrinted >= std::chrono::seconds(10)) {
        std::cerr << line << "\n";
        lastWhat = what;
        lastState = jsonString(s, "state");
        lastPrinted = now;
      }
      return true;
    };
    if (!progress()) return unreachable(socket, client.error(), client.peerPid());
    for (;;) {
      std::string line;
      const auto r = client.readLine(line, kFollowCheckMs);
      if (r == ControlClient::Read::Closed) {
        return unreachable(
            socket, ClientError{Unreachable::Closed, "it closed the connection while " + service + " was " + state},
            client.peerPid());
      }
      if (r == ControlClient::Read::Timeout) {
        if (!progress()) return unreachable(socket, client.error(), client.peerPid());
        continue;
      }
      rapidjson::Document doc;
      doc.Parse(line.c_str());
      if (!doc.IsObject() || jsonString(doc, "type") != "state" || jsonString(doc, "service") != service) continue;
      // The subscription's first burst can be older than the reply.
      if (jsonInt64(doc, "epoch") < epoch) continue;
      epoch = jsonInt64(doc, "epoch");
      const std::string s = jsonString(doc, "state");
      const bool changed = s != state;
      state = s;
      reason = jsonString(doc, "reason");
      if (finished(state)) break;
      if (changed && !progress()) return unreachable(socket, client.error(), client.peerPid());
    }
  }
  if (!isStart && wait && state == "warm") {
    // The stop failed: its reason is in the last operation.
    auto status = client.command("status", service);
    if (status && (*status)["services"].IsArray() && !(*status)["services"].Empty()) {
      const auto& last = (*status)["services"][0]["last_operation"];
      reason = last.IsObject() ? jsonString(last, "reason") : "";
    }
  }
  if (json) {
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    w.StartObject();
    w.Key("service");
    w.String(service.c_str());
    w.Key("state");
    w.String(state.c_str());
    if (!reason.empty()) {
      w.Key("reason");
      w.String(reason.c_str());
    }
    w.EndObject();
    std::cout << buffer.GetString() << "\n";
  } else {
    std::cout << service << ": " << state << (reason.empty() ? "" : " — " + reason) << "\n";
  }
  if (!wait) return kExitOk;
  if (isStart) return state == "warm" ? kExitOk : kExitFailed;
  return state == "cold" ? kExitOk : kExitFailed;
}

int status(const SocketChoice& socket, const std::string& service, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  auto reply = client.command("status", service);
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld status: " << jsonString(*reply, "error") << "\n";
    return kExitUsage;
  }
  if (json) {
    // Stable output: the reply without the envelope fields.
    reply->RemoveMember("type");
    reply->RemoveMember("id");
    reply->RemoveMember("ok");
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    reply->Accept(w);
    std::cout << buffer.GetString() << "\n";
  } else if (service.empty()) {
    printTable(*reply);
  } else {
    printDetail(*reply);
  }
  return kExitOk;
}

int metrics(const SocketChoice& socket) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  auto reply = client.command("status", "");
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  if (!(*reply)["ok"].GetBool()) {
    std::cerr << "controld metrics: " << jsonString(*reply, "error") << "\n";
    return kExitUsage;
  }
  std::cout << prometheusText(*reply);
  return kExitOk;
}

// The transition column fits the longest one ("stopping -> starting").
constexpr std::size_t kTransitionWidth = 22;

// `events`: the current state of every service first, then each transition
// as it happens, in aligned columns (or JSON lines).
int events(const SocketChoice& socket, bool json) {
  ControlClient client;
  if (auto error = client.connect(socket.path)) return unreachable(socket, *error, client.peerPid());
  // Subscribed first, then the picture: a transition in between arrives
  // after it and is printed unless the picture has it already (epochs).
  auto reply = client.command("events", "");
  if (!reply) return unreachable(socket, client.error(), client.peerPid());
  auto status = client.command("status", "");
  if (!status) return unreachable(socket, client.error(), client.peerPid());
  std::cout.setf(std::ios::unitbuf);
  std::map<std::string, std::int64_t> seenEpoch;
  std::size_t nameWidth = 16;
  const auto* services = jsonMember(*status, "services");
  if (services && services->IsArray()) {
    for (const auto& s : services->GetArray())
      nameWidth = std::max(nameWidth, jsonString(s, "name").size() + 1);
    const std::int64_t now = jsonInt64(*status, "now");
    for (const auto& s : services->GetArray()) {
      const std::string name = jsonString(s, "name");
      seenEpoch[name] = jsonInt64(s, "epoch");
      if (json) {
        rapidjson::StringBuffer buffer;
        rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
        w.StartObject();
        w.Key("type");
        w.String("current");
        w.Key("service");
        w.String(name.c_str());
        w.Key("state");
        w.String(jsonString(s, "state").c_str());
        w.Key("since");
        w.Int64(jsonInt64(s, "since"));
        w.Key("cause");
        w.String(jsonString(s, "cause").c_str());
        w.Key("reason");
        w.String(jsonString(s, "reason").c_str());
        w.Key("epoch");
        w.Int64(jsonInt64(s, "epoch"));
        w.EndObject();
        std::cout << buffer.GetString() << "\n";
        continue;
      }
      std::string what;
      std::string line = clockTime(now) + "  " + padRight(name, nameWidth) +
                         padRight("now " + jsonString(s, "state"), kTransitionWidth) + "(";
      const std::int64_t since = jsonInt64(s, "since");
      line += since > 0 ? "since " + clockTime(since) + ", " + ago(now, since) + " ago" : "never changed";
      progressLine(s, now, what);
      if (!what.empty()) line += "; " + what;
      line += ")";
      std::cout << line << "\n";
      if (!jsonString(s, "reason").empty()) {
        std::cout << std::string(21 + nameWidth + kTransitionWidth, ' ') << jsonString(s, "reason") << "\n";
      }
    }
  }
  for (;;) {
    std::string line;
    const auto r = client.readLine(line, kEventsCheckMs);
    if (r == ControlClient::Read::Closed) break;
    if (r == ControlClient::Read::Timeout) {
      // Quiet for a while: is controld still there? (An `events` command
      // is harmless to repeat.)
      if (!client.command("events", "")) return unreachable(socket, client.error(), client.peerPid());
      continue;
    }
    rapidjson::Document doc;
    doc.Parse(line.c_str());
    if (!doc.IsObject() || jsonString(doc, "type") != "event") continue;
    const std::string service = jsonString(doc, "service");
    const auto seen = seenEpoch.find(service);
    if (seen != seenEpoch.end() && jsonInt64(doc, "epoch") <= seen->second) continue;
    if (json) {
      std::cout << line << "\n";
      continue;
    }
    const std::string detail = jsonString(doc, "detail");
    std::cout << clockTime(jsonInt64(doc, "at")) << "  " << padRight(service, nameWidth)
              << padRight(jsonString(doc, "from") + " -> " + jsonString(doc, "to"), kTransitionWidth) << "("
              << jsonString(doc, "cause") << (detail.empty() ? "" : ": " + detail) << ")"
              << (jsonInt64(doc, "task_id") ? " task " + std::to_string(jsonInt64(doc, "task_id")) : "") << "\n";
  }
  return unreachable(socket, ClientError{Unreachable::Closed, "it closed the connection"}, client.peerPid());
}

}  // namespace

int cliMain(int argc, char** argv) {
  CLI::App app{"controld: wakes services behind nginx on request and stops them when idle"};
  app.require_subcommand(1);
  // Options of the main command may also follow the subcommand:
  // `controld --socket S status` and `controld status --socket S`.
  app.fallthrough();
  app.set_version_flag("--version",
                       std::string(versionString()) + " (protocol " + std::to_string(protocol::kVersion) + ")",
                       "print the version and exit");
  std::string socketOption;
  std::string configOption;
  bool json = false;
  bool wait = false;
  bool online = false;
  std::string service;
  std::string checkFile;

  app.add_option("--socket,-s", socketOption,
                 "control socket (default: from --config, $CONTROLD_SOCKET, or " + std::string(kDefaultSocket) +
                     "); for serve: listen here instead of the configuration's socket");
  app.add_option("--config,-c", configOption,
                 "controld.yaml or hestia_config.yml (serve, check-config; the other commands read its socket)");
  app.add_flag("--json", json, "machine-readable output (docs/PROTOCOL.md)");

  auto* serve = app.add_subcommand("serve", "run the daemon in the foreground (logs to stderr)");
  std::string serveStateDir;
  serve->add_option("--state-dir", serveStateDir, "keep state here instead of the configuration's state_dir");

  auto* statusCmd = app.add_subcommand("status", "show services: state, since, idle-stop in, in flight, last task");
  statusCmd->add_option("service", service, "one service, in detail with its history");

  auto* startCmd = app.add_subcommand("start", "wake a service by hand");
  startCmd->add_option("service", service)->required();
  startCmd->add_flag("--wait", wait, "return when it is warm (exit 0) or failed (exit 1)");

  auto* stopCmd = app.add_subcommand("stop", "stop a service now, requests in flight or not");
  stopCmd->add_option("service", service)->required();
  stopCmd->add_flag("--wait", wait, "return when it is cold (exit 0) or the stop failed (exit 1)");

  auto* eventsCmd = app.add_subcommand("events", "print every service's state, then follow state changes live");

  auto* metricsCmd =
      app.add_subcommand("metrics", "the status in Prometheus' text format (for node_exporter's textfile collector)");

  auto* check = app.add_subcommand("check-config", "validate a configuration: every problem with file:line and key");
  check->add_option("file", checkFile, "the file to check (or --config FILE)");
  check->add_flag("--online", online, "also ask Semaphore: reachable, token accepted, templates exist");

  app.add_subcommand("version", "print the version");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }

  if (const char* level = std::getenv("CONTROLD_LOG_LEVEL")) {
    LogLevel parsed;
    if (parseLogLevel(level, parsed)) setLogLevel(parsed);
  }

  if (app.got_subcommand("version")) {
    std::cout << versionString() << " (protocol " << protocol::kVersion << ")\n";
    return kExitOk;
  }
  if (*check) {
    if (!checkFile.empty() && !configOption.empty() && checkFile != configOption) {
      std::cerr << "check-config: give the file once, as FILE or as --config FILE\n";
      return kExitUsage;
    }
    const std::string file = checkFile.empty() ? configOption : checkFile;
    if (file.empty()) {
      std::cerr << "check-config: which file? controld check-config --config FILE\n";
      return kExitUsage;
    }
    auto result = loadConfig(file, processEnvironment());
    const int rc = printProblems(result);
    if (rc != kExitOk) return rc;
    if (online) {
      const int onlineRc = checkSemaphoreOnline(*result.config, std::cout, std::cerr);
      if (onlineRc != kExitOk) return onlineRc;
    }
    std::cout << file << ": ok (" << result.config->services.size() << " services)\n";
    return kExitOk;
  }
  if (*serve) {
    if (configOption.empty()) {
      std::cerr << "serve: --config FILE is required (e.g. controld serve --config /etc/controld/controld.yaml)\n";
      return kExitUsage;
    }
    auto result = loadConfig(configOption, processEnvironment());
    for (const auto& w : result.warnings)
      LogLine(LogLevel::Warning, "config_warning").kv("problem", formatProblem(w));
    if (!result.config) {
      for (const auto& e : result.errors)
        std::cerr << formatProblem(e) << "\n";
      return kExitUsage;
    }
    Daemon daemon(std::move(*result.config), processEnvironment(), ServeOverrides{socketOption, serveStateDir});
    return daemon.run();
  }

  SocketChoice socket;
  if (!socketOption.empty()) {
    socket.path = socketOption;
  } else if (!configOption.empty()) {
    auto loaded = loadConfig(configOption, processEnvironment());
    if (!loaded.config) {
      std::cerr << "controld: cannot read the socket from " << configOption << ":\n";
      printProblems(loaded);
      return kExitUsage;
    }
    socket.path = loaded.config->socketPath;
  } else if (const char* env = std::getenv("CONTROLD_SOCKET"); env != nullptr && *env != '\0') {
    socket.path = env;
  } else {
    socket.path = kDefaultSocket;
    socket.defaulted = true;
  }
  if (*statusCmd) return status(socket, service, json);
  if (*startCmd) return startOrStop(socket, "start", service, wait, json);
  if (*stopCmd) return startOrStop(socket, "stop", service, wait, json);
  if (*eventsCmd) return events(socket, json);
  if (*metricsCmd) return metrics(socket);
  return kExitUsage;
}

}  // namespace ondemand::controld
