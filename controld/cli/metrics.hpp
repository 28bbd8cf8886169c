#pragma once
// `controld metrics`: the daemon's status in Prometheus' text format, for
// node_exporter's textfile collector or any scraper that runs a command.
// Built from the `status --json` reply, so it shows exactly what status shows.

#include <cstdint>
#include <string>

#include "shared/protocol.hpp"

namespace ondemand::controld {

// The same text `GET /metrics` serves (metrics_listen): the daemon renders
// its own status reply with it.
std::string prometheusText(const protocol::StatusReply& status);

// Unix milliseconds as exact decimal seconds ("1763890000.123").
std::string millisAsSeconds(std::int64_t ms);

}  // namespace ondemand::controld
