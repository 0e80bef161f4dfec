// The health policy, transition by transition: no actors, no clock.
#include <catch2/catch.hpp>

#include "actors/health_policy.hpp"

using namespace mg;

namespace {

server_record active_server(server_status status = server_status::unknown, int failures = 0) {
  server_record r;
  r.id = "srv_000000000001";
  r.url = "http://h:1";
  r.models = {"m"};
  r.status = status;
  r.consecutive_failures = failures;
  r.generation = 7;
  return r;
}

probe_outcome success(epoch_ms at = 1000) {
  probe_outcome o;
  o.healthy = true;
  o.response_time_ms = 12.5;
  o.status_code = 200;
  o.at = at;
  return o;
}

probe_outcome failure(const char* kind = "connect", epoch_ms at = 1000) {
  probe_outcome o;
  o.healthy = false;
  o.error = "Connection refused";
  o.error_kind = kind;
  o.response_time_ms = 0.4;
  o.at = at;
  return o;
}

health_config config(int max_failures = 3, bool auto_deregister = true) {
  health_config c;
  c.max_failures = max_failures;
  c.auto_deregister = auto_deregister;
  return c;
}

} // namespace

TEST_CASE("a first success turns unknown into healthy with an event", "[policy]") {
  auto r = apply_probe(active_server(), 7, success(), config());
  CHECK(r.transition == health_transition::changed);
  CHECK(r.record.status == server_status::healthy);
  CHECK(r.record.consecutive_failures == 0);
  CHECK(r.record.last_check_at == std::optional<epoch_ms>{1000});
  CHECK(r.record.last_response_time_ms == std::optional<double>{12.5});
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0].event == "healthy");
}

TEST_CASE("a success on a healthy server changes no status and records no event", "[policy]") {
  auto r = apply_probe(active_server(server_status::healthy), 7, success(2000), config());
  CHECK(r.transition == health_transition::unchanged);
  CHECK(r.events.empty());
  CHECK(r.record.last_check_at == std::optional<epoch_ms>{2000});
}

TEST_CASE("a failure sets unhealthy, counts one and keeps the error", "[policy]") {
  auto r = apply_probe(active_server(server_status::healthy), 7, failure(), config());
  CHECK(r.transition == health_transition::changed);
  CHECK(r.record.status == server_status::unhealthy);
  CHECK(r.record.consecutive_failures == 1);
  CHECK(r.record.last_error == std::optional<std::string>{"Connection refused"});
  CHECK(r.record.last_error_kind == std::optional<std::string>{"connect"});
  CHECK_FALSE(r.record.last_response_time_ms); // no response, no time to its last byte
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0].event == "unhealthy");
}

TEST_CASE("a further failure below the threshold only counts", "[policy]") {
  auto r = apply_probe(active_server(server_status::unhealthy, 1), 7, failure(), config(3));
  CHECK(r.transition == health_transition::unchanged);
  CHECK(r.record.consecutive_failures == 2);
  CHECK(r.record.is_active);
  CHECK(r.events.empty());
}

TEST_CASE("reaching max failures deregisters with reason health_check", "[policy]") {
  auto r = apply_probe(active_server(server_status::unhealthy, 2), 7, failure("timeout", 5000),
                       config(3));
  CHECK(r.transition == health_transition::deregistered);
  CHECK_FALSE(r.record.is_active);
  CHECK(r.record.consecutive_failures == 3);
  CHECK(r.record.deregistered_reason == std::optional<std::string>{"health_check"});
  CHECK(r.record.deregistered_at == std::optional<epoch_ms>{5000});
  CHECK(r.record.generation == 8);
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0].event == "deregistered");
}

TEST_CASE("max failures of one deregisters a healthy server on its first failure with two events",
          "[policy]") {
  auto r = apply_probe(active_server(server_status::healthy), 7, failure(), config(1));
  CHECK(r.transition == health_transition::deregistered);
  REQUIRE(r.events.size() == 2);
  CHECK(r.events[0].event == "unhealthy");
  CHECK(r.events[1].event == "deregistered");
}

TEST_CASE("with auto-deregistration off failures count on past the threshold", "[policy]") {
  auto r = apply_probe(active_server(server_status::unhealthy, 5), 7, failure(), config(3, false));
  CHECK(r.transition == health_transition::unchanged);
  CHECK(r.record.is_active);
  CHECK(r.record.consecutive_failures == 6);
}

TEST_CASE("a success before the threshold recovers to healthy with zero failures", "[policy]") {
  auto r = apply_probe(active_server(server_status::unhealthy, 2), 7, success(), config(3));
  CHECK(r.transition == health_transition::changed);
  CHECK(r.record.status == server_status::healthy);
  CHECK(r.record.consecutive_failures == 0);
  CHECK_FALSE(r.record.last_error);
  CHECK_FALSE(r.record.last_error_kind);
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0].event == "healthy");
}

TEST_CASE("a result of an older generation is dropped", "[policy]") {
  // The server was deregistered and reactivated (generation 7 -> 9) while the
  // probe of generation 7 was in flight.
  auto server = active_server(server_status::unknown);
  server.generation = 9;
  auto r = apply_probe(server, 7, failure(), config(1));
  CHECK(r.transition == health_transition::dropped);
  CHECK(r.record.is_active);
  CHECK(r.record.consecutive_failures == 0);
  CHECK(r.events.empty());
}

TEST_CASE("a result arriving after a manual deregistration is dropped", "[policy]") {
  auto server = active_server(server_status::healthy);
  server.is_active = false;
  server.deregistered_reason = "manual";
  server.generation = 8;
  for (uint64_t gen : {uint64_t{7}, uint64_t{8}}) {
    auto r = apply_probe(server, gen, success(), config());
    CHECK(r.transition == health_transition::dropped);
    CHECK(r.record.deregistered_reason == std::optional<std::string>{"manual"});
  }
}

TEST_CASE("a result after reactivation of the new generation applies from a clean state",
          "[policy]") {
  auto server = active_server(server_status::unknown, 0);
  server.generation = 9;
  auto r = apply_probe(server, 9, failure(), config(3));
  CHECK(r.record.consecutive_failures == 1);
  CHECK(r.record.status == server_status::unhealthy);
}

TEST_CASE("a failure found between probes counts at once and only the next probe deregisters",
          "[policy]") {
  auto early = failure();
  early.between_probes = true;
  auto r = apply_probe(active_server(server_status::healthy), 7, early, config(1));
  CHECK(r.transition == health_transition::changed);
  CHECK(r.record.status == server_status::unhealthy);
  CHECK(r.record.consecutive_failures == 1);
  CHECK(r.record.is_active); // at max-failures 1, too: a probe deregisters
  CHECK(r.record.early_failure_pending);
  auto confirmed = apply_probe(r.record, 7, failure(), config(1));
  CHECK(confirmed.transition == health_transition::deregistered);
  CHECK(confirmed.record.consecutive_failures == 1);
  // At max-failures 3 the confirming failure does not count again; the next one does.
  auto second = apply_probe(r.record, 7, failure(), config(3));
  CHECK(second.record.consecutive_failures == 1);
  CHECK_FALSE(second.record.early_failure_pending);
  CHECK(apply_probe(second.record, 7, failure(), config(3)).record.consecutive_failures == 2);
  // A success in between (an on-demand check, say) ends it: the next failure counts.
  auto back = apply_probe(r.record, 7, success(), config(3));
  CHECK(back.record.consecutive_failures == 0);
  CHECK_FALSE(back.record.early_failure_pending);
  CHECK(apply_probe(back.record, 7, failure(), config(3)).record.consecutive_failures == 1);
}

TEST_CASE("a gateway failure marks unhealthy at once without counting", "[policy]") {
  auto r = apply_passive_failure(active_server(server_status::healthy), 7, "refused", "connect", 10);
  CHECK(r.transition == health_transition::changed);
  CHECK(r.record.status == server_status::unhealthy);
  CHECK(r.record.consecutive_failures == 0);
  CHECK(r.record.is_active);
  auto stale = apply_passive_failure(active_server(server_status::healthy), 6, "x", "connect", 10);
  CHECK(stale.transition == health_transition::dropped);
}
