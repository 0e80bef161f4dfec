// modelgate_scheduler's clock: delayed messages and request timeouts arrive
// on time, a message due earlier than the one the clock waits for wakes it,
// and actors stopping with timeouts still pending shut down cleanly.
#include <catch2/catch.hpp>

#include <caf/all.hpp>

#include "actors/scheduler.hpp"

using namespace std::chrono_literals;

namespace {

using first_atom = caf::atom_constant<caf::atom("first")>;
using second_atom = caf::atom_constant<caf::atom("second")>;
using ping_atom = caf::atom_constant<caf::atom("ping")>;

struct scheduler_fixture {
  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;

  static caf::actor_system_config& prep(caf::actor_system_config& c) {
    c.set("scheduler.max-threads", 2);
    c.load<mg::modelgate_scheduler>();
    return c;
  }

  scheduler_fixture() : sys(prep(cfg)), self(sys) {
  }
};

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

} // namespace

TEST_CASE_METHOD(scheduler_fixture, "the daemon's scheduler is the coalescing one", "[scheduler]") {
  CHECK(dynamic_cast<mg::coalescing_actor_clock*>(&sys.clock()) != nullptr);
}

TEST_CASE_METHOD(scheduler_fixture,
                 "a delayed message due before the one the clock sleeps for arrives on time",
                 "[scheduler]") {
  // The clock thread first sleeps towards the 10 s message; the 30 ms one
  // must wake it, not wait behind it.
  caf::delayed_anon_send(caf::actor{self}, 10s, second_atom::value);
  std::this_thread::yield();
  auto t0 = clock_type::now();
  caf::delayed_anon_send(caf::actor{self}, 30ms, first_atom::value);
  bool got_first = false;
  self->receive([&](first_atom) { got_first = true; },
                [&](second_atom) { FAIL("the later message came first"); },
                caf::after(5s) >> [] { FAIL("the earlier message never came"); });
  CHECK(got_first);
  auto waited = ms_since(t0);
  CHECK(waited >= 29);
  CHECK(waited < 1000);
}

TEST_CASE_METHOD(scheduler_fixture, "delayed messages arrive in the order they are due",
                 "[scheduler]") {
  caf::actor me{self};
  for (int i = 9; i >= 0; --i)
    caf::delayed_anon_send(me, std::chrono::milliseconds(20 + 10 * i), i);
  for (int expected = 0; expected < 10; ++expected)
    self->receive([&](int i) { CHECK(i == expected); },
                  caf::after(5s) >> [] { FAIL("a delayed message never came"); });
}

TEST_CASE_METHOD(scheduler_fixture,
                 "delayed messages microseconds apart arrive in the order they are due",
                 "[scheduler]") {
  // Due within one millisecond, scheduled latest first: they share the
  // clock's 1 ms bucket, which still delivers them by due time.
  // Absolute due times, so that no preemption between two sends can swap
  // them.
  auto& clock = sys.clock();
  auto base = clock.now() + 30ms;
  for (int i = 9; i >= 0; --i)
    clock.schedule_message(base + std::chrono::microseconds(90 * i),
                           caf::actor_cast<caf::strong_actor_ptr>(self),
                           caf::make_mailbox_element(nullptr, caf::make_message_id(), {}, i));
  for (int expected = 0; expected < 10; ++expected)
    self->receive([&](int i) { CHECK(i == expected); },
                  caf::after(5s) >> [] { FAIL("a delayed message never came"); });
}

TEST_CASE_METHOD(scheduler_fixture, "a request to a silent actor times out on the clock",
                 "[scheduler]") {
  auto silent = sys.spawn([]() -> caf::behavior { return {[](ping_atom) -> caf::result<int> {
    return caf::delegated<int>{}; // never answers
  }}; });
  auto t0 = clock_type::now();
  bool timed_out = false;
  self->request(silent, 50ms, ping_atom::value)
    .receive([](int) { FAIL("a silent actor answered"); },
             [&](caf::error& e) { timed_out = e == caf::sec::request_timeout; });
  CHECK(timed_out);
  // Rounded up to the clock's 100 ms grid: never early (beyond the 1 ms any
  // timeout may be), late by at most the grid.
  CHECK(ms_since(t0) >= 49);
  CHECK(ms_since(t0) < 1000);
  self->send_exit(silent, caf::exit_reason::user_shutdown);
}

TEST_CASE("actors that stop with delayed messages pending shut the system down cleanly",
          "[scheduler]") {
  caf::actor_system_config cfg;
  caf::actor_system sys{scheduler_fixture::prep(cfg)};
  for (int i = 0; i < 100; ++i) {
    // Each actor's last reference is the delayed message it sends itself; it
    // quits when the message arrives, so the clock drops that reference.
    sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->delayed_send(self, 10ms, ping_atom::value);
      return {[=](ping_atom) { self->quit(); }};
    });
    // This one quits at once and leaves a message 1 h out on the clock.
    sys.spawn([](caf::event_based_actor* self) {
      self->delayed_send(self, std::chrono::hours(1), ping_atom::value);
      self->quit();
    });
  }
  // The actor_system destructor waits for every actor; a deadlock or a
  // crash here fails the test run.
}

TEST_CASE_METHOD(scheduler_fixture,
                 "actors due at the same instant are all run, though one round wakes one worker",
                 "[scheduler]") {
  caf::actor me{self};
  constexpr int n = 500;
  for (int i = 0; i < n; ++i)
    sys.spawn([me, i](caf::event_based_actor* actor) -> caf::behavior {
      actor->delayed_send(actor, 50ms, ping_atom::value);
      return {[=](ping_atom) {
        actor->send(me, i);
        actor->quit();
      }};
    });
  std::vector<bool> seen(n, false);
  int count = 0;
  for (int k = 0; k < n; ++k)
    self->receive([&](int i) { count += seen.at(static_cast<size_t>(i)) ? 0 : 1; seen[i] = true; },
                  caf::after(5s) >> [] { FAIL("an actor's delayed message never came"); });
  CHECK(count == n);
}
