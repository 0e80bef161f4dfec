#include "actors/modelgate.hpp"

#include <caf/all.hpp>

#include "actors/admin_api.hpp"
#include "actors/gateway.hpp"
#include "actors/router.hpp"
#include "actors/registry.hpp"
#include "actors/supervisor.hpp"
#include "protocol/http_probe.hpp"
#include "protocol/log.hpp"

namespace mg {

modelgate_handles spawn_modelgate(caf::actor_system& sys, const modelgate_config& config,
                                  modelgate_hooks hooks) {
  auto store = std::make_shared<server_store>(config.db_path);
  auto stats = std::make_shared<metrics>();
  modelgate_handles handles;
  registry_options ro;
  ro.store = std::move(store);
  ro.clock = std::move(hooks.clock);
  ro.health = config.health;
  ro.stats_sink = stats;
  handles.registry = spawn_registry(sys, std::move(ro));
  // Scheduled probes report straight to the registry, a batch per message.
  handles.probes = std::make_shared<probe_runtime>(report_sink_to(handles.registry));
  supervisor_options so;
  so.registry = handles.registry;
  so.health = config.health;
  if (hooks.make_driver) {
    so.make_driver = std::move(hooks.make_driver);
  } else {
    std::weak_ptr<probe_runtime> runtime = handles.probes;
    so.make_driver = [runtime](const probe_target& target) -> std::shared_ptr<probe_driver> {
      auto rt = runtime.lock();
      if (!rt)
        throw std::runtime_error("probe runtime is gone");
      return rt->make_driver(target);
    };
  }
  handles.supervisor = spawn_supervisor(sys, std::move(so));
  admin_api_options ao;
  ao.registry = handles.registry;
  ao.supervisor = handles.supervisor;
  ao.admin_token = config.admin_token;
  ao.api_keys = config.api_keys;
  ao.stats = stats;
  ao.actor_timeout = config.actor_timeout;
  ao.health_timeout_seconds = config.health.timeout_seconds;
  handles.admin_api = spawn_admin_api(sys, std::move(ao));
  auto table = std::make_shared<route_table>();
  handles.router = spawn_router(sys, router_options{handles.registry, table, config.actor_timeout});
  gateway_options go;
  go.table = table;
  go.registry = handles.registry;
  go.api_keys = config.api_keys;
  go.stats = stats;
  go.connect_timeout = seconds_to_ms(config.upstream_connect_timeout_seconds);
  go.response_timeout = seconds_to_ms(config.upstream_timeout_seconds);
  go.idle_timeout = seconds_to_ms(config.stream_idle_timeout_seconds);
  handles.openai = std::make_shared<gateway>(std::move(go));
  return handles;
}

void dispatch_http(const modelgate_handles& handles, std::shared_ptr<http_exchange> exchange) {
  if (is_gateway_path(exchange->request().path))
    handles.openai->handle(std::move(exchange)); // on this I/O thread: no actor hop
  else
    caf::anon_send(handles.admin_api, http_job{std::move(exchange)});
}

void stop_modelgate(caf::actor_system& sys, const modelgate_handles& handles,
                    std::chrono::milliseconds timeout) {
  caf::scoped_actor self{sys};
  self->send_exit(handles.admin_api, caf::exit_reason::user_shutdown);
  self->send_exit(handles.router, caf::exit_reason::user_shutdown);
  // Probers first: once they are gone nothing starts a probe.
  self->request(handles.supervisor, timeout, shutdown_atom::value)
    .receive([](bool) {},
             [&](caf::error& err) {
               log(log_level::warning, "probers did not stop in time",
                   {{"error", sys.render(err)}});
             });
  self->send_exit(handles.supervisor, caf::exit_reason::user_shutdown);
  if (handles.probes)
    handles.probes->stop();
  self->request(handles.registry, timeout, flush_atom::value)
    .receive([](bool) {},
             [&](caf::error& err) {
               log(log_level::error, "final registry flush failed", {{"error", sys.render(err)}});
             });
  self->send_exit(handles.registry, caf::exit_reason::user_shutdown);
}

} // namespace mg
