// The one entry point an embedding program calls: spawn modelgate's actors in
// the caller's actor system.
//
// `spawn_modelgate` opens (and migrates) the database, spawns the registry,
// the supervisor (and its probers), the router and the admin API actor, and makes the
// gateway; it returns their handles. The caller may talk to the
// registry directly through its typed interface, and may serve the admin API
// over HTTP by handing `http_job`s to `admin_api`, and the OpenAI routes by
// handing theirs to `openai` (tools/modelgated does exactly that; see
// `dispatch_http`). `stop_modelgate` commits what is pending and exits the actors
// and stops the probe I/O threads; call it before the actor system is destroyed.
#pragma once

#include <caf/actor_system.hpp>

#include <memory>

#include "protocol/config.hpp"
#include "protocol/probe.hpp"
#include "protocol/registry_interface.hpp"
#include "protocol/time.hpp"

namespace mg {

class probe_runtime;
class gateway;

struct modelgate_handles {
  registry_actor registry;
  supervisor_actor supervisor;
  admin_api_actor admin_api;
  router_actor router;
  /// Serves the OpenAI-compatible routes on the HTTP I/O threads.
  std::shared_ptr<gateway> openai;
  /// The I/O threads of the health probes (owned here; stopped by stop_modelgate).
  std::shared_ptr<probe_runtime> probes;
};

/// What an embedding program or a test may swap out.
struct modelgate_hooks {
  wall_clock clock = now_ms;            // the registry's wall clock
  // Empty: real HTTP probes. A hook's drivers send the reports of scheduled
  // probes to the registry themselves (probed_atom, a vector of reports).
  probe_driver_factory make_driver;
};

/// Throws std::runtime_error when the database cannot be opened.
modelgate_handles spawn_modelgate(caf::actor_system& sys, const modelgate_config& config,
                                  modelgate_hooks hooks = {});

/// Hands an HTTP exchange to the actor that serves its path.
void dispatch_http(const modelgate_handles& handles, std::shared_ptr<http_exchange> exchange);

/// Flushes the registry (waiting at most `timeout`) and exits every actor.
void stop_modelgate(caf::actor_system& sys, const modelgate_handles& handles,
                    std::chrono::milliseconds timeout = std::chrono::seconds(3));

} // namespace mg
