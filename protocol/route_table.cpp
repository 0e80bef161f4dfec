#include "protocol/route_table.hpp"

#include <algorithm>

namespace mg {

route_table::route_table() : current_(std::make_shared<const route_snapshot>()) {
}

void route_table::publish(std::shared_ptr<const route_snapshot> next) {
  std::atomic_store(&current_, std::move(next));
}

std::shared_ptr<const route_snapshot> route_table::snapshot() const {
  return std::atomic_load(&current_);
}

std::variant<slot_ptr, api_error> route_table::pick(const std::string& model,
                                                    const std::vector<std::string>& exclude) const {
  auto snap = snapshot();
  auto it = snap->by_model.find(model);
  if (it == snap->by_model.end() || it->second.empty())
    return api_error{errc::model_not_found, "no active server serves model " + model};
  // Two passes over a short list: healthy ones, else unknown ones.
  for (auto wanted : {server_status::healthy, server_status::unknown}) {
    int64_t fewest = INT64_MAX;
    size_t ties = 0;
    for (const auto& slot : it->second) {
      if (slot->current_status() != wanted
          || std::find(exclude.begin(), exclude.end(), slot->target.server_id) != exclude.end())
        continue;
      auto n = slot->in_flight.load(std::memory_order_relaxed);
      if (n < fewest) {
        fewest = n;
        ties = 1;
      } else if (n == fewest) {
        ++ties;
      }
    }
    if (ties == 0)
      continue;
    auto rr = snap->round_robin.at(model)->fetch_add(1, std::memory_order_relaxed);
    size_t nth = rr % ties;
    for (const auto& slot : it->second) {
      if (slot->current_status() != wanted
          || std::find(exclude.begin(), exclude.end(), slot->target.server_id) != exclude.end()
          || slot->in_flight.load(std::memory_order_relaxed) != fewest)
        continue;
      if (nth-- == 0) {
        slot->in_flight.fetch_add(1, std::memory_order_relaxed);
        return slot;
      }
    }
    // Counts moved under us between the passes: take the first routable one.
    for (const auto& slot : it->second)
      if (slot->current_status() == wanted
          && std::find(exclude.begin(), exclude.end(), slot->target.server_id) == exclude.end()) {
        slot->in_flight.fetch_add(1, std::memory_order_relaxed);
        return slot;
      }
  }
  return api_error{errc::unavailable, exclude.empty()
                                        ? "no routable server for model " + model + " (all unhealthy)"
                                        : "no other routable server for model " + model};
}

void route_table::release(const slot_ptr& slot) {
  slot->in_flight.fetch_sub(1, std::memory_order_relaxed);
}

} // namespace mg
