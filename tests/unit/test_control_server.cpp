// The control socket's fan-out: every client that reads gets every line sent
// to all, and one that stops reading is dropped without disturbing the others
// (even when it is dropped in the middle of sending to all).

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <set>

#include "controld/io/control_server.hpp"
#include "controld/io/fd.hpp"
#include "uv_test_support.hpp"

using namespace ondemand;
using namespace ondemand::controld;
using namespace ondemand::testing;

namespace {

struct RecordingHandler : ControlServer::Handler {
  std::vector<std::uint64_t> hellos;
  std::vector<std::uint64_t> closed;
  std::vector<std::string> messages;
  void onHello(ControlConnection& c) override { hellos.push_back(c.id()); }
  void onMessage(ControlConnection&, protocol::Message&& m) override { messages.emplace_back(protocol::typeName(m)); }
  void onClosed(ControlConnection& c) override { closed.push_back(c.id()); }
};

// A client on the test's loop that reads everything and counts the lines.
class ReadingClient {
 public:
  ReadingClient(uv_loop_t* loop, const std::string& path) {
    auto* pipe = new uv_pipe_t;
    uv_pipe_init(loop, pipe, 0);
    pipe->data = this;
    pipe_.adopt(pipe);
    auto* connect = new uv_connect_t;
    connect->data = this;
    uv_pipe_connect(connect, pipe, path.c_str(), [](uv_connect_t* req, int status) {
      auto* self = static_cast<ReadingClient*>(req->data);
      delete req;
      if (status != 0) return;
      self->connected();
    });
  }

  std::size_t lines = 0;
  std::size_t bytes = 0;
  bool eof = false;

 private:
  void connected() {
    auto* stream = reinterpret_cast<uv_stream_t*>(pipe_.get());
    if (!stream) return;
    hello_ = protocol::encode(protocol::Hello{protocol::kVersion, "worker", 1});
    uv_buf_t buf = uv_buf_init(hello_.data(), static_cast<unsigned>(hello_.size()));
    uv_try_write(stream, &buf, 1);
    uv_read_start(
        stream,
        [](uv_handle_t*, std::size_t suggested, uv_buf_t* b) {
          b->base = new char[suggested];
          b->len = suggested;
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
          std::unique_ptr<char[]> owned(b->base);
          auto* self = static_cast<ReadingClient*>(s->data);
          if (!self) return;
          if (n < 0) {
            self->eof = true;
            return;
          }
          self->bytes += static_cast<std::size_t>(n);
          for (ssize_t i = 0; i < n; ++i)
            self->lines += b->base[i] == '\n';
        });
  }

  UvHandle<uv_pipe_t> pipe_;
  std::string hello_;
};

// A client that says hello and then never reads a byte.
ScopedFd silentClient(const std::string& path) {
  ScopedFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string hello = protocol::encode(protocol::Hello{protocol::kVersion, "worker", 2});
  REQUIRE(::write(fd.get(), hello.data(), hello.size()) == static_cast<ssize_t>(hello.size()));
  return fd;
}

struct SocketDir {
  SocketDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "controld-server-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    dir = pattern;
  }
  ~SocketDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string socket() const { return dir + "/c.sock"; }
  std::string dir;
};

std::size_t visited(ControlServer& server) {
  std::size_t n = 0;
  server.forEach([&](ControlConnection&) { ++n; });
  return n;
}

}  // namespace

TEST_CASE("control server: a line sent to all reaches every client", "[control_server]") {
  TestLoop loop;
  SocketDir dir;
  RecordingHandler handler;
  {
    ControlServer server(loop.get(), handler, "controld test");
    REQUIRE_FALSE(server.listen(dir.socket(), std::nullopt, ""));
    ReadingClient a(loop.get(), dir.socket()), b(loop.get(), dir.socket());
    REQUIRE(loop.runUntil([&] { return handler.hellos.size() == 2 && a.lines == 1 && b.lines == 1; }, 10s));
    CHECK(server.connectionCount("worker") == 2);
    for (int i = 0; i < 3; ++i)
      server.forEach([&](ControlConnection& c) { c.send(protocol::encode(protocol::Synced{})); });
    REQUIRE(loop.runUntil([&] { return a.lines == 4 && b.lines == 4; }, 10s));
    CHECK(handler.closed.empty());
    server.closeAll();
    REQUIRE(loop.runUntil([&] { return a.eof && b.eof; }, 10s));
  }
}

TEST_CASE("control server: a client that stops reading is dropped in the middle of a fan-out, the others carry on",
          "[control_server]") {
  TestLoop loop;
  SocketDir dir;
  RecordingHandler handler;
  ControlServer server(loop.get(), handler, "controld test");
  REQUIRE_FALSE(server.listen(dir.socket(), std::nullopt, ""));
  ReadingClient a(loop.get(), dir.socket()), b(loop.get(), dir.socket());
  REQUIRE(loop.runUntil([&] { return handler.hellos.size() == 2 && a.lines == 1 && b.lines == 1; }, 10s));
  // The silent client connects last: it has the highest id, the last place in
  // the server's connection map, the one a fan-out reaches last.
  ScopedFd silent = silentClient(dir.socket());
  REQUIRE(loop.runUntil([&] { return handler.hellos.size() == 3; }, 10s));
  const std::uint64_t silentId = handler.hellos.back();
  REQUIRE(visited(server) == 3);

  // Rounds of 1 MiB lines: the reading clients take each round before the
  // next; the silent one's backlog grows until it passes the limit (8 MiB)
  // and a send inside the fan-out drops it.
  const std::string line = std::string(1024 * 1024 - 1, 'x') + "\n";
  std::size_t sent = 0;
  std::size_t reached = 0;  // connections the round's fan-out visited
  for (int round = 0; round < 40 && handler.closed.empty(); ++round) {
    reached = 0;
    server.forEach([&](ControlConnection& c) {
      ++reached;
      c.send(line);
    });
    ++sent;
    REQUIRE(loop.runUntil([&] { return a.lines == 1 + sent && b.lines == 1 + sent; }, 30s));
  }
  REQUIRE(handler.closed == std::vector<std::uint64_t>{silentId});
  CHECK(reached == 3);  // the fan-out that dropped it had reached it, and went on safely
  CHECK(visited(server) == 2);
  CHECK(server.connectionCount("worker") == 2);

  // The others still get everything sent to all.
  server.forEach([&](ControlConnection& c) { c.send(protocol::encode(protocol::Synced{})); });
  REQUIRE(loop.runUntil([&] { return a.lines == 2 + sent && b.lines == 2 + sent; }, 10s));
  CHECK(handler.closed.size() == 1);
  server.closeAll();
  REQUIRE(loop.runUntil([&] { return a.eof && b.eof; }, 10s));
}

TEST_CASE("control server: a client dropped by a send to another inside a fan-out does not stop it",
          "[control_server]") {
  // The handler's reaction to a drop can itself send to all (the daemon
  // publishes the states the dropped worker's requests changed).
  TestLoop loop;
  SocketDir dir;
  struct Publishing : RecordingHandler {
    ControlServer* server = nullptr;
    std::size_t nestedVisits = 0;
    void onClosed(ControlConnection& c) override {
      RecordingHandler::onClosed(c);
      server->forEach([&](ControlConnection& other) {
        ++nestedVisits;
        other.send(protocol::encode(protocol::Synced{}));
      });
    }
  } handler;
  ControlServer server(loop.get(), handler, "controld test");
  handler.server = &server;
  REQUIRE_FALSE(server.listen(dir.socket(), std::nullopt, ""));
  ReadingClient a(loop.get(), dir.socket());
  REQUIRE(loop.runUntil([&] { return handler.hellos.size() == 1 && a.lines == 1; }, 10s));
  ScopedFd silent = silentClient(dir.socket());
  ReadingClient b(loop.get(), dir.socket());
  REQUIRE(loop.runUntil([&] { return handler.hellos.size() == 3 && b.lines == 1; }, 10s));

  const std::string line = std::string(1024 * 1024 - 1, 'y') + "\n";
  std::size_t sent = 0;
  for (int round = 0; round < 40 && handler.closed.empty(); ++round) {
    std::set<std::uint64_t> reached;
    server.forEach([&](ControlConnection& c) {
      reached.insert(c.id());
      c.send(line);
    });
    ++sent;
    CHECK(reached.size() == 3);  // the one dropped on the way included
    REQUIRE(loop.runUntil([&] { return a.lines >= 1 + sent && b.lines >= 1 + sent; }, 30s));
  }
  REQUIRE(handler.closed.size() == 1);
  CHECK(handler.nestedVisits == 2);  // the two readers, not the one being dropped
  REQUIRE(loop.runUntil([&] { return a.lines == 2 + sent && b.lines == 2 + sent; }, 10s));
  server.closeAll();
  REQUIRE(loop.runUntil([&] { return a.eof && b.eof; }, 10s));
}
