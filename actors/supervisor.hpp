// The supervisor actor: one prober per active server.
//
// It hears of every change from the registry: a registration or reactivation
// spawns a prober, a deregistration stops it, a new generation (the server
// re-registered with new settings) replaces it. It monitors its probers and
// respawns one that dies. Stop and start pause and resume all probing. It runs
// on-demand checks (`check_atom`) on a driver of their own, which works while
// probing is paused, and logs one summary line per interval.
#pragma once

#include <chrono>

#include <caf/actor_system.hpp>

#include "actors/prober.hpp"
#include "protocol/config.hpp"
#include "protocol/registry_interface.hpp"

namespace mg {

struct supervisor_options {
  registry_actor registry;
  health_config health;
  probe_driver_factory make_driver;
  steady_clock_ms clock = steady_now_ms;
  tick_scheduler schedule = schedule_tick_with_caf;
  uint64_t seed = 0;              // seeds the probers' first-tick offsets; 0: random
  bool summary_log = true;        // log a summary line per interval
  std::chrono::milliseconds request_timeout{10'000};
};

supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_options options);

/// Milliseconds of a seconds value from the config.
std::chrono::milliseconds seconds_to_ms(double seconds);

} // namespace mg
