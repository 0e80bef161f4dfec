// The prober actor: one per active server. It ticks on a schedule of its own
// and, on each tick, starts a probe through its probe_driver (asio does the
// I/O). The outcome goes from the I/O thread straight to the registry, in a
// batch with other servers' outcomes, not back through the prober: at 10,000
// servers that saves 20,000 actor messages a second.
//
//   tick --> probe started (or, while the last one runs, the tick is skipped)
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

#include "protocol/probe.hpp"
#include "protocol/registry_interface.hpp" // prober_actor

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
  std::shared_ptr<probe_driver> driver; // reports to the registry
  steady_clock_ms clock = steady_now_ms;
  tick_scheduler schedule = schedule_tick_with_caf;
  uint64_t seed = 0; // 0: from std::random_device
};

// The state stays small: a tick reads it and the actor's header, once an
// interval each, from memory gone cold since the last tick (with thousands
// of probers, the first touch of each is most of a tick's cost).
struct prober_state {
  prober_options options;
  uint64_t tick_number = 0;  // the schedule this prober follows
  int64_t next_due_ms = 0;   // on the tick grid
  uint64_t probes_started = 0;
  uint64_t ticks_skipped = 0;
  static inline const char* name = "modelgate.prober";
};

prober_actor::behavior_type prober_impl(prober_actor::stateful_pointer<prober_state> self,
                                        prober_options options);

} // namespace mg
