// An outside program that embeds modelgate: its own actor system, modelgate's
// actors spawned in it, a server registered through the registry's typed
// interface (no HTTP), a wait until the health checker finds it healthy,
// and a clean shutdown.
//
// Usage: embedding_example URL    (a model server with GET /health -> 200 JSON)
// Prints "healthy" and exits 0; exits 1 with a message on stderr otherwise.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include "actors/modelgate.hpp"
#include "actors/scheduler.hpp"
#include "protocol/validation.hpp"

using namespace std::chrono_literals;

namespace {

int fail(const std::string& what) {
  std::fprintf(stderr, "embedding_example: %s\n", what.c_str());
  return 1;
}

/// Registers `url` and waits until its record is healthy (10 s at most).
int register_and_wait(caf::actor_system& sys, const mg::modelgate_handles& mg_handles,
                      const std::string& url) {
  std::string why;
  auto normalized = mg::normalize_server_url(url, why);
  if (!normalized)
    return fail("bad URL " + url + ": " + why);
  mg::registration reg;
  reg.url = *normalized;
  reg.name = "embedded-mock";
  reg.models = {"mock-model"};

  caf::scoped_actor self{sys};
  std::string id;
  std::string error;
  self->request(mg_handles.registry, 5s, mg::register_atom::value, reg)
    .receive([&](mg::register_reply& reply) { id = reply.record.id; },
             [&](caf::error& err) { error = sys.render(err); });
  if (id.empty())
    return fail("register failed: " + error);
  std::printf("registered %s as %s\n", reg.url.c_str(), id.c_str());

  auto deadline = std::chrono::steady_clock::now() + 10s;
  auto status = mg::server_status::unknown;
  while (std::chrono::steady_clock::now() < deadline) {
    self->request(mg_handles.registry, 5s, mg::get_atom::value, id)
      .receive([&](mg::server_record& rec) { status = rec.status; },
               [&](caf::error& err) { error = sys.render(err); });
    if (!error.empty())
      return fail("get failed: " + error);
    if (status == mg::server_status::healthy) {
      std::printf("healthy\n");
      std::fflush(stdout);
      return 0;
    }
    std::this_thread::sleep_for(50ms); // poll interval; bounded by the deadline
  }
  return fail(std::string{"not healthy after 10 s, status "} + mg::to_string(status));
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2)
    return fail("usage: embedding_example URL");

  caf::actor_system_config sys_cfg;
  sys_cfg.set("scheduler.max-threads", 2);
  sys_cfg.load<mg::modelgate_scheduler>(); // the daemon's scheduler, from the installed headers
  caf::actor_system sys{sys_cfg};

  mg::modelgate_config cfg;
  cfg.db_path = ":memory:";
  cfg.health.interval_seconds = 0.2;
  cfg.health.timeout_seconds = 0.2;

  mg::modelgate_handles handles;
  try {
    handles = mg::spawn_modelgate(sys, cfg);
  } catch (const std::exception& e) {
    return fail(std::string{"spawn_modelgate: "} + e.what());
  }
  int rc = register_and_wait(sys, handles, argv[1]);
  // Exits every modelgate actor, so ~actor_system below does not wait forever.
  mg::stop_modelgate(sys, handles);
  return rc;
}
