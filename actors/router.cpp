#include "actors/router.hpp"

#include <algorithm>
#include <random>
#include <unordered_map>
#include <variant>

#include <caf/all.hpp>

#include "protocol/admin_routes.hpp"
#include "protocol/errors.hpp"
#include "protocol/log.hpp"
#include "protocol/validation.hpp"

namespace mg {

bool is_gateway_path(std::string_view path) {
  return path == "/v1/chat/completions" || path == "/v1/completions" || path == "/v1/embeddings";
}

namespace {

struct candidate {
  route_target target;
  std::vector<std::string> models;
  server_status status = server_status::unknown;
  int64_t in_flight = 0;
};

/// One gateway request in flight.
struct pending_request {
  std::shared_ptr<http_exchange> exchange;
  std::string model;
  bool stream = false;
  std::string request_id;
  std::vector<std::string> tried; // server ids
  route_target target;            // of the try in flight
  proxy_result last;              // of the last failed try
  std::chrono::steady_clock::time_point started;
};

struct router_state {
  router_options options;
  std::unordered_map<std::string, candidate> servers; // active ones
  // In-flight counts outlive a server's deregistration until its last done.
  std::unordered_map<std::string, int64_t> in_flight;
  std::unordered_map<std::string, uint64_t> round_robin; // by model
  std::unordered_map<uint64_t, pending_request> requests;
  uint64_t next_request = 0;
  std::mt19937_64 rng{std::random_device{}()};
  static inline const char* name = "modelgate.router";
};

using router_self = router_actor::stateful_pointer<router_state>;

// -- the routing table ---------------------------------------------------------

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
  auto it = st.in_flight.find(rec.id);
  c.in_flight = it == st.in_flight.end() ? 0 : it->second;
}

std::variant<route_target, api_error> pick(router_self self, const std::string& model,
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
    return api_error{errc::model_not_found, "no active server serves model " + model};
  auto& pool = healthy.empty() ? unknown : healthy;
  if (pool.empty())
    return api_error{errc::unavailable, exclude.empty()
                                          ? "no routable server for model " + model
                                              + " (all unhealthy)"
                                          : "no other routable server for model " + model};
  // A stable order (by id), then the fewest in flight, ties by round robin.
  std::sort(pool.begin(), pool.end(), [](const candidate* a, const candidate* b) {
    return a->target.server_id < b->target.server_id;
  });
  int64_t fewest = pool.front()->in_flight;
  for (auto* c : pool)
    fewest = std::min(fewest, c->in_flight);
  std::vector<candidate*> least;
  for (auto* c : pool)
    if (c->in_flight == fewest)
      least.push_back(c);
  auto* chosen = least[st.round_robin[model]++ % least.size()];
  ++chosen->in_flight;
  ++st.in_flight[chosen->target.server_id];
  return chosen->target;
}

void done(router_self self, const route_target& target, route_outcome outcome,
          const std::string& error) {
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
    self->send(st.options.registry, passive_atom::value, target.server_id, target.generation, error,
               std::string{outcome == route_outcome::connect_failed ? "connect" : "http_status"});
  }
}

// -- the gateway routes ----------------------------------------------------------

void respond_error(const std::shared_ptr<http_exchange>& ex, const api_error& err,
                   const std::string& request_id) {
  ex->respond({http_status(err.code), error_body(err), "application/json",
               {{"x-request-id", request_id}}});
}

route_outcome outcome_of(const proxy_result& r) {
  switch (r.what) {
    case proxy_result::kind::success: return route_outcome::success;
    case proxy_result::kind::connect_failed: return route_outcome::connect_failed;
    case proxy_result::kind::unavailable: return route_outcome::unavailable;
    case proxy_result::kind::timeout: return route_outcome::timeout;
    case proxy_result::kind::client_gone: return route_outcome::client_gone;
    default: return route_outcome::failed;
  }
}

void access_log(const pending_request& p, int status, const std::string& server) {
  if (!log_enabled(log_level::info))
    return;
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p.started)
              .count();
  const auto& req = p.exchange->request();
  log(log_level::info, "gateway request",
      {{"method", req.method}, {"path", req.path}, {"model", p.model}, {"server_id", server},
       {"status", status}, {"duration_ms", ms}, {"request_id", p.request_id},
       {"tries", p.tried.size()}});
}

/// Ends a request with an error answer.
void fail_request(router_self self, uint64_t id, const api_error& err) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end())
    return;
  respond_error(it->second.exchange, err, it->second.request_id);
  access_log(it->second, http_status(err.code), "");
  st.requests.erase(it);
}

/// The answer when tries were made and none is left: 504 after a timeout, 502 otherwise.
api_error exhausted(const proxy_result& last) {
  if (last.what == proxy_result::kind::timeout)
    return {errc::upstream_timeout, "upstream timeout: " + last.error};
  return {errc::upstream_failed, "every try failed; last: " + last.error};
}

void try_next(router_self self, uint64_t id) {
  auto& st = self->state;
  auto& p = st.requests.at(id);
  auto picked = pick(self, p.model, p.tried);
  if (auto err = std::get_if<api_error>(&picked)) {
    if (!p.tried.empty() && err->code == errc::unavailable)
      return fail_request(self, id, exhausted(p.last));
    return fail_request(self, id, *err);
  }
  auto target = std::get<route_target>(std::move(picked));
  p.tried.push_back(target.server_id);
  p.target = target;
  proxy_request up;
  up.url = target.url;
  up.server_id = target.server_id;
  up.api_key = target.api_key;
  up.request_id = p.request_id;
  up.stream = p.stream;
  up.connect_timeout = st.options.connect_timeout;
  up.response_timeout = st.options.response_timeout;
  up.idle_timeout = st.options.idle_timeout;
  // A weak address: a try still running in asio must not keep the router alive.
  caf::actor_addr weak = self->address();
  p.exchange->proxy(std::move(up), [weak, id](proxy_result r) {
    if (auto strong = caf::actor_cast<router_actor>(weak))
      caf::anon_send(strong, proxied_atom::value, id, std::move(r));
  });
}

void on_proxied(router_self self, uint64_t id, proxy_result result) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end())
    return;
  auto& p = it->second;
  done(self, p.target, outcome_of(result), result.error);
  if (result.responded()) {
    if (result.what != proxy_result::kind::success)
      log(log_level::warning, "gateway response ended early",
          {{"server_id", p.target.server_id}, {"url", p.target.url}, {"error", result.error},
           {"request_id", p.request_id}});
    access_log(p, result.status, p.target.server_id);
    st.requests.erase(it);
    return;
  }
  log(log_level::warning, "gateway try failed",
      {{"server_id", p.target.server_id}, {"url", p.target.url}, {"error", result.error},
       {"request_id", p.request_id}});
  p.last = result;
  bool retryable = result.what == proxy_result::kind::connect_failed
                   || result.what == proxy_result::kind::unavailable;
  if (retryable && static_cast<int>(p.tried.size()) <= st.options.max_retries)
    return try_next(self, id);
  fail_request(self, id, exhausted(result));
}

std::string new_request_id(router_state& st) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "req_%016llx", static_cast<unsigned long long>(st.rng()));
  return buf;
}

void handle(router_self self, std::shared_ptr<http_exchange> ex) {
  auto& st = self->state;
  const auto& req = ex->request();
  auto request_id = req.request_id.empty() ? new_request_id(st) : req.request_id;
  if (!st.options.api_keys.empty() && !bearer_matches_any(req.authorization, st.options.api_keys))
    return respond_error(ex, {errc::unauthorized, req.authorization.empty()
                                                    ? "missing API key (Authorization: Bearer)"
                                                    : "invalid API key"},
                         request_id);
  if (req.method != "POST")
    return ex->respond({405, error_body({errc::method_not_allowed, "use POST on " + req.path}),
                        "application/json", {{"Allow", "POST"}}});
  if (!json_depth_within(req.body))
    return respond_error(ex, {errc::invalid_request, "request body nests too deeply"}, request_id);
  auto doc = nlohmann::json::parse(req.body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return respond_error(ex, {errc::invalid_request, "request body is not a JSON object"},
                         request_id);
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_string() || model->get_ref<const std::string&>().empty())
    return respond_error(ex, {errc::invalid_request, "model: required string field is missing"},
                         request_id);
  auto id = ++st.next_request;
  pending_request p;
  p.exchange = std::move(ex);
  p.model = model->get<std::string>();
  auto stream = doc.find("stream");
  p.stream = stream != doc.end() && stream->is_boolean() && stream->get<bool>();
  p.request_id = std::move(request_id);
  p.started = std::chrono::steady_clock::now();
  st.requests.emplace(id, std::move(p));
  try_next(self, id);
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
      [=](pick_atom, const std::string& model,
          const std::vector<std::string>& exclude) -> caf::result<route_target> {
        auto picked = pick(self, model, exclude);
        if (auto err = std::get_if<api_error>(&picked))
          return make_error(err->code, err->message);
        return std::get<route_target>(std::move(picked));
      },
      [=](done_atom, const route_target& target, route_outcome outcome, const std::string& error) {
        done(self, target, outcome, error);
      },
      [=](inflight_atom) {
        inflight_counts result;
        for (const auto& kv : self->state.servers)
          result[kv.first] = kv.second.in_flight;
        for (const auto& kv : self->state.in_flight)
          result[kv.first] = kv.second;
        return result;
      },
      [=](http_job& job) {
        try {
          handle(self, job.exchange);
        } catch (const std::exception& e) {
          log(log_level::error, "gateway request failed", {{"error", e.what()}});
          job.exchange->respond(
            {500, error_body({errc::internal, "internal error"}), "application/json", {}});
        }
      },
      [=](proxied_atom, uint64_t id, proxy_result& result) {
        on_proxied(self, id, std::move(result));
      },
    };
  });
}

} // namespace mg
