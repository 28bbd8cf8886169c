#pragma once
// How the CLI shows what controld answers: times, durations, the status table,
// one service in detail, the progress line of start/stop --wait.

#include <cstdint>
#include <string>

#include "shared/protocol.hpp"

namespace ondemand::controld::cli {

std::string clockTime(std::int64_t unixMs);            // local "YYYY-MM-DD HH:MM:SS"
std::string timeOfDay(std::int64_t unixMs);            // local "HH:MM:SS"
std::string ago(std::int64_t now, std::int64_t then);  // "-" when then is 0
std::string padRight(const std::string& s, std::size_t width);
std::string describeOperation(const protocol::StatusReply::Service& service, std::int64_t now);
void printTable(const protocol::StatusReply& reply);
void printDetail(const protocol::StatusReply& reply);
// One line saying what a starting or stopping service is doing, from its
// status: "starting since 21:40:02 (4.1s), waiting for health: http://…".
// `what` gets the part that changes only when something happens.
std::string progressLine(const protocol::StatusReply::Service& s, std::int64_t now, std::string& what);

}  // namespace ondemand::controld::cli
