#include "actors/router.hpp"

#include <algorithm>
#include <unordered_map>

#include <caf/all.hpp>

#include "protocol/errors.hpp"
#include "protocol/log.hpp"

namespace mg {

namespace {

struct candidate {
  route_target target;
  std::vector<std::string> models;
  server_status status = server_status::unknown;
  int64_t in_flight = 0;
};

struct router_state {
  router_options options;
  std::unordered_map<std::string, candidate> servers; // active ones
  // In-flight counts outlive a server's deregistration until its last done.
  std::unordered_map<std::string, int64_t> in_flight;
  std::unordered_map<std::string, uint64_t> round_robin; // by model
  static inline const char* name = "modelgate.router";
};

using router_self = router_actor::stateful_pointer<router_state>;

void on_changed(router_self self, const server_record& rec) {
  auto& st = self->state;
  if (!rec.is_active) {
    st.servers.erase(rec.id);
    return;
  }
  auto& c = st.servers[rec.id];
  c.target = route_target{rec.id, rec.url, rec.api_key, rec.generation};
  c.models = rec.models;
  c.status = rec.status;
}

caf::result<route_target> pick(router_self self, const std::string& model,
                               const std::vector<std::string>& exclude) {
  auto& st = self->state;
  std::vector<candidate*> healthy, unknown;
  bool served = false;
  for (auto& kv : st.servers) {
    auto& c = kv.second;
    if (std::find(c.models.begin(), c.models.end(), model) == c.models.end())
      continue;
    served = true;
    if (std::find(exclude.begin(), exclude.end(), kv.first) != exclude.end())
      continue;
    if (c.status == server_status::healthy)
      healthy.push_back(&c);
    else if (c.status == server_status::unknown)
      unknown.push_back(&c);
  }
  if (!served)
    return make_error(errc::model_not_found, "no active server serves model " + model);
  auto& pool = healthy.empty() ? unknown : healthy;
  if (pool.empty())
    return make_error(errc::unavailable, exclude.empty()
                                           ? "no routable server for model " + model
                                               + " (all unhealthy)"
                                           : "no other routable server for model " + model);
  // A stable order (by id), then the fewest in flight, ties by round robin.
  std::sort(pool.begin(), pool.end(),
            [](const candidate* a, const candidate* b) { return a->target.server_id < b->target.server_id; });
  int64_t fewest = pool.front()->in_flight;
  for (auto* c : pool)
    fewest = std::min(fewest, c->in_flight);
  std::vector<candidate*> least;
  for (auto* c : pool)
    if (c->in_flight == fewest)
      least.push_back(c);
  auto& rr = st.round_robin[model];
  auto* chosen = least[rr++ % least.size()];
  ++chosen->in_flight;
  ++st.in_flight[chosen->target.server_id];
  return chosen->target;
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
      [=](pick_atom, const std::string& model, const std::vector<std::string>& exclude) {
        return pick(self, model, exclude);
      },
      [=](done_atom, const route_target& target, route_outcome outcome, const std::string& error) {
        auto& st = self->state;
        auto it = st.in_flight.find(target.server_id);
        if (it != st.in_flight.end() && --it->second <= 0)
          st.in_flight.erase(it);
        auto server = st.servers.find(target.server_id);
        if (server != st.servers.end() && server->second.in_flight > 0)
          --server->second.in_flight;
        if (outcome == route_outcome::connect_failed || outcome == route_outcome::unavailable) {
          if (server != st.servers.end() && server->second.target.generation == target.generation)
            server->second.status = server_status::unhealthy; // before the registry's echo
          self->send(st.options.registry, passive_atom::value, target.server_id, target.generation,
                     error, std::string{outcome == route_outcome::connect_failed ? "connect"
                                                                                 : "http_status"});
        }
      },
      [=](inflight_atom) {
        inflight_counts result;
        for (const auto& kv : self->state.servers)
          result[kv.first] = kv.second.in_flight;
        for (const auto& kv : self->state.in_flight)
          result[kv.first] = kv.second;
        return result;
      },
    };
  });
}

} // namespace mg
