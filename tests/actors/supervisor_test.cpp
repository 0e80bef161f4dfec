// The supervisor with fake probes and manual ticks: it follows registrations
// and deregistrations, respawns a dead prober, pauses and resumes, and runs
// on-demand checks.
#include <catch2/catch.hpp>

#include <caf/all.hpp>

#include "actors/scheduler.hpp"

#include "actors/registry.hpp"
#include "actors/supervisor.hpp"
#include "protocol/errors.hpp"
#include "tests/actors/fakes.hpp"

using namespace mg;
using namespace std::chrono_literals;

namespace {

struct supervisor_fixture {
  // Declared first: actors still running while the system shuts down use them.
  std::shared_ptr<test::fake_probes> probes = std::make_shared<test::fake_probes>();
  test::manual_ticks ticks;
  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
  registry_actor reg;
  supervisor_actor sup;

  static caf::actor_system_config& prep(caf::actor_system_config& c) {
    c.set("scheduler.max-threads", 2);
    c.load<modelgate_scheduler>(); // the daemon's scheduler, as modelgated runs it
    return c;
  }

  supervisor_fixture() : sys(prep(cfg)), self(sys) {
    health_config h;
    h.interval_seconds = 1;
    h.timeout_seconds = 0.5;
    h.max_failures = 2;
    reg = spawn_registry(sys, registry_options{std::make_shared<server_store>(":memory:"), now_ms,
                                               1, h, nullptr},
                         false);
    register_server("http://127.0.0.1:1"); // present before the supervisor starts
    supervisor_options so;
    so.registry = reg;
    so.health = h;
    probes->sink = report_sink_to(reg);
    so.make_driver = test::make_fake_factory(probes);
    so.schedule = ticks.scheduler();
    so.summary_log = false;
    sup = spawn_supervisor(sys, so);
  }

  ~supervisor_fixture() {
    self->send_exit(sup, caf::exit_reason::user_shutdown);
    self->send_exit(reg, caf::exit_reason::user_shutdown);
  }

  server_record register_server(const std::string& url) {
    registration r;
    r.url = url;
    r.models = {"m"};
    server_record rec;
    self->request(reg, 5s, register_atom::value, r)
      .receive([&](register_reply& rr) { rec = rr.record; },
               [&](caf::error& e) { FAIL(sys.render(e)); });
    return rec;
  }

  caf::actor prober_of(const std::string& id) {
    caf::actor result;
    self->request(sup, 5s, prober_of_atom::value, id)
      .receive([&](caf::actor& a) { result = a; }, [&](caf::error& e) { FAIL(sys.render(e)); });
    return result;
  }

  checker_status status(bool running_change = false, bool start = false) {
    checker_status s;
    auto on_error = [&](caf::error& e) { FAIL(sys.render(e)); };
    auto on_status = [&](checker_status& x) { s = x; };
    if (!running_change)
      self->request(sup, 5s, status_atom::value).receive(on_status, on_error);
    else if (start)
      self->request(sup, 5s, start_atom::value).receive(on_status, on_error);
    else
      self->request(sup, 5s, stop_atom::value).receive(on_status, on_error);
    return s;
  }

  server_record first_server() {
    std::vector<server_record> all;
    self->request(reg, 5s, list_atom::value, list_filter{})
      .receive([&](std::vector<server_record>& v) { all = v; },
               [&](caf::error& e) { FAIL(sys.render(e)); });
    REQUIRE(!all.empty());
    return all.front();
  }
};

} // namespace

TEST_CASE_METHOD(supervisor_fixture, "a prober runs for every active server, from start and on registration",
                 "[supervisor]") {
  auto first = first_server();
  REQUIRE(test::wait_until([&] { return static_cast<bool>(prober_of(first.id)); }));
  auto second = register_server("http://127.0.0.1:2");
  REQUIRE(test::wait_until([&] { return static_cast<bool>(prober_of(second.id)); }));
  CHECK(status().probers == 2);
}

TEST_CASE_METHOD(supervisor_fixture, "a deregistration stops the prober and a reactivation brings one back",
                 "[supervisor]") {
  auto s = first_server();
  REQUIRE(test::wait_until([&] { return static_cast<bool>(prober_of(s.id)); }));
  self->request(reg, 5s, deregister_atom::value, s.id, std::string{"manual"})
    .receive([](server_record&) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
  REQUIRE(test::wait_until([&] { return !prober_of(s.id); }));
  CHECK(status().probers == 0);
  self->request(reg, 5s, reactivate_atom::value, s.id)
    .receive([](server_record&) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
  REQUIRE(test::wait_until([&] { return static_cast<bool>(prober_of(s.id)); }));
}

TEST_CASE_METHOD(supervisor_fixture, "an auto-deregistered server loses its prober", "[supervisor]") {
  auto s = first_server();
  REQUIRE(test::wait_until([&] { return ticks.count() == 1; }));
  for (int i = 0; i < 2; ++i) {
    auto t = ticks.at(ticks.count() - 1);
    auto before = ticks.count();
    self->send(t.prober, tick_atom::value, t.number);
    REQUIRE(test::wait_until([&] { return probes->in_flight() == 1 && ticks.count() > before; }));
    probes->complete(test::failed_outcome());
  }
  REQUIRE(test::wait_until([&] { return !prober_of(s.id); }));
}

TEST_CASE_METHOD(supervisor_fixture, "a prober that dies is respawned and probing resumes",
                 "[supervisor]") {
  auto s = first_server();
  caf::actor old;
  REQUIRE(test::wait_until([&] { return static_cast<bool>(old = prober_of(s.id)); }));
  self->send_exit(old, caf::exit_reason::kill);
  caf::actor fresh;
  REQUIRE(test::wait_until([&] {
    fresh = prober_of(s.id);
    return fresh && fresh != old;
  }));
  // The new prober schedules its own first tick; firing it probes.
  REQUIRE(test::wait_until([&] { return ticks.count() == 2; }));
  auto t = ticks.at(1);
  CHECK(caf::actor_cast<caf::actor>(t.prober) == fresh);
  self->send(t.prober, tick_atom::value, t.number);
  REQUIRE(test::wait_until([&] { return probes->started() == 1; }));
}

TEST_CASE_METHOD(supervisor_fixture, "stop and start pause and resume all probing, idempotently",
                 "[supervisor]") {
  auto s = first_server();
  REQUIRE(test::wait_until([&] { return static_cast<bool>(prober_of(s.id)); }));
  CHECK(status().running);
  auto stopped = status(true, false);
  CHECK_FALSE(stopped.running);
  REQUIRE(test::wait_until([&] { return status().probers == 0; }));
  CHECK_FALSE(status(true, false).running); // again: no change
  register_server("http://127.0.0.1:3");     // registered while paused: no prober yet
  CHECK(status().probers == 0);
  auto started = status(true, true);
  CHECK(started.running);
  CHECK(started.probers == 2);
  CHECK(status(true, true).probers == 2);    // again: no change
}

TEST_CASE_METHOD(supervisor_fixture, "an on-demand check probes now, also while paused, and updates the record",
                 "[supervisor]") {
  auto s = first_server();
  status(true, false); // paused
  probes->auto_outcome = test::healthy_outcome();
  check_reply reply;
  self->request(sup, 5s, check_atom::value, s.id)
    .receive([&](check_reply& r) { reply = r; }, [&](caf::error& e) { FAIL(sys.render(e)); });
  CHECK(reply.outcome.healthy);
  CHECK(reply.record.status == server_status::healthy);
  CHECK(reply.record.last_check_at);
}

TEST_CASE_METHOD(supervisor_fixture, "an on-demand check of an inactive or unknown server fails",
                 "[supervisor]") {
  auto s = first_server();
  self->request(reg, 5s, deregister_atom::value, s.id, std::string{"manual"})
    .receive([](server_record&) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
  auto expect_error = [&](const std::string& id, errc code) {
    bool failed = false;
    self->request(sup, 5s, check_atom::value, id)
      .receive([](check_reply&) {},
               [&](caf::error& e) {
                 failed = true;
                 CHECK(to_api_error(e).code == code);
               });
    CHECK(failed);
  };
  expect_error(s.id, errc::conflict);
  expect_error("srv_000000000000", errc::not_found);
}
