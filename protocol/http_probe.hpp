// The HTTP health probe client, on Boost.Beast: `GET {url}{health_path}` with
// one deadline covering resolve, connect, write and the whole read, a 64 KiB
// body cap, keep-alive reuse of the connection, and the contract's
// `error_kind`s. `probe_runtime` owns the io_context and its thread; the
// drivers it makes run on it. No Beast in this header.
#pragma once

#include <memory>

#include "protocol/probe.hpp"

namespace mg {

class probe_runtime {
public:
  /// Starts the I/O thread. One thread runs every probe: at 10,000 probes a
  /// second it is a fraction of a core, and one thread needs no strands.
  /// Reports of scheduled probes go to `reports`, in batches.
  /// `shortest_collect_wait` bounds the drain's wait for a batch's answers
  /// from below (it adapts up to 20 ms); tests lengthen it to hold the I/O
  /// thread in a wait.
  explicit probe_runtime(probe_report_sink reports = {},
                         std::chrono::microseconds shortest_collect_wait = std::chrono::microseconds(500));
  ~probe_runtime();
  probe_runtime(const probe_runtime&) = delete;
  probe_runtime& operator=(const probe_runtime&) = delete;

  /// A driver for one server. Valid until the runtime is destroyed.
  std::shared_ptr<probe_driver> make_driver(const probe_target& target);

  /// Stops the I/O thread; pending probes never complete. Idempotent.
  void stop();

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

/// Judges a response by the target's `health_expect`; exposed for tests.
/// Fills healthy / error / error_kind of `out` from status and body.
void judge_health_response(health_expect expect, int status, const std::string& body,
                           probe_outcome& out);

} // namespace mg
