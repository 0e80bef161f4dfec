// modelgatectl_test.cpp — black-box tests of the `modelgatectl` CLI against a
// real modelgated: each command's effect (checked over HTTP), `--json`
// printing the daemon's body exactly, and the exit codes 0 (success),
// 1 (daemon error), 2 (bad usage) and 3 (daemon unreachable).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "harness.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;
using Catch::Contains;

namespace {

struct ctl_fixture {
  explicit ctl_fixture(const std::string& token = {})
    : daemon(modelgated_bin(), make_args(token)), client(daemon.host(), daemon.port()) {
    if (!token.empty())
      auth = {{"Authorization", "Bearer " + token}};
    client.post("/v1/health-checker/stop", "", auth);  // best effort: keep statuses stable
  }

  static std::vector<std::string> make_args(const std::string& token) {
    std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--db", "{dir}/m.db",
                                     "--health-interval", "3600", "--health-timeout", "1"};
    if (!token.empty()) {
      args.push_back("--admin-token");
      args.push_back(token);
    }
    return args;
  }

  // modelgatectl --url <daemon> args...
  process_result ctl(const std::vector<std::string>& args, const env_list& env = {}) {
    std::vector<std::string> full = {modelgatectl_bin(), "--url", daemon.base_url()};
    full.insert(full.end(), args.begin(), args.end());
    return run_process(full, env, 15s);
  }

  json register_server(const std::string& url, const std::string& model = "m") {
    auto r = client.post("/v1/servers", json({{"url", url}, {"models", {model}}}).dump(), auth);
    INFO(r.body);
    REQUIRE(r.status == 201);
    return json::parse(r.body);
  }

  json get(const std::string& path) {
    auto r = client.get(path, auth);
    INFO("GET " << path << " -> " << r.status << ": " << r.body);
    REQUIRE(r.status == 200);
    return json::parse(r.body);
  }

  daemon_process daemon;
  http_client client;
  header_list auth;
};

std::string describe(const process_result& r) {
  return "exit " + std::to_string(r.exit_code) + (r.timed_out ? " (timed out)" : "") + "\nstdout: [" +
         r.out + "]\nstderr: [" + r.err + "]";
}

// error.message of an error body, "?" when there is none.
std::string error_message(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].contains("message") &&
      j["error"]["message"].is_string())
    return j["error"]["message"].get<std::string>();
  return "?";
}

// stdout is the body exactly, allowing one added final newline.
bool same_body(const std::string& out, const std::string& body) {
  return out == body || out == body + "\n";
}

}  // namespace

// -- commands that succeed ---------------------------------------------------------

TEST_CASE_METHOD(ctl_fixture, "modelgatectl register registers a server and prints it", "[integration][ctl]") {
  auto r = ctl({"register", "http://127.0.0.1:9501/", "--model", "m1", "--model", "m2", "--name", "node-a",
                "--health-path", "/hz"});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  auto list = get("/v1/servers");
  REQUIRE(list["data"].size() == 1);
  auto s = list["data"][0];
  CHECK(s["url"] == "http://127.0.0.1:9501");
  CHECK(s["models"] == json::array({"m1", "m2"}));
  CHECK(s["name"] == "node-a");
  CHECK(s["health_path"] == "/hz");
  CHECK_THAT(r.out, Contains(s["id"].get<std::string>()));
  CHECK_THAT(r.out, Contains("http://127.0.0.1:9501"));
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl --json prints the daemon's body exactly", "[integration][ctl]") {
  auto reg = ctl({"--json", "register", "http://127.0.0.1:9502", "--model", "m"});
  INFO(describe(reg));
  REQUIRE(reg.exit_code == 0);
  auto rec = json::parse(reg.out, nullptr, false);
  REQUIRE(rec.is_object());
  auto id = rec.value("id", "");
  CHECK(rec == get("/v1/servers/" + id));
  register_server("http://127.0.0.1:9503");
  REQUIRE(client.del("/v1/servers/" + id).status == 200);

  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
    {{"--json", "show", id}, "/v1/servers/" + id},
    {{"--json", "list"}, "/v1/servers"},
    {{"--json", "list", "--all"}, "/v1/servers?include_inactive=true"},
    {{"--json", "events", id}, "/v1/servers/" + id + "/events"},
  };
  for (const auto& [args, path] : cases) {
    auto r = ctl(args);
    auto body = client.get(path).body;
    INFO(path << "\n" << describe(r) << "\nbody: [" << body << "]");
    CHECK(r.exit_code == 0);
    CHECK(same_body(r.out, body));
  }
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl list shows active servers and list --all inactive ones too",
                 "[integration][ctl]") {
  auto active = register_server("http://127.0.0.1:9511")["id"].get<std::string>();
  auto inactive = register_server("http://127.0.0.1:9512")["id"].get<std::string>();
  REQUIRE(client.del("/v1/servers/" + inactive).status == 200);

  auto r = ctl({"list"});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Contains(active));
  CHECK_THAT(r.out, Contains("http://127.0.0.1:9511"));
  CHECK(r.out.find(inactive) == std::string::npos);

  auto all = ctl({"list", "--all"});
  INFO(describe(all));
  CHECK(all.exit_code == 0);
  CHECK_THAT(all.out, Contains(active));
  CHECK_THAT(all.out, Contains(inactive));
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl show prints one server", "[integration][ctl]") {
  auto id = register_server("http://127.0.0.1:9521", "llama-3-8b")["id"].get<std::string>();
  auto r = ctl({"show", id});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Contains(id));
  CHECK_THAT(r.out, Contains("http://127.0.0.1:9521"));
  CHECK_THAT(r.out, Contains("llama-3-8b"));
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl deregister and reactivate change the server's state",
                 "[integration][ctl]") {
  auto id = register_server("http://127.0.0.1:9531")["id"].get<std::string>();
  auto d = ctl({"deregister", id});
  INFO(describe(d));
  CHECK(d.exit_code == 0);
  auto after_d = get("/v1/servers/" + id);
  CHECK(after_d["is_active"] == false);
  CHECK(after_d["deregistered_reason"] == "manual");

  auto a = ctl({"reactivate", id});
  INFO(describe(a));
  CHECK(a.exit_code == 0);
  CHECK(get("/v1/servers/" + id)["is_active"] == true);
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl events lists the server's transitions", "[integration][ctl]") {
  auto id = register_server("http://127.0.0.1:9541")["id"].get<std::string>();
  REQUIRE(client.del("/v1/servers/" + id).status == 200);
  auto r = ctl({"events", id});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Contains("registered"));
  CHECK_THAT(r.out, Contains("deregistered"));
}

// -- exit codes -----------------------------------------------------------------------

TEST_CASE_METHOD(ctl_fixture, "modelgatectl exits 1 with the daemon's message when the daemon answers an error",
                 "[integration][ctl]") {
  register_server("http://127.0.0.1:9551");
  struct error_case {
    std::vector<std::string> args;
    std::string method, path, body;  // the same request over HTTP, for its message
  };
  const std::vector<error_case> cases = {
    {{"show", "srv_000000000000"}, "GET", "/v1/servers/srv_000000000000", ""},
    {{"deregister", "srv_000000000000"}, "DELETE", "/v1/servers/srv_000000000000", ""},
    {{"events", "srv_000000000000"}, "GET", "/v1/servers/srv_000000000000/events", ""},
    {{"register", "ftp://x", "--model", "m"}, "POST", "/v1/servers", R"({"url":"ftp://x","models":["m"]})"},
    {{"register", "http://127.0.0.1:9551", "--model", "m"}, "POST", "/v1/servers",
     R"({"url":"http://127.0.0.1:9551","models":["m"]})"},
  };
  auto before = client.get("/v1/servers?include_inactive=true").body;
  for (const auto& c : cases) {
    auto r = ctl(c.args);
    auto direct = client.request(c.method, c.path, c.body);
    auto message = error_message(direct.body);
    INFO(c.method << " " << c.path << " answers " << direct.status << ": " << direct.body << "\n" << describe(r));
    CHECK(direct.status >= 400);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Contains(message));
  }
  CHECK(client.get("/v1/servers?include_inactive=true").body == before);
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl exits 2 on bad usage without touching the daemon",
                 "[integration][ctl]") {
  auto id = register_server("http://127.0.0.1:9561")["id"].get<std::string>();
  auto before = client.get("/v1/servers?include_inactive=true").body;
  const std::vector<std::vector<std::string>> cases = {
    {},
    {"frobnicate"},
    {"register"},
    {"register", "http://127.0.0.1:9562"},  // no --model
    {"register", "--model", "m"},           // no URL
    {"show"},
    {"deregister"},
    {"reactivate"},
    {"events"},
    {"show", id, "extra"},
    {"--bogus-flag", "list"},
    {"list", "--bogus-flag"},
  };
  for (const auto& args : cases) {
    auto r = ctl(args);
    std::string label;
    for (const auto& a : args)
      label += a + " ";
    INFO("modelgatectl --url ... " << label << "\n" << describe(r));
    CHECK(r.exit_code == 2);
    CHECK_FALSE(r.err.empty());
  }
  CHECK(client.get("/v1/servers?include_inactive=true").body == before);
}

TEST_CASE("modelgatectl exits 3 when the daemon cannot be reached", "[integration][ctl]") {
  for (const auto& args : std::vector<std::vector<std::string>>{
         {"list"}, {"show", "srv_000000000000"}, {"register", "http://127.0.0.1:9", "--model", "m"}}) {
    std::vector<std::string> full = {modelgatectl_bin(), "--url", "http://127.0.0.1:1"};
    full.insert(full.end(), args.begin(), args.end());
    auto r = run_process(full, {}, 15s);
    INFO(args[0] << ": " << describe(r));
    CHECK(r.exit_code == 3);
    CHECK_FALSE(r.err.empty());
  }
}

TEST_CASE_METHOD(ctl_fixture, "modelgatectl takes the daemon URL from MODELGATE_URL unless --url is given",
                 "[integration][ctl]") {
  auto id = register_server("http://127.0.0.1:9571")["id"].get<std::string>();
  auto from_env = run_process({modelgatectl_bin(), "list"}, {{"MODELGATE_URL", daemon.base_url()}}, 15s);
  INFO(describe(from_env));
  CHECK(from_env.exit_code == 0);
  CHECK_THAT(from_env.out, Contains(id));

  auto flag_wins = ctl({"list"}, {{"MODELGATE_URL", "http://127.0.0.1:1"}});
  INFO(describe(flag_wins));
  CHECK(flag_wins.exit_code == 0);
  CHECK_THAT(flag_wins.out, Contains(id));
}

TEST_CASE("modelgatectl sends the admin token from --token or MODELGATE_ADMIN_TOKEN", "[integration][ctl][auth]") {
  ctl_fixture f("secret");
  auto id = f.register_server("http://127.0.0.1:9581")["id"].get<std::string>();

  auto no_token = f.ctl({"list"});
  INFO(describe(no_token));
  CHECK(no_token.exit_code == 1);

  auto wrong = f.ctl({"--token", "wrong", "list"});
  INFO(describe(wrong));
  CHECK(wrong.exit_code == 1);

  auto flag = f.ctl({"--token", "secret", "list"});
  INFO(describe(flag));
  CHECK(flag.exit_code == 0);
  CHECK_THAT(flag.out, Contains(id));

  auto env = f.ctl({"list"}, {{"MODELGATE_ADMIN_TOKEN", "secret"}});
  INFO(describe(env));
  CHECK(env.exit_code == 0);
  CHECK_THAT(env.out, Contains(id));
}
