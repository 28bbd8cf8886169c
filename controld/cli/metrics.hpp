#pragma once
// `controld metrics`: the daemon's status in Prometheus' text format, for
// node_exporter's textfile collector or any scraper that runs a command.
// Built from the `status --json` reply, so it shows exactly what status shows.

#include <rapidjson/document.h>

#include <string>

namespace ondemand::controld {

std::string prometheusText(const rapidjson::Value& status);

}  // namespace ondemand::controld
