#pragma once
// A worker's connection to controld apart from its socket: the bytes read,
// split into lines, and what each line means: the handshake (welcome and its
// protocol version, the sync that ends the first burst of states), pushes
// stored in the service table, removals, controld's errors, the answers to
// status questions, and the ack a stopping push asks for. Plain C++ (no
// nginx), so it can be unit-tested; ControlLink does the I/O and tells the
// worker. Nothing here throws on what controld sends.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ngx_module/service_table.hpp"
#include "shared/protocol.hpp"

namespace ondemand::module {

class LinkSession {
 public:
  // What one line from controld asks of the link.
  struct Incoming {
    enum class Kind { Welcome, State, Synced, Removed, ControldError, StatusAnswer, Ignored };
    Kind kind = Kind::Ignored;
    ServiceEntry* entry = nullptr;             // State, Removed
    std::vector<ServiceEntry*> vanished;       // Synced: known services the new burst did not name (forgotten)
    std::optional<protocol::StoppingAck> ack;  // State (stopping): send it after the activity not yet reported
    std::int64_t answerId = 0;                 // StatusAnswer: the question's id
    std::string text;                          // ControldError: its message; StatusAnswer: the reply line;
                                               // Ignored: the message's type
  };
  enum class Next { None, Line, Broken };

  explicit LinkSession(std::size_t maxLineBytes) : maxLineBytes_(maxLineBytes), framer_(maxLineBytes) {}

  // A new connection: nothing buffered, not synced, a new subscription of the table.
  void connected();
  // After a Synced line, once the vanished services are dealt with: the
  // table is complete, the link is up.
  void markSynced();
  // The connection is gone: nothing buffered, not synced (the table keeps the last states).
  void lost();

  // Bytes read. False when a line is longer than the limit: drop the connection.
  [[nodiscard]] bool append(std::string_view bytes);
  // The next complete line: read into `in` (Line), none buffered (None), or
  // one that breaks the protocol (Broken, with `error`: drop the connection).
  Next next(Incoming& in, std::string& error);

  bool synced() const { return synced_; }
  bool everSynced() const { return everSynced_; }
  const std::string& daemon() const { return daemon_; }  // "controld 0.1.0", from its welcome
  ServiceTable& table() { return table_; }

 private:
  bool handle(std::string_view line, Incoming& in, std::string& error);

  std::size_t maxLineBytes_;
  protocol::LineFramer framer_;
  ServiceTable table_;
  std::string daemon_;
  bool synced_ = false;
  bool everSynced_ = false;
};

}  // namespace ondemand::module
