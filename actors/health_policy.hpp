// The health policy: what one probe outcome does to a server. A pure function
// — no actors, no I/O, no clock — so every transition is a table-driven test.
//
// `apply_probe(record, generation, outcome, config)`: a result carrying an
// older generation, or arriving for an inactive server, is dropped; a success
// sets `healthy` and zero failures; a failure sets `unhealthy` and adds one
// (unless it confirms one found between probes, counted already:
// probe_outcome::between_probes), and at `max_failures` (a probe's, not one
// found between probes) with auto-deregistration on, soft-deletes the server
// with reason `health_check`. Status changes (not every probe) become events.
#pragma once

#include <optional>
#include <vector>

#include "protocol/config.hpp"
#include "protocol/probe.hpp"
#include "protocol/server_record.hpp"

namespace mg {

enum class health_transition {
  dropped,      // stale or inactive: nothing changes
  unchanged,    // the status stayed (counters and timings may move)
  changed,      // the status changed (an event is recorded)
  deregistered, // auto-deregistration
};

struct policy_result {
  health_transition transition = health_transition::dropped;
  server_record record;             // the new state (unchanged when dropped)
  std::vector<server_event> events; // transitions, oldest first
};

policy_result apply_probe(const server_record& record, uint64_t generation,
                          const probe_outcome& outcome, const health_config& config);

/// What applying an outcome did, for the in-place form below.
struct policy_step {
  health_transition transition = health_transition::dropped;
  std::vector<server_event> events;
};

/// The same policy applied to `record` in place: the registry applies 10,000
/// outcomes a second and must not copy a whole record for each.
policy_step apply_probe_in_place(server_record& record, uint64_t generation,
                                 const probe_outcome& outcome, const health_config& config);

/// A gateway-observed failure: `unhealthy` at once, without counting toward
/// deregistration (the next successful probe clears it).
policy_result apply_passive_failure(const server_record& record, uint64_t generation,
                                    const std::string& error, const std::string& error_kind,
                                    epoch_ms at);

} // namespace mg
