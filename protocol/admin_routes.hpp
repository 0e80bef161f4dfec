// Routing of the admin API: method + path -> route, or 404 / 405.
//
// A table of path patterns, each with the methods it accepts, so that a known
// path with the wrong method answers 405 with an `Allow` header instead of a
// blind 404. Also the small helpers for query strings and bearer tokens.
// Pure functions, any thread.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mg {

enum class admin_route {
  health,            // GET /health
  list_servers,      // GET /v1/servers
  register_server,   // POST /v1/servers
  get_server,        // GET /v1/servers/{id}
  deregister_server, // DELETE /v1/servers/{id}
  reactivate_server, // POST /v1/servers/{id}/reactivate
  server_events,     // GET /v1/servers/{id}/events
  check_server,      // POST /v1/servers/{id}/check
  checker_status,    // GET /v1/health-checker
  checker_start,     // POST /v1/health-checker/start
  checker_stop,      // POST /v1/health-checker/stop
  list_models,       // GET /v1/models (gateway: needs an API key when keys are set)
  metrics,           // GET /metrics
  status_page,       // GET /ui
};

struct route_match {
  std::optional<admin_route> route; // set when path and method match
  std::string id;                   // the {id} segment, when the pattern has one
  bool path_known = false;          // the path matched but the method did not -> 405
  std::string allow;                // methods of the matched path, for `Allow`
};

route_match match_admin_route(std::string_view method, std::string_view path);

/// True for paths that need the admin token when one is configured.
bool needs_admin_token(std::string_view path);

/// True for the OpenAI-compatible paths, which need an API key when keys are set.
bool needs_api_key(std::string_view path);

/// True when `authorization` is `Bearer K` for one of `keys` (each compared in
/// constant time).
bool bearer_matches_any(std::string_view authorization, const std::vector<std::string>& keys);

/// Splits `a=1&b=x%20y` into decoded pairs; a repeated key keeps its last value.
std::map<std::string, std::string> parse_query(std::string_view query);

/// Compares two strings in time independent of where they differ.
bool constant_time_equal(std::string_view a, std::string_view b);

/// True when `authorization` is exactly `Bearer <token>`.
bool bearer_matches(std::string_view authorization, std::string_view token);

} // namespace mg
