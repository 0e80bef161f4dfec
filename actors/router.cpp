#include "actors/router.hpp"

#include <algorithm>
#include <unordered_map>

#include <caf/all.hpp>

#include "protocol/errors.hpp"
#include "protocol/log.hpp"

namespace mg {

namespace {

struct router_state {
  router_options options;
  std::unordered_map<std::string, slot_ptr> slots; // active servers
  std::unordered_map<std::string, std::shared_ptr<std::atomic<uint64_t>>> round_robin;
  bool publish_scheduled = false;
  static inline const char* name = "modelgate.router";
};

using router_self = router_actor::stateful_pointer<router_state>;

void schedule_publish(router_self self) {
  if (!self->state.publish_scheduled) {
    self->state.publish_scheduled = true;
    self->send(self, publish_atom::value);
  }
}

void publish(router_self self) {
  auto& st = self->state;
  st.publish_scheduled = false;
  auto snap = std::make_shared<route_snapshot>();
  for (const auto& kv : st.slots)
    for (const auto& model : kv.second->models)
      snap->by_model[model].push_back(kv.second);
  for (auto& kv : snap->by_model) {
    std::sort(kv.second.begin(), kv.second.end(), [](const slot_ptr& a, const slot_ptr& b) {
      return a->target.server_id < b->target.server_id;
    });
    auto& rr = st.round_robin[kv.first];
    if (!rr)
      rr = std::make_shared<std::atomic<uint64_t>>(0);
    snap->round_robin[kv.first] = rr;
  }
  st.options.table->publish(std::move(snap));
}

void on_changed(router_self self, const server_record& rec) {
  auto& st = self->state;
  auto it = st.slots.find(rec.id);
  if (!rec.is_active) {
    if (it != st.slots.end()) {
      st.slots.erase(it);
      schedule_publish(self);
    }
    return;
  }
  if (it != st.slots.end() && it->second->target.generation == rec.generation
      && it->second->target.url == rec.url && it->second->target.api_key == rec.api_key
      && it->second->models == rec.models) {
    // Only the status moved: readers see it at once, no new snapshot needed.
    it->second->status.store(static_cast<int>(rec.status), std::memory_order_relaxed);
    return;
  }
  auto slot = std::make_shared<route_slot>();
  slot->target = route_target{rec.id, rec.url, rec.api_key, rec.generation};
  slot->models = rec.models;
  slot->status.store(static_cast<int>(rec.status), std::memory_order_relaxed);
  if (it != st.slots.end()) // requests on the old slot release it, not this one
    it->second = std::move(slot);
  else
    st.slots.emplace(rec.id, std::move(slot));
  schedule_publish(self);
}

} // namespace

router_actor spawn_router(caf::actor_system& sys, router_options options) {
  return sys.spawn([options](router_self self) -> router_actor::behavior_type {
    self->state.options = options;
    self->send(options.registry, subscribe_atom::value, caf::actor_cast<registry_listener>(self));
    self->request(options.registry, options.request_timeout, list_atom::value, list_filter{})
      .then(
        [=](std::vector<server_record>& records) {
          for (const auto& r : records)
            on_changed(self, r);
        },
        [=](caf::error& err) {
          log(log_level::error, "router could not load the servers",
              {{"error", to_api_error(err).message}});
        });
    return {
      [=](changed_atom, server_record& rec) { on_changed(self, rec); },
      [=](publish_atom) {
        if (self->state.publish_scheduled)
          publish(self);
      },
      [=](pick_atom, const std::string& model,
          const std::vector<std::string>& exclude) -> caf::result<route_target> {
        if (self->state.publish_scheduled)
          publish(self); // pick from what this actor knows now
        auto picked = self->state.options.table->pick(model, exclude);
        if (auto err = std::get_if<api_error>(&picked))
          return make_error(err->code, err->message);
        return std::get<slot_ptr>(picked)->target;
      },
      [=](done_atom, const route_target& target, route_outcome outcome, const std::string& error) {
        auto& st = self->state;
        auto it = st.slots.find(target.server_id);
        if (it == st.slots.end() || it->second->target.generation != target.generation)
          return; // gone or replaced: nobody routes by that count any more
        route_table::release(it->second);
        if (outcome == route_outcome::connect_failed || outcome == route_outcome::unavailable) {
          it->second->status.store(static_cast<int>(server_status::unhealthy));
          self->send(st.options.registry, passive_atom::value, target.server_id,
                     target.generation, error,
                     std::string{outcome == route_outcome::connect_failed ? "connect"
                                                                          : "http_status"});
        }
      },
      [=](inflight_atom) {
        inflight_counts result;
        for (const auto& kv : self->state.slots)
          result[kv.first] = kv.second->in_flight.load();
        return result;
      },
    };
  });
}

} // namespace mg
