// The router actor: the one writer of the gateway's route_table.
//
// It hears every change from the registry and keeps, per active server, a
// slot with its address, models, status and requests in flight; membership
// changes are published as a new table snapshot (once per batch of changes in
// its mailbox), status changes go straight into the slot. The gateway reads
// the table on the HTTP I/O threads (see gateway.hpp); `pick` and `done`
// offer the same routing to actors, by message.
//
// The rule (contract): healthy servers first, `unknown` ones only when none
// is healthy, `unhealthy` never; among those, the fewest requests in flight,
// ties by round robin. Every pick is matched by exactly one `done` (or
// `route_table::release`), which keeps the in-flight counts exact.
#pragma once

#include <memory>

#include <caf/actor_system.hpp>

#include "protocol/registry_interface.hpp"
#include "protocol/route_table.hpp"

namespace mg {

struct router_options {
  registry_actor registry;
  std::shared_ptr<route_table> table;
  std::chrono::milliseconds request_timeout{10'000};
};

router_actor spawn_router(caf::actor_system& sys, router_options options);

} // namespace mg
