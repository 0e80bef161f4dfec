// modelgated: the daemon. Parses its options, spawns modelgate's actors in its
// own actor system (spawn_modelgate, as an embedding program would), serves
// the HTTP facade, and shuts down in order on SIGTERM or SIGINT.
#include <csignal>
#include <cstdio>
#include <iostream>
#include <pthread.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/send.hpp>

#include "actors/modelgate.hpp"
#include "actors/scheduler.hpp"
#include "protocol/http_server.hpp"
#include "protocol/log.hpp"
#include "tools/modelgated/heap_pages.hpp"
#include "tools/modelgated/options.hpp"

namespace {

constexpr uint64_t admin_body_limit = uint64_t{1} << 20;    // 1 MiB
constexpr uint64_t gateway_body_limit = uint64_t{32} << 20; // 32 MiB

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
}

uint64_t body_limit_of(std::string_view path) {
  for (std::string_view p : {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
    if (path == p)
      return gateway_body_limit;
  return admin_body_limit;
}

int run(const mg::modelgate_config& cfg) {
  // Signals are taken by sigwait on this thread only: block them before any
  // other thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  mg::heap_huge_pages huge_pages; // outlives the HTTP server, whose handler nudges it

  caf::actor_system_config sys_cfg;
  // Two workers run the supervisor, the probers and the router; the
  // registry and the admin API actor are detached (their own threads), so
  // admin requests never queue behind prober jobs. One worker cost about
  // 10 % less CPU per probe, but while 10,000 servers were registered in a
  // burst the probes' p99 lateness rose from 50 to 500 ms.
  sys_cfg.set("scheduler.max-threads", 2);
  // The work-stealing default polls idle workers every 50 µs: measurable CPU
  // per probe on an idle-heavy daemon. The sharing policy sleeps on a
  // condition variable instead; modelgate_scheduler is it with a clock that
  // does not wake on every delayed_send (actors/scheduler.hpp).
  sys_cfg.set("scheduler.policy", caf::atom("sharing"));
  sys_cfg.load<mg::modelgate_scheduler>();
  caf::actor_system sys{sys_cfg};
  mg::modelgate_handles handles;
  try {
    handles = mg::spawn_modelgate(sys, cfg);
  } catch (const std::exception& e) {
    mg::log(mg::log_level::error, "cannot start", {{"error", e.what()}});
    return 1;
  }
  int exit_code = 0;
  {
    mg::http_server_options http_opts;
    http_opts.host = cfg.listen_host;
    http_opts.port = cfg.listen_port;
    http_opts.header_timeout = to_ms(cfg.header_timeout_seconds);
    http_opts.max_connections = cfg.max_connections;
    http_opts.busy_poll = std::chrono::microseconds(cfg.busy_poll_us);
    http_opts.body_limit = body_limit_of;
    mg::http_server server{http_opts, [handles, &huge_pages](std::shared_ptr<mg::http_exchange> ex) {
                             // Registrations and a start of probing make probers,
                             // clients and records: memory to put in huge pages.
                             const auto& req = ex->request();
                             if (req.method != "GET" && (req.path.rfind("/v1/servers", 0) == 0 ||
                                                         req.path == "/v1/health-checker/start"))
                               huge_pages.nudge();
                             mg::dispatch_http(handles, std::move(ex));
                           }};
    bool listening = false;
    try {
      server.start();
      listening = true;
    } catch (const std::exception& e) {
      mg::log(mg::log_level::error, "cannot listen", {{"error", e.what()}});
      exit_code = 1;
    }
    if (listening) {
      std::string host = cfg.listen_host.find(':') != std::string::npos
                           ? "[" + cfg.listen_host + "]"
                           : cfg.listen_host;
      std::printf("modelgate listening on http://%s:%u\n", host.c_str(), server.port());
      std::fflush(stdout);
      mg::log(mg::log_level::info, "modelgate started",
              {{"listen", host + ":" + std::to_string(server.port())},
               {"db", cfg.db_path},
               {"admin_token", cfg.admin_token ? "set" : "none"}});
      int sig = 0;
      sigwait(&signals, &sig);
      mg::log(mg::log_level::info, "shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    }
    // Order matters: no more asio work, then the actors (which may still hold
    // exchanges pointing into the server), then the server object itself.
    server.stop();
    mg::stop_modelgate(sys, handles);
    sys.await_all_actors_done();
  }
  if (exit_code == 0)
    mg::log(mg::log_level::info, "modelgate stopped");
  return exit_code;
}

} // namespace

int main(int argc, char** argv) {
  auto opts = mg::parse_daemon_options(argc, argv);
  if (!opts.config) {
    (opts.exit_code == 0 ? std::cout : std::cerr) << opts.output << '\n';
    return opts.exit_code;
  }
  mg::configure_logging(opts.config->level, opts.config->format);
  return run(*opts.config);
}
