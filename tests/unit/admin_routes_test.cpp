// Admin routing (404 vs 405), query strings and token comparison.
#include <catch2/catch.hpp>

#include "protocol/admin_routes.hpp"

using namespace mg;

TEST_CASE("admin routes match by path and method", "[routes]") {
  struct row {
    const char* method;
    const char* path;
    std::optional<admin_route> route;
    bool path_known;
  };
  const row rows[] = {
    {"GET", "/health", admin_route::health, true},
    {"DELETE", "/health", std::nullopt, true},
    {"GET", "/v1/servers", admin_route::list_servers, true},
    {"POST", "/v1/servers", admin_route::register_server, true},
    {"PUT", "/v1/servers", std::nullopt, true},
    {"GET", "/v1/servers/srv_1", admin_route::get_server, true},
    {"DELETE", "/v1/servers/srv_1", admin_route::deregister_server, true},
    {"POST", "/v1/servers/srv_1", std::nullopt, true},
    {"POST", "/v1/servers/srv_1/reactivate", admin_route::reactivate_server, true},
    {"GET", "/v1/servers/srv_1/reactivate", std::nullopt, true},
    {"GET", "/v1/servers/srv_1/events", admin_route::server_events, true},
    {"GET", "/v1/servers/srv_1/nope", std::nullopt, false},
    {"GET", "/v1/servers/", std::nullopt, false},
    {"GET", "/nope", std::nullopt, false},
    {"GET", "", std::nullopt, false},
  };
  for (const auto& r : rows) {
    INFO(r.method << " " << r.path);
    auto m = match_admin_route(r.method, r.path);
    CHECK(m.route == r.route);
    CHECK(m.path_known == r.path_known);
  }
  auto m = match_admin_route("PUT", "/v1/servers");
  CHECK(m.allow == "GET, POST");
  CHECK(match_admin_route("GET", "/v1/servers/srv_abc/events").id == "srv_abc");
}

TEST_CASE("the admin token guards /v1/servers and the health checker only", "[routes]") {
  CHECK(needs_admin_token("/v1/servers"));
  CHECK(needs_admin_token("/v1/servers/srv_1/events"));
  CHECK(needs_admin_token("/v1/health-checker/stop"));
  CHECK_FALSE(needs_admin_token("/health"));
  CHECK_FALSE(needs_admin_token("/v1/serversx"));
  CHECK_FALSE(needs_admin_token("/v1/models"));
}

TEST_CASE("query strings are split and percent-decoded", "[routes]") {
  auto q = parse_query("include_inactive=true&model=llama%203%2B8b&status=&x");
  CHECK(q["include_inactive"] == "true");
  CHECK(q["model"] == "llama 3+8b");
  CHECK(q["status"].empty());
  CHECK(q.count("x") == 1);
  CHECK(parse_query("").empty());
}

TEST_CASE("bearer tokens compare exactly", "[routes]") {
  CHECK(bearer_matches("Bearer secret", "secret"));
  CHECK(bearer_matches("bearer secret", "secret"));
  CHECK_FALSE(bearer_matches("Bearer secret2", "secret"));
  CHECK_FALSE(bearer_matches("Bearer secre", "secret"));
  CHECK_FALSE(bearer_matches("Basic secret", "secret"));
  CHECK_FALSE(bearer_matches("", "secret"));
  CHECK_FALSE(bearer_matches("secret", "secret"));
  CHECK(constant_time_equal("abc", "abc"));
  CHECK_FALSE(constant_time_equal("abc", "abd"));
  CHECK_FALSE(constant_time_equal("abc", "ab"));
}
