#include "actors/prober.hpp"

#include <random>

#include <caf/all.hpp>

#include "protocol/log.hpp"
#include "protocol/time.hpp"

namespace mg {

int64_t steady_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

void schedule_tick_with_caf(const prober_actor& prober, std::chrono::milliseconds delay,
                            uint64_t tick_number) {
  // Ticks land on shared 50 ms slots of the steady clock, so the ticks of
  // thousands of probers fire in bursts: one wake-up of CAF's clock thread
  // (and of the I/O thread, and of the registry) serves a whole slot
  // instead of one probe. A tick is at most one slot late for it, and probes
  // still spread over 20 slots a second. The slot divides every interval
  // (whole seconds), so a server's probes stay exactly one interval apart.
  // (10 ms slots cost 53 µs of CPU per probe at 1,000 servers, 25 ms slots
  // 32 µs; on a day when wake-ups cost twice as much, 25 ms slots took 49 µs
  // at 1,000 servers, most of it the slots' fixed wake-ups.)
  constexpr auto slot = std::chrono::milliseconds(50);
  auto now = std::chrono::steady_clock::now();
  auto slotted = round_up(now + delay, slot);
  caf::delayed_anon_send(prober, slotted - now, tick_atom::value, tick_number);
}

namespace {

using prober_self = prober_actor::stateful_pointer<prober_state>;

/// Arms the next tick on the grid, skipping slots already in the past.
void arm_next_tick(prober_self self, int64_t now) {
  auto& st = self->state;
  auto interval = st.options.interval.count();
  st.next_due_ms += interval;
  if (st.next_due_ms <= now) {
    auto missed = (now - st.next_due_ms) / interval + 1;
    st.ticks_skipped += static_cast<uint64_t>(missed);
    st.next_due_ms += missed * interval;
  }
  st.options.schedule(self, std::chrono::milliseconds(st.next_due_ms - now), st.tick_number);
}

} // namespace

prober_actor::behavior_type prober_impl(prober_self self, prober_options options) {
  auto& st = self->state;
  st.options = std::move(options);
  // The one random draw: a local engine, not 2.5 KB more of state.
  std::mt19937_64 rng(st.options.seed != 0 ? st.options.seed : std::random_device{}());
  std::uniform_int_distribution<int64_t> offset(0, std::max<int64_t>(0, st.options.interval.count() - 1));
  auto first = offset(rng);
  st.next_due_ms = st.options.clock() + first;
  // A probe still in flight when the prober stops must not count: the
  // server may be deregistered, probing paused, or a new prober started.
  self->attach_functor([driver = st.options.driver] { driver->abandon(); });
  st.options.schedule(self, std::chrono::milliseconds(first), st.tick_number);
  return {
    [=](tick_atom, uint64_t number) {
      auto& st = self->state;
      if (number != st.tick_number)
        return; // from an older schedule
      auto now = st.options.clock();
      auto lateness = static_cast<double>(std::max<int64_t>(0, now - st.next_due_ms));
      scheduled_probe probe{st.options.timeout, st.options.generation, lateness, st.options.interval};
      if (st.options.driver->probe_scheduled(probe)) {
        ++st.probes_started;
      } else {
        ++st.ticks_skipped; // the last probe is still running: never two at once
        log(log_level::debug, "probe still in flight; tick skipped",
            {{"server_id", st.options.target.server_id}, {"url", st.options.target.url}});
      }
      arm_next_tick(self, now);
    },
  };
}

} // namespace mg
