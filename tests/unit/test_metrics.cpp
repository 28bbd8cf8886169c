// `controld metrics`: the status reply in Prometheus' text format.

#include <catch2/catch.hpp>

#include "controld/cli/metrics.hpp"

using ondemand::controld::prometheusText;

namespace {

// statusJson: what `controld status --json` prints.
std::string metricsOf(const char* statusJson) {
  const auto status = ondemand::protocol::decodeStatusReply(statusJson);
  INFO(status.error);
  REQUIRE(status.value);
  return prometheusText(*status.value);
}

bool hasLine(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("metrics: one sample per service and state, counters and the last start") {
  const std::string text = metricsOf(R"({
    "now": 1763900000123,
    "daemon": {"started_at": 1763890000000, "connections": {"worker": 4, "cli": 1},
               "messages_received": {"wake": 2, "activity": 120}},
    "services": [
      {"name": "comfyui", "state": "warm", "in_flight": 3, "started_total": 5123,
       "starts_ok": 31, "starts_failed": 1, "last_start_ms": 41250},
      {"name": "never-started", "state": "cold", "in_flight": 0, "started_total": 0,
       "starts_ok": 0, "starts_failed": 0, "last_start_ms": 0}]})");

  CHECK(hasLine(text, R"(ondemand_service_state{service="comfyui",state="warm"} 1)"));
  CHECK(hasLine(text, R"(ondemand_service_state{service="comfyui",state="cold"} 0)"));
  CHECK(hasLine(text, R"(ondemand_service_state{service="never-started",state="cold"} 1)"));
  CHECK(hasLine(text, R"(ondemand_service_in_flight{service="comfyui"} 3)"));
  CHECK(hasLine(text, R"(ondemand_service_requests_started_total{service="comfyui"} 5123)"));
  CHECK(hasLine(text, R"(ondemand_starts_total{service="comfyui",result="ok"} 31)"));
  CHECK(hasLine(text, R"(ondemand_starts_total{service="comfyui",result="failed"} 1)"));
  CHECK(hasLine(text, R"(ondemand_service_last_start_seconds{service="comfyui"} 41.25)"));
  // No good start yet: no figure rather than a made-up 0.
  CHECK(text.find(R"(ondemand_service_last_start_seconds{service="never-started"})") == std::string::npos);
  CHECK(hasLine(text, R"(ondemand_controld_connections{role="worker"} 4)"));
  // Exact: an integer unix time, not 1.76389e+09.
  CHECK(hasLine(text, "ondemand_controld_start_time_seconds 1763890000"));
  CHECK(hasLine(text, R"(ondemand_controld_messages_received_total{type="wake"} 2)"));
  CHECK(hasLine(text, "# TYPE ondemand_starts_total counter"));
  // Every family is declared once, before its samples.
  CHECK(text.find("# TYPE ondemand_service_state gauge") < text.find("ondemand_service_state{"));
}

TEST_CASE("metrics: label values are escaped") {
  const std::string text = metricsOf(R"({"services": [{"name": "a\"b\\c", "state": "cold"}]})");
  CHECK(hasLine(text, R"(ondemand_service_state{service="a\"b\\c",state="cold"} 1)"));
}

TEST_CASE("metrics: durations are exact decimal seconds, however long") {
  const std::string text = metricsOf(R"({"daemon": {"started_at": 1796160012345}, "services": [
      {"name": "a", "state": "warm", "starts_ok": 1, "last_start_ms": 1234567},
      {"name": "b", "state": "warm", "starts_ok": 1, "last_start_ms": 3005},
      {"name": "c", "state": "warm", "starts_ok": 1, "last_start_ms": 60000}]})");
  CHECK(hasLine(text, R"(ondemand_service_last_start_seconds{service="a"} 1234.567)"));
  CHECK(hasLine(text, R"(ondemand_service_last_start_seconds{service="b"} 3.005)"));
  CHECK(hasLine(text, R"(ondemand_service_last_start_seconds{service="c"} 60)"));
  CHECK(hasLine(text, "ondemand_controld_start_time_seconds 1796160012"));
}
