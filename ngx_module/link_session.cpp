#include "ngx_module/link_session.hpp"

#include <type_traits>
#include <variant>

namespace ondemand::module {

void LinkSession::connected() {
  framer_ = protocol::LineFramer(maxLineBytes_);
  synced_ = false;
  table_.beginSubscription();
}

void LinkSession::markSynced() {
  synced_ = true;
  everSynced_ = true;
}

void LinkSession::lost() {
  framer_ = protocol::LineFramer(maxLineBytes_);
  synced_ = false;
}

bool LinkSession::append(std::string_view bytes) {
  return framer_.append(bytes);
}

LinkSession::Next LinkSession::next(Incoming& in, std::string& error) {
  for (;;) {
    const auto line = framer_.next();
    if (!line) return Next::None;
    if (line->empty()) continue;
    in = Incoming{};
    return handle(*line, in, error) ? Next::Line : Next::Broken;
  }
}

bool LinkSession::handle(std::string_view line, Incoming& in, std::string& error) {
  // The answer to a status question: a reply, which only the CLI reads
  // otherwise (and longer than any other message).
  static constexpr std::string_view kReply = "{\"type\":\"reply\"";
  if (line.substr(0, kReply.size()) == kReply) {
    const auto envelope = protocol::decodeEnvelope(line);
    if (!envelope.value) {
      error = "bad reply from controld: " + envelope.error;
      return false;
    }
    in.kind = Incoming::Kind::StatusAnswer;
    in.answerId = envelope.value->id;
    in.text.assign(line);
    return true;
  }
  protocol::Decoded decoded = protocol::decode(line);
  if (!decoded.message) {
    error = "bad message from controld: " + decoded.error;
    return false;
  }
  return std::visit(
      [&](auto& m) -> bool {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, protocol::Welcome>) {
          if (m.version != protocol::kVersion) {
            error = "controld speaks protocol version " + std::to_string(m.version) + ", this module " +
                    std::to_string(protocol::kVersion);
            return false;
          }
          daemon_ = m.daemon;
          in.kind = Incoming::Kind::Welcome;
        } else if constexpr (std::is_same_v<T, protocol::StatePush>) {
          ServiceEntry& entry = table_.applyPush(m);
          in.kind = Incoming::Kind::State;
          in.entry = &entry;
          // controld waits for this before stopping: our in-flight count
          // (after the activity it has not seen yet) decides whether the
          // stop goes ahead.
          if (entry.state.state == ServiceState::Stopping)
            in.ack = protocol::StoppingAck{entry.name, entry.state.epoch, entry.inFlight};
        } else if constexpr (std::is_same_v<T, protocol::Synced>) {
          in.kind = Incoming::Kind::Synced;
          in.vanished = table_.completeSync();
        } else if constexpr (std::is_same_v<T, protocol::Removed>) {
          ServiceEntry* entry = table_.find(m.service);
          if (entry != nullptr && entry->known) {
            table_.forget(*entry);
            in.kind = Incoming::Kind::Removed;
            in.entry = entry;
          }
        } else if constexpr (std::is_same_v<T, protocol::Error>) {
          in.kind = Incoming::Kind::ControldError;
          in.text = m.message;
        } else {
          in.text = std::string(protocol::typeName(decoded.message.value()));
        }
        return true;
      },
      *decoded.message);
}

}  // namespace ondemand::module
