// The prober actor: one per active server. It ticks on a schedule of its own,
// runs at most one probe at a time through its probe_driver (asio does the
// I/O), and sends each outcome to the registry.
//
//   idle --tick--> probing --probe_done--> idle
//     (a tick that finds a probe still in flight is skipped, never queued)
//
// The first tick lands at a random point of the first interval, so N probers
// spread over the interval instead of firing together. Ticks keep to their
// grid: a late tick does not shift the schedule, and missed ticks are skipped
// rather than fired in a burst. Time, randomness and the tick timer are
// injected, so tests drive ticks by hand.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>

#include "protocol/probe.hpp"
#include "protocol/registry_interface.hpp"

namespace mg {

/// A monotonic clock in milliseconds.
using steady_clock_ms = std::function<int64_t()>;

/// Arranges for `tick_atom, tick_number` to reach `prober` after `delay`.
using tick_scheduler =
  std::function<void(const prober_actor& prober, std::chrono::milliseconds delay, uint64_t tick_number)>;

/// The real clock and timer (CAF's delayed_anon_send).
int64_t steady_now_ms();
void schedule_tick_with_caf(const prober_actor& prober, std::chrono::milliseconds delay,
                            uint64_t tick_number);

struct prober_options {
  probe_target target;
  uint64_t generation = 0; // the server's generation when this prober started
  std::chrono::milliseconds interval{60'000};
  std::chrono::milliseconds timeout{10'000};
  registry_actor registry;
  std::shared_ptr<probe_driver> driver;
  steady_clock_ms clock = steady_now_ms;
  tick_scheduler schedule = schedule_tick_with_caf;
  uint64_t seed = 0; // 0: from std::random_device
};

struct prober_state {
  prober_options options;
  std::mt19937_64 rng;
  uint64_t tick_number = 0;  // the schedule this prober follows
  int64_t next_due_ms = 0;   // on the tick grid
  bool in_flight = false;
  uint64_t probe_number = 0; // of the probe in flight
  double lateness_ms = 0;    // of the probe in flight
  uint64_t probes_started = 0;
  uint64_t ticks_skipped = 0;
  static inline const char* name = "modelgate.prober";
};

prober_actor::behavior_type prober_impl(prober_actor::stateful_pointer<prober_state> self,
                                        prober_options options);

} // namespace mg
