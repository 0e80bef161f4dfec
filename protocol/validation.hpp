// Validation of outside input: registration bodies and server URLs.
//
// Untrusted bytes go in; a `registration` that obeys every rule of the
// contract comes out, or an `api_error` (errc::invalid_request) whose message
// names the offending field. Pure functions, no state, any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "protocol/errors.hpp"
#include "protocol/server_record.hpp"

namespace mg {

/// Checks a server URL against the contract's rules (`http://` or `https://`,
/// a host, an optional numeric port, no userinfo, query or fragment) and
/// returns it with trailing '/' removed; on failure, `why` says what is wrong.
std::optional<std::string> normalize_server_url(std::string_view url, std::string& why);

/// The parts of a server URL that was accepted by normalize_server_url.
struct server_url_parts {
  bool https = false;
  std::string host;        // without IPv6 brackets
  std::string port;        // explicit, or 80 / 443
  std::string host_header; // host[:port] as written
  std::string base_path;   // "" or "/prefix"
  /// "host:port": one upstream, for connection pools.
  std::string key() const {
    return host + ":" + port;
  }
};

/// Splits a normalized server URL; the probe client and the gateway use it.
server_url_parts split_server_url(const std::string& url);

/// The deepest nesting of arrays and objects a JSON body may have; deeper
/// bodies are refused before parsing (recursion in JSON code is bounded by it).
/// `value` with every CR and LF turned into a space, for an HTTP header
/// value: input validation keeps them out, this keeps out what got in anyway
/// (an api_key stored before keys were validated).
std::string header_safe(std::string_view value);

constexpr size_t max_json_depth = 64;

/// True when `body` nests arrays/objects at most `max_depth` deep (strings
/// are skipped, so brackets inside them do not count).
bool json_depth_within(std::string_view body, size_t max_depth = max_json_depth);

/// Parses and validates a `POST /v1/servers` body.
std::variant<registration, api_error> parse_registration(std::string_view body);

} // namespace mg
