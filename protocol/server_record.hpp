// The server record and the messages about it: the vocabulary shared by the
// registry actor, the store, the HTTP facade and embedding programs.
//
// `server_record` holds every field of the contract's record plus `api_key`
// (stored, sent upstream, never written out) and `updated_at`. `to_json` is the
// only way a record leaves the process and never includes `api_key`. Plain
// values: copy them freely between threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/time.hpp"

namespace mg {

enum class server_status : uint8_t { unknown, healthy, unhealthy };
enum class health_expect : uint8_t { json, status };

const char* to_string(server_status x);
const char* to_string(health_expect x);
std::optional<server_status> parse_server_status(std::string_view text);
std::optional<health_expect> parse_health_expect(std::string_view text);

/// What a client gives at registration, validated (see validation.hpp).
struct registration {
  std::string url; // normalized: no trailing '/'
  std::optional<std::string> name;
  std::vector<std::string> models;
  nlohmann::json metadata = nlohmann::json::object();
  std::string health_path = "/health";
  health_expect expect = health_expect::json;
  std::optional<std::string> api_key;
};

/// One registered server, active or not.
struct server_record {
  std::string id; // "srv_" + 12 lowercase hex
  std::string url;
  std::optional<std::string> name;
  std::vector<std::string> models;
  nlohmann::json metadata = nlohmann::json::object();
  std::string health_path = "/health";
  health_expect expect = health_expect::json;
  std::optional<std::string> api_key;
  bool is_active = true;
  server_status status = server_status::unknown;
  int32_t consecutive_failures = 0;
  std::optional<epoch_ms> last_check_at;
  std::optional<double> last_response_time_ms;
  std::optional<std::string> last_error;
  std::optional<std::string> last_error_kind;
  epoch_ms registered_at = 0;
  epoch_ms updated_at = 0;
  std::optional<epoch_ms> deregistered_at;
  std::optional<std::string> deregistered_reason;
  /// In memory only: bumped by every deregistration and reactivation, so a
  /// probe result from before the change is recognised and dropped.
  uint64_t generation = 0;
  /// In memory only: the last result applied was a failure found between
  /// probes (probe_outcome::between_probes), counted already; the next
  /// failed probe confirms it without counting again.
  bool early_failure_pending = false;
};

/// A status transition of one server, as kept in `server_events`.
struct server_event {
  std::string server_id;
  epoch_ms at = 0;
  std::string event; // registered, healthy, unhealthy, deregistered, reactivated
  std::optional<std::string> detail;
};

/// The filters of `GET /v1/servers`.
struct list_filter {
  bool include_inactive = false;
  std::optional<std::string> model;
  std::optional<server_status> status;
};

/// The registry's answer to a registration.
struct register_reply {
  server_record record;
  bool created = true; // false: an inactive server with this URL was reactivated
};

/// True when `rec` passes `filter`.
bool matches(const server_record& rec, const list_filter& filter);

/// The record as the contract shows it; never includes `api_key`.
nlohmann::json to_json(const server_record& rec);

/// Reads a record written by `to_json` (used by clients and tests); throws
/// nlohmann::json::exception on a malformed document.
server_record record_from_json(const nlohmann::json& j);

/// `{"at", "event", "detail"}`.
nlohmann::json to_json(const server_event& ev);

/// Parses "2026-11-27T21:00:00.123Z"; nullopt when malformed.
std::optional<epoch_ms> parse_rfc3339(std::string_view text);

} // namespace mg
