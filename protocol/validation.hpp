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

/// Parses and validates a `POST /v1/servers` body.
std::variant<registration, api_error> parse_registration(std::string_view body);

} // namespace mg
