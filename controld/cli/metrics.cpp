#include "controld/cli/metrics.hpp"

#include <cstdint>
#include <sstream>
#include <vector>

#include "controld/io/json_fields.hpp"
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

// {"bounds_ms":[...],"counts":[... one more ...],"sum_ms":N} -> _bucket/_sum/_count.
void histogram(Exposition& e, const char* name, const std::string& labels, const rapidjson::Value& service,
               const char* field) {
  const auto h = service.FindMember(field);
  if (h == service.MemberEnd() || !h->value.IsObject()) return;
  const auto bounds = h->value.FindMember("bounds_ms");
  const auto counts = h->value.FindMember("counts");
  if (bounds == h->value.MemberEnd() || counts == h->value.MemberEnd() || !bounds->value.IsArray() ||
      !counts->value.IsArray() || counts->value.Size() != bounds->value.Size() + 1) {
    return;
  }
  const std::string bucket = std::string(name) + "_bucket";
  std::int64_t cumulative = 0;
  for (rapidjson::SizeType i = 0; i < counts->value.Size(); ++i) {
    cumulative += counts->value[i].IsInt64() ? counts->value[i].GetInt64() : 0;
    const std::string le =
        i < bounds->value.Size() && bounds->value[i].IsInt64() ? millisAsSeconds(bounds->value[i].GetInt64()) : "+Inf";
    e.sample(bucket, labels + ",le=\"" + le + "\"", cumulative);
  }
  e.sample(std::string(name) + "_sum", labels, millisAsSeconds(jsonInt64(h->value, "sum_ms")));
  e.sample(std::string(name) + "_count", labels, cumulative);
}

}  // namespace

std::string prometheusText(const rapidjson::Value& status) {
  Exposition e;
  const auto services = status.FindMember("services");
  const bool haveServices = services != status.MemberEnd() && services->value.IsArray();
  auto eachService = [&](auto&& fn) {
    if (!haveServices) return;
    for (const auto& s : services->value.GetArray())
      if (s.IsObject()) fn(s, "service=\"" + label(jsonString(s, "name")) + "\"");
  };

  e.family("ondemand_service_state", "gauge", "1 for the state the service is in, 0 for the others.");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    const std::string state = jsonString(s, "state");
    for (ServiceState candidate : {ServiceState::Cold, ServiceState::Starting, ServiceState::Warm,
                                   ServiceState::Stopping, ServiceState::Failed}) {
      const std::string name(toString(candidate));
      e.sample("ondemand_service_state", service + ",state=\"" + name + "\"", state == name ? 1 : 0);
    }
  });
  e.family("ondemand_service_in_flight", "gauge", "Requests in flight in all nginx workers.");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    e.sample("ondemand_service_in_flight", service, jsonInt64(s, "in_flight"));
  });
  e.family("ondemand_requests_waiting", "gauge", "Requests nginx workers hold now, waiting for the service.");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    e.sample("ondemand_requests_waiting", service, jsonInt64(s, "requests_waiting"));
  });
  e.family("ondemand_service_requests_started_total", "counter",
           "Requests nginx workers started since controld started.");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    e.sample("ondemand_service_requests_started_total", service, jsonInt64(s, "started_total"));
  });
  e.family("ondemand_starts_total", "counter", "Cold starts, by result (kept across restarts).");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    e.sample("ondemand_starts_total", service + ",result=\"ok\"", jsonInt64(s, "starts_ok"));
    e.sample("ondemand_starts_total", service + ",result=\"failed\"", jsonInt64(s, "starts_failed"));
  });
  e.family("ondemand_stops_total", "counter",
           "Stops that reached cold since controld started, by what began them (idle, evicted, cli).");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    const auto stops = s.FindMember("stops");
    if (stops == s.MemberEnd() || !stops->value.IsObject()) return;
    for (const auto& m : stops->value.GetObject()) {
      if (m.value.IsInt64()) {
        e.sample("ondemand_stops_total", service + ",reason=\"" + label(m.name.GetString()) + "\"", m.value.GetInt64());
      }
    }
  });
  e.family("ondemand_cold_start_duration_seconds", "histogram",
           "Cold starts that reached warm since controld started: from the wake to warm.");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    histogram(e, "ondemand_cold_start_duration_seconds", service, s, "cold_start_histogram");
  });
  e.family("ondemand_wait_duration_seconds", "histogram",
           "How long nginx workers held requests for the service (waits that ended since controld started).");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    histogram(e, "ondemand_wait_duration_seconds", service, s, "wait_histogram");
  });
  e.family("ondemand_service_last_start_seconds", "gauge",
           "How long the last good cold start took, from the wake to warm.");
  eachService([&](const rapidjson::Value& s, const std::string& service) {
    if (jsonInt64(s, "starts_ok") > 0) {
      e.sample("ondemand_service_last_start_seconds", service, millisAsSeconds(jsonInt64(s, "last_start_ms")));
    }
  });

  // Machines and their resources, where controld knows them:
  // "machines": [{"name": "gpu-01", "resources": {"vram_gb": {"used": 16, "total": 24}}}].
  const auto machines = status.FindMember("machines");
  if (machines != status.MemberEnd() && machines->value.IsArray()) {
    std::vector<std::pair<std::string, std::string>> used, total;  // labels, value
    for (const auto& m : machines->value.GetArray()) {
      if (!m.IsObject()) continue;
      const auto resources = m.FindMember("resources");
      if (resources == m.MemberEnd() || !resources->value.IsObject()) continue;
      for (const auto& r : resources->value.GetObject()) {
        if (!r.value.IsObject()) continue;
        const std::string labels =
            "machine=\"" + label(jsonString(m, "name")) + "\",resource=\"" + label(r.name.GetString()) + "\"";
        auto number = [&](const char* key) {
          const auto v = r.value.FindMember(key);
          if (v == r.value.MemberEnd() || !v->value.IsNumber()) return std::string("0");
          if (v->value.IsInt64()) return std::to_string(v->value.GetInt64());
          std::ostringstream out;
          out.precision(17);
          out << v->value.GetDouble();
          return out.str();
        };
        used.emplace_back(labels, number("used"));
        total.emplace_back(labels, number("total"));
      }
    }
    e.family("ondemand_machine_resource_used", "gauge", "What the machine's services hold of each resource.");
    for (const auto& [labels, value] : used)
      e.sample("ondemand_machine_resource_used", labels, value);
    e.family("ondemand_machine_resource_capacity", "gauge", "How much of each resource the machine has.");
    for (const auto& [labels, value] : total)
      e.sample("ondemand_machine_resource_capacity", labels, value);
  }

  const auto daemon = status.FindMember("daemon");
  if (daemon != status.MemberEnd() && daemon->value.IsObject()) {
    const auto& d = daemon->value;
    e.family("ondemand_controld_start_time_seconds", "gauge", "When controld started (unix time).");
    // Whole seconds, exactly (as process_start_time_seconds is).
    e.sample("ondemand_controld_start_time_seconds", "", jsonInt64(d, "started_at") / 1000);
    const auto connections = d.FindMember("connections");
    if (connections != d.MemberEnd() && connections->value.IsObject()) {
      e.family("ondemand_controld_connections", "gauge", "Open control connections, by role.");
      for (const auto& m : connections->value.GetObject()) {
        if (m.value.IsInt64())
          e.sample("ondemand_controld_connections", "role=\"" + label(m.name.GetString()) + "\"", m.value.GetInt64());
      }
    }
    const auto received = d.FindMember("messages_received");
    if (received != d.MemberEnd() && received->value.IsObject()) {
      e.family("ondemand_controld_messages_received_total", "counter", "Protocol messages received, by type.");
      for (const auto& m : received->value.GetObject()) {
        if (m.value.IsInt64()) {
          e.sample("ondemand_controld_messages_received_total", "type=\"" + label(m.name.GetString()) + "\"",
                   m.value.GetInt64());
        }
      }
    }
  }
  return e.text();
}

}  // namespace ondemand::controld
