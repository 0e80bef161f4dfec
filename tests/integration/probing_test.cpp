// probing_test.cpp — health checking end to end: the real modelgated probing
// real mock-model-servers over loopback. Fault modes map to the contract's
// error kinds, dead servers are retired after exactly max-failures probes,
// hanging servers delay nobody, stop/start pause probing, shutdown is prompt
// with probes hanging, and probing resumes after a restart.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <functional>
#include <sstream>
#include <regex>
#include <thread>

#include "../scripted_server.hpp"
#include "admin_calls.hpp"
#include "harness.hpp"
#include "mock_process.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;

namespace {

/// A mock-model-server started in fault mode `mode`.
struct mock_server : mock_process {
  explicit mock_server(const std::string& mode = "healthy") : mock_process({"--mode", mode}) {
  }
};

/// A daemon probing every `interval` seconds.
struct probing_daemon {
  daemon_process proc;
  http_client client;

  explicit probing_daemon(const std::string& interval = "0.2", const std::string& timeout = "0.2",
                          const std::string& max_failures = "3",
                          std::vector<std::string> extra = {})
    : proc(modelgated_bin(), with(extra, {"--listen", "127.0.0.1:0", "--db", "{dir}/m.db",
                                          "--health-interval", interval, "--health-timeout",
                                          timeout, "--max-failures", max_failures,
                                          "--log-level", "debug"})),
      client("127.0.0.1", proc.port()) {
  }

  static std::vector<std::string> with(std::vector<std::string> extra,
                                       std::vector<std::string> base) {
    base.insert(base.end(), extra.begin(), extra.end());
    return base;
  }

  std::string register_server(const std::string& url, const json& extra = json::object()) {
    json body = {{"url", url}, {"models", {"m"}}};
    body.update(extra);
    return mg_test::register_server(client, body);
  }

  json record(const std::string& id) { return server_record(client, id); }

  json events(const std::string& id) {
    return json::parse(client.get("/v1/servers/" + id + "/events").body)["data"];
  }

  bool wait_status(const std::string& id, const std::string& status,
                   std::chrono::milliseconds limit = 5s) {
    return wait_until([&] { return record(id)["status"] == status; }, limit);
  }
};

} // namespace

TEST_CASE("each fault mode makes a server unhealthy with the contract's error kind",
          "[probing][integration]") {
  struct row {
    const char* mode;
    const char* kind;
  };
  const row rows[] = {
    {"http_500", "http_status"}, {"invalid_json", "invalid_body"}, {"empty_body", "invalid_body"},
    {"hang", "timeout"},         {"refuse", "connect"},            {"close", "protocol"},
  };
  probing_daemon d{"0.2", "0.2", "1000"};
  for (const auto& r : rows) {
    INFO("mode " << r.mode);
    mock_server mock;
    auto id = d.register_server(mock.url());
    REQUIRE(d.wait_status(id, "healthy"));
    mock.set_mode(r.mode);
    REQUIRE(d.wait_status(id, "unhealthy"));
    auto rec = d.record(id);
    CHECK(rec["last_error_kind"] == r.kind);
    CHECK(rec["last_error"].is_string());
    CHECK(rec["consecutive_failures"].get<int>() >= 1);
    CHECK(rec["last_check_at"].is_string());
  }
}

TEST_CASE("a dead server is deregistered after exactly max-failures probes, with an event and an ERROR line",
          "[probing][integration]") {
  probing_daemon d{"0.2", "0.2", "3"};
  mock_server mock;
  auto id = d.register_server(mock.url());
  REQUIRE(d.wait_status(id, "healthy"));
  mock.set_mode("http_500");
  mock.reset();
  REQUIRE(wait_until([&] { return d.record(id)["is_active"] == false; }, 5s));
  auto rec = d.record(id);
  CHECK(rec["deregistered_reason"] == "health_check");
  CHECK(rec["consecutive_failures"] == 3);
  CHECK(mock.health_requests() == 3);
  // Probing stopped: still three after two more intervals.
  auto t0 = std::chrono::steady_clock::now();
  wait_until([&] { return std::chrono::steady_clock::now() - t0 > 500ms; }, 1s);
  CHECK(mock.health_requests() == 3);
  auto ev = d.events(id);
  std::vector<std::string> names;
  for (const auto& e : ev)
    names.push_back(e["event"]);
  CHECK(names == std::vector<std::string>{"registered", "healthy", "unhealthy", "deregistered"});
  CHECK(ev.back()["detail"] == "health_check");
  auto log = d.proc.stderr_text();
  CHECK(std::regex_search(log, std::regex("ERROR [^\n]*server_id=" + id)));
  CHECK(std::regex_search(log, std::regex("WARNING [^\n]*consecutive_failures=1[^\n]*server_id=" +
                                          id)));
}

TEST_CASE("a server that dies between probes is unhealthy long before its next probe",
          "[probing][integration]") {
  // Its process gone, its kept connection closes: the prober reconnects at
  // once, and the refusal is the failure the next tick would have found, up
  // to an interval later. That tick's probe confirms it without counting
  // again, so deregistration comes no sooner than without the early finding.
  probing_daemon d{"3", "1", "3"};
  mock_server mock;
  auto id = d.register_server(mock.url());
  REQUIRE(d.wait_status(id, "healthy", 6s)); // the first tick: within 3 s
  mock.set_mode("refuse");                   // stops listening, closes its connections
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(d.wait_status(id, "unhealthy", 1500ms)); // the next tick is about 3 s away
  auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(took < 1.0);
  auto rec = d.record(id);
  CHECK(rec["last_error_kind"] == "connect");
  CHECK(rec["consecutive_failures"] == 1);
  CHECK(rec["is_active"] == true);
  CHECK(mock.health_requests() == 1); // the reconnect sent no request
  CHECK(std::regex_search(d.proc.stderr_text(),
                          std::regex("WARNING [^\n]*refused a new one[^\n]*server_id=" + id)));
  auto found_at = rec["last_check_at"];
  REQUIRE(wait_until([&] { return d.record(id)["last_check_at"] != found_at; }, 5s)); // the tick
  rec = d.record(id);
  CHECK(rec["consecutive_failures"] == 1);
  CHECK(rec["last_error_kind"] == "connect");
  // Back: the next tick's probe clears it.
  mock.set_mode("healthy");
  REQUIRE(d.wait_status(id, "healthy", 5s));
  CHECK(d.record(id)["consecutive_failures"] == 0);
}

TEST_CASE("at max-failures 1 a server that dies between probes is retired by its next probe and not before",
          "[probing][integration]") {
  probing_daemon d{"2", "1", "1"};
  mock_server mock;
  auto id = d.register_server(mock.url());
  REQUIRE(d.wait_status(id, "healthy", 4s));
  mock.set_mode("refuse");
  REQUIRE(d.wait_status(id, "unhealthy", 1s)); // found between probes: the next tick is ~2 s away
  auto rec = d.record(id);
  CHECK(rec["is_active"] == true);
  CHECK(rec["consecutive_failures"] == 1);
  REQUIRE(wait_until([&] { return d.record(id)["is_active"] == false; }, 4s)); // the tick's probe
  rec = d.record(id);
  CHECK(rec["deregistered_reason"] == "health_check");
  CHECK(rec["consecutive_failures"] == 1);
}

TEST_CASE("a server that recovers before the threshold is healthy again with zero failures",
          "[probing][integration]") {
  probing_daemon d{"0.2", "0.2", "5"};
  mock_server mock;
  auto id = d.register_server(mock.url());
  REQUIRE(d.wait_status(id, "healthy"));
  mock.set_mode("http_500");
  REQUIRE(d.wait_status(id, "unhealthy"));
  mock.set_mode("healthy");
  REQUIRE(d.wait_status(id, "healthy"));
  auto rec = d.record(id);
  CHECK(rec["consecutive_failures"] == 0);
  CHECK(rec["is_active"] == true);
  CHECK(rec["last_error"].is_null());
  CHECK(rec["last_response_time_ms"].is_number());
}

TEST_CASE("hanging servers do not delay the probes of a healthy one", "[probing][integration]") {
  probing_daemon d{"0.2", "0.2", "1000"};
  mock_server hang1{"hang"}, hang2{"hang"}, hang3{"hang"};
  mock_server healthy;
  for (auto* m : {&hang1, &hang2, &hang3})
    d.register_server(m->url());
  auto id = d.register_server(healthy.url());
  REQUIRE(d.wait_status(id, "healthy"));
  healthy.reset();
  auto t0 = std::chrono::steady_clock::now();
  wait_until([&] { return std::chrono::steady_clock::now() - t0 >= 2s; }, 3s);
  auto n = healthy.health_requests();
  // 2 s at 0.2 s: 10 probes; allow scheduling noise on a loaded machine.
  CHECK(n >= 8);
  CHECK(n <= 12);
}

TEST_CASE("health_expect status accepts an empty 200 that json rejects", "[probing][integration]") {
  probing_daemon d;
  mock_server mock{"empty_body"};
  auto as_status = d.register_server(mock.url(), {{"health_expect", "status"}});
  REQUIRE(d.wait_status(as_status, "healthy"));
  mock_server other{"empty_body"};
  auto as_json = d.register_server(other.url());
  REQUIRE(d.wait_status(as_json, "unhealthy"));
  CHECK(d.record(as_json)["last_error_kind"] == "invalid_body");
}

namespace {

} // namespace

TEST_CASE("stray bytes after a kept-alive health response do not fail the next probe",
          "[probing][integration]") {
  probing_daemon d{"0.1", "0.1"};
  // `{}` followed by a stray CRLF: a quirk some servers have.
  scripted_server server{[](int fd) {
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  "Content-Length: 2\r\n\r\n{}\r\n");
    return true;
  }};
  auto id = d.register_server(server.url());
  REQUIRE(d.wait_status(id, "healthy"));
  REQUIRE(wait_until([&] { return server.answered() >= 6; }, 5s));
  auto rec = d.record(id);
  CHECK(rec["status"] == "healthy");
  CHECK(rec["consecutive_failures"] == 0);
  for (const auto& e : d.events(id))
    CHECK(e["event"] != "unhealthy");
}

TEST_CASE("a health response in pieces, chunked or ended by a close is read whole",
          "[probing][integration]") {
  // Timeouts far above the servers' 15 ms of pauses: a loaded CI machine
  // must not turn a slow answer into a failure here.
  probing_daemon d{"0.3", "0.3"};
  scripted_server in_pieces{[](int fd) {
    // The head in three writes, the body in a fourth.
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Ty");
    std::this_thread::sleep_for(5ms);
    write_all(fd, "pe: application/json\r\nContent-Le");
    std::this_thread::sleep_for(5ms);
    write_all(fd, "ngth: 11\r\n\r\n");
    std::this_thread::sleep_for(5ms);
    write_all(fd, "{\"ok\":true}");
    return true;
  }};
  scripted_server chunked{[](int fd) {
    write_all(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"ok\":\r\n");
    std::this_thread::sleep_for(5ms);
    write_all(fd, "5\r\ntrue}\r\n0\r\n\r\n");
    return true;
  }};
  scripted_server until_close{[](int fd) {
    write_all(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"ok\":");
    std::this_thread::sleep_for(5ms);
    write_all(fd, "true}");
    return false; // the body ends with the connection
  }};
  std::vector<std::pair<std::string, scripted_server*>> servers{
    {d.register_server(in_pieces.url()), &in_pieces},
    {d.register_server(chunked.url()), &chunked},
    {d.register_server(until_close.url()), &until_close}};
  for (auto& [id, server] : servers) {
    INFO(server->url());
    REQUIRE(d.wait_status(id, "healthy"));
    REQUIRE(wait_until([&] { return server->answered() >= 4; }, 5s));
    for (const auto& e : d.events(id))
      CHECK(e["event"] != "unhealthy");
  }
}

TEST_CASE("a health body over 64 KiB is invalid_body, with or without a length",
          "[probing][integration]") {
  probing_daemon d{"0.3", "0.3"};
  const std::string big(65 * 1024 + 1, ' ');
  scripted_server with_length{[&](int fd) {
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(big.size() + 2)
                    + "\r\n\r\n{" + big + "}");
    return true;
  }};
  scripted_server chunked{[&](int fd) {
    std::ostringstream hex;
    hex << std::hex << big.size() + 2;
    write_all(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + hex.str() + "\r\n{"
                    + big + "}\r\n0\r\n\r\n");
    return true;
  }};
  for (auto* server : {&with_length, &chunked}) {
    INFO(server->url());
    auto id = d.register_server(server->url());
    REQUIRE(d.wait_status(id, "unhealthy"));
    CHECK(d.record(id)["last_error_kind"] == "invalid_body");
  }
}

TEST_CASE("the api_key of a server is sent on its probes", "[probing][integration]") {
  probing_daemon d;
  mock_server mock;
  auto id = d.register_server(mock.url(), {{"api_key", "sk-probe-secret"}});
  REQUIRE(d.wait_status(id, "healthy"));
  auto headers = mock.control()["last_headers"];
  CHECK(headers.value("authorization", "") == "Bearer sk-probe-secret");
  CHECK(d.proc.stderr_text().find("sk-probe-secret") == std::string::npos);
}

TEST_CASE("stop and start really pause and resume probes", "[probing][integration]") {
  probing_daemon d;
  mock_server mock;
  auto id = d.register_server(mock.url());
  REQUIRE(d.wait_status(id, "healthy"));
  auto stopped = d.client.post("/v1/health-checker/stop", "");
  REQUIRE(stopped.status == 200);
  CHECK(json::parse(stopped.body)["running"] == false);
  CHECK(json::parse(d.client.post("/v1/health-checker/stop", "").body)["running"] == false);
  REQUIRE(wait_until([&] { return json::parse(d.client.get("/v1/health-checker").body)["probers"] == 0; }, 2s));
  mock.reset();
  auto t0 = std::chrono::steady_clock::now();
  wait_until([&] { return std::chrono::steady_clock::now() - t0 >= 700ms; }, 1s);
  CHECK(mock.health_requests() == 0);
  // An on-demand check works while paused.
  auto check = d.client.post("/v1/servers/" + id + "/check", "");
  REQUIRE(check.status == 200);
  auto cj = json::parse(check.body);
  CHECK(cj["healthy"] == true);
  CHECK(cj["status_code"] == 200);
  CHECK(cj["response_time_ms"].is_number());
  CHECK(cj["error"].is_null());
  CHECK(cj["error_kind"].is_null());
  CHECK(mock.health_requests() == 1);
  auto started = d.client.post("/v1/health-checker/start", "");
  REQUIRE(started.status == 200);
  auto sj = json::parse(started.body);
  CHECK(sj["running"] == true);
  CHECK(sj["probers"] == 1);
  for (const char* key : {"interval_seconds", "timeout_seconds", "max_consecutive_failures",
                          "auto_deregister", "checks_total", "failures_total",
                          "deregistrations_total"})
    CHECK(sj.contains(key));
  REQUIRE(wait_until([&] { return mock.health_requests() >= 3; }, 2s));
}

TEST_CASE("an on-demand check of an inactive server is 409 and of an unknown one 404",
          "[probing][integration]") {
  probing_daemon d;
  mock_server mock;
  auto id = d.register_server(mock.url());
  REQUIRE(d.client.del("/v1/servers/" + id).status == 200);
  auto r = d.client.post("/v1/servers/" + id + "/check", "");
  CHECK(r.status == 409);
  CHECK(json::parse(r.body)["error"]["code"] == "conflict");
  CHECK(d.client.post("/v1/servers/srv_000000000000/check", "").status == 404);
  mock.set_mode("refuse");
  auto live = d.register_server("http://127.0.0.1:1");
  auto failed = json::parse(d.client.post("/v1/servers/" + live + "/check", "").body);
  CHECK(failed["healthy"] == false);
  CHECK(failed["error_kind"] == "connect");
  CHECK(failed["status_code"].is_null());
}

TEST_CASE("SIGTERM with probes hanging exits 0 within 5 seconds", "[probing][integration]") {
  probing_daemon d{"1", "1", "3"};
  mock_server hang{"hang"};
  auto id = d.register_server(hang.url());
  REQUIRE(wait_until([&] { return hang.health_requests() >= 1; }, 3s));
  auto t0 = std::chrono::steady_clock::now();
  d.proc.terminate();
  auto status = d.proc.wait_exit(5s);
  REQUIRE(status);
  CHECK(*status == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  (void) id;
}

TEST_CASE("after a restart probing resumes for every active server within one interval",
          "[probing][integration]") {
  temp_dir dir;
  auto db = dir.file("m.db");
  mock_server a, b;
  std::vector<std::string> ids;
  {
    daemon_process d(modelgated_bin(), {"--listen", "127.0.0.1:0", "--db", db,
                                        "--health-interval", "1", "--health-timeout", "0.5"});
    http_client c{"127.0.0.1", d.port()};
    for (auto* m : {&a, &b})
      ids.push_back(json::parse(c.post("/v1/servers", json{{"url", m->url()}, {"models", {"m"}}}.dump()).body)["id"]);
    d.terminate();
    REQUIRE(d.wait_exit(5s) == std::optional<int>{0});
  }
  a.reset();
  b.reset();
  daemon_process d(modelgated_bin(), {"--listen", "127.0.0.1:0", "--db", db,
                                      "--health-interval", "1", "--health-timeout", "0.5"});
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(wait_until([&] { return a.health_requests() >= 1 && b.health_requests() >= 1; }, 3s));
  CHECK(std::chrono::steady_clock::now() - t0 < 1500ms); // one interval plus margin
  CHECK(json::parse(http_client{"127.0.0.1", d.port()}.get("/v1/health-checker").body)["probers"] == 2);
}

TEST_CASE("modelgatectl check and status talk to the health checker", "[probing][integration]") {
  probing_daemon d;
  mock_server mock;
  auto id = d.register_server(mock.url());
  auto url = "http://127.0.0.1:" + std::to_string(d.proc.port());
  auto check = run_process({MODELGATECTL_PATH, "--url", url, "--json", "check", id});
  CHECK(check.exit_code == 0);
  CHECK(json::parse(check.out)["healthy"] == true);
  auto status = run_process({MODELGATECTL_PATH, "--url", url, "status"});
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("running") != std::string::npos);
}
