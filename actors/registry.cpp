#include "actors/registry.hpp"

#include <algorithm>
#include <cstdio>
#include <chrono>
#include <functional>
#include <random>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>

#include "actors/health_policy.hpp"
#include "protocol/errors.hpp"
#include "protocol/log.hpp"

namespace mg {

namespace {

/// Called once the commit holding a change has succeeded (empty error) or failed.
using commit_waiter = std::function<void(const caf::error&)>;

struct registry_state {
  std::shared_ptr<server_store> store;
  wall_clock clock;
  std::mt19937_64 rng;
  std::unordered_map<std::string, server_record> servers;
  std::unordered_map<std::string, std::string> id_by_url;
  // Uncommitted changes, each record once in its latest form: whole records
  // (registrations, deregistrations...) commit at once and durably; changes
  // of health fields alone (probe results) gather for up to a second and
  // commit without fsync, so 10,000 results a second cost a few commits.
  // Ids and pointers only: the commit writes each record as it is in memory
  // by then (records are never erased from `servers`, so the pointers stay
  // valid; a reload clears these first). Health changes are a vector, not a
  // set: one push per probe result, duplicates dropped at commit.
  std::unordered_set<std::string> pending_full;
  std::vector<const server_record*> pending_health;
  // Routine successes (a healthy server still healthy) change nothing but
  // last_check_at and last_response_time_ms: those gather for up to 10 s.
  // At 10,000 servers they were most of the registry's SQLite work, and a
  // restart loses at most 10 s of timings, which the next probe renews.
  std::vector<const server_record*> pending_timing;
  std::vector<server_event> pending_events;
  std::vector<server_record*> batch_lookups; // scratch of the probed_atom handler
  std::vector<commit_waiter> waiters;
  bool commit_scheduled = false;        // a commit_atom is on its way
  bool health_flush_scheduled = false;  // a delayed health_flush_atom is
  bool timing_flush_scheduled = false;  // a delayed timing_flush_atom is
  std::chrono::milliseconds health_flush_delay{1000};
  std::chrono::milliseconds timing_flush_delay{10'000};
  health_config health;
  health_stats stats; // checks, failures, deregistrations since start
  std::vector<registry_listener> listeners;
  std::shared_ptr<metrics> stats_sink;

  static inline const char* name = "modelgate.registry";
};

using registry_self = registry_actor::stateful_pointer<registry_state>;

nlohmann::json server_fields(const server_record& r) {
  return {{"server_id", r.id}, {"url", r.url}};
}

void load(registry_state& st) {
  st.pending_timing.clear(); // points into the records about to go
  st.servers.clear();
  st.id_by_url.clear();
  for (auto& r : st.store->load_all()) {
    st.id_by_url[r.url] = r.id;
    auto id = r.id;
    st.servers.emplace(std::move(id), std::move(r));
  }
}

std::string new_id(registry_state& st) {
  for (;;) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "srv_%012llx",
                  static_cast<unsigned long long>(st.rng() & 0xffffffffffffULL));
    if (st.servers.count(buf) == 0)
      return buf;
  }
}

/// What a staged change touches.
enum class change_kind { whole_record, health_only, timing_only };

/// Records a changed record and its event for the next commit, and tells
/// the listeners when something they act on changed (activity, status,
/// settings): a routine probe result that changes only timings does not.
void stage(registry_self self, const server_record& rec, std::optional<server_event> ev,
           bool notify = true, change_kind kind = change_kind::whole_record) {
  auto& st = self->state;
  if (notify)
    for (const auto& l : st.listeners)
      self->send(l, changed_atom::value, rec);
  if (kind == change_kind::whole_record)
    st.pending_full.insert(rec.id); // covers any pending health change too
  else if (kind == change_kind::health_only)
    st.pending_health.push_back(&rec);
  else
    st.pending_timing.push_back(&rec);
  if (ev)
    st.pending_events.push_back(std::move(*ev));
  if (kind == change_kind::whole_record) {
    if (!st.commit_scheduled) {
      st.commit_scheduled = true;
      self->send(self, commit_atom::value);
    }
  } else if (kind == change_kind::health_only) {
    if (!st.health_flush_scheduled) {
      st.health_flush_scheduled = true;
      self->delayed_send(self, st.health_flush_delay, health_flush_atom::value);
    }
  } else if (!st.timing_flush_scheduled) {
    st.timing_flush_scheduled = true;
    self->delayed_send(self, st.timing_flush_delay, timing_flush_atom::value);
  }
}

/// Commits everything staged (routine timings only `with_timing`); on
/// failure, memory is reloaded from disk so that it never shows a change
/// that is not durable.
caf::error commit_now(registry_self self, bool with_timing = false) {
  auto& st = self->state;
  st.commit_scheduled = false;
  if (with_timing) {
    st.pending_health.insert(st.pending_health.end(), st.pending_timing.begin(),
                             st.pending_timing.end());
    st.pending_timing.clear();
  }
  caf::error result;
  if (!st.pending_full.empty() || !st.pending_health.empty() || !st.pending_events.empty()) {
    write_batch batch;
    batch.records.reserve(st.pending_full.size());
    for (const auto& id : st.pending_full)
      batch.records.push_back(st.servers.at(id));
    auto& health = st.pending_health;
    std::sort(health.begin(), health.end());
    health.erase(std::unique(health.begin(), health.end()), health.end());
    batch.health.reserve(health.size());
    for (const auto* rec : health)
      if (st.pending_full.count(rec->id) == 0)
        batch.health.push_back(rec);
    batch.events = std::move(st.pending_events);
    auto level = batch.records.empty() ? durability::normal : durability::full;
    st.pending_full.clear();
    st.pending_health.clear();
    st.pending_events.clear();
    try {
      st.store->commit(batch, level);
    } catch (const std::exception& e) {
      log(log_level::error, "registry commit failed; changes rolled back",
          {{"error", e.what()}, {"changes", batch.records.size() + batch.health.size()}});
      result = make_error(errc::internal, "storage failure: the change was not saved");
      try {
        load(st);
      } catch (const std::exception& e2) {
        log(log_level::error, "registry reload failed", {{"error", e2.what()}});
      }
    }
  }
  auto waiters = std::move(st.waiters);
  st.waiters.clear();
  for (auto& w : waiters)
    w(result);
  return result;
}

/// Replies `value` through `rp` once the pending commit is done.
template <class T>
void reply_after_commit(registry_self self, caf::typed_response_promise<T> rp, T value) {
  self->state.waiters.emplace_back([rp, value = std::move(value)](const caf::error& err) mutable {
    if (err)
      rp.deliver(err);
    else
      rp.deliver(std::move(value));
  });
}

caf::error unknown_server(const std::string& id) {
  return make_error(errc::not_found, "no server with id " + id);
}

/// The fields a registration sets, on a new or a reactivated record.
void apply_registration(server_record& rec, registration&& reg) {
  rec.url = std::move(reg.url);
  rec.name = std::move(reg.name);
  rec.models = std::move(reg.models);
  rec.metadata = std::move(reg.metadata);
  rec.health_path = std::move(reg.health_path);
  rec.expect = reg.expect;
  rec.api_key = std::move(reg.api_key);
}

/// Back to active with a clean health state.
void reset_to_active(server_record& rec, epoch_ms now) {
  rec.is_active = true;
  rec.status = server_status::unknown;
  rec.consecutive_failures = 0;
  rec.early_failure_pending = false;
  rec.last_check_at.reset();
  rec.last_response_time_ms.reset();
  rec.last_error.reset();
  rec.last_error_kind.reset();
  rec.deregistered_at.reset();
  rec.deregistered_reason.reset();
  rec.updated_at = now;
  ++rec.generation;
}

void stage_with_events(registry_self self, const server_record& rec,
                       std::vector<server_event> events, bool routine = false) {
  // A status change without deregistration touches health fields only.
  auto kind = !rec.is_active ? change_kind::whole_record
              : routine      ? change_kind::timing_only
                             : change_kind::health_only;
  if (events.empty())
    return stage(self, rec, std::nullopt, false, kind);
  stage(self, rec, std::move(events.front()), true, kind);
  for (size_t i = 1; i < events.size(); ++i) // same record: one notification is enough
    self->state.pending_events.push_back(std::move(events[i]));
}

/// Applies one probe outcome to `rec` through the health policy; false when
/// dropped. `on_demand`: someone waits for the commit, so even a routine
/// result is written with it.
bool apply_outcome(registry_self self, server_record& rec, uint64_t generation,
                   const probe_outcome& outcome, bool on_demand = false) {
  auto& st = self->state;
  auto was = rec.status;
  auto failures_before = rec.consecutive_failures;
  auto result = apply_probe_in_place(rec, generation, outcome, st.health);
  if (result.transition == health_transition::dropped)
    return false;
  ++st.stats.checks_total;
  if (st.stats_sink && outcome.response_time_ms)
    st.stats_sink->health_check_duration.observe(*outcome.response_time_ms / 1000.0);
  if (!outcome.healthy)
    ++st.stats.failures_total;
  if (!outcome.healthy && log_enabled(log_level::warning)) {
    auto fields = server_fields(rec);
    fields["consecutive_failures"] = rec.consecutive_failures;
    fields["max_failures"] = st.health.max_failures;
    fields["error_kind"] = outcome.error_kind;
    fields["error"] = outcome.error;
    log(log_level::warning, "server is unhealthy", fields);
  } else if (outcome.healthy) {
    // A recovery is news to an operator; a routine success is debug detail.
    auto level = was == server_status::unhealthy ? log_level::info : log_level::debug;
    if (log_enabled(level)) {
      auto fields = server_fields(rec);
      if (outcome.response_time_ms)
        fields["response_time_ms"] = *outcome.response_time_ms;
      log(level, was == server_status::unhealthy ? "server recovered" : "server is healthy",
          fields);
    }
  }
  if (result.transition == health_transition::deregistered) {
    ++st.stats.deregistrations_total;
    auto fields = server_fields(rec);
    fields["consecutive_failures"] = rec.consecutive_failures;
    fields["reason"] = "health_check";
    log(log_level::error, "server failed too many consecutive health checks; auto-deregistered",
        fields);
  }
  bool routine = !on_demand && outcome.healthy && was == server_status::healthy && failures_before == 0
                 && result.transition == health_transition::unchanged;
  stage_with_events(self, rec, std::move(result.events), routine);
  return true;
}

registry_actor::behavior_type registry_impl(registry_self self, registry_options options) {
  auto& st = self->state;
  st.store = std::move(options.store);
  st.clock = options.clock ? std::move(options.clock) : wall_clock{now_ms};
  st.rng.seed(options.seed != 0 ? options.seed : std::random_device{}());
  st.health = options.health;
  st.stats_sink = std::move(options.stats_sink);
  load(st);
  log(log_level::info, "registry loaded",
      {{"servers", st.servers.size()},
       {"active", std::count_if(st.servers.begin(), st.servers.end(),
                                [](const auto& kv) { return kv.second.is_active; })}});
  return {
    [=](register_atom, registration& reg) -> caf::result<register_reply> {
      auto& st = self->state;
      auto now = st.clock();
      register_reply reply;
      if (auto it = st.id_by_url.find(reg.url); it != st.id_by_url.end()) {
        auto& rec = st.servers.at(it->second);
        if (rec.is_active)
          return make_error(errc::conflict,
                            "a server with url " + rec.url + " is already registered as " + rec.id);
        apply_registration(rec, std::move(reg));
        reset_to_active(rec, now);
        stage(self, rec, server_event{rec.id, now, "reactivated", "registered again"});
        log(log_level::info, "server re-registered and reactivated", server_fields(rec));
        reply = register_reply{rec, false};
      } else {
        server_record rec;
        rec.id = new_id(st);
        apply_registration(rec, std::move(reg));
        rec.registered_at = now;
        rec.updated_at = now;
        st.id_by_url[rec.url] = rec.id;
        auto& stored = st.servers.emplace(rec.id, std::move(rec)).first->second;
        stage(self, stored, server_event{stored.id, now, "registered", stored.url});
        log(log_level::info, "server registered", server_fields(stored));
        reply = register_reply{stored, true};
      }
      auto rp = self->make_response_promise<register_reply>();
      reply_after_commit(self, rp, std::move(reply));
      return rp;
    },
    [=](get_atom, const std::string& id) -> caf::result<server_record> {
      auto it = self->state.servers.find(id);
      if (it == self->state.servers.end())
        return unknown_server(id);
      return it->second;
    },
    [=](list_atom, const list_filter& filter) {
      std::vector<server_record> result;
      for (const auto& kv : self->state.servers)
        if (matches(kv.second, filter))
          result.push_back(kv.second);
      std::sort(result.begin(), result.end(), [](const auto& a, const auto& b) {
        return a.registered_at != b.registered_at ? a.registered_at < b.registered_at
                                                  : a.id < b.id;
      });
      return result;
    },
    [=](deregister_atom, const std::string& id,
        const std::string& reason) -> caf::result<server_record> {
      auto& st = self->state;
      auto it = st.servers.find(id);
      if (it == st.servers.end())
        return unknown_server(id);
      auto& rec = it->second;
      if (!rec.is_active)
        return rec;
      auto now = st.clock();
      rec.is_active = false;
      rec.deregistered_at = now;
      rec.deregistered_reason = reason;
      rec.updated_at = now;
      ++rec.generation;
      stage(self, rec, server_event{rec.id, now, "deregistered", reason});
      if (reason == "manual")
        ++st.stats.manual_deregistrations;
      auto fields = server_fields(rec);
      fields["reason"] = reason;
      log(log_level::info, "server deregistered", fields);
      auto rp = self->make_response_promise<server_record>();
      reply_after_commit(self, rp, rec);
      return rp;
    },
    [=](reactivate_atom, const std::string& id) -> caf::result<server_record> {
      auto& st = self->state;
      auto it = st.servers.find(id);
      if (it == st.servers.end())
        return unknown_server(id);
      auto& rec = it->second;
      if (rec.is_active)
        return rec;
      auto now = st.clock();
      reset_to_active(rec, now);
      stage(self, rec, server_event{rec.id, now, "reactivated", std::nullopt});
      log(log_level::info, "server reactivated", server_fields(rec));
      auto rp = self->make_response_promise<server_record>();
      reply_after_commit(self, rp, rec);
      return rp;
    },
    [=](events_atom, const std::string& id) -> caf::result<std::vector<server_event>> {
      if (self->state.servers.count(id) == 0)
        return unknown_server(id);
      if (auto err = commit_now(self))
        return err;
      try {
        return self->state.store->events(id);
      } catch (const std::exception& e) {
        log(log_level::error, "reading events failed", {{"server_id", id}, {"error", e.what()}});
        return make_error(errc::internal, "storage failure while reading events");
      }
    },
    [=](probed_atom, std::vector<probe_report>& reports) {
      // All lookups first, then all updates: the lookups are independent, so
      // their cache misses overlap instead of each stalling the next (at
      // 10,000 servers the lookup was half of the registry's time per probe).
      auto& st = self->state;
      auto& found = st.batch_lookups;
      found.clear();
      for (const auto& r : reports) {
        auto it = st.servers.find(r.server_id);
        found.push_back(it == st.servers.end() ? nullptr : &it->second);
      }
      for (size_t i = 0; i < reports.size(); ++i) {
        const auto& r = reports[i];
        if (found[i] != nullptr && apply_outcome(self, *found[i], r.generation, r.outcome)
            && !r.outcome.between_probes)
          st.stats.lateness.add(r.outcome.lateness_ms);
      }
    },
    [=](checked_atom, const std::string& id, uint64_t generation,
        probe_outcome& outcome) -> caf::result<server_record> {
      auto it = self->state.servers.find(id);
      if (it == self->state.servers.end())
        return unknown_server(id);
      if (!apply_outcome(self, it->second, generation, outcome, true))
        return it->second; // changed meanwhile: report the record as it is
      auto rp = self->make_response_promise<server_record>();
      reply_after_commit(self, rp, it->second);
      if (!self->state.commit_scheduled) { // someone waits: do not wait for the flush
        self->state.commit_scheduled = true;
        self->send(self, commit_atom::value);
      }
      return rp;
    },
    [=](passive_atom, const std::string& id, uint64_t generation, const std::string& error,
        const std::string& kind) {
      auto& st = self->state;
      auto it = st.servers.find(id);
      if (it == st.servers.end())
        return;
      auto result = apply_passive_failure(it->second, generation, error, kind, st.clock());
      if (result.transition == health_transition::dropped)
        return;
      it->second = std::move(result.record);
      auto fields = server_fields(it->second);
      fields["error_kind"] = kind;
      fields["error"] = error;
      log(log_level::warning, "server marked unhealthy by the gateway", fields);
      stage_with_events(self, it->second, std::move(result.events));
    },
    [=](subscribe_atom, registry_listener& listener) {
      self->state.listeners.push_back(std::move(listener));
    },
    [=](stats_atom) {
      auto stats = self->state.stats;
      for (const auto& kv : self->state.servers) {
        if (!kv.second.is_active)
          continue;
        switch (kv.second.status) {
          case server_status::healthy: ++stats.active_healthy; break;
          case server_status::unhealthy: ++stats.active_unhealthy; break;
          default: ++stats.active_unknown; break;
        }
      }
      return stats;
    },
    [=](commit_atom) {
      if (self->state.commit_scheduled)
        commit_now(self);
    },
    [=](health_flush_atom) {
      self->state.health_flush_scheduled = false;
      commit_now(self);
    },
    [=](timing_flush_atom) {
      self->state.timing_flush_scheduled = false;
      commit_now(self, true);
    },
    [=](flush_atom) -> caf::result<bool> {
      if (auto err = commit_now(self, true))
        return err;
      return true;
    },
  };
}

} // namespace

probe_report_sink report_sink_to(registry_actor registry) {
  return [registry = std::move(registry)](std::vector<probe_report> batch) {
    caf::anon_send(registry, probed_atom::value, std::move(batch));
  };
}

registry_actor spawn_registry(caf::actor_system& sys, registry_options options, bool detached) {
  if (detached)
    return sys.spawn<caf::detached>(registry_impl, std::move(options));
  return sys.spawn(registry_impl, std::move(options));
}

} // namespace mg
