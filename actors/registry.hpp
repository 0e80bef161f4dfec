// The registry actor: the single owner of the store and of the truth about
// servers.
//
// It loads every record at start, answers queries from memory and applies
// changes to memory at once, but acknowledges a change only after the
// transaction holding it has committed. Changes that arrive together share a
// transaction (group commit): each change schedules one `commit_atom` to
// itself, so everything already queued in the mailbox joins the same commit.
// Runs detached (its own thread): its disk I/O never stalls CAF's workers.
#pragma once

#include <cstdint>
#include <memory>

#include <caf/actor_system.hpp>

#include "protocol/config.hpp"
#include "protocol/metrics.hpp"
#include "protocol/registry_interface.hpp"
#include "protocol/time.hpp"
#include "storage/server_store.hpp"

namespace mg {

struct registry_options {
  std::shared_ptr<server_store> store;
  wall_clock clock = now_ms;
  /// Seeds id generation; 0 takes one from std::random_device.
  uint64_t seed = 0;
  /// Failure threshold and auto-deregistration for probe results.
  health_config health;
  /// Where probe durations are observed (none: not observed).
  std::shared_ptr<metrics> stats_sink;
};

/// Spawns the registry; `detached` puts it on its own thread (the daemon's
/// choice); tests may spawn it on the scheduler instead.
registry_actor spawn_registry(caf::actor_system& sys, registry_options options,
                              bool detached = true);

/// Where scheduled probes report: each batch goes to `registry` as one
/// `probed_atom` message.
probe_report_sink report_sink_to(registry_actor registry);

} // namespace mg
