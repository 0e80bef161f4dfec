// The messages of modelgate's actors: atoms and typed-actor interfaces.
//
// `registry_actor` is the one owner of the server records; every query and
// change goes through it. Replies arrive only after the change is durable.
// Errors come back as caf::error built by mg::make_error (see errors.hpp):
// not_found for an unknown id, conflict for a duplicate active URL,
// internal when storage fails. Handles are thread-safe values.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "protocol/config.hpp"
#include "protocol/http_server.hpp"
#include "protocol/probe.hpp"
#include "protocol/server_record.hpp"

namespace mg {

// -- atoms (at most 10 characters; texts unique within modelgate) -----------

using register_atom = caf::atom_constant<caf::atom("mg_reg")>;
using get_atom = caf::atom_constant<caf::atom("mg_get")>;
using list_atom = caf::atom_constant<caf::atom("mg_list")>;
using deregister_atom = caf::atom_constant<caf::atom("mg_dereg")>;
using reactivate_atom = caf::atom_constant<caf::atom("mg_react")>;
using events_atom = caf::atom_constant<caf::atom("mg_events")>;
using commit_atom = caf::atom_constant<caf::atom("mg_commit")>;
using flush_atom = caf::atom_constant<caf::atom("mg_flush")>;
using health_flush_atom = caf::atom_constant<caf::atom("mg_hflush")>;
using timing_flush_atom = caf::atom_constant<caf::atom("mg_tflush")>;
using probed_atom = caf::atom_constant<caf::atom("mg_probed")>;
using checked_atom = caf::atom_constant<caf::atom("mg_checked")>;
using passive_atom = caf::atom_constant<caf::atom("mg_passive")>;
using subscribe_atom = caf::atom_constant<caf::atom("mg_sub")>;
using changed_atom = caf::atom_constant<caf::atom("mg_changed")>;
using stats_atom = caf::atom_constant<caf::atom("mg_stats")>;
using tick_atom = caf::atom_constant<caf::atom("mg_tick")>;
using check_atom = caf::atom_constant<caf::atom("mg_check")>;
using check_done_atom = caf::atom_constant<caf::atom("mg_cdone")>;
using status_atom = caf::atom_constant<caf::atom("mg_status")>;
using start_atom = caf::atom_constant<caf::atom("mg_start")>;
using stop_atom = caf::atom_constant<caf::atom("mg_stop")>;
using shutdown_atom = caf::atom_constant<caf::atom("mg_shutdn")>;
using summary_atom = caf::atom_constant<caf::atom("mg_summary")>;
using prober_of_atom = caf::atom_constant<caf::atom("mg_prober")>;
using pick_atom = caf::atom_constant<caf::atom("mg_pick")>;
using done_atom = caf::atom_constant<caf::atom("mg_done")>;
using inflight_atom = caf::atom_constant<caf::atom("mg_infl")>;
using publish_atom = caf::atom_constant<caf::atom("mg_publish")>;
using sweep_atom = caf::atom_constant<caf::atom("mg_sweep")>;

/// How late probes start against their schedule: counts per bucket.
struct lateness_histogram {
  /// Upper bounds in ms; the last bucket takes everything above.
  static constexpr double bounds[] = {1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 5000};
  static constexpr size_t bucket_count = sizeof bounds / sizeof bounds[0] + 1;
  uint64_t counts[bucket_count] = {};
  double max_ms = 0;

  void add(double ms) {
    size_t i = 0;
    while (i < bucket_count - 1 && ms > bounds[i])
      ++i;
    ++counts[i];
    if (ms > max_ms)
      max_ms = ms;
  }

  /// The bucket bound under which `q` (0..1) of the samples fall.
  double quantile(double q) const {
    uint64_t total = 0;
    for (auto c : counts)
      total += c;
    if (total == 0)
      return 0;
    auto want = static_cast<uint64_t>(q * static_cast<double>(total) + 0.999999);
    uint64_t seen = 0;
    for (size_t i = 0; i < bucket_count; ++i) {
      seen += counts[i];
      if (seen >= want)
        return i < bucket_count - 1 ? bounds[i] : max_ms;
    }
    return max_ms;
  }
};

/// Counters of applied probe results since start.
struct health_stats {
  uint64_t checks_total = 0;
  uint64_t failures_total = 0;
  uint64_t deregistrations_total = 0; // by the health policy
  uint64_t manual_deregistrations = 0;
  uint64_t active_healthy = 0;
  uint64_t active_unhealthy = 0;
  uint64_t active_unknown = 0;
  lateness_histogram lateness; // of scheduled probes
};

/// Whoever wants to hear of every change to a record (the supervisor, later
/// the router): registration, reactivation, deregistration, status change.
using registry_listener = caf::typed_actor<caf::reacts_to<changed_atom, server_record>>;

// -- registry ------------------------------------------------------------------

using registry_actor = caf::typed_actor<
  // A new server (reply.created) or the reactivation of an inactive one with
  // the same URL; conflict when the URL is active.
  caf::replies_to<register_atom, registration>::with<register_reply>,
  // One record by id, active or not; not_found otherwise.
  caf::replies_to<get_atom, std::string>::with<server_record>,
  // Records passing the filter, oldest registration first.
  caf::replies_to<list_atom, list_filter>::with<std::vector<server_record>>,
  // Soft delete with a reason ("manual", "health_check"); an inactive server
  // is returned unchanged.
  caf::replies_to<deregister_atom, std::string, std::string>::with<server_record>,
  // Back to active with a clean health state; an active one is unchanged.
  caf::replies_to<reactivate_atom, std::string>::with<server_record>,
  // Transition events of one server, oldest first.
  caf::replies_to<events_atom, std::string>::with<std::vector<server_event>>,
  // Internal: the registry sends this to itself to commit what has gathered.
  caf::reacts_to<commit_atom>,
  // Internal: the delayed commit of gathered probe results.
  caf::reacts_to<health_flush_atom>,
  // Internal: the delayed commit of routine probe timings.
  caf::reacts_to<timing_flush_atom>,
  // Commits everything pending now; replies true once durable.
  caf::replies_to<flush_atom>::with<bool>,
  // Scheduled probes' outcomes, a batch from the I/O thread (with the
  // refused reconnects between probes); stale ones (another generation, or
  // an inactive server) are dropped.
  caf::reacts_to<probed_atom, std::vector<probe_report>>,
  // An on-demand probe's outcome; replies with the record once durable.
  caf::replies_to<checked_atom, std::string, uint64_t, probe_outcome>::with<server_record>,
  // A failure the gateway saw: unhealthy at once, not counted toward removal.
  caf::reacts_to<passive_atom, std::string, uint64_t, std::string, std::string>,
  // Adds a listener; it hears of every change from now on.
  caf::reacts_to<subscribe_atom, registry_listener>,
  // Probe counters and current status counts.
  caf::replies_to<stats_atom>::with<health_stats>>;

// -- health checking -------------------------------------------------------------

/// One prober per active server: ticks and starts probes, whose outcomes go
/// from the I/O thread to the registry.
using prober_actor = caf::typed_actor<
  // A scheduled tick; ticks of an older schedule (other number) are ignored.
  caf::reacts_to<tick_atom, uint64_t>>;

/// The answer of `POST /v1/servers/{id}/check`.
struct check_reply {
  probe_outcome outcome;
  server_record record;
};

/// `GET /v1/health-checker`.
struct checker_status {
  bool running = false;
  health_config config;
  uint64_t probers = 0;
  health_stats stats;
};

/// Spawns, watches and pauses the probers; runs on-demand checks.
using supervisor_actor = caf::typed_actor<
  caf::reacts_to<changed_atom, server_record>,
  caf::replies_to<check_atom, std::string>::with<check_reply>,
  caf::reacts_to<check_done_atom, uint64_t, probe_outcome>,
  caf::replies_to<status_atom>::with<checker_status>,
  caf::replies_to<start_atom>::with<checker_status>,
  caf::replies_to<stop_atom>::with<checker_status>,
  // Stops every prober and replies once they are all gone.
  caf::replies_to<shutdown_atom>::with<bool>,
  // The per-interval summary tick.
  caf::reacts_to<summary_atom>,
  // The prober of a server, for tests (an invalid handle when none runs).
  caf::replies_to<prober_of_atom, std::string>::with<caf::actor>>;

// -- HTTP facade -----------------------------------------------------------------

/// One HTTP request handed from an asio thread to the admin API actor.
struct http_job {
  std::shared_ptr<http_exchange> exchange;
};

/// `sweep_atom` is internal: the actor sends it to itself to time out the
/// requests it waits on.
using admin_api_actor = caf::typed_actor<caf::reacts_to<http_job>, caf::reacts_to<sweep_atom>>;

// -- gateway -------------------------------------------------------------------

/// Where the router sends one try of a gateway request.
struct route_target {
  std::string server_id;
  std::string url;
  std::optional<std::string> api_key;
  uint64_t generation = 0;
};

/// How one try of a gateway request ended, as the router needs to know.
enum class route_outcome : uint8_t {
  success,         // the upstream answered (any status but a retried 502/503)
  connect_failed,  // could not connect: retried, and the server marked unhealthy
  unavailable,     // 502/503 before any byte reached the client: same
  timeout,         // no response headers in time, or the stream stalled
  failed,          // anything else (the upstream broke mid-response, ...)
  client_gone,     // the client disconnected first
};

/// Requests in flight by server id.
using inflight_counts = std::map<std::string, int64_t>;

/// Picks servers for gateway requests and counts their requests in flight.
using router_actor = caf::typed_actor<
  caf::reacts_to<changed_atom, server_record>,
  // A server for `model`, never one of `exclude` (servers already tried):
  // model_not_found when no active server serves it, unavailable when none
  // is routable. Counts one request in flight on the server picked.
  caf::replies_to<pick_atom, std::string, std::vector<std::string>>::with<route_target>,
  // The end of a try on a server: one in flight less; a connect failure or a
  // 502/503 marks the server unhealthy at once (through the registry).
  caf::reacts_to<done_atom, route_target, route_outcome, std::string>,
  // In-flight counts by server id (tests, metrics).
  caf::replies_to<inflight_atom>::with<inflight_counts>,
  // Internal: publish the routing table once the changes in the mailbox are in.
  caf::reacts_to<publish_atom>>;

} // namespace mg

// Local-only messages: modelgate's actors live in one process, so these types
// travel between actors by reference-counted copy and are never serialized.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::registration)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::server_record)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::register_reply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::list_filter)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mg::server_record>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mg::server_event>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::http_job)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::probe_outcome)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mg::probe_report>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::health_stats)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::check_reply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::checker_status)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::route_target)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::route_outcome)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::inflight_counts)
