// The one entry point an embedding program calls: spawn modelgate's actors in
// the caller's actor system.
//
// `spawn_modelgate` opens (and migrates) the database, spawns the registry and
// the admin API actor and returns their handles. The caller may talk to the
// registry directly through its typed interface, and may serve the admin API
// over HTTP by handing `http_job`s to `admin_api` (tools/modelgated does
// exactly that). `stop_modelgate` commits what is pending and exits the actors;
// call it before the actor system is destroyed.
#pragma once

#include <caf/actor_system.hpp>

#include "protocol/config.hpp"
#include "protocol/registry_interface.hpp"
#include "protocol/time.hpp"

namespace mg {

struct modelgate_handles {
  registry_actor registry;
  admin_api_actor admin_api;
};

/// Throws std::runtime_error when the database cannot be opened.
/// `clock` is the registry's wall clock (tests inject one).
modelgate_handles spawn_modelgate(caf::actor_system& sys, const modelgate_config& config,
                                  wall_clock clock = now_ms);

/// Flushes the registry (waiting at most `timeout`) and exits every actor.
void stop_modelgate(caf::actor_system& sys, const modelgate_handles& handles,
                    std::chrono::milliseconds timeout = std::chrono::seconds(3));

} // namespace mg
