#pragma once
// The control socket: a Unix stream socket where nginx workers and the CLI
// connect. It owns the connections, frames newline-delimited JSON, enforces
// the message size limit and the hello handshake, and hands decoded messages
// to its Handler (the daemon). A malformed message closes that one connection
// with one log line; every other client carries on.

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "controld/io/uv.hpp"
#include "shared/protocol.hpp"

namespace ondemand::controld {

class ControlServer;

class ControlConnection {
 public:
  std::uint64_t id() const { return id_; }
  const std::string& role() const { return role_; }  // "worker", "cli"; empty before hello
  std::int64_t peerPid() const { return pid_; }
  // Who is at the other end, as the kernel says (SO_PEERCRED), not as the
  // client claims; -1 when unknown.
  uid_t peerUid() const { return uid_; }
  gid_t peerGid() const { return gid_; }
  bool isOpen() const { return !closing_; }

  // Queues one encoded line. A client that stops reading is dropped once its
  // backlog passes a limit, so it cannot make controld grow without bound.
  void send(std::string line);
  void close(const std::string& why);

  // What the daemon remembers about this client.
  bool subscribed = false;   // receives state pushes
  bool wantsEvents = false;  // receives transition events (controld events)

 private:
  friend class ControlServer;
  ControlConnection(ControlServer& server, std::uint64_t id) : server_(server), id_(id) {}
  void onRead(const char* data, std::size_t size);

  ControlServer& server_;
  std::uint64_t id_;
  std::uint64_t openedAtMs_ = 0;  // uv_now when accepted, for the hello timeout
  std::size_t queued_ = 0;        // bytes of output not yet written, with each write request's own cost
  std::string role_;
  std::int64_t pid_ = 0;
  uid_t uid_ = static_cast<uid_t>(-1);
  gid_t gid_ = static_cast<gid_t>(-1);
  bool closing_ = false;
  UvHandle<uv_pipe_t> pipe_;
  protocol::LineFramer framer_;
};

class ControlServer {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // After a successful hello; the welcome has been sent.
    virtual void onHello(ControlConnection&) {}
    // Any message after hello (hello itself is handled here).
    virtual void onMessage(ControlConnection& connection, protocol::Message&& message) = 0;
    // The connection is gone (either side closed it); it must not be used after.
    virtual void onClosed(ControlConnection& connection) = 0;
  };

  ControlServer(uv_loop_t* loop, Handler& handler, std::string daemonName);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Creates the socket (removing a stale one; refusing when another daemon
  // answers on it), with the given mode and group. Returns an error text.
  std::optional<std::string> listen(const std::string& path, std::optional<mode_t> mode, const std::string& group);
  // Takes a socket that is bound and listening already (systemd's socket
  // activation). Its path is never unlinked here: systemd owns it.
  std::optional<std::string> adopt(int fd);
  void closeAll();

  void forEach(const std::function<void(ControlConnection&)>& fn);
  std::size_t connectionCount(const std::string& role) const;

  // Messages received, by type ("wake", "activity", ...), for `status --json`.
  const std::map<std::string, std::uint64_t>& messagesReceived() const { return received_; }
  std::size_t queuedBytes() const { return queuedTotal_; }

  // Limits against clients that hold memory or descriptors: the most
  // connections at once (more are refused with an error line), the time a
  // new connection has to send hello, and the output queued for all clients
  // together (past it, the client being written to is dropped).
  struct Limits {
    std::size_t maxConnections = 4096;
    std::size_t maxSilent = 64;  // connections without hello at once; past it the oldest goes
    std::uint64_t helloTimeoutMs = 5000;
    std::size_t maxQueuedBytes = 256 * 1024 * 1024;
  };
  void setLimits(const Limits& limits) { limits_ = limits; }

 private:
  friend class ControlConnection;
  void accept();
  void closed(ControlConnection& connection);
  void dispatch(ControlConnection& connection, std::string_view line);
  void sweepHellos();
  void written(std::uint64_t connection, std::size_t cost);

  uv_loop_t* loop_;
  Handler& handler_;
  std::string daemonName_;
  std::string path_;
  UvHandle<uv_pipe_t> listener_;
  std::uint64_t nextId_ = 1;
  std::map<std::uint64_t, std::unique_ptr<ControlConnection>> connections_;
  std::vector<std::unique_ptr<ControlConnection>> graveyard_;  // closed, freed on the next loop turn
  UvHandle<uv_idle_t> reaper_;
  int walking_ = 0;  // forEach() calls under way: closed connections must stay allocated
  std::map<std::string, std::uint64_t> received_;
  UvHandle<uv_timer_t> helloSweep_;
  Limits limits_;
  std::size_t queuedTotal_ = 0;
  std::shared_ptr<ControlServer*> self_ = std::make_shared<ControlServer*>(this);
};

}  // namespace ondemand::controld
