// The router actor: model -> candidate servers with their status and
// requests in flight, fed by the registry's change notifications.
//
// `pick(model, exclude)` follows the contract: healthy servers first,
// `unknown` ones only when none is healthy, `unhealthy` never; among those,
// the fewest requests in flight, ties by round robin. Every pick is matched
// by exactly one `done`, which keeps the in-flight counts exact; a connect
// failure or a 502/503 marks the server unhealthy at once, here and in the
// registry (which does not count it toward deregistration).
#pragma once

#include <caf/actor_system.hpp>

#include "protocol/registry_interface.hpp"

namespace mg {

struct router_options {
  registry_actor registry;
  std::chrono::milliseconds request_timeout{10'000};
};

router_actor spawn_router(caf::actor_system& sys, router_options options);

} // namespace mg
