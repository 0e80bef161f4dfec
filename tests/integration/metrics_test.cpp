// metrics_test.cpp — GET /metrics end to end: the contract's families with
// HELP and TYPE lines, no token needed, and values that move as checks,
// deregistrations, gateway requests and retries happen.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <regex>

#include "harness.hpp"
#include "mock_process.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;

namespace {

/// The value of one sample line `name{labels} value`, or -1 when absent.
double sample(const std::string& text, const std::string& series) {
  auto pos = text.find("\n" + series + " ");
  if (pos == std::string::npos)
    return -1;
  return std::stod(text.substr(pos + series.size() + 2));
}

/// promtool (Debian's prometheus package; tools/test.sh installs it) accepts
/// the exposition: names, HELP/TYPE, histograms, label syntax.
void promtool_accepts(const std::string& body) {
  temp_dir dir;
  auto path = dir.file("metrics.txt");
  {
    std::ofstream out{path};
    out << body;
  }
  auto check = run_process({"/bin/sh", "-c", "promtool check metrics < " + path});
  INFO("promtool: " << check.out << check.err);
  REQUIRE(check.exit_code != 127); // promtool missing: tools/test.sh installs it
  CHECK(check.exit_code == 0);
}

using mock = mock_process;

} // namespace

TEST_CASE("GET /metrics exposes the contract's families and they move", "[metrics][integration]") {
  daemon_process d(MODELGATED_PATH, {"--listen", "127.0.0.1:0", "--db", "{dir}/m.db",
                                     "--health-interval", "0.2", "--health-timeout", "0.2",
                                     "--admin-token", "secret"});
  http_client c{"127.0.0.1", d.port()};
  header_list auth = {{"Authorization", "Bearer secret"}};
  auto first = c.get("/metrics");
  REQUIRE(first.status == 200);
  CHECK(first.header("content-type").find("text/plain") == 0);
  for (const char* family :
       {"modelgate_servers", "modelgate_health_checks_total", "modelgate_health_check_duration_seconds",
        "modelgate_deregistrations_total", "modelgate_requests_total",
        "modelgate_request_duration_seconds", "modelgate_upstream_retries_total",
        "modelgate_requests_in_flight", "modelgate_build_info",
        "modelgate_process_start_time_seconds"}) {
    INFO(family);
    CHECK(first.body.find(std::string{"# HELP "} + family + " ") != std::string::npos);
    CHECK(first.body.find(std::string{"# TYPE "} + family + " ") != std::string::npos);
  }
  promtool_accepts(first.body);
  // Every sample line is `name{labels} value` with a modelgate_ name.
  static const std::regex line_re(R"(^(#.*|modelgate_[a-z_]+(\{[^}]*\})? [-+0-9.eInf]+)$)");
  std::istringstream lines{first.body};
  for (std::string line; std::getline(lines, line);) {
    INFO(line);
    CHECK(std::regex_match(line, line_re));
  }

  mock ok;
  auto reg = [&](const std::string& url) {
    auto r = c.post("/v1/servers", json{{"url", url}, {"models", {"m"}}}.dump(), auth);
    REQUIRE(r.status == 201);
    return json::parse(r.body)["id"].get<std::string>();
  };
  auto id = reg(ok.url());
  auto dead = reg("http://127.0.0.1:1");
  REQUIRE(wait_until([&] {
    auto m = c.get("/metrics").body;
    return sample(m, R"(modelgate_health_checks_total{result="success"})") >= 1
           && sample(m, R"(modelgate_health_checks_total{result="failure"})") >= 1;
  }, 5s));
  REQUIRE(c.del("/v1/servers/" + dead, auth).status == 200);
  // Requests through the gateway (retries: next test case).
  for (int i = 0; i < 4; ++i)
    CHECK(c.post("/v1/chat/completions", R"({"model":"m","messages":[]})").status == 200);
  auto m = c.get("/metrics").body;
  CHECK(sample(m, R"(modelgate_deregistrations_total{reason="manual"})") == 1);
  CHECK(sample(m, R"(modelgate_requests_total{endpoint="chat_completions",code="200"})") == 4);
  CHECK(sample(m, "modelgate_request_duration_seconds_count") == 4);
  CHECK(sample(m, "modelgate_requests_in_flight") == 0);
  CHECK(sample(m, "modelgate_health_check_duration_seconds_count") >= 1);
  CHECK(sample(m, R"(modelgate_servers{status="healthy"})") == 1);
  promtool_accepts(m);
  (void) id;
}

TEST_CASE("a gateway retry is counted", "[metrics][integration]") {
  daemon_process d(MODELGATED_PATH, {"--listen", "127.0.0.1:0", "--db", "{dir}/m.db",
                                     "--health-interval", "3600"});
  http_client c{"127.0.0.1", d.port()};
  mock ok;
  // Both unknown (never probed within the test); a refusing one and a good one.
  for (const auto& url : {std::string{"http://127.0.0.1:1"}, ok.url()})
    REQUIRE(c.post("/v1/servers", json{{"url", url}, {"models", {"m"}}}.dump()).status == 201);
  for (int i = 0; i < 2; ++i)
    CHECK(c.post("/v1/chat/completions", R"({"model":"m","messages":[]})").status == 200);
  auto m = c.get("/metrics").body;
  CHECK(sample(m, "modelgate_upstream_retries_total") == 1);
}
