#include "actors/admin_api.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <optional>

#include <caf/all.hpp>

#include "protocol/admin_routes.hpp"
#include "protocol/errors.hpp"
#include "protocol/log.hpp"
#include "protocol/status_page.hpp"
#include "protocol/validation.hpp"

namespace mg {

namespace {

using exchange_ptr = std::shared_ptr<http_exchange>;
using steady_time = std::chrono::steady_clock::time_point;

struct admin_api_state {
  admin_api_options options;
  // The exchanges waiting on another actor's answer, by the time they give
  // up. CAF 0.17 never cancels a request's timeout when the answer comes:
  // after a burst of 10,000 registrations the clock thread and this actor's
  // thread woke 10,000 times, ten seconds later, for timeouts with nothing
  // left to do, at a cost of tens of microseconds each on a virtual machine.
  // So requests go out without a CAF timeout (caf::infinite) and this actor
  // times them out itself, with one sweep at the earliest deadline. An entry
  // is weak: an exchange that was answered is gone by the sweep and is
  // skipped, so a burst of answered requests costs one sweep, not one each.
  std::multimap<steady_time, std::weak_ptr<http_exchange>> deadlines;
  std::optional<steady_time> sweep_at; // a sweep_atom is on its way for then
  static inline const char* name = "modelgate.admin_api";
};

using admin_api_self = admin_api_actor::stateful_pointer<admin_api_state>;

void respond_json(const exchange_ptr& ex, int status, const nlohmann::json& body) {
  ex->respond({status, body.dump(), "application/json", {}});
}

void respond_error(const exchange_ptr& ex, const api_error& err,
                   std::vector<std::pair<std::string, std::string>> headers = {}) {
  ex->respond({http_status(err.code), error_body(err), "application/json", std::move(headers)});
}

void respond_caf_error(const exchange_ptr& ex, const caf::error& err) {
  respond_error(ex, to_api_error(err));
}

void arm_sweep(admin_api_self self, steady_time at) {
  auto& st = self->state;
  if (st.sweep_at && *st.sweep_at <= at)
    return; // one is on its way early enough
  st.sweep_at = at;
  auto wait = std::max(at - std::chrono::steady_clock::now(), steady_time::duration::zero());
  self->delayed_send(self, std::chrono::duration_cast<std::chrono::microseconds>(wait),
                     sweep_atom::value);
}

/// Answers every exchange whose deadline passed with the timeout error and
/// arms the next sweep for the earliest exchange still waiting.
void sweep(admin_api_self self) {
  auto& st = self->state;
  // The scheduler's clock delivers a delayed message up to 1 ms early, so a
  // deadline that close counts as passed: waiting the rest would only bring
  // the sweep back at once.
  auto horizon = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
  if (st.sweep_at && *st.sweep_at <= horizon)
    st.sweep_at.reset(); // this is that sweep (otherwise an earlier, superseded one)
  for (auto i = st.deadlines.begin(); i != st.deadlines.end();) {
    auto ex = i->second.lock();
    if (ex && i->first > horizon) {
      arm_sweep(self, i->first);
      return;
    }
    if (ex) // answering twice is a no-op, so a late answer changes nothing
      respond_error(ex, to_api_error(caf::make_error(caf::sec::request_timeout)));
    i = st.deadlines.erase(i);
  }
}

/// Sends a request on behalf of `ex` that times out after `timeout` (with
/// the error CAF's own request timeout gives), through the sweep above.
template <class Dest, class... Ts>
auto ask(admin_api_self self, const exchange_ptr& ex, std::chrono::milliseconds timeout,
         const Dest& dest, Ts&&... xs) {
  auto at = std::chrono::steady_clock::now() + timeout;
  self->state.deadlines.emplace(at, ex);
  arm_sweep(self, at);
  return self->request(dest, caf::infinite, std::forward<Ts>(xs)...);
}

/// Reads the `GET /v1/servers` query into a filter, or says which parameter is wrong.
std::optional<api_error> parse_list_filter(const std::string& query, list_filter& filter) {
  for (const auto& [key, value] : parse_query(query)) {
    if (key == "include_inactive") {
      if (value == "true" || value == "1")
        filter.include_inactive = true;
      else if (value == "false" || value == "0")
        filter.include_inactive = false;
      else
        return api_error{errc::invalid_request, "include_inactive: must be true or false"};
    } else if (key == "model") {
      if (value.empty())
        return api_error{errc::invalid_request, "model: must not be empty"};
      filter.model = value;
    } else if (key == "status") {
      filter.status = parse_server_status(value);
      if (!filter.status)
        return api_error{errc::invalid_request,
                         "status: must be one of unknown, healthy, unhealthy"};
    }
    // Unknown parameters are ignored, as most HTTP APIs do.
  }
  return std::nullopt;
}

/// Answers with the record a registry request replies, or its error.
template <class ResponseHandle>
void reply_record(ResponseHandle&& pending, const exchange_ptr& ex) {
  pending.then([ex](server_record& rec) { respond_json(ex, 200, to_json(rec)); },
               [ex](caf::error& err) { respond_caf_error(ex, err); });
}

nlohmann::json to_json(const check_reply& reply) {
  const auto& o = reply.outcome;
  auto or_null = [](const auto& x) {
    return x ? nlohmann::json(*x) : nlohmann::json(nullptr);
  };
  return {{"healthy", o.healthy},
          {"response_time_ms", or_null(o.response_time_ms)},
          {"error", o.healthy ? nlohmann::json(nullptr) : nlohmann::json(o.error)},
          {"error_kind", o.healthy ? nlohmann::json(nullptr) : nlohmann::json(o.error_kind)},
          {"status_code", or_null(o.status_code)},
          {"server", mg::to_json(reply.record)}};
}

nlohmann::json to_json(const checker_status& s) {
  return {{"running", s.running},
          {"interval_seconds", s.config.interval_seconds},
          {"timeout_seconds", s.config.timeout_seconds},
          {"max_consecutive_failures", s.config.max_failures},
          {"auto_deregister", s.config.auto_deregister},
          {"probers", s.probers},
          {"checks_total", s.stats.checks_total},
          {"failures_total", s.stats.failures_total},
          {"deregistrations_total", s.stats.deregistrations_total},
          // Beyond the contract: how late scheduled probes start (since start).
          {"probe_lateness_p99_ms", s.stats.lateness.quantile(0.99)},
          {"probe_lateness_max_ms", s.stats.lateness.max_ms}};
}

template <class Atom>
void ask_checker(admin_api_self self, const exchange_ptr& ex, Atom what) {
  const auto& opts = self->state.options;
  ask(self, ex, opts.actor_timeout, opts.supervisor, what)
    .then([ex](checker_status& status) { respond_json(ex, 200, to_json(status)); },
          [ex](caf::error& err) { respond_caf_error(ex, err); });
}

void handle(admin_api_self self, const exchange_ptr& ex) {
  const auto& req = ex->request();
  const auto& opts = self->state.options;
  auto timeout = opts.actor_timeout;
  auto reg = opts.registry;
  if (opts.admin_token && needs_admin_token(req.path)
      && !bearer_matches(req.authorization, *opts.admin_token))
    return respond_error(ex, {errc::unauthorized, req.authorization.empty()
                                                    ? "missing admin token (Authorization: Bearer)"
                                                    : "invalid admin token"});
  if (!opts.api_keys.empty() && needs_api_key(req.path)
      && !bearer_matches_any(req.authorization, opts.api_keys))
    return respond_error(ex, {errc::unauthorized, req.authorization.empty()
                                                    ? "missing API key (Authorization: Bearer)"
                                                    : "invalid API key"});
  auto match = match_admin_route(req.method, req.path);
  if (!match.route) {
    if (match.path_known)
      return respond_error(ex, {errc::method_not_allowed,
                                "method " + req.method + " is not allowed on " + req.path},
                           {{"Allow", match.allow}});
    return respond_error(ex, {errc::not_found, "no route for " + req.path});
  }
  switch (*match.route) {
    case admin_route::health:
      return respond_json(ex, 200, {{"status", "ok"}});
    case admin_route::list_servers: {
      list_filter filter;
      if (auto err = parse_list_filter(req.query, filter))
        return respond_error(ex, *err);
      ask(self, ex, timeout, reg, list_atom::value, filter)
        .then(
          [ex](std::vector<server_record>& records) {
            auto data = nlohmann::json::array();
            for (const auto& r : records)
              data.push_back(to_json(r));
            respond_json(ex, 200, {{"data", std::move(data)}});
          },
          [ex](caf::error& err) { respond_caf_error(ex, err); });
      return;
    }
    case admin_route::register_server: {
      auto parsed = parse_registration(req.body);
      if (auto err = std::get_if<api_error>(&parsed))
        return respond_error(ex, *err);
      ask(self, ex, timeout, reg, register_atom::value, std::get<registration>(std::move(parsed)))
        .then(
          [ex](register_reply& reply) {
            respond_json(ex, reply.created ? 201 : 200, to_json(reply.record));
          },
          [ex](caf::error& err) { respond_caf_error(ex, err); });
      return;
    }
    case admin_route::get_server:
      return reply_record(ask(self, ex, timeout, reg, get_atom::value, match.id), ex);
    case admin_route::deregister_server:
      return reply_record(
        ask(self, ex, timeout, reg, deregister_atom::value, match.id, std::string{"manual"}), ex);
    case admin_route::reactivate_server:
      return reply_record(ask(self, ex, timeout, reg, reactivate_atom::value, match.id), ex);
    case admin_route::check_server: {
      auto check_timeout = timeout + std::chrono::milliseconds(static_cast<int64_t>(
                                       opts.health_timeout_seconds * 1000));
      ask(self, ex, check_timeout, opts.supervisor, check_atom::value, match.id)
        .then([ex](check_reply& reply) { respond_json(ex, 200, to_json(reply)); },
              [ex](caf::error& err) { respond_caf_error(ex, err); });
      return;
    }
    case admin_route::checker_status:
      return ask_checker(self, ex, status_atom::value);
    case admin_route::checker_start:
      return ask_checker(self, ex, start_atom::value);
    case admin_route::checker_stop:
      return ask_checker(self, ex, stop_atom::value);
    case admin_route::status_page:
      return ex->respond({200, status_page_html(), "text/html; charset=utf-8", {}});
    case admin_route::metrics:
      ask(self, ex, timeout, reg, stats_atom::value)
        .then(
          [ex, m = opts.stats](health_stats& s) {
            registry_figures r;
            r.healthy = s.active_healthy;
            r.unhealthy = s.active_unhealthy;
            r.unknown = s.active_unknown;
            r.checks_success = s.checks_total - s.failures_total;
            r.checks_failure = s.failures_total;
            r.deregistrations_manual = s.manual_deregistrations;
            r.deregistrations_health_check = s.deregistrations_total;
            static const metrics empty;
            ex->respond({200, render_metrics(m ? *m : empty, r, MODELGATE_VERSION),
                         "text/plain; version=0.0.4; charset=utf-8", {}});
          },
          [ex](caf::error& err) { respond_caf_error(ex, err); });
      return;
    case admin_route::list_models:
      ask(self, ex, timeout, reg, list_atom::value, list_filter{})
        .then(
          [ex, m = opts.stats](std::vector<server_record>& records) {
            if (m)
              m->count_request(gateway_endpoint::models, 200);
            // Every model of an active server that is not unhealthy, once,
            // created at the earliest registration that serves it.
            std::map<std::string, epoch_ms> models;
            for (const auto& r : records) {
              if (r.status == server_status::unhealthy)
                continue;
              for (const auto& m : r.models) {
                auto [it, fresh] = models.emplace(m, r.registered_at);
                if (!fresh)
                  it->second = std::min(it->second, r.registered_at);
              }
            }
            auto data = nlohmann::json::array();
            for (const auto& [name, created] : models)
              data.push_back({{"id", name},
                              {"object", "model"},
                              {"created", created / 1000},
                              {"owned_by", "modelgate"}});
            respond_json(ex, 200, {{"object", "list"}, {"data", std::move(data)}});
          },
          [ex](caf::error& err) { respond_caf_error(ex, err); });
      return;
    case admin_route::server_events:
      ask(self, ex, timeout, reg, events_atom::value, match.id)
        .then(
          [ex](std::vector<server_event>& events) {
            auto data = nlohmann::json::array();
            for (const auto& e : events)
              data.push_back(to_json(e));
            respond_json(ex, 200, {{"data", std::move(data)}});
          },
          [ex](caf::error& err) { respond_caf_error(ex, err); });
      return;
  }
}

admin_api_actor::behavior_type admin_api_impl(admin_api_self self, admin_api_options options) {
  self->state.options = std::move(options);
  return {
    [=](http_job& job) {
      try {
        handle(self, job.exchange);
      } catch (const std::exception& e) {
        // A bug must cost one request, not the actor.
        log(log_level::error, "admin request failed",
            {{"path", job.exchange->request().path}, {"error", e.what()}});
        respond_error(job.exchange, {errc::internal, "internal error"});
      }
    },
    [=](sweep_atom) { sweep(self); },
  };
}

} // namespace

admin_api_actor spawn_admin_api(caf::actor_system& sys, admin_api_options options) {
  // Detached: admin requests are answered on a thread of their own, never
  // behind the thousands of prober jobs on the scheduler's workers.
  return sys.spawn<caf::detached>(admin_api_impl, std::move(options));
}

} // namespace mg
