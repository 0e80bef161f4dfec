// The prober with injected time: it ticks on its grid, skips missed ticks,
// never runs two probes at once, and reports outcomes to the registry.
#include <catch2/catch.hpp>

#include <caf/all.hpp>

#include "actors/registry.hpp"
#include "tests/actors/fakes.hpp"

using namespace mg;
using namespace std::chrono_literals;

namespace {

struct prober_fixture {
  // Declared first: actors still running while the system shuts down use them.
  std::shared_ptr<std::atomic<int64_t>> now = std::make_shared<std::atomic<int64_t>>(100'000);
  std::shared_ptr<test::fake_probes> probes = std::make_shared<test::fake_probes>();
  test::manual_ticks ticks;
  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
  registry_actor reg;
  server_record server;
  prober_actor prober;

  static caf::actor_system_config& prep(caf::actor_system_config& c) {
    c.set("scheduler.max-threads", 2);
    return c;
  }

  prober_fixture() : sys(prep(cfg)), self(sys) {
    reg = spawn_registry(sys, registry_options{std::make_shared<server_store>(":memory:"), now_ms,
                                               1, health_config{}, nullptr},
                         false);
    registration r;
    r.url = "http://127.0.0.1:1";
    r.models = {"m"};
    self->request(reg, 5s, register_atom::value, r)
      .receive([&](register_reply& rr) { server = rr.record; },
               [&](caf::error& e) { FAIL(sys.render(e)); });
    prober_options po;
    po.target = probe_target{server.id, server.url, server.health_path, server.expect, {}};
    po.generation = server.generation;
    po.interval = 1000ms;
    po.timeout = 500ms;
    probes->sink = report_sink_to(reg);
    po.driver = test::make_fake_factory(probes)(po.target);
    auto clock = now;
    po.clock = [clock] { return clock->load(); };
    po.schedule = ticks.scheduler();
    po.seed = 99;
    prober = sys.spawn(prober_impl, po);
  }

  ~prober_fixture() {
    self->send_exit(prober, caf::exit_reason::user_shutdown);
    self->send_exit(reg, caf::exit_reason::user_shutdown);
  }

  /// Delivers scheduled tick i at its due time.
  void fire(size_t i) {
    auto t = ticks.at(i);
    self->send(t.prober, tick_atom::value, t.number);
  }

  server_record record() {
    server_record r;
    self->request(reg, 5s, get_atom::value, server.id)
      .receive([&](server_record& x) { r = x; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    return r;
  }
};

} // namespace

TEST_CASE_METHOD(prober_fixture, "the first tick lands inside the first interval, then one per interval",
                 "[prober]") {
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  auto first = ticks.at(0).delay;
  CHECK(first >= 0ms);
  CHECK(first < 1000ms);
  *now += first.count();
  fire(0);
  REQUIRE(test::wait_until([&] { return probes->started() == 1 && ticks.count() == 2; }));
  CHECK(ticks.at(1).delay == 1000ms); // on the grid
  auto handed = probes->last_scheduled();
  CHECK(handed.timeout == 500ms);
  CHECK(handed.interval == 1000ms); // so the probe can keep to the schedule
  CHECK(handed.generation == server.generation);
  probes->complete(test::healthy_outcome());
  *now += 1000;
  fire(1);
  REQUIRE(test::wait_until([&] { return probes->started() == 2 && ticks.count() == 3; }));
  CHECK(ticks.at(2).delay == 1000ms);
}

TEST_CASE_METHOD(prober_fixture, "a late tick keeps the grid and skips missed ticks instead of bursting",
                 "[prober]") {
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  auto first = ticks.at(0).delay.count();
  *now += first + 3500; // the tick arrives 3.5 intervals late
  fire(0);
  REQUIRE(test::wait_until([&] { return ticks.count() == 2; }));
  CHECK(probes->started() == 1);      // one probe, not four
  CHECK(ticks.at(1).delay == 500ms);  // the next grid slot
}

TEST_CASE_METHOD(prober_fixture, "a tick while a probe is in flight is skipped: never two probes at once",
                 "[prober]") {
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  *now += ticks.at(0).delay.count();
  fire(0);
  REQUIRE(test::wait_until([&] { return probes->started() == 1 && ticks.count() == 2; }));
  *now += 1000;
  fire(1); // the first probe still hangs
  REQUIRE(test::wait_until([&] { return ticks.count() == 3; }));
  CHECK(probes->started() == 1);
  CHECK(probes->in_flight() == 1);
  probes->complete(test::failed_outcome("timeout"));
  REQUIRE(test::wait_until([&] { return record().consecutive_failures == 1; }));
  *now += 1000;
  fire(2);
  REQUIRE(test::wait_until([&] { return probes->started() == 2; }));
}

TEST_CASE_METHOD(prober_fixture, "a stale tick of an older schedule is ignored", "[prober]") {
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  self->send(prober, tick_atom::value, uint64_t{12345});
  fire(0);
  REQUIRE(test::wait_until([&] { return probes->started() == 1; }));
  CHECK(ticks.count() == 2);
}

TEST_CASE_METHOD(prober_fixture, "probe outcomes reach the registry", "[prober]") {
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  fire(0);
  REQUIRE(test::wait_until([&] { return probes->in_flight() == 1; }));
  probes->complete(test::healthy_outcome());
  REQUIRE(test::wait_until([&] { return record().status == server_status::healthy; }));
}

TEST_CASE_METHOD(prober_fixture, "a probe in flight when its prober stops reports nothing",
                 "[prober]") {
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  fire(0);
  REQUIRE(test::wait_until([&] { return probes->in_flight() == 1; }));
  self->monitor(prober);
  self->send_exit(prober, caf::exit_reason::user_shutdown);
  bool down = false;
  self->receive([&](caf::down_msg&) { down = true; },
                caf::after(5s) >> [] { FAIL("the prober did not stop"); });
  REQUIRE(down);
  // The prober abandons its driver in its cleanup, which may still run when
  // this test's monitor (attached after it) has already been told.
  REQUIRE(test::wait_until([&] { return probes->oldest_abandoned(); }));
  // The probe completes after its prober is gone (a pause, a deregistration):
  // the registry must not hear of it. A later request to the registry is
  // answered after anything the completion sent it.
  probes->complete(test::healthy_outcome());
  CHECK(record().status == server_status::unknown);
  CHECK(record().last_check_at == std::nullopt);
}
