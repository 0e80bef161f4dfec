#include "protocol/errors.hpp"

#include <caf/make_message.hpp>
#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

namespace mg {

namespace {

struct error_row {
  errc code;
  int status;
  const char* code_text;
  const char* type_text;
};

// One table: adding an error is one row here.
constexpr error_row error_table[] = {
  {errc::invalid_request, 400, "invalid_request", "invalid_request_error"},
  {errc::unauthorized, 401, "unauthorized", "authentication_error"},
  {errc::not_found, 404, "not_found", "not_found_error"},
  {errc::method_not_allowed, 405, "method_not_allowed", "invalid_request_error"},
  {errc::conflict, 409, "conflict", "conflict_error"},
  {errc::payload_too_large, 413, "payload_too_large", "invalid_request_error"},
  {errc::model_not_found, 404, "model_not_found", "not_found_error"},
  {errc::internal, 500, "internal_error", "server_error"},
  {errc::upstream_failed, 502, "upstream_failed", "server_error"},
  {errc::unavailable, 503, "unavailable", "server_error"},
  {errc::upstream_timeout, 504, "upstream_timeout", "server_error"},
};

const error_row& row_of(errc x) {
  for (const auto& row : error_table)
    if (row.code == x)
      return row;
  return error_table[7]; // internal
}

} // namespace

int http_status(errc x) {
  return row_of(x).status;
}

const char* code_text(errc x) {
  return row_of(x).code_text;
}

const char* type_text(errc x) {
  return row_of(x).type_text;
}

std::string error_body(const api_error& e) {
  nlohmann::json body = {
    {"error", {{"message", e.message}, {"type", type_text(e.code)}, {"code", code_text(e.code)}}}};
  return body.dump();
}

caf::error make_error(errc code, std::string message) {
  return caf::error{static_cast<uint8_t>(code), error_category,
                    caf::make_message(std::move(message))};
}

api_error to_api_error(const caf::error& err) {
  if (err.category() == error_category) {
    api_error result{static_cast<errc>(err.code()), {}};
    const auto& ctx = err.context();
    if (ctx.size() == 1 && ctx.match_element<std::string>(0))
      result.message = ctx.get_as<std::string>(0);
    return result;
  }
  if (err == caf::sec::request_timeout)
    return {errc::unavailable, "the registry did not answer in time"};
  if (err == caf::sec::request_receiver_down)
    return {errc::unavailable, "the registry is not running"};
  return {errc::internal, "internal error"};
}

} // namespace mg
