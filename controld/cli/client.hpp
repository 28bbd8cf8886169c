#pragma once
// The CLI's connection to the daemon: a blocking-free client of the control
// socket (every wait bounded), where it looks for the socket, and what it says
// when controld cannot be reached (exit 3, with the reason and what to do).

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <variant>

#include "controld/io/fd.hpp"
#include "shared/duration.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnreachable = 3;
inline constexpr const char* kDefaultSocket = "/run/controld/controld.sock";

// Every wait for controld is bounded: a daemon that does not answer within
// this long (stopped with SIGSTOP, wedged) is "not reachable" (exit 3).
inline constexpr int kAnswerTimeoutMs = 3000;
// While following (start --wait, events), a silent connection is checked
// this often: controld must answer a command within kAnswerTimeoutMs.
inline constexpr int kFollowCheckMs = 2000;
inline constexpr int kEventsCheckMs = 15000;

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
    const auto decoded = protocol::decode(welcome);
    if (!decoded.message || !std::holds_alternative<protocol::Welcome>(*decoded.message)) {
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

  // Sends a command and returns its reply line (for protocol::decodeReply or
  // decodeStatusReply), within kAnswerTimeoutMs, with its envelope. Other
  // lines that arrive meanwhile are kept for readLine(), in order. On
  // failure, error() says why.
  struct Answer {
    protocol::Envelope envelope;  // ok, error
    std::string line;
  };
  std::optional<Answer> command(const std::string& verb, const std::string& service) {
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
      auto envelope = protocol::decodeEnvelope(line);
      const std::string type = envelope.value ? envelope.value->type : "";
      if (type == "reply" && envelope.value->id == id) {
        for (auto& l : other)
          pending_.push_back(std::move(l));
        return Answer{std::move(*envelope.value), std::move(line)};
      }
      if (type == "error") {
        fail(Unreachable::Closed, "it refused the connection: " + envelope.value->error);
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
  protocol::LineFramer framer_{protocol::kMaxReplyBytes};  // status replies of 10,000 services
  std::deque<std::string> pending_;
  ClientError error_;
  std::int64_t nextId_ = 1;
};

// Where the client looks for the daemon, and how it got there (for hints).
struct SocketChoice {
  std::string path;
  bool defaulted = false;  // no --socket, --config or $CONTROLD_SOCKET
};

// Prints why `socket` cannot be reached and what to do; returns kExitUnreachable.
int unreachable(const SocketChoice& socket, const ClientError& error, pid_t peerPid = 0);

}  // namespace ondemand::controld::cli
