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
};

/// The body cap of a health response; a larger one fails as invalid_body.
constexpr size_t health_body_limit = 64 * 1024;

} // namespace mg

#include <chrono>
#include <functional>
#include <memory>

namespace mg {

using probe_callback = std::function<void(probe_outcome)>;

/// Runs probes of one server, keeping its connection between probes where the
/// server allows. `probe` may be called from any thread, with at most one
/// probe in flight; `done` runs on an I/O thread and must only hand the
/// outcome on (e.g. send it to an actor).
class probe_driver {
public:
  virtual ~probe_driver() = default;
  virtual void probe(std::chrono::milliseconds timeout, probe_callback done) = 0;
};

/// Makes the driver of one server; the daemon's makes HTTP probe clients,
/// tests make fakes.
using probe_driver_factory = std::function<std::shared_ptr<probe_driver>(const probe_target&)>;

} // namespace mg
