// A health probe's request and outcome: the vocabulary between the prober
// (which schedules probes), the HTTP probe client (which runs them on asio)
// and the registry (which applies their outcomes). Plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "protocol/server_record.hpp"

namespace mg {

/// Where and how to probe one server.
struct probe_target {
  std::string server_id;
  std::string url;         // the server's base URL
  std::string health_path; // appended to url
  health_expect expect = health_expect::json;
  std::optional<std::string> api_key; // sent as Authorization: Bearer
};

/// What one probe found.
struct probe_outcome {
  bool healthy = false;
  std::optional<double> response_time_ms; // connection start to last byte
  std::optional<int> status_code;
  std::string error;      // human message; empty when healthy
  std::string error_kind; // connect, timeout, http_status, invalid_body, resolve, protocol
  epoch_ms at = 0;        // when the probe finished (wall clock)
  double lateness_ms = 0; // how late the probe started against its schedule
  /// Not from a tick: the server closed the connection kept for its probes
  /// and refused the reconnect made at once (as a server whose process died
  /// does), the next probe's failure at its connect step found early. The
  /// health policy counts it at once but leaves deregistration to that next
  /// probe, which, failing too, confirms it without counting again; it has
  /// no schedule, so no lateness.
  bool between_probes = false;
};

/// A scheduled probe's outcome as the registry applies it: for (server,
/// generation), so a result for a server deregistered or reactivated
/// meanwhile is dropped.
struct probe_report {
  std::string server_id;
  uint64_t generation = 0;
  probe_outcome outcome;
};

/// The body cap of a health response; a larger one fails as invalid_body.
constexpr size_t health_body_limit = 64 * 1024;

} // namespace mg

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

namespace mg {

using probe_callback = std::function<void(probe_outcome)>;

/// A scheduled probe, as its prober hands it to the driver.
struct scheduled_probe {
  std::chrono::milliseconds timeout{0};
  uint64_t generation = 0; // the server's, when its prober started
  double lateness_ms = 0;  // how late the tick is against its schedule
  /// The prober's interval, or 0. With it, a probe that follows the last
  /// scheduled one by about an interval (less than one and a half) ends no
  /// later than one interval plus the timeout after that one's start, and
  /// never less than nine tenths of the timeout after its own: a server that
  /// stops answering right after a probe is then found within one interval
  /// plus the timeout, when this probe starts late in its slot by up to a
  /// tenth of the timeout.
  std::chrono::milliseconds interval{0};
};

/// Receives the reports of scheduled probes, all that finished within a
/// few milliseconds in one call, on an I/O thread; must only hand them on
/// (modelgate sends them to the registry as one message).
using probe_report_sink = std::function<void(std::vector<probe_report>)>;

/// Runs probes of one server, keeping its connection between probes where the
/// server allows. Both calls may come from any thread, with at most one probe
/// in flight.
class probe_driver {
public:
  virtual ~probe_driver() = default;
  /// An on-demand probe: `done` runs on an I/O thread and must only hand the
  /// outcome on (e.g. send it to an actor).
  virtual void probe(std::chrono::milliseconds timeout, probe_callback done) = 0;
  /// A scheduled probe: its report (with `generation`, and `lateness_ms` in
  /// the outcome) goes to the report sink of the driver's maker, batched with
  /// other servers' reports, never through the caller. While the previous
  /// scheduled probe is still running it starts nothing and returns false.
  virtual bool probe_scheduled(const scheduled_probe& probe) = 0;
  /// Called by the prober when it stops (deregistration, pause, shutdown):
  /// a scheduled probe still in flight ends at once and reports nothing, as
  /// if its prober had never started it. Any thread.
  virtual void abandon() = 0;
};

/// Makes the driver of one server; the daemon's makes HTTP probe clients,
/// tests make fakes.
using probe_driver_factory = std::function<std::shared_ptr<probe_driver>(const probe_target&)>;

} // namespace mg
