// daemon_options_test.cpp — black-box tests of modelgated's options.
//
// Invalid values (flag, environment, config file) must exit 2 with one stderr
// line naming the option; valid ones must take effect, with the precedence
// flag > environment > config file > default, API keys replacing rather than
// merging. Effects are observed from outside: the port bound, the database
// file created, which bearer token or API key is accepted, the health checker
// status, the log format.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "harness.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;
using Catch::Contains;

namespace {

// Runs the daemon in a scratch directory, expecting it to exit on its own.
process_result run_daemon(std::vector<std::string> args, const env_list& env = {}) {
  temp_dir cwd("mgopts");
  args.insert(args.begin(), modelgated_bin());
  return run_process(args, env, 3s, cwd.path());
}

std::string without_trailing_newlines(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r'))
    s.pop_back();
  return s;
}

// Exit status 2, exactly one stderr line, containing one of `names`.
void check_rejected(const process_result& r, const std::vector<std::string>& names) {
  INFO("exit status " << r.exit_code << (r.timed_out ? " (still running after 3 s, killed)" : "")
                      << "\nstdout: [" << r.out << "]\nstderr: [" << r.err << "]");
  CHECK(r.exit_code == 2);
  auto err = without_trailing_newlines(r.err);
  CHECK_FALSE(err.empty());
  CHECK(err.find('\n') == std::string::npos);
  bool named = false;
  for (const auto& n : names)
    named = named || err.find(n) != std::string::npos;
  INFO("expected the line to name one of: " << Catch::Detail::stringify(names));
  CHECK(named);
  CHECK(r.out.find("listening") == std::string::npos);
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// The status of `method path` with `Authorization: Bearer token` (none if empty).
int status_with_token(const daemon_process& d, const std::string& path, const std::string& token) {
  http_client c(d.host(), d.port());
  header_list h;
  if (!token.empty())
    h.emplace_back("Authorization", "Bearer " + token);
  return c.get(path, h).status;
}

// Registers one server, so that the database is certainly written.
void register_one(const daemon_process& d, const std::string& token = {}) {
  http_client c(d.host(), d.port());
  header_list h;
  if (!token.empty())
    h.emplace_back("Authorization", "Bearer " + token);
  auto r = c.post("/v1/servers", R"({"url": "http://127.0.0.1:9400", "models": ["m"]})", h);
  INFO(r.body);
  REQUIRE(r.status == 201);
}

json health_checker_status(const daemon_process& d, const std::string& token = {}) {
  http_client c(d.host(), d.port());
  header_list h;
  if (!token.empty())
    h.emplace_back("Authorization", "Bearer " + token);
  auto r = c.get("/v1/health-checker", h);
  INFO("GET /v1/health-checker -> " << r.status << ": " << r.body);
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  return j;
}

bool exists(const std::string& path) { return std::filesystem::exists(path); }

}  // namespace

// -- invalid values -----------------------------------------------------------------

TEST_CASE("an invalid option value exits 2 with one stderr line naming the option",
          "[integration][options]") {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
    {{"--listen", "nonsense"}, "listen"},
    {{"--listen", "127.0.0.1:99999"}, "listen"},
    {{"--health-interval", "0.01"}, "health-interval"},
    {{"--health-interval", "soon"}, "health-interval"},
    {{"--health-timeout", "0"}, "health-timeout"},
    {{"--health-timeout", "100"}, "health-timeout"},  // > default interval 60
    {{"--health-interval", "5", "--health-timeout", "6"}, "health-timeout"},
    {{"--max-failures", "0"}, "max-failures"},
    {{"--max-failures", "three"}, "max-failures"},
    {{"--auto-deregister", "maybe"}, "auto-deregister"},
    {{"--log-level", "loud"}, "log-level"},
    {{"--log-format", "xml"}, "log-format"},
    {{"--max-connections", "0"}, "max-connections"},
    {{"--max-failures"}, "max-failures"},  // value missing
  };
  for (const auto& [opts, name] : cases) {
    std::string label;
    for (const auto& o : opts)
      label += o + " ";
    DYNAMIC_SECTION(label) {
      std::vector<std::string> args = {"--db", ":memory:"};
      if (opts[0] != "--listen") {
        args.push_back("--listen");
        args.push_back("127.0.0.1:0");
      }
      args.insert(args.end(), opts.begin(), opts.end());
      check_rejected(run_daemon(args), {name});
    }
  }
}

TEST_CASE("an unknown flag exits 2 with one stderr line naming it", "[integration][options]") {
  check_rejected(run_daemon({"--listen", "127.0.0.1:0", "--db", ":memory:", "--bogus-flag", "1"}),
                 {"bogus-flag"});
}

TEST_CASE("an invalid environment value exits 2 with one stderr line naming it",
          "[integration][options]") {
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
    {"MODELGATE_MAX_CONSECUTIVE_FAILURES", "0", "max-failures"},
    {"MODELGATE_LOG_LEVEL", "loud", "log-level"},
    {"MODELGATE_HEALTH_CHECK_INTERVAL_SECONDS", "0.01", "health-interval"},
    {"MODELGATE_LISTEN", "nonsense", "listen"},
  };
  for (const auto& [var, value, option] : cases) {
    DYNAMIC_SECTION(var << "=" << value) {
      std::vector<std::string> args = {"--db", ":memory:"};
      if (var != "MODELGATE_LISTEN") {
        args.push_back("--listen");
        args.push_back("127.0.0.1:0");
      }
      check_rejected(run_daemon(args, {{var, value}}), {var, option});
    }
  }
}

TEST_CASE("an unknown key in the config file exits 2 naming the key", "[integration][options][config]") {
  temp_dir dir;
  write_file(dir.file("c.toml"), "listen = \"127.0.0.1:0\"\nbogus-key = 1\n");
  check_rejected(run_daemon({"--db", ":memory:", "--config", dir.file("c.toml")}), {"bogus-key"});
}

TEST_CASE("a bad value in the config file exits 2 naming the key", "[integration][options][config]") {
  temp_dir dir;
  write_file(dir.file("c.toml"), "listen = \"127.0.0.1:0\"\nmax-failures = 0\n");
  check_rejected(run_daemon({"--db", ":memory:", "--config", dir.file("c.toml")}), {"max-failures"});
}

TEST_CASE("a missing config file exits 2", "[integration][options][config]") {
  temp_dir dir;
  auto path = dir.file("does-not-exist.toml");
  check_rejected(run_daemon({"--listen", "127.0.0.1:0", "--db", ":memory:", "--config", path}),
                 {"config", path});
  check_rejected(run_daemon({"--listen", "127.0.0.1:0", "--db", ":memory:"}, {{"MODELGATE_CONFIG", path}}),
                 {"config", "MODELGATE_CONFIG", path});
}

// -- valid values take effect -----------------------------------------------------------

TEST_CASE("boundary option values are accepted", "[integration][options]") {
  daemon_process d(modelgated_bin(),
                   {"--listen", "127.0.0.1:0", "--db", ":memory:", "--health-interval", "0.05",
                    "--health-timeout", "0.05", "--max-failures", "1", "--auto-deregister", "false",
                    "--log-level", "warning", "--log-format", "json", "--max-connections", "1",
                    "--header-timeout", "1"});
  CHECK(d.port() > 0);
  CHECK(status_with_token(d, "/health", "") == 200);
}

TEST_CASE("environment variables set options", "[integration][options][env]") {
  daemon_process d(modelgated_bin(), {},
                   {{"MODELGATE_LISTEN", "127.0.0.1:0"},
                    {"MODELGATE_DB", "{dir}/env.db"},
                    {"MODELGATE_ADMIN_TOKEN", "envtok"}});
  CHECK(d.host() == "127.0.0.1");
  CHECK(d.port() != 8080);
  CHECK(d.port() > 0);
  CHECK(status_with_token(d, "/v1/servers", "") == 401);
  CHECK(status_with_token(d, "/v1/servers", "envtok") == 200);
  register_one(d, "envtok");
  CHECK(exists(d.file("env.db")));
  CHECK_FALSE(exists(d.file("modelgate.db")));
}

TEST_CASE("a flag beats the environment", "[integration][options][env]") {
  daemon_process d(modelgated_bin(),
                   {"--listen", "127.0.0.1:0", "--db", "{dir}/flag.db", "--admin-token", "flagtok"},
                   {{"MODELGATE_LISTEN", "127.0.0.1:1"},
                    {"MODELGATE_DB", "{dir}/env.db"},
                    {"MODELGATE_ADMIN_TOKEN", "envtok"}});
  CHECK(d.port() != 1);
  CHECK(status_with_token(d, "/v1/servers", "flagtok") == 200);
  CHECK(status_with_token(d, "/v1/servers", "envtok") == 401);
  register_one(d, "flagtok");
  CHECK(exists(d.file("flag.db")));
  CHECK_FALSE(exists(d.file("env.db")));
}

TEST_CASE("log-format json writes one JSON object per stderr line", "[integration][options]") {
  daemon_process d(modelgated_bin(), {"--listen", "127.0.0.1:0", "--db", ":memory:", "--log-format", "json"});
  register_one(d);
  d.terminate();
  REQUIRE(d.wait_exit(5s) == 0);
  std::istringstream in(d.stderr_text());
  int lines = 0;
  for (std::string line; std::getline(in, line);) {
    INFO("stderr line: " << line);
    CHECK(json::parse(line, nullptr, false).is_object());
    ++lines;
  }
  CHECK(lines > 0);
}

// -- config file --------------------------------------------------------------------------

TEST_CASE("a config file given by --config sets options", "[integration][options][config]") {
  temp_dir dir;
  write_file(dir.file("c.toml"),
             "# modelgate test configuration\n"
             "listen = \"127.0.0.1:0\"\n"
             "db = \"" + dir.file("cfg.db") + "\"\n"
             "admin-token = \"filetok\"\n"
             "health-interval = 5\n"
             "health-timeout = 2  # the default 10 would exceed the interval\n"
             "\n"
             "api-key = [\"k1\", \"k2\"]\n");
  daemon_process d(modelgated_bin(), {"--config", dir.file("c.toml")});
  CHECK(d.port() != 8080);
  CHECK(status_with_token(d, "/v1/servers", "") == 401);
  CHECK(status_with_token(d, "/v1/servers", "filetok") == 200);
  register_one(d, "filetok");
  CHECK(exists(dir.file("cfg.db")));
}

TEST_CASE("MODELGATE_CONFIG names the config file", "[integration][options][config]") {
  temp_dir dir;
  write_file(dir.file("c.toml"), "listen = \"127.0.0.1:0\"\nadmin-token = \"filetok\"\n");
  daemon_process d(modelgated_bin(), {"--db", ":memory:"}, {{"MODELGATE_CONFIG", dir.file("c.toml")}});
  CHECK(d.port() != 8080);
  CHECK(status_with_token(d, "/v1/servers", "") == 401);
  CHECK(status_with_token(d, "/v1/servers", "filetok") == 200);
}

TEST_CASE("api-key in a config file accepts each listed key on the gateway", "[integration][options][config]") {
  temp_dir dir;
  write_file(dir.file("c.toml"), "listen = \"127.0.0.1:0\"\napi-key = [\"k1\", \"k2\"]\n");
  daemon_process d(modelgated_bin(), {"--db", ":memory:", "--config", dir.file("c.toml")});
  CHECK(status_with_token(d, "/v1/models", "") == 401);
  CHECK(status_with_token(d, "/v1/models", "k1") == 200);
  CHECK(status_with_token(d, "/v1/models", "k2") == 200);
  CHECK(status_with_token(d, "/v1/models", "k3") == 401);
}

TEST_CASE("the environment beats the config file", "[integration][options][config][env]") {
  temp_dir dir;
  write_file(dir.file("c.toml"),
             "listen = \"127.0.0.1:1\"\n"
             "db = \"" + dir.file("cfg.db") + "\"\n"
             "admin-token = \"filetok\"\n");
  daemon_process d(modelgated_bin(), {"--config", dir.file("c.toml")},
                   {{"MODELGATE_LISTEN", "127.0.0.1:0"},
                    {"MODELGATE_DB", dir.file("env.db")},
                    {"MODELGATE_ADMIN_TOKEN", "envtok"}});
  CHECK(d.port() != 1);
  CHECK(status_with_token(d, "/v1/servers", "envtok") == 200);
  CHECK(status_with_token(d, "/v1/servers", "filetok") == 401);
  register_one(d, "envtok");
  CHECK(exists(dir.file("env.db")));
  CHECK_FALSE(exists(dir.file("cfg.db")));
}

TEST_CASE("a flag beats the config file", "[integration][options][config]") {
  temp_dir dir;
  write_file(dir.file("c.toml"), "listen = \"127.0.0.1:1\"\nadmin-token = \"filetok\"\n");
  daemon_process d(modelgated_bin(),
                   {"--config", dir.file("c.toml"), "--listen", "127.0.0.1:0", "--db", ":memory:",
                    "--admin-token", "flagtok"});
  CHECK(d.port() != 1);
  CHECK(status_with_token(d, "/v1/servers", "flagtok") == 200);
  CHECK(status_with_token(d, "/v1/servers", "filetok") == 401);
}

TEST_CASE("api keys from a higher source replace those of lower ones", "[integration][options][config][env]") {
  temp_dir dir;
  write_file(dir.file("c.toml"), "api-key = [\"k1\", \"k2\"]\n");
  const std::vector<std::string> base = {"--listen", "127.0.0.1:0", "--db", ":memory:", "--config",
                                         dir.file("c.toml")};
  SECTION("the environment replaces the file's keys") {
    daemon_process d(modelgated_bin(), base, {{"MODELGATE_API_KEYS", "e1,e2"}});
    CHECK(status_with_token(d, "/v1/models", "e1") == 200);
    CHECK(status_with_token(d, "/v1/models", "e2") == 200);
    CHECK(status_with_token(d, "/v1/models", "k1") == 401);
  }
  SECTION("flags replace the environment's keys") {
    auto args = base;
    for (const char* a : {"--api-key", "f1", "--api-key", "f2"})
      args.push_back(a);
    daemon_process d(modelgated_bin(), args, {{"MODELGATE_API_KEYS", "e1,e2"}});
    CHECK(status_with_token(d, "/v1/models", "f1") == 200);
    CHECK(status_with_token(d, "/v1/models", "f2") == 200);
    CHECK(status_with_token(d, "/v1/models", "e1") == 401);
    CHECK(status_with_token(d, "/v1/models", "k1") == 401);
  }
}

TEST_CASE("health checker options from file environment and flags show in its status",
          "[integration][options][config][env]") {
  temp_dir dir;
  write_file(dir.file("c.toml"),
             "health-interval = 5\n"
             "health-timeout = 2\n"
             "max-failures = 4\n"
             "auto-deregister = false\n");
  daemon_process d(modelgated_bin(),
                   {"--listen", "127.0.0.1:0", "--db", ":memory:", "--config", dir.file("c.toml"),
                    "--health-timeout", "3"},
                   {{"MODELGATE_MAX_CONSECUTIVE_FAILURES", "6"}});
  auto s = health_checker_status(d);
  INFO(s.dump());
  CHECK(s.value("interval_seconds", -1.0) == Approx(5.0));          // file
  CHECK(s.value("timeout_seconds", -1.0) == Approx(3.0));           // flag beats file
  CHECK(s.value("max_consecutive_failures", -1) == 6);              // env beats file
  CHECK(s.value("auto_deregister", json("missing")) == json(false));  // file
}
