// The daemon's option merging: defaults, precedence flag > env > file, and
// exit 2 with one line naming the option on a bad value.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <unistd.h>

#include "tools/modelgated/options.hpp"

using namespace mg;

namespace {

struct fake_env {
  std::map<std::string, std::string> vars;
  env_lookup lookup() const {
    return [this](const std::string& name) -> std::optional<std::string> {
      auto it = vars.find(name);
      if (it == vars.end())
        return std::nullopt;
      return it->second;
    };
  }
};

daemon_options parse(std::vector<std::string> args, const fake_env& env = {}) {
  args.insert(args.begin(), "modelgated");
  std::vector<const char*> argv;
  for (auto& a : args)
    argv.push_back(a.c_str());
  return parse_daemon_options(static_cast<int>(argv.size()), argv.data(), env.lookup());
}

struct temp_file {
  std::string path;
  explicit temp_file(const std::string& text) {
    char tmpl[] = "/tmp/mg-config-XXXXXX";
    int fd = ::mkstemp(tmpl);
    ::close(fd);
    path = tmpl;
    std::ofstream{path} << text;
  }
  ~temp_file() {
    std::remove(path.c_str());
  }
};

} // namespace

TEST_CASE("with no options the contract's defaults apply", "[options]") {
  auto o = parse({});
  REQUIRE(o.config);
  CHECK(o.config->listen_host == "127.0.0.1");
  CHECK(o.config->listen_port == 8080);
  CHECK(o.config->db_path == "modelgate.db");
  CHECK(o.config->health.interval_seconds == 60);
  CHECK(o.config->health.timeout_seconds == 10);
  CHECK(o.config->health.max_failures == 3);
  CHECK(o.config->health.auto_deregister);
  CHECK_FALSE(o.config->admin_token);
  CHECK(o.config->api_keys.empty());
  CHECK(o.config->level == log_level::info);
  CHECK(o.config->format == log_format::text);
  CHECK(o.config->header_timeout_seconds == 10);
  CHECK(o.config->max_connections == 10000);
}

TEST_CASE("flags take both --flag VALUE and --flag=VALUE", "[options]") {
  auto o = parse({"--listen", "0.0.0.0:0", "--db=:memory:", "--auto-deregister", "false",
                  "--health-interval", "0.05", "--health-timeout", "0.05", "--api-key", "a",
                  "--api-key", "b", "--log-format", "json"});
  REQUIRE(o.config);
  CHECK(o.config->listen_host == "0.0.0.0");
  CHECK(o.config->listen_port == 0);
  CHECK(o.config->db_path == ":memory:");
  CHECK_FALSE(o.config->health.auto_deregister);
  CHECK(o.config->api_keys == std::vector<std::string>{"a", "b"});
  CHECK(o.config->format == log_format::json);
}

TEST_CASE("a flag beats the environment, which beats the config file", "[options]") {
  temp_file file{"# comment\nlisten = \"127.0.0.1:9000\"\nhealth-interval = 5\n"
                 "max-failures = 7\napi-key = [\"k1\", \"k2\"]\n"};
  fake_env env;
  env.vars["MODELGATE_CONFIG"] = file.path;
  env.vars["MODELGATE_MAX_CONSECUTIVE_FAILURES"] = "4";
  env.vars["MODELGATE_API_KEYS"] = "e1,e2";
  auto o = parse({"--max-failures", "9"}, env);
  REQUIRE(o.config);
  CHECK(o.config->listen_port == 9000);             // file
  CHECK(o.config->health.interval_seconds == 5);     // file
  CHECK(o.config->health.max_failures == 9);         // flag over env over file
  CHECK(o.config->api_keys == std::vector<std::string>{"e1", "e2"}); // env replaces file
  auto only_env = parse({}, env);
  CHECK(only_env.config->health.max_failures == 4);
  auto flag_keys = parse({"--api-key", "f"}, env);
  CHECK(flag_keys.config->api_keys == std::vector<std::string>{"f"});
}

TEST_CASE("bad values exit 2 with one line naming the option", "[options]") {
  struct row {
    std::vector<std::string> args;
    const char* names;
  };
  const row rows[] = {
    {{"--listen", "nonsense"}, "--listen"},
    {{"--listen", "127.0.0.1:70000"}, "--listen"},
    {{"--health-interval", "0.01"}, "--health-interval"},
    {{"--health-interval", "abc"}, "--health-interval"},
    {{"--health-timeout", "0"}, "--health-timeout"},
    {{"--health-timeout", "100"}, "--health-timeout"},
    {{"--max-failures", "0"}, "--max-failures"},
    {{"--max-failures", "1.5"}, "--max-failures"},
    {{"--auto-deregister", "maybe"}, "--auto-deregister"},
    {{"--log-level", "loud"}, "--log-level"},
    {{"--log-format", "xml"}, "--log-format"},
    {{"--max-connections", "0"}, "--max-connections"},
    {{"--header-timeout", "-1"}, "--header-timeout"},
    {{"--busy-poll-us", "-1"}, "--busy-poll-us"},
    {{"--busy-poll-us", "20000"}, "--busy-poll-us"},
    {{"--busy-poll-us", "fast"}, "--busy-poll-us"},
    {{"--bogus", "1"}, "--bogus"},
    {{"--config", "/nonexistent/modelgate.toml"}, "--config"},
  };
  for (const auto& r : rows) {
    INFO(r.args.front());
    auto o = parse(r.args);
    CHECK_FALSE(o.config);
    CHECK(o.exit_code == 2);
    CHECK(o.output.find(r.names) != std::string::npos);
    CHECK(o.output.find('\n') == std::string::npos);
  }
}

TEST_CASE("a bad environment value or config key is named", "[options]") {
  fake_env env;
  env.vars["MODELGATE_HEALTH_CHECK_INTERVAL_SECONDS"] = "fast";
  auto o = parse({}, env);
  CHECK(o.exit_code == 2);
  CHECK(o.output.find("MODELGATE_HEALTH_CHECK_INTERVAL_SECONDS") != std::string::npos);
  temp_file unknown{"listen = \"127.0.0.1:0\"\nfrobnicate = 3\n"};
  auto u = parse({"--config", unknown.path});
  CHECK(u.exit_code == 2);
  CHECK(u.output.find("frobnicate") != std::string::npos);
  temp_file bad{"max-failures = 0\n"};
  auto b = parse({"--config", bad.path});
  CHECK(b.exit_code == 2);
  CHECK(b.output.find("max-failures") != std::string::npos);
}

TEST_CASE("the default health timeout follows a shorter interval", "[options]") {
  auto o = parse({"--health-interval", "2"});
  REQUIRE(o.config);
  CHECK(o.config->health.timeout_seconds == 2);
  auto explicit_timeout = parse({"--health-interval", "2", "--health-timeout", "3"});
  CHECK(explicit_timeout.exit_code == 2);
}

TEST_CASE("the help flag prints the options and exits 0", "[options]") {
  auto o = parse({"--help"});
  CHECK_FALSE(o.config);
  CHECK(o.exit_code == 0);
  CHECK(o.output.find("--health-interval") != std::string::npos);
}

TEST_CASE("busy polling is 50 us by default and set by flag, env or file", "[options]") {
  CHECK(parse({}).config->busy_poll_us == 50);
  CHECK(parse({"--busy-poll-us", "0"}).config->busy_poll_us == 0);
  fake_env env;
  env.vars["MODELGATE_BUSY_POLL_MICROSECONDS"] = "200";
  CHECK(parse({}, env).config->busy_poll_us == 200);
  CHECK(parse({"--busy-poll-us", "7"}, env).config->busy_poll_us == 7);
  temp_file file{"busy-poll-us = 0\n"};
  CHECK(parse({"--config", file.path}).config->busy_poll_us == 0);
}
