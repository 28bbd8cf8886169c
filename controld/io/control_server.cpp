#include "controld/io/control_server.hpp"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "controld/io/fd.hpp"
#include "controld/io/log.hpp"

namespace ondemand::controld {

namespace {

// A client that has this much unread output is not keeping up; it is dropped.
// Each queued line counts with its write request, so many small lines weigh
// what they cost.
constexpr std::size_t kMaxWriteBacklog = 8 * 1024 * 1024;

struct WriteRequest {
  uv_write_t req;
  std::string data;
  std::shared_ptr<ControlServer*> server;  // null inside once the server is gone
  std::uint64_t connection = 0;
  std::size_t cost = 0;
};

// True when something accepts connections on the socket path.
bool someoneListens(const std::string& path) {
  ScopedFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

std::optional<std::string> makeParentDirectory(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return std::nullopt;
  const std::string dir = path.substr(0, slash);
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) return std::nullopt;
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return "cannot create directory " + dir + ": " + std::strerror(errno);
  }
  return std::nullopt;
}

}  // namespace

// --- connection -------------------------------------------------------------

void ControlConnection::send(std::string line) {
  if (closing_) return;
  auto* stream = reinterpret_cast<uv_stream_t*>(pipe_.get());
  const std::size_t cost = line.size() + sizeof(WriteRequest) + 64;  // the allocations' own overhead
  if (queued_ > 0 && queued_ + cost > kMaxWriteBacklog) {
    close("client does not read its messages (" + std::to_string(queued_) + " bytes queued)");
    return;
  }
  if (server_.queuedTotal_ > 0 && server_.queuedTotal_ + cost > server_.limits_.maxQueuedBytes) {
    close("output queued for all clients together passed " + std::to_string(server_.limits_.maxQueuedBytes) + " bytes");
    return;
  }
  auto* w = new WriteRequest{{}, std::move(line), server_.self_, id_, cost};
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  queued_ += cost;
  server_.queuedTotal_ += cost;
  const int rc = uv_write(&w->req, stream, &buf, 1, [](uv_write_t* req, int) {
    std::unique_ptr<WriteRequest> done(reinterpret_cast<WriteRequest*>(req));
    if (*done->server) (*done->server)->written(done->connection, done->cost);
  });
  if (rc != 0) {
    server_.written(id_, cost);
    delete w;
    close(std::string("write failed: ") + uv_strerror(rc));
  }
}

void ControlConnection::close(const std::string& why) {
  if (closing_) return;
  closing_ = true;
  if (!why.empty()) {
    LogLine(LogLevel::Warning, "connection_closed")
        .kv("connection", id_)
        .kv("role", role_.empty() ? "unknown" : role_)
        .kv("pid", pid_)
        .kv("why", why);
  }
  server_.closed(*this);
}

void ControlConnection::onRead(const char* data, std::size_t size) {
  if (!framer_.append(std::string_view(data, size))) {
    // Tell the peer why before hanging up; it may log it.
    send(protocol::encode(
        protocol::Error{"message larger than " + std::to_string(protocol::kMaxMessageBytes) + " bytes"}));
    close("message larger than " + std::to_string(protocol::kMaxMessageBytes) + " bytes");
    return;
  }
  while (!closing_) {
    const auto line = framer_.next();
    if (!line) break;
    if (line->empty()) continue;
    server_.dispatch(*this, *line);
  }
}

// --- server -----------------------------------------------------------------

ControlServer::ControlServer(uv_loop_t* loop, Handler& handler, std::string daemonName)
    : loop_(loop), handler_(handler), daemonName_(std::move(daemonName)) {}

ControlServer::~ControlServer() {
  closeAll();
  *self_ = nullptr;  // writes still queued finish without us
}

void ControlServer::written(std::uint64_t connection, std::size_t cost) {
  queuedTotal_ -= std::min(cost, queuedTotal_);
  if (auto it = connections_.find(connection); it != connections_.end()) {
    it->second->queued_ -= std::min(cost, it->second->queued_);
  }
}

void ControlServer::sweepHellos() {
  const std::uint64_t now = uv_now(loop_);
  std::vector<ControlConnection*> silent;
  for (auto& [id, c] : connections_) {
    if (c->role_.empty() && c->isOpen() && now - c->openedAtMs_ >= limits_.helloTimeoutMs) silent.push_back(c.get());
  }
  for (auto* c : silent) {
    c->send(protocol::encode(protocol::Error{"no hello within " + std::to_string(limits_.helloTimeoutMs) + " ms"}));
    c->close("no hello within " + std::to_string(limits_.helloTimeoutMs) + " ms");
  }
}

std::optional<std::string> ControlServer::listen(const std::string& path, std::optional<mode_t> mode,
                                                 const std::string& group) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) return "socket path too long: " + path;
  if (auto error = makeParentDirectory(path)) return error;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return path + " exists and is not a socket";
    if (someoneListens(path)) return "another controld is already listening on " + path;
    ::unlink(path.c_str());  // stale, left by a process that died
  }

  gid_t gid = static_cast<gid_t>(-1);
  if (!group.empty()) {
    const struct group* g = ::getgrnam(group.c_str());
    if (!g) return "socket_group \"" + group + "\" does not exist";
    gid = g->gr_gid;
  }

  auto* pipe = new uv_pipe_t;
  uv_pipe_init(loop_, pipe, 0);
  pipe->data = this;
  listener_.adopt(pipe);
  // Bind with a strict umask so the socket is never reachable with looser
  // permissions than asked for, even for a moment.
  const mode_t old = ::umask(0177);
  int rc = uv_pipe_bind(pipe, path.c_str());
  ::umask(old);
  if (rc != 0) return "cannot bind " + path + ": " + uv_strerror(rc);
  path_ = path;
  if (::chmod(path.c_str(), mode.value_or(0660)) != 0) return "cannot chmod " + path + ": " + std::strerror(errno);
  if (gid != static_cast<gid_t>(-1) && ::chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    return "cannot give " + path + " to group " + group + ": " + std::strerror(errno);
  }
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(pipe), 128, [](uv_stream_t* server, int status) {
    if (status == 0 && server->data) static_cast<ControlServer*>(server->data)->accept();
  });
  if (rc != 0) return "cannot listen on " + path + ": " + uv_strerror(rc);
  return std::nullopt;
}

std::optional<std::string> ControlServer::adopt(int fd) {
  auto* pipe = new uv_pipe_t;
  uv_pipe_init(loop_, pipe, 0);
  pipe->data = this;
  listener_.adopt(pipe);
  int rc = uv_pipe_open(pipe, fd);
  if (rc != 0) return std::string("cannot use the socket from systemd: ") + uv_strerror(rc);
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(pipe), 128, [](uv_stream_t* server, int status) {
    if (status == 0 && server->data) static_cast<ControlServer*>(server->data)->accept();
  });
  if (rc != 0) return std::string("cannot listen on the socket from systemd: ") + uv_strerror(rc);
  return std::nullopt;
}

void ControlServer::closeAll() {
  listener_.reset();
  if (!path_.empty()) {
    ::unlink(path_.c_str());
    path_.clear();
  }
  std::vector<ControlConnection*> all;
  for (auto& [id, c] : connections_)
    all.push_back(c.get());
  for (auto* c : all)
    c->close("");
  if (walking_ == 0) graveyard_.clear();  // else the reaper frees them after the walk
}

void ControlServer::accept() {
  const std::uint64_t id = nextId_++;
  auto connection = std::unique_ptr<ControlConnection>(new ControlConnection(*this, id));
  auto* pipe = new uv_pipe_t;
  uv_pipe_init(loop_, pipe, 0);
  pipe->data = connection.get();
  connection->pipe_.adopt(pipe);
  connection->openedAtMs_ = uv_now(loop_);
  if (uv_accept(reinterpret_cast<uv_stream_t*>(listener_.get()), reinterpret_cast<uv_stream_t*>(pipe)) != 0) return;
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(pipe), &fd) == 0) {
    ucred cred{};
    socklen_t length = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0) {
      connection->uid_ = cred.uid;
      connection->gid_ = cred.gid;
    }
  }
  if (connections_.size() >= limits_.maxConnections) {
    // Refused at once, with a line saying why: descriptors stay free for
    // the state files, the commands and the clients already connected.
    static const std::string refusal = protocol::encode(protocol::Error{
        "too many connections to controld (" + std::to_string(limits_.maxConnections) + "); try again later"});
    if (fd >= 0) {
      [[maybe_unused]] const auto n = ::send(fd, refusal.data(), refusal.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    LogLine(LogLevel::Warning, "connection_refused")
        .kv("why", "too many connections")
        .kv("limit", static_cast<std::uint64_t>(limits_.maxConnections));
    return;  // the pipe closes with `connection`
  }
  // Connections that have not said hello yet hold a slot each: past
  // maxSilent of them the oldest goes, so idle sockets can never keep the
  // CLI or a worker out.
  ControlConnection* oldestSilent = nullptr;
  std::size_t silent = 0;
  for (auto& [otherId, c] : connections_) {
    if (!c->role_.empty() || !c->isOpen()) continue;
    ++silent;
    if (!oldestSilent) oldestSilent = c.get();
  }
  if (silent >= limits_.maxSilent && oldestSilent) oldestSilent->close("too many connections without hello");
  if (!helloSweep_) {
    auto* timer = new uv_timer_t;
    uv_timer_init(loop_, timer);
    timer->data = this;
    helloSweep_.adopt(timer);
    uv_unref(reinterpret_cast<uv_handle_t*>(timer));
    const std::uint64_t every = std::max<std::uint64_t>(limits_.helloTimeoutMs / 4, 10);
    uv_timer_start(
        timer,
        [](uv_timer_t* t) {
          if (t->data) static_cast<ControlServer*>(t->data)->sweepHellos();
        },
        every, every);
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(pipe),
      [](uv_handle_t*, std::size_t suggested, uv_buf_t* buf) {
        buf->base = new char[suggested];
        buf->len = suggested;
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
        std::unique_ptr<char[]> owned(buf->base);
        auto* c = static_cast<ControlConnection*>(stream->data);
        if (!c) return;
        if (nread > 0) {
          c->onRead(buf->base, static_cast<std::size_t>(nread));
        } else if (nread < 0) {
          c->close(nread == UV_EOF ? "" : std::string("read failed: ") + uv_strerror(static_cast<int>(nread)));
        }
      });
  connections_.emplace(id, std::move(connection));
}

void ControlServer::closed(ControlConnection& connection) {
  uv_read_stop(reinterpret_cast<uv_stream_t*>(connection.pipe_.get()));
  if (!connection.role_.empty()) handler_.onClosed(connection);
  // Destroy after the current callback chain has unwound: the caller may
  // still be inside this connection's read handler.
  auto it = connections_.find(connection.id_);
  if (it == connections_.end()) return;
  graveyard_.push_back(std::move(it->second));
  connections_.erase(it);
  if (!reaper_) {
    auto* idle = new uv_idle_t;
    uv_idle_init(loop_, idle);
    idle->data = this;
    reaper_.adopt(idle);
  }
  uv_idle_start(reaper_.get(), [](uv_idle_t* handle) {
    uv_idle_stop(handle);
    if (auto* self = static_cast<ControlServer*>(handle->data)) self->graveyard_.clear();
  });
}

void ControlServer::dispatch(ControlConnection& connection, std::string_view line) {
  auto decoded = protocol::decode(line);
  if (!decoded.message) {
    connection.send(protocol::encode(protocol::Error{"malformed message: " + decoded.error}));
    connection.close("malformed message: " + decoded.error);
    return;
  }
  ++received_[std::string(protocol::typeName(*decoded.message))];
  if (connection.role_.empty()) {
    const auto* hello = std::get_if<protocol::Hello>(&*decoded.message);
    if (!hello) {
      connection.send(protocol::encode(protocol::Error{"the first message must be hello"}));
      connection.close("first message was not hello");
      return;
    }
    if (hello->version != protocol::kVersion) {
      const std::string why = "protocol version " + std::to_string(hello->version) + " is not supported (this is " +
                              std::to_string(protocol::kVersion) + ")";
      connection.send(protocol::encode(protocol::Error{why}));
      connection.close(why);
      return;
    }
    if (hello->role != "worker" && hello->role != "cli") {
      connection.send(protocol::encode(protocol::Error{"unknown role \"" + hello->role + "\""}));
      connection.close("unknown role \"" + hello->role + "\"");
      return;
    }
    connection.role_ = hello->role;
    connection.pid_ = hello->pid;
    connection.send(protocol::encode(protocol::Welcome{protocol::kVersion, daemonName_}));
    LogLine(LogLevel::Debug, "connection_opened")
        .kv("connection", connection.id_)
        .kv("role", connection.role_)
        .kv("pid", connection.pid_);
    handler_.onHello(connection);
    return;
  }
  handler_.onMessage(connection, std::move(*decoded.message));
}

void ControlServer::forEach(const std::function<void(ControlConnection&)>& fn) {
  // `fn` may close connections (a send drops a client that does not read,
  // the handler's onClosed sends to all again), which moves them out of
  // connections_: walk a copy. The graveyard keeps every closed one alive
  // until the next loop turn, so each pointer stays valid; the closed ones
  // are skipped.
  std::vector<ControlConnection*> all;
  all.reserve(connections_.size());
  for (auto& [id, c] : connections_)
    all.push_back(c.get());
  ++walking_;
  for (auto* c : all) {
    if (c->isOpen() && !c->role_.empty()) fn(*c);
  }
  --walking_;
}

std::size_t ControlServer::connectionCount(const std::string& role) const {
  std::size_t n = 0;
  for (const auto& [id, c] : connections_)
    n += c->isOpen() && c->role_ == role;
  return n;
}

}  // namespace ondemand::controld
