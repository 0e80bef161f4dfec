// The gateway: the OpenAI-compatible routes (`POST /v1/chat/completions`,
// `/v1/completions`, `/v1/embeddings`), served on the HTTP I/O thread that
// read the request.
//
// For each request it checks the API key and the body (JSON with a `model`),
// picks a server from the router's route_table, and has the exchange forward
// the body there (streams are relayed chunk by chunk). A connect failure or
// an upstream 502/503 before any byte reached the client marks that server
// unhealthy at once (in the table, and in the registry by message) and is
// retried on another server, at most `max_retries` times, never the same
// server twice. No actor is asked anything on the way: a request costs no
// thread hop beyond the upstream I/O. Thread-safe; never blocks.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/http_server.hpp"
#include "protocol/metrics.hpp"
#include "protocol/registry_interface.hpp"
#include "protocol/route_table.hpp"

namespace mg {

struct gateway_options {
  std::shared_ptr<route_table> table;
  registry_actor registry;           // hears the gateway's passive failures
  std::vector<std::string> api_keys; // empty: no key needed
  std::shared_ptr<metrics> stats;    // requests, durations, retries (none: not counted)
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000};
  std::chrono::milliseconds idle_timeout{300'000};
  int max_retries = 2;
};

class gateway {
public:
  explicit gateway(gateway_options options);
  ~gateway();

  /// Serves one gateway request; the answer goes through `exchange`.
  void handle(std::shared_ptr<http_exchange> exchange);

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

/// True for the paths the gateway serves.
bool is_gateway_path(std::string_view path);

} // namespace mg
