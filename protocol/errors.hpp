// The one error vocabulary of modelgate, and its one mapping to HTTP.
//
// Every failure that reaches a client is an `errc` plus a human message. Actors
// carry it as a `caf::error` (category "modelgate", the message in its
// context); the HTTP facade turns it into a status code and the OpenAI error
// shape `{"error": {"message", "type", "code"}}` through `http_status` and
// `error_body`, and nowhere else. Thread-safe; no state.
#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>

namespace mg {

enum class errc : uint8_t {
  invalid_request = 1, // 400: body not JSON, a field missing or invalid
  unauthorized,        // 401: missing or wrong token
  not_found,           // 404: unknown id or path
  method_not_allowed,  // 405: known path, wrong method
  conflict,            // 409: duplicate active URL, check on an inactive server
  payload_too_large,   // 413: body over the route's limit
  model_not_found,     // 404: no active server serves the model
  internal,            // 500: a bug or a storage failure
  upstream_failed,     // 502: every try of a gateway request failed
  unavailable,         // 503: no routable server, or a component did not answer
  upstream_timeout,    // 504
};

/// A failure as the client sees it.
struct api_error {
  errc code = errc::internal;
  std::string message;
};

/// The HTTP status code of `x`.
int http_status(errc x);

/// The `error.code` string, e.g. "invalid_request".
const char* code_text(errc x);

/// The `error.type` string, e.g. "invalid_request_error".
const char* type_text(errc x);

/// `{"error": {"message": ..., "type": ..., "code": ...}}`.
std::string error_body(const api_error& e);

/// The CAF error category atom of modelgate errors.
constexpr caf::atom_value error_category = caf::atom("modelgate");

/// Wraps an api_error into a caf::error so an actor handler can return it.
caf::error make_error(errc code, std::string message);

/// Turns any caf::error (ours or CAF's own, e.g. a request timeout) back into
/// an api_error.
api_error to_api_error(const caf::error& err);

} // namespace mg
