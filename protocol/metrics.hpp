// Counters and histograms for `GET /metrics` (Prometheus text format 0.0.4).
//
// Hot paths only touch atomics (relaxed): no lock is shared by requests and no
// actor is asked per increment. One `metrics` object per modelgate instance,
// shared by the registry (health checks), the gateway (requests) and the
// admin API (which renders it). Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace mg {

/// A histogram with fixed bucket bounds (seconds).
class histogram {
public:
  explicit histogram(std::vector<double> bounds);
  void observe(double seconds);
  /// Appends the `_bucket`, `_sum` and `_count` lines of `name`.
  void render(std::string& out, const std::string& name) const;

private:
  std::vector<double> bounds_;
  std::vector<std::atomic<uint64_t>> counts_; // per bucket, not cumulative
  std::atomic<uint64_t> sum_micros_{0};
};

/// The gateway endpoints counted in `modelgate_requests_total{endpoint}`.
enum class gateway_endpoint : size_t { chat_completions, completions, embeddings, models, count };

const char* to_string(gateway_endpoint e);

struct metrics {
  metrics();

  // -- gateway ---------------------------------------------------------------
  /// Status codes with a series of their own; others count under "other".
  static constexpr std::array<int, 12> codes = {200, 400, 401, 404, 405, 408, 413, 429, 500, 502, 503, 504};
  std::array<std::array<std::atomic<uint64_t>, codes.size() + 1>,
             static_cast<size_t>(gateway_endpoint::count)>
    requests{};
  histogram request_duration;                 // 1 ms .. 600 s
  std::atomic<uint64_t> upstream_retries{0};
  std::atomic<int64_t> requests_in_flight{0};

  void count_request(gateway_endpoint e, int status);

  // -- health checks ---------------------------------------------------------
  histogram health_check_duration; // 1 ms .. 10 s

  // -- process ---------------------------------------------------------------
  double start_time_seconds; // since the Unix epoch
};

/// Values the registry knows (by message) at rendering time.
struct registry_figures {
  uint64_t healthy = 0, unhealthy = 0, unknown = 0; // active servers by status
  uint64_t checks_success = 0, checks_failure = 0;
  uint64_t deregistrations_manual = 0, deregistrations_health_check = 0;
};

/// The whole exposition, HELP and TYPE lines included.
std::string render_metrics(const metrics& m, const registry_figures& r, const std::string& version);

} // namespace mg
