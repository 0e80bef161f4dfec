// The gateway actor: the OpenAI-compatible routes (`POST /v1/chat/completions`,
// `/v1/completions`, `/v1/embeddings`).
//
// For each request it checks the API key and the body (JSON with a `model`),
// asks the router for a server, and has the exchange forward the body there
// (the exchange does the I/O on asio; streams are relayed chunk by chunk).
// A connect failure or an upstream 502/503 before any byte reached the client
// is retried on another server, at most twice, never the same server twice.
// Every pick is matched by one `done` to the router. Holds one small record
// per request in flight; never blocks.
#pragma once

#include <caf/actor_system.hpp>

#include "protocol/registry_interface.hpp"

namespace mg {

struct gateway_options {
  router_actor router;
  std::vector<std::string> api_keys; // empty: no key needed
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000};
  std::chrono::milliseconds idle_timeout{300'000};
  std::chrono::milliseconds actor_timeout{10'000};
  int max_retries = 2;
};

gateway_actor spawn_gateway(caf::actor_system& sys, gateway_options options);

/// True for the paths the gateway serves.
bool is_gateway_path(std::string_view path);

} // namespace mg
