// The record's JSON form: every contract field, api_key never written, and a
// lossless round trip.
#include <catch2/catch.hpp>

#include "protocol/errors.hpp"
#include "protocol/server_record.hpp"
#include "protocol/time.hpp"

using namespace mg;

namespace {

server_record full_record() {
  server_record r;
  r.id = "srv_0123456789ab";
  r.url = "http://127.0.0.1:8001";
  r.name = "gpu-node-1";
  r.models = {"llama-3-8b", "qwen"};
  r.metadata = {{"rack", 4}};
  r.health_path = "/healthz";
  r.expect = health_expect::status;
  r.api_key = "sk-secret";
  r.is_active = false;
  r.status = server_status::unhealthy;
  r.consecutive_failures = 3;
  r.last_check_at = 1795804800123;
  r.last_response_time_ms = 12.5;
  r.last_error = "connection refused";
  r.last_error_kind = "connect";
  r.registered_at = 1795804400001;
  r.deregistered_at = 1795804800124;
  r.deregistered_reason = "health_check";
  return r;
}

} // namespace

TEST_CASE("a record is written with every contract field and without api_key", "[json]") {
  auto j = to_json(full_record());
  for (const char* key : {"id", "url", "name", "models", "metadata", "health_path", "health_expect",
                          "is_active", "status", "consecutive_failures", "last_check_at",
                          "last_response_time_ms", "last_error", "last_error_kind",
                          "registered_at", "deregistered_at", "deregistered_reason"})
    CHECK(j.contains(key));
  CHECK_FALSE(j.contains("api_key"));
  CHECK(j.dump().find("sk-secret") == std::string::npos);
  CHECK(j["health_expect"] == "status");
  CHECK(j["status"] == "unhealthy");
  CHECK(j["registered_at"] == "2026-11-27T18:33:20.001Z");
  CHECK(j["last_check_at"] == "2026-11-27T18:40:00.123Z");
}

TEST_CASE("a fresh record writes null for unset optional fields", "[json]") {
  server_record r;
  r.id = "srv_000000000001";
  r.url = "http://h:1";
  r.models = {"m"};
  auto j = to_json(r);
  for (const char* key : {"name", "last_check_at", "last_response_time_ms", "last_error",
                          "last_error_kind", "deregistered_at", "deregistered_reason"})
    CHECK(j[key].is_null());
  CHECK(j["status"] == "unknown");
  CHECK(j["is_active"] == true);
  CHECK(j["metadata"] == nlohmann::json::object());
}

TEST_CASE("a record survives a JSON round trip except for api_key", "[json]") {
  auto original = full_record();
  auto back = record_from_json(to_json(original));
  CHECK(back.id == original.id);
  CHECK(back.url == original.url);
  CHECK(back.name == original.name);
  CHECK(back.models == original.models);
  CHECK(back.metadata == original.metadata);
  CHECK(back.health_path == original.health_path);
  CHECK(back.expect == original.expect);
  CHECK_FALSE(back.api_key);
  CHECK(back.is_active == original.is_active);
  CHECK(back.status == original.status);
  CHECK(back.consecutive_failures == original.consecutive_failures);
  CHECK(back.last_check_at == original.last_check_at);
  CHECK(back.last_response_time_ms == original.last_response_time_ms);
  CHECK(back.last_error == original.last_error);
  CHECK(back.last_error_kind == original.last_error_kind);
  CHECK(back.registered_at == original.registered_at);
  CHECK(back.deregistered_at == original.deregistered_at);
  CHECK(back.deregistered_reason == original.deregistered_reason);
}

TEST_CASE("RFC 3339 times are written with milliseconds in UTC and read back", "[json]") {
  CHECK(format_rfc3339(0) == "1970-01-01T00:00:00.000Z");
  CHECK(format_rfc3339(1795803600123) == "2026-11-27T18:20:00.123Z");
  CHECK(parse_rfc3339("2026-11-27T18:20:00.123Z") == 1795803600123);
  CHECK(parse_rfc3339("2026-11-27T18:20:00Z") == 1795803600000);
  CHECK_FALSE(parse_rfc3339("yesterday"));
}

TEST_CASE("deadlines round up to their grid and never down", "[time]") {
  using namespace std::chrono;
  using tp = steady_clock::time_point;
  CHECK(round_up(tp{milliseconds(50)}, milliseconds(25)) == tp{milliseconds(50)});
  CHECK(round_up(tp{milliseconds(50) + nanoseconds(1)}, milliseconds(25)) == tp{milliseconds(75)});
  CHECK(round_up(tp{microseconds(1)}, milliseconds(100)) == tp{milliseconds(100)});
  CHECK(round_up(tp{nanoseconds(0)}, milliseconds(1)) == tp{nanoseconds(0)});
}

TEST_CASE("every error maps to its status code and the OpenAI error shape", "[json]") {
  CHECK(http_status(errc::invalid_request) == 400);
  CHECK(http_status(errc::unauthorized) == 401);
  CHECK(http_status(errc::not_found) == 404);
  CHECK(http_status(errc::method_not_allowed) == 405);
  CHECK(http_status(errc::conflict) == 409);
  CHECK(http_status(errc::payload_too_large) == 413);
  CHECK(http_status(errc::model_not_found) == 404);
  CHECK(http_status(errc::upstream_failed) == 502);
  CHECK(http_status(errc::unavailable) == 503);
  CHECK(http_status(errc::upstream_timeout) == 504);
  auto body = nlohmann::json::parse(error_body({errc::not_found, "no server with id x"}));
  CHECK(body["error"]["message"] == "no server with id x");
  CHECK(body["error"]["code"] == "not_found");
  CHECK(body["error"]["type"].is_string());
  auto round = to_api_error(make_error(errc::conflict, "dup"));
  CHECK(round.code == errc::conflict);
  CHECK(round.message == "dup");
}
