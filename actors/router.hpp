// The router actor: model -> candidate servers with their status and
// requests in flight, fed by the registry's change notifications; and the
// OpenAI-compatible gateway routes, which it serves itself.
//
// `pick(model, exclude)` follows the contract: healthy servers first,
// `unknown` ones only when none is healthy, `unhealthy` never; among those,
// the fewest requests in flight, ties by round robin. Every pick is matched
// by exactly one `done`, which keeps the in-flight counts exact; a connect
// failure or a 502/503 marks the server unhealthy at once, here and in the
// registry (which does not count it toward deregistration).
//
// For a gateway request (`http_job`) it checks the API key and the body (JSON
// with a `model`), picks a server and has the exchange forward the body there
// (the exchange does the I/O on asio; streams are relayed chunk by chunk). A
// connect failure or an upstream 502/503 before any byte reached the client
// is retried on another server, at most `max_retries` times, never on the
// same server twice. Picking here rather than in a separate actor saves a
// round trip between threads on every request.
#pragma once

#include <string_view>
#include <vector>

#include <caf/actor_system.hpp>

#include "protocol/registry_interface.hpp"

namespace mg {

struct router_options {
  registry_actor registry;
  std::chrono::milliseconds request_timeout{10'000};
  std::vector<std::string> api_keys; // empty: the gateway needs no key
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000};
  std::chrono::milliseconds idle_timeout{300'000};
  int max_retries = 2;
};

router_actor spawn_router(caf::actor_system& sys, router_options options);

/// True for the paths the gateway serves.
bool is_gateway_path(std::string_view path);

} // namespace mg
