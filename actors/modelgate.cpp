#include "actors/modelgate.hpp"

#include <caf/all.hpp>

#include "actors/admin_api.hpp"
#include "actors/registry.hpp"
#include "protocol/log.hpp"

namespace mg {

modelgate_handles spawn_modelgate(caf::actor_system& sys, const modelgate_config& config,
                                  wall_clock clock) {
  auto store = std::make_shared<server_store>(config.db_path);
  modelgate_handles handles;
  handles.registry = spawn_registry(sys, registry_options{std::move(store), std::move(clock), 0});
  handles.admin_api = spawn_admin_api(
    sys, admin_api_options{handles.registry, config.admin_token, config.actor_timeout});
  return handles;
}

void stop_modelgate(caf::actor_system& sys, const modelgate_handles& handles,
                    std::chrono::milliseconds timeout) {
  {
    caf::scoped_actor self{sys};
    self->send_exit(handles.admin_api, caf::exit_reason::user_shutdown);
    self->request(handles.registry, timeout, flush_atom::value)
      .receive([](bool) {},
               [&](caf::error& err) {
                 log(log_level::error, "final registry flush failed",
                     {{"error", sys.render(err)}});
               });
    self->send_exit(handles.registry, caf::exit_reason::user_shutdown);
  }
}

} // namespace mg
