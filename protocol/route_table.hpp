// The routing table of the gateway, shared between the router actor (its one
// writer) and the HTTP I/O threads (its readers), so that a gateway request
// is routed on the thread that read it, without a round trip to an actor.
//
// The router publishes immutable snapshots (model -> servers); readers take
// the current one with an atomic load. What changes per request lives in
// atomics inside each server's slot: its status (the gateway may mark it
// unhealthy at once) and its requests in flight (exact: every pick is
// matched by one `release`). A slot lives as long as a request or a snapshot
// holds it, so a server deregistered mid-request still gets its `release`.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "protocol/errors.hpp"
#include "protocol/registry_interface.hpp"

namespace mg {

/// One active server as the gateway sees it.
struct route_slot {
  route_target target;             // immutable once published
  std::vector<std::string> models; // immutable once published
  std::atomic<int> status{static_cast<int>(server_status::unknown)};
  std::atomic<int64_t> in_flight{0};

  server_status current_status() const {
    return static_cast<server_status>(status.load(std::memory_order_relaxed));
  }
};

using slot_ptr = std::shared_ptr<route_slot>;

struct route_snapshot {
  /// Servers by model, sorted by id (a stable order for round robin).
  std::unordered_map<std::string, std::vector<slot_ptr>> by_model;
  /// Round-robin counters by model, carried over from snapshot to snapshot.
  std::unordered_map<std::string, std::shared_ptr<std::atomic<uint64_t>>> round_robin;
};

class route_table {
public:
  route_table();

  /// The router actor only.
  void publish(std::shared_ptr<const route_snapshot> next);

  /// Any thread.
  std::shared_ptr<const route_snapshot> snapshot() const;

  /// Picks by the contract's rule — healthy first, `unknown` only when none
  /// is healthy, `unhealthy` never; the fewest in flight, ties by round robin
  /// — skipping `exclude`, and counts one request in flight on the slot.
  /// model_not_found when no active server serves `model`, unavailable when
  /// none is routable. Any thread.
  std::variant<slot_ptr, api_error> pick(const std::string& model,
                                         const std::vector<std::string>& exclude) const;

  /// One request in flight less on `slot`. Any thread.
  static void release(const slot_ptr& slot);

private:
  std::shared_ptr<const route_snapshot> current_;
};

} // namespace mg
