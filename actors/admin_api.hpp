// The admin API actor: turns HTTP exchanges of the admin routes into registry
// requests and their answers back into HTTP responses.
//
// Asio threads hand it `http_job`s and return at once; it checks the admin
// token, routes, validates, asks the registry (or the supervisor) and answers
// the exchange from the reply handler, or with 503 once `actor_timeout`
// passes. It never blocks; its only state beyond handles and settings is the
// deadlines of the exchanges waiting on an answer.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>

#include "protocol/metrics.hpp"
#include "protocol/registry_interface.hpp"

namespace mg {

struct admin_api_options {
  registry_actor registry;
  supervisor_actor supervisor;
  std::optional<std::string> admin_token;
  std::vector<std::string> api_keys; // when set, the OpenAI routes need one
  std::shared_ptr<metrics> stats;    // rendered by GET /metrics
  /// An on-demand check waits this long on top of the health timeout.
  double health_timeout_seconds = 10;
  std::chrono::milliseconds actor_timeout{10'000};
};

admin_api_actor spawn_admin_api(caf::actor_system& sys, admin_api_options options);

} // namespace mg
