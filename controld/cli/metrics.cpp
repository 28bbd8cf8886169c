#include "controld/cli/metrics.hpp"

#include <cmath>
#include <cstdint>
#include <sstream>
#include <vector>

#include "shared/service_state.hpp"

namespace ondemand::controld {

namespace {

// A label value: backslash, double quote and newline escaped.
std::string label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

// Milliseconds as exact decimal seconds: 41250 -> "41.25", 3900 -> "3.9".
// (A double through an ostream keeps 6 significant digits: a unix time
// would come out as 1.79616e+09, an hour off.)
std::string millisAsSeconds(std::int64_t ms) {
  const bool negative = ms < 0;
  const std::uint64_t abs = negative ? static_cast<std::uint64_t>(-(ms + 1)) + 1 : static_cast<std::uint64_t>(ms);
  std::string out = (negative ? "-" : "") + std::to_string(abs / 1000);
  if (const std::uint64_t frac = abs % 1000; frac != 0) {
    std::string digits = std::to_string(frac);
    digits.insert(0, 3 - digits.size(), '0');
    while (digits.back() == '0')
      digits.pop_back();
    out += "." + digits;
  }
  return out;
}

namespace {

class Exposition {
 public:
  void family(const char* name, const char* type, const char* help) {
    out_ << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  }
  void sample(const std::string& name, const std::string& labels, const std::string& value) {
    out_ << name;
    if (!labels.empty()) out_ << '{' << labels << '}';
    out_ << ' ' << value << '\n';
  }
  void sample(const std::string& name, const std::string& labels, std::int64_t value) {
    sample(name, labels, std::to_string(value));
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

using Service = protocol::StatusReply::Service;

// Per bucket counts (one more than bounds) -> cumulative _bucket, _sum, _count.
void histogram(Exposition& e, const char* name, const std::string& labels, const protocol::StatusReply::Histogram& h) {
  if (h.counts.size() != h.boundsMs.size() + 1) return;
  const std::string bucket = std::string(name) + "_bucket";
  std::int64_t cumulative = 0;
  for (std::size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += static_cast<std::int64_t>(h.counts[i]);
    const std::string le = i < h.boundsMs.size() ? millisAsSeconds(static_cast<std::int64_t>(h.boundsMs[i])) : "+Inf";
    e.sample(bucket, labels + ",le=\"" + le + "\"", cumulative);
  }
  e.sample(std::string(name) + "_sum", labels, millisAsSeconds(static_cast<std::int64_t>(h.sumMs)));
  e.sample(std::string(name) + "_count", labels, cumulative);
}

std::string count(std::uint64_t n) {
  return std::to_string(n);
}

// An amount of a resource: whole numbers as integers, others with every digit.
std::string amount(double v) {
  if (std::isfinite(v) && std::fabs(v) < 9e18 && v == std::trunc(v))
    return std::to_string(static_cast<std::int64_t>(v));
  std::ostringstream out;
  out.precision(17);
  out << v;
  return out.str();
}

void serviceCounts(Exposition& e, const std::vector<Service>& services) {
  auto each = [&](auto&& fn) {
    for (const auto& s : services)
      fn(s, "service=\"" + label(s.name) + "\"");
  };
  e.family("ondemand_service_state", "gauge", "1 for the state the service is in, 0 for the others.");
  each([&](const Service& s, const std::string& service) {
    for (ServiceState candidate : {ServiceState::Cold, ServiceState::Starting, ServiceState::Warm,
                                   ServiceState::Stopping, ServiceState::Failed}) {
      const std::string name(toString(candidate));
      e.sample("ondemand_service_state", service + ",state=\"" + name + "\"", s.state == candidate ? 1 : 0);
    }
  });
  e.family("ondemand_service_in_flight", "gauge", "Requests in flight in all nginx workers.");
  each([&](const Service& s, const std::string& service) {
    e.sample("ondemand_service_in_flight", service, count(s.inFlight));
  });
  e.family("ondemand_requests_waiting", "gauge", "Requests nginx workers hold now, waiting for the service.");
  each([&](const Service& s, const std::string& service) {
    e.sample("ondemand_requests_waiting", service, count(s.requestsWaiting));
  });
  e.family("ondemand_service_requests_started_total", "counter",
           "Requests nginx workers started since controld started.");
  each([&](const Service& s, const std::string& service) {
    e.sample("ondemand_service_requests_started_total", service, count(s.startedTotal));
  });
  e.family("ondemand_starts_total", "counter", "Cold starts, by result (kept across restarts).");
  each([&](const Service& s, const std::string& service) {
    e.sample("ondemand_starts_total", service + ",result=\"ok\"", count(s.startsOk));
    e.sample("ondemand_starts_total", service + ",result=\"failed\"", count(s.startsFailed));
  });
  e.family("ondemand_stops_total", "counter",
           "Stops that reached cold since controld started, by what began them (idle, evicted, cli).");
  each([&](const Service& s, const std::string& service) {
    for (const auto& [reason, n] : s.stops)
      e.sample("ondemand_stops_total", service + ",reason=\"" + label(reason) + "\"", count(n));
  });
}

void serviceDurations(Exposition& e, const std::vector<Service>& services) {
  e.family("ondemand_cold_start_duration_seconds", "histogram",
           "Cold starts that reached warm since controld started: from the wake to warm.");
  for (const auto& s : services)
    histogram(e, "ondemand_cold_start_duration_seconds", "service=\"" + label(s.name) + "\"", s.coldStart);
  e.family("ondemand_wait_duration_seconds", "histogram",
           "How long nginx workers held requests for the service (waits that ended since controld started).");
  for (const auto& s : services)
    histogram(e, "ondemand_wait_duration_seconds", "service=\"" + label(s.name) + "\"", s.wait);
  e.family("ondemand_service_last_start_seconds", "gauge",
           "How long the last good cold start took, from the wake to warm.");
  for (const auto& s : services) {
    if (s.startsOk > 0) {
      e.sample("ondemand_service_last_start_seconds", "service=\"" + label(s.name) + "\"",
               millisAsSeconds(s.lastStartMs));
    }
  }
}

// Machines and their resources, where controld knows them.
void machines(Exposition& e, const std::vector<protocol::StatusReply::Machine>& machines) {
  std::vector<std::pair<std::string, std::string>> used, total;  // labels, value
  for (const auto& m : machines) {
    for (const auto& r : m.resources) {
      const std::string labels = "machine=\"" + label(m.name) + "\",resource=\"" + label(r.name) + "\"";
      used.emplace_back(labels, amount(r.used));
      total.emplace_back(labels, amount(r.total));
    }
  }
  e.family("ondemand_machine_resource_used", "gauge", "What the machine's services hold of each resource.");
  for (const auto& [labels, value] : used)
    e.sample("ondemand_machine_resource_used", labels, value);
  e.family("ondemand_machine_resource_capacity", "gauge", "How much of each resource the machine has.");
  for (const auto& [labels, value] : total)
    e.sample("ondemand_machine_resource_capacity", labels, value);
}

void daemon(Exposition& e, const protocol::StatusReply::Daemon& d) {
  e.family("ondemand_controld_start_time_seconds", "gauge", "When controld started (unix time).");
  // Whole seconds, exactly (as process_start_time_seconds is).
  e.sample("ondemand_controld_start_time_seconds", "", d.startedAtMs / 1000);
  e.family("ondemand_controld_connections", "gauge", "Open control connections, by role.");
  e.sample("ondemand_controld_connections", "role=\"worker\"", count(d.workerConnections));
  e.sample("ondemand_controld_connections", "role=\"cli\"", count(d.cliConnections));
  e.family("ondemand_controld_messages_received_total", "counter", "Protocol messages received, by type.");
  for (const auto& [type, n] : d.messagesReceived)
    e.sample("ondemand_controld_messages_received_total", "type=\"" + label(type) + "\"", count(n));
}

}  // namespace

std::string prometheusText(const protocol::StatusReply& status) {
  Exposition e;
  serviceCounts(e, status.services);
  serviceDurations(e, status.services);
  machines(e, status.machines);
  daemon(e, status.daemon);
  return e.text();
}

}  // namespace ondemand::controld
