// admin_calls.hpp — the two admin calls integration tests make everywhere:
// register a server and read its record, each required to succeed. The
// fixtures wrap them with their own defaults (models, name, token).
#pragma once

#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace mg_test {

/// POST /v1/servers with `body`; requires 201 and returns the new id.
inline std::string register_server(http_client& client, const nlohmann::json& body,
                                   const header_list& headers = {}) {
  auto r = client.post("/v1/servers", body.dump(), headers);
  INFO(r.body);
  REQUIRE(r.status == 201);
  return nlohmann::json::parse(r.body)["id"];
}

/// GET /v1/servers/{id}; requires 200 and returns the record.
inline nlohmann::json server_record(http_client& client, const std::string& id,
                                    const header_list& headers = {}) {
  auto r = client.get("/v1/servers/" + id, headers);
  REQUIRE(r.status == 200);
  return nlohmann::json::parse(r.body);
}

} // namespace mg_test
