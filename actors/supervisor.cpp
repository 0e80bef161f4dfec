#include "actors/supervisor.hpp"

#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>

#include "protocol/errors.hpp"
#include "protocol/log.hpp"

namespace mg {

std::chrono::milliseconds seconds_to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
}

namespace {

using prober_map = std::unordered_map<std::string, prober_actor>;

struct pending_check {
  caf::typed_response_promise<check_reply> promise;
  std::string server_id;
  uint64_t generation = 0;
  std::shared_ptr<probe_driver> driver; // alive until the probe is done
};

/// What the supervisor keeps of an active server: what its prober needs.
/// Not the whole record: these sit in memory beside the probers and their
/// clients, which are touched every interval, and every byte of them there
/// spreads that memory over more pages (see prober.hpp).
struct probed_server {
  probe_target target;
  uint64_t generation = 0;
};

struct supervisor_state {
  supervisor_options options;
  bool running = true;
  std::unordered_map<std::string, probed_server> servers; // active ones
  // Shared with the termination functor, which stops the probers when the
  // supervisor itself goes away.
  std::shared_ptr<prober_map> probers = std::make_shared<prober_map>();
  std::unordered_map<caf::actor_addr, std::string> prober_ids;
  std::unordered_set<caf::actor_addr> stopping; // stopped on purpose, down not yet seen
  std::vector<caf::typed_response_promise<bool>> shutdown_waiters;
  std::unordered_map<uint64_t, pending_check> checks;
  uint64_t check_number = 0;
  uint64_t seed_counter = 0;
  health_stats last_summary;
  static inline const char* name = "modelgate.supervisor";
};

using supervisor_self = supervisor_actor::stateful_pointer<supervisor_state>;

probe_target target_of(const server_record& rec) {
  return probe_target{rec.id, rec.url, rec.health_path, rec.expect, rec.api_key};
}

bool same_target(const probed_server& a, const server_record& b) {
  return a.target.url == b.url && a.target.health_path == b.health_path
         && a.target.expect == b.expect && a.target.api_key == b.api_key
         && a.generation == b.generation;
}

void spawn_prober(supervisor_self self, const probed_server& server) {
  auto& st = self->state;
  prober_options po;
  po.target = server.target;
  po.generation = server.generation;
  po.interval = seconds_to_ms(st.options.health.interval_seconds);
  po.timeout = seconds_to_ms(st.options.health.timeout_seconds);
  po.driver = st.options.make_driver(po.target);
  po.clock = st.options.clock;
  po.schedule = st.options.schedule;
  po.seed = st.options.seed != 0 ? st.options.seed + (++st.seed_counter) : 0;
  auto prober = self->spawn<caf::monitored>(prober_impl, std::move(po));
  (*st.probers)[server.target.server_id] = prober;
  st.prober_ids[prober.address()] = server.target.server_id;
}

void stop_prober(supervisor_self self, const std::string& id) {
  auto& st = self->state;
  auto it = st.probers->find(id);
  if (it == st.probers->end())
    return;
  auto addr = it->second.address();
  st.prober_ids.erase(addr);
  st.stopping.insert(addr);
  self->send_exit(it->second, caf::exit_reason::user_shutdown);
  st.probers->erase(it);
}

void stop_all_probers(supervisor_self self) {
  std::vector<std::string> ids;
  for (const auto& kv : *self->state.probers)
    ids.push_back(kv.first);
  for (const auto& id : ids)
    stop_prober(self, id);
}

void deliver_shutdown_if_done(supervisor_self self) {
  auto& st = self->state;
  if (!st.probers->empty() || !st.stopping.empty())
    return;
  for (auto& w : st.shutdown_waiters)
    w.deliver(true);
  st.shutdown_waiters.clear();
}

void on_changed(supervisor_self self, const server_record& rec) {
  auto& st = self->state;
  if (!rec.is_active) {
    st.servers.erase(rec.id);
    stop_prober(self, rec.id);
    return;
  }
  auto it = st.servers.find(rec.id);
  bool replace = it == st.servers.end() || !same_target(it->second, rec);
  if (replace)
    it = st.servers.insert_or_assign(rec.id, probed_server{target_of(rec), rec.generation}).first;
  if (!st.running)
    return;
  if (replace || st.probers->count(rec.id) == 0) {
    stop_prober(self, rec.id);
    spawn_prober(self, it->second);
  }
}

void log_started(supervisor_self self) {
  const auto& h = self->state.options.health;
  log(log_level::info, "health checker started",
      {{"interval_seconds", h.interval_seconds},
       {"timeout_seconds", h.timeout_seconds},
       {"max_failures", h.max_failures},
       {"auto_deregister", h.auto_deregister},
       {"servers", self->state.servers.size()}});
}

/// Replies a checker_status once the registry's counters are in.
caf::typed_response_promise<checker_status> reply_status(supervisor_self self) {
  auto rp = self->make_response_promise<checker_status>();
  auto& st = self->state;
  checker_status status;
  status.running = st.running;
  status.config = st.options.health;
  status.probers = st.probers->size();
  self->request(st.options.registry, st.options.request_timeout, stats_atom::value)
    .then(
      [rp, status](health_stats& stats) mutable {
        status.stats = stats;
        rp.deliver(status);
      },
      [rp](caf::error& err) mutable { rp.deliver(err); });
  return rp;
}

void schedule_summary(supervisor_self self) {
  auto interval = std::max(seconds_to_ms(self->state.options.health.interval_seconds),
                           std::chrono::milliseconds(1000));
  self->delayed_send(self, interval, summary_atom::value);
}

supervisor_actor::behavior_type supervisor_impl(supervisor_self self, supervisor_options options) {
  self->state.options = std::move(options);
  auto probers = self->state.probers;
  self->attach_functor([probers](const caf::error&) {
    for (const auto& kv : *probers)
      caf::anon_send_exit(kv.second, caf::exit_reason::user_shutdown);
  });
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.stopping.erase(dm.source) > 0)
      return deliver_shutdown_if_done(self);
    auto it = st.prober_ids.find(dm.source);
    if (it == st.prober_ids.end())
      return;
    auto id = it->second;
    st.prober_ids.erase(it);
    st.probers->erase(id);
    auto server = st.servers.find(id);
    if (server == st.servers.end() || !st.running)
      return deliver_shutdown_if_done(self);
    log(log_level::warning, "prober died; respawning",
        {{"server_id", id}, {"url", server->second.target.url}, {"reason", to_string(dm.reason)}});
    spawn_prober(self, server->second);
  });
  auto& st = self->state;
  self->send(st.options.registry, subscribe_atom::value,
             caf::actor_cast<registry_listener>(self));
  self->request(st.options.registry, st.options.request_timeout, list_atom::value, list_filter{})
    .then(
      [=](std::vector<server_record>& records) {
        for (const auto& rec : records)
          on_changed(self, rec);
        log_started(self);
      },
      [=](caf::error& err) {
        log(log_level::error, "health checker could not load the servers",
            {{"error", to_api_error(err).message}});
      });
  if (st.options.summary_log)
    schedule_summary(self);
  return {
    [=](changed_atom, server_record& rec) { on_changed(self, rec); },
    [=](check_atom, const std::string& id) -> caf::result<check_reply> {
      auto rp = self->make_response_promise<check_reply>();
      auto& st = self->state;
      self->request(st.options.registry, st.options.request_timeout, get_atom::value, id)
        .then(
          [=](server_record& rec) mutable {
            if (!rec.is_active) {
              rp.deliver(make_error(errc::conflict, "server " + rec.id
                                                      + " is inactive; reactivate it first"));
              return;
            }
            auto& st = self->state;
            auto number = ++st.check_number;
            auto driver = st.options.make_driver(target_of(rec));
            st.checks[number] = pending_check{rp, rec.id, rec.generation, driver};
            caf::actor_addr weak = self->address();
            driver->probe(seconds_to_ms(st.options.health.timeout_seconds),
                          [weak, number](probe_outcome outcome) {
                            if (auto strong = caf::actor_cast<supervisor_actor>(weak))
                              caf::anon_send(strong, check_done_atom::value, number,
                                             std::move(outcome));
                          });
          },
          [=](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
    [=](check_done_atom, uint64_t number, probe_outcome& outcome) {
      auto& st = self->state;
      auto it = st.checks.find(number);
      if (it == st.checks.end())
        return;
      auto check = std::move(it->second);
      st.checks.erase(it);
      auto rp = check.promise;
      self->request(st.options.registry, st.options.request_timeout, checked_atom::value,
                    check.server_id, check.generation, outcome)
        .then([rp, outcome](server_record& rec) mutable { rp.deliver(check_reply{outcome, rec}); },
              [rp](caf::error& err) mutable { rp.deliver(err); });
    },
    [=](status_atom) { return reply_status(self); },
    [=](start_atom) {
      auto& st = self->state;
      if (!st.running) {
        st.running = true;
        for (const auto& kv : st.servers)
          if (st.probers->count(kv.first) == 0)
            spawn_prober(self, kv.second);
        log_started(self);
      }
      return reply_status(self);
    },
    [=](stop_atom) {
      auto& st = self->state;
      if (st.running) {
        st.running = false;
        stop_all_probers(self);
        log(log_level::info, "health checker stopped", {{"servers", st.servers.size()}});
      }
      return reply_status(self);
    },
    [=](shutdown_atom) -> caf::result<bool> {
      auto& st = self->state;
      st.running = false;
      stop_all_probers(self);
      auto rp = self->make_response_promise<bool>();
      st.shutdown_waiters.push_back(rp);
      deliver_shutdown_if_done(self);
      return rp;
    },
    [=](summary_atom) {
      auto& st = self->state;
      if (!st.options.summary_log)
        return;
      schedule_summary(self);
      self->request(st.options.registry, st.options.request_timeout, stats_atom::value)
        .then([=](health_stats& now) {
          auto& st = self->state;
          auto last = st.last_summary;
          st.last_summary = now;
          if (!st.running && now.checks_total == last.checks_total)
            return;
          auto probed = now.checks_total - last.checks_total;
          auto failed = now.failures_total - last.failures_total;
          log(log_level::info, "health check interval complete",
              {{"probed", probed},
               {"healthy", probed - failed},
               {"unhealthy", failed},
               {"deregistered", now.deregistrations_total - last.deregistrations_total},
               {"servers_healthy", now.active_healthy},
               {"servers_unhealthy", now.active_unhealthy},
               {"servers_unknown", now.active_unknown}});
        },
        [](caf::error&) {}); // a busy registry costs one summary line, nothing more
    },
    [=](prober_of_atom, const std::string& id) {
      auto it = self->state.probers->find(id);
      return it == self->state.probers->end() ? caf::actor{}
                                              : caf::actor_cast<caf::actor>(it->second);
    },
  };
}

} // namespace

supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_options options) {
  return sys.spawn(supervisor_impl, std::move(options));
}

} // namespace mg
