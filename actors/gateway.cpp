#include "actors/gateway.hpp"

#include <random>
#include <unordered_map>

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

struct gateway_state {
  gateway_options options;
  std::unordered_map<uint64_t, pending_request> requests;
  uint64_t next_id = 0;
  std::mt19937_64 rng{std::random_device{}()};
  static inline const char* name = "modelgate.gateway";
};

using gateway_self = gateway_actor::stateful_pointer<gateway_state>;

void respond_error(const std::shared_ptr<http_exchange>& ex, const api_error& err,
                   const std::string& request_id) {
  ex->respond({http_status(err.code), error_body(err), "application/json",
               {{"x-request-id", request_id}}});
}

std::string new_request_id(gateway_state& st) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "req_%016llx", static_cast<unsigned long long>(st.rng()));
  return buf;
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
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p.started).count();
  const auto& req = p.exchange->request();
  log(log_level::info, "gateway request",
      {{"method", req.method}, {"path", req.path}, {"model", p.model}, {"server_id", server},
       {"status", status}, {"duration_ms", ms}, {"request_id", p.request_id},
       {"tries", p.tried.size()}});
}

void try_next(gateway_self self, uint64_t id);

/// Ends a request whose tries are exhausted, with the contract's status.
void fail_request(gateway_self self, uint64_t id, const api_error& err) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end())
    return;
  respond_error(it->second.exchange, err, it->second.request_id);
  access_log(it->second, http_status(err.code), "");
  st.requests.erase(it);
}

void on_proxied(gateway_self self, uint64_t id, proxy_result result) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end())
    return;
  auto& p = it->second;
  self->send(st.options.router, done_atom::value, p.target, outcome_of(result), result.error);
  if (result.responded()) {
    if (result.what != proxy_result::kind::success)
      log(log_level::warning, "gateway stream ended early",
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
  if (result.what == proxy_result::kind::timeout)
    return fail_request(self, id, {errc::upstream_timeout, "upstream timeout: " + result.error});
  fail_request(self, id, {errc::upstream_failed,
                          "every try failed; last: " + result.error});
}

void try_next(gateway_self self, uint64_t id) {
  auto& st = self->state;
  auto& p = st.requests.at(id);
  self->request(st.options.router, st.options.actor_timeout, pick_atom::value, p.model, p.tried)
    .then(
      [=](route_target& target) {
        auto& st = self->state;
        auto it = st.requests.find(id);
        if (it == st.requests.end()) { // cannot happen; keep the count exact anyway
          self->send(st.options.router, done_atom::value, target, route_outcome::client_gone,
                     std::string{});
          return;
        }
        auto& p = it->second;
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
        caf::actor_addr weak = self->address();
        auto router = st.options.router;
        p.exchange->proxy(std::move(up), [weak, id, router, target](proxy_result r) {
          if (auto strong = caf::actor_cast<gateway_actor>(weak))
            caf::anon_send(strong, proxied_atom::value, id, std::move(r));
          else // the gateway is gone: still keep the router's count exact
            caf::anon_send(router, done_atom::value, target, route_outcome::client_gone,
                           std::string{});
        });
      },
      [=](caf::error& err) {
        auto& st = self->state;
        auto it = st.requests.find(id);
        if (it == st.requests.end())
          return;
        auto e = to_api_error(err);
        if (!it->second.tried.empty() && e.code == errc::unavailable) {
          // Servers were tried and none is left.
          const auto& last = it->second.last;
          if (last.what == proxy_result::kind::timeout)
            return fail_request(self, id, {errc::upstream_timeout, "upstream timeout: " + last.error});
          return fail_request(self, id, {errc::upstream_failed, "every try failed; last: " + last.error});
        }
        fail_request(self, id, e);
      });
}

void handle(gateway_self self, std::shared_ptr<http_exchange> ex) {
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
    return respond_error(ex, {errc::invalid_request, "request body is not a JSON object"}, request_id);
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_string() || model->get_ref<const std::string&>().empty())
    return respond_error(ex, {errc::invalid_request, "model: required string field is missing"},
                         request_id);
  auto id = ++st.next_id;
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

gateway_actor spawn_gateway(caf::actor_system& sys, gateway_options options) {
  return sys.spawn([options](gateway_self self) -> gateway_actor::behavior_type {
    self->state.options = options;
    return {
      [=](http_job& job) {
        try {
          handle(self, job.exchange);
        } catch (const std::exception& e) {
          log(log_level::error, "gateway request failed", {{"error", e.what()}});
          job.exchange->respond({500, error_body({errc::internal, "internal error"}),
                                 "application/json", {}});
        }
      },
      [=](proxied_atom, uint64_t id, proxy_result& result) { on_proxied(self, id, std::move(result)); },
    };
  });
}

} // namespace mg
