// The registry actor driven through its typed interface with scoped_actor and
// an injected clock: every operation, its errors, and durability of what it
// acknowledged.
#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <unistd.h>

#include <caf/all.hpp>

#include "actors/scheduler.hpp"

#include "actors/registry.hpp"
#include "tests/actors/fakes.hpp"
#include "protocol/errors.hpp"

using namespace mg;
namespace fs = std::filesystem;

namespace {

constexpr auto timeout = std::chrono::seconds(5);

struct fixture {
  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
  std::shared_ptr<std::atomic<epoch_ms>> now = std::make_shared<std::atomic<epoch_ms>>(1'000'000);
  registry_actor reg;

  static caf::actor_system_config& prep(caf::actor_system_config& c) {
    c.set("scheduler.max-threads", 2);
    c.load<modelgate_scheduler>(); // the daemon's scheduler, as modelgated runs it
    return c;
  }

  explicit fixture(const std::string& db = ":memory:") : sys(prep(cfg)), self(sys) {
    reg = spawn(db);
  }

  ~fixture() {
    self->send_exit(reg, caf::exit_reason::user_shutdown);
  }

  registry_actor spawn(const std::string& db) {
    auto clock = now;
    return spawn_registry(sys,
                          registry_options{std::make_shared<server_store>(db),
                                           [clock] { return clock->load(); }, 42, health_config{}, nullptr},
                          false);
  }

  registration make_registration(const std::string& url, std::vector<std::string> models = {"m"}) {
    registration r;
    r.url = url;
    r.models = std::move(models);
    return r;
  }

  template <class T, class... Ts>
  T ask(Ts&&... xs) {
    T result{};
    self->request(reg, timeout, std::forward<Ts>(xs)...)
      .receive([&](T& x) { result = std::move(x); },
               [&](caf::error& e) { FAIL("unexpected error: " << sys.render(e)); });
    return result;
  }

  template <class R, class... Ts>
  api_error ask_error(Ts&&... xs) {
    api_error result{errc::internal, "no error"};
    bool failed = false;
    self->request(reg, timeout, std::forward<Ts>(xs)...)
      .receive([&](R&) {},
               [&](caf::error& e) {
                 failed = true;
                 result = to_api_error(e);
               });
    CHECK(failed);
    return result;
  }
};

} // namespace

TEST_CASE_METHOD(fixture, "registering a new url creates an active record with an id",
                 "[registry]") {
  auto reply = ask<register_reply>(register_atom::value, make_registration("http://a:1"));
  CHECK(reply.created);
  CHECK(reply.record.id.size() == 16);
  CHECK(reply.record.id.rfind("srv_", 0) == 0);
  CHECK(reply.record.is_active);
  CHECK(reply.record.status == server_status::unknown);
  CHECK(reply.record.registered_at == 1'000'000);
  auto got = ask<server_record>(get_atom::value, reply.record.id);
  CHECK(got.url == "http://a:1");
}

TEST_CASE_METHOD(fixture, "registering an active url again is a conflict and changes nothing",
                 "[registry]") {
  auto first = ask<register_reply>(register_atom::value, make_registration("http://a:1", {"x"}));
  auto err = ask_error<register_reply>(register_atom::value, make_registration("http://a:1", {"y"}));
  CHECK(err.code == errc::conflict);
  CHECK(err.message.find(first.record.id) != std::string::npos);
  auto got = ask<server_record>(get_atom::value, first.record.id);
  CHECK(got.models == std::vector<std::string>{"x"});
}

TEST_CASE_METHOD(fixture, "registering an inactive url reactivates it with its old id",
                 "[registry]") {
  auto reg1 = make_registration("http://a:1", {"x"});
  reg1.name = "old";
  reg1.health_path = "/custom";
  auto first = ask<register_reply>(register_atom::value, reg1);
  *now = 2'000'000;
  ask<server_record>(deregister_atom::value, first.record.id, std::string{"manual"});
  *now = 3'000'000;
  auto again = ask<register_reply>(register_atom::value, make_registration("http://a:1", {"y"}));
  CHECK_FALSE(again.created);
  CHECK(again.record.id == first.record.id);
  CHECK(again.record.registered_at == 1'000'000);
  CHECK(again.record.is_active);
  CHECK(again.record.models == std::vector<std::string>{"y"});
  CHECK_FALSE(again.record.name);                 // omitted: default
  CHECK(again.record.health_path == "/health");   // omitted: default
  CHECK_FALSE(again.record.deregistered_at);
  CHECK_FALSE(again.record.deregistered_reason);
  auto events = ask<std::vector<server_event>>(events_atom::value, first.record.id);
  REQUIRE(events.size() == 3);
  CHECK(events[2].event == "reactivated");
  CHECK(events[2].at == 3'000'000);
}

TEST_CASE_METHOD(fixture, "unknown ids are not_found on every operation", "[registry]") {
  std::string id = "srv_000000000000";
  CHECK(ask_error<server_record>(get_atom::value, id).code == errc::not_found);
  CHECK(ask_error<server_record>(deregister_atom::value, id, std::string{"manual"}).code == errc::not_found);
  CHECK(ask_error<server_record>(reactivate_atom::value, id).code == errc::not_found);
  CHECK(ask_error<std::vector<server_event>>(events_atom::value, id).code == errc::not_found);
}

TEST_CASE_METHOD(fixture, "deregistering is a soft delete; twice changes nothing", "[registry]") {
  auto r = ask<register_reply>(register_atom::value, make_registration("http://a:1")).record;
  *now = 5'000;
  auto d = ask<server_record>(deregister_atom::value, r.id, std::string{"manual"});
  CHECK_FALSE(d.is_active);
  CHECK(d.deregistered_reason == std::optional<std::string>{"manual"});
  CHECK(d.deregistered_at == std::optional<epoch_ms>{5'000});
  CHECK(d.generation == r.generation + 1);
  *now = 6'000;
  auto d2 = ask<server_record>(deregister_atom::value, r.id, std::string{"health_check"});
  CHECK(d2.deregistered_reason == std::optional<std::string>{"manual"});
  CHECK(d2.deregistered_at == std::optional<epoch_ms>{5'000});
  CHECK(ask<server_record>(get_atom::value, r.id).is_active == false);
}

TEST_CASE_METHOD(fixture, "reactivating resets health state; on an active server it is a no-op",
                 "[registry]") {
  auto r = ask<register_reply>(register_atom::value, make_registration("http://a:1")).record;
  auto same = ask<server_record>(reactivate_atom::value, r.id);
  CHECK(same.generation == r.generation);
  CHECK(same.updated_at == r.updated_at);
  ask<server_record>(deregister_atom::value, r.id, std::string{"manual"});
  auto back = ask<server_record>(reactivate_atom::value, r.id);
  CHECK(back.is_active);
  CHECK(back.status == server_status::unknown);
  CHECK(back.consecutive_failures == 0);
  CHECK_FALSE(back.deregistered_at);
  CHECK_FALSE(back.deregistered_reason);
  CHECK(back.generation == r.generation + 2);
  auto events = ask<std::vector<server_event>>(events_atom::value, r.id);
  REQUIRE(events.size() == 3);
  CHECK(events[0].event == "registered");
  CHECK(events[1].event == "deregistered");
  CHECK(events[2].event == "reactivated");
}

TEST_CASE_METHOD(fixture, "list filters by activity, model and status", "[registry]") {
  auto a = ask<register_reply>(register_atom::value, make_registration("http://a:1", {"llama"}));
  *now += 1;
  auto b = ask<register_reply>(register_atom::value, make_registration("http://b:1", {"qwen"}));
  *now += 1;
  auto c = ask<register_reply>(register_atom::value,
                               make_registration("http://c:1", {"llama", "qwen"}));
  ask<server_record>(deregister_atom::value, b.record.id, std::string{"manual"});
  auto active = ask<std::vector<server_record>>(list_atom::value, list_filter{});
  REQUIRE(active.size() == 2);
  CHECK(active[0].id == a.record.id); // oldest first
  CHECK(active[1].id == c.record.id);
  list_filter all;
  all.include_inactive = true;
  CHECK(ask<std::vector<server_record>>(list_atom::value, all).size() == 3);
  list_filter qwen;
  qwen.model = "qwen";
  auto q = ask<std::vector<server_record>>(list_atom::value, qwen);
  REQUIRE(q.size() == 1);
  CHECK(q[0].id == c.record.id);
  list_filter healthy;
  healthy.status = server_status::healthy;
  CHECK(ask<std::vector<server_record>>(list_atom::value, healthy).empty());
  list_filter unknown;
  unknown.status = server_status::unknown;
  CHECK(ask<std::vector<server_record>>(list_atom::value, unknown).size() == 2);
}

TEST_CASE("acknowledged registrations survive a restart of the registry", "[registry]") {
  char tmpl[] = "/tmp/mg-registry-XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  auto db = (dir / "m.db").string();
  std::vector<std::string> ids;
  {
    fixture f{db};
    // Many requests in flight at once share commits; every one is acknowledged.
    for (int i = 0; i < 200; ++i)
      f.self->send(f.reg, register_atom::value,
                   f.make_registration("http://h:" + std::to_string(1000 + i)));
    for (int i = 0; i < 200; ++i)
      f.self->receive([&](register_reply& r) { ids.push_back(r.record.id); });
  }
  REQUIRE(ids.size() == 200);
  fixture again{db};
  auto all = again.ask<std::vector<server_record>>(list_atom::value, list_filter{});
  CHECK(all.size() == 200);
  for (const auto& id : ids)
    CHECK(again.ask<server_record>(get_atom::value, id).id == id);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST_CASE_METHOD(fixture, "a reconnect refused between probes counts as a failed probe without lateness",
                 "[registry]") {
  auto a = ask<register_reply>(register_atom::value, make_registration("http://a:1")).record;
  self->send(reg, probed_atom::value,
             std::vector<probe_report>{probe_report{a.id, a.generation, test::healthy_outcome()}});
  auto before = ask<health_stats>(stats_atom::value);
  auto refused = test::failed_outcome("connect");
  refused.error = "the server closed the kept connection and refused a new one";
  refused.between_probes = true;
  self->send(reg, probed_atom::value, std::vector<probe_report>{probe_report{a.id, a.generation, refused}});
  auto rec = ask<server_record>(get_atom::value, a.id);
  CHECK(rec.status == server_status::unhealthy);
  CHECK(rec.consecutive_failures == 1);
  CHECK(rec.last_error_kind == "connect");
  auto after = ask<health_stats>(stats_atom::value);
  CHECK(after.checks_total == before.checks_total + 1);
  CHECK(after.failures_total == before.failures_total + 1);
  uint64_t samples_before = 0, samples_after = 0;
  for (auto c : before.lateness.counts)
    samples_before += c;
  for (auto c : after.lateness.counts)
    samples_after += c;
  CHECK(samples_after == samples_before); // no schedule, no lateness
  // The next probe, failing too, confirms it; the one after counts.
  for (int expected : {1, 2}) {
    self->send(reg, probed_atom::value,
               std::vector<probe_report>{probe_report{a.id, a.generation, test::failed_outcome()}});
    CHECK(ask<server_record>(get_atom::value, a.id).consecutive_failures == expected);
  }
}

TEST_CASE("routine probe timings reach the disk later than state changes, and at a flush",
          "[registry]") {
  char tmpl[] = "/tmp/mg-registry-XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  auto db = (dir / "m.db").string();
  {
    fixture f{db};
    auto a = f.ask<register_reply>(register_atom::value, f.make_registration("http://a:1")).record;
    auto b = f.ask<register_reply>(register_atom::value, f.make_registration("http://b:1")).record;
    auto healthy_in = [](double ms) {
      auto o = test::healthy_outcome();
      o.response_time_ms = ms;
      return o;
    };
    auto on_disk = [&](const std::string& id) {
      server_store reader{db};
      for (auto& r : reader.load_all())
        if (r.id == id)
          return r;
      FAIL("no record " << id);
      return server_record{};
    };
    auto report = [&](const server_record& r, probe_outcome o) {
      f.self->send(f.reg, probed_atom::value,
                   std::vector<probe_report>{probe_report{r.id, r.generation, std::move(o)}});
    };
    // unknown -> healthy is a state change: on disk within the health flush.
    report(a, healthy_in(1));
    REQUIRE(test::wait_until([&] { return on_disk(a.id).status == server_status::healthy; }));
    // A routine success (healthy, still healthy) changes timings only.
    report(a, healthy_in(7));
    // b turning unhealthy forces a health commit; a's new timing is not in it.
    report(b, test::failed_outcome("http_status"));
    REQUIRE(test::wait_until([&] { return on_disk(b.id).status == server_status::unhealthy; }));
    CHECK(on_disk(a.id).last_response_time_ms == Approx(1));
    CHECK(f.ask<server_record>(get_atom::value, a.id).last_response_time_ms == Approx(7));
    // An explicit flush (the daemon's at shutdown) writes it.
    CHECK(f.ask<bool>(flush_atom::value));
    CHECK(on_disk(a.id).last_response_time_ms == Approx(7));
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}
