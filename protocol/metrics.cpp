#include "protocol/metrics.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>

namespace mg {

namespace {

std::string number(double x) {
  char buf[64];
  if (std::isinf(x))
    return "+Inf";
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, const std::string& name, const std::string& labels, double value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += number(value);
  out += '\n';
}

} // namespace

histogram::histogram(std::vector<double> bounds)
  : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {
}

void histogram::observe(double seconds) {
  size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i])
    ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<uint64_t>(std::max(0.0, seconds) * 1e6),
                        std::memory_order_relaxed);
}

void histogram::render(std::string& out, const std::string& name) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    auto le = i < bounds_.size() ? number(bounds_[i]) : std::string{"+Inf"};
    sample(out, name + "_bucket", "le=\"" + le + "\"", static_cast<double>(cumulative));
  }
  sample(out, name + "_sum", "", static_cast<double>(sum_micros_.load()) / 1e6);
  sample(out, name + "_count", "", static_cast<double>(cumulative));
}

const char* to_string(gateway_endpoint e) {
  switch (e) {
    case gateway_endpoint::chat_completions: return "chat_completions";
    case gateway_endpoint::completions: return "completions";
    case gateway_endpoint::embeddings: return "embeddings";
    default: return "models";
  }
}

metrics::metrics()
  : request_duration({0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                      300, 600}),
    health_check_duration({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}) {
  using namespace std::chrono;
  start_time_seconds =
    duration_cast<duration<double>>(system_clock::now().time_since_epoch()).count();
}

void metrics::count_request(gateway_endpoint e, int status) {
  size_t i = 0;
  while (i < codes.size() && codes[i] != status)
    ++i;
  requests[static_cast<size_t>(e)][i].fetch_add(1, std::memory_order_relaxed);
}

std::string render_metrics(const metrics& m, const registry_figures& r, const std::string& version) {
  std::string out;
  out.reserve(8192);
  header(out, "modelgate_build_info", "gauge", "Build information; the value is always 1.");
  sample(out, "modelgate_build_info", "version=\"" + version + "\"", 1);
  header(out, "modelgate_process_start_time_seconds", "gauge",
         "Start time of the process since the Unix epoch in seconds.");
  sample(out, "modelgate_process_start_time_seconds", "", m.start_time_seconds);
  header(out, "modelgate_servers", "gauge", "Active servers by health status.");
  sample(out, "modelgate_servers", "status=\"healthy\"", static_cast<double>(r.healthy));
  sample(out, "modelgate_servers", "status=\"unhealthy\"", static_cast<double>(r.unhealthy));
  sample(out, "modelgate_servers", "status=\"unknown\"", static_cast<double>(r.unknown));
  header(out, "modelgate_health_checks_total", "counter", "Health checks applied, by result.");
  sample(out, "modelgate_health_checks_total", "result=\"success\"",
         static_cast<double>(r.checks_success));
  sample(out, "modelgate_health_checks_total", "result=\"failure\"",
         static_cast<double>(r.checks_failure));
  header(out, "modelgate_health_check_duration_seconds", "histogram",
         "Duration of health probes, from the start of the connection to the last byte.");
  m.health_check_duration.render(out, "modelgate_health_check_duration_seconds");
  header(out, "modelgate_deregistrations_total", "counter", "Servers deregistered, by reason.");
  sample(out, "modelgate_deregistrations_total", "reason=\"manual\"",
         static_cast<double>(r.deregistrations_manual));
  sample(out, "modelgate_deregistrations_total", "reason=\"health_check\"",
         static_cast<double>(r.deregistrations_health_check));
  header(out, "modelgate_requests_total", "counter",
         "Gateway requests answered, by endpoint and status code.");
  for (size_t e = 0; e < static_cast<size_t>(gateway_endpoint::count); ++e)
    for (size_t i = 0; i <= metrics::codes.size(); ++i) {
      auto n = m.requests[e][i].load(std::memory_order_relaxed);
      if (n == 0)
        continue;
      auto code = i < metrics::codes.size() ? std::to_string(metrics::codes[i]) : std::string{"other"};
      sample(out, "modelgate_requests_total",
             std::string{"endpoint=\""} + to_string(static_cast<gateway_endpoint>(e)) + "\",code=\""
               + code + "\"",
             static_cast<double>(n));
    }
  header(out, "modelgate_request_duration_seconds", "histogram",
         "Duration of gateway requests, to the last byte of the answer.");
  m.request_duration.render(out, "modelgate_request_duration_seconds");
  header(out, "modelgate_upstream_retries_total", "counter",
         "Gateway tries repeated on another server after a connect failure or a 502/503.");
  sample(out, "modelgate_upstream_retries_total", "", static_cast<double>(m.upstream_retries.load()));
  header(out, "modelgate_requests_in_flight", "gauge", "Gateway requests being served now.");
  sample(out, "modelgate_requests_in_flight", "", static_cast<double>(m.requests_in_flight.load()));
  return out;
}

} // namespace mg
