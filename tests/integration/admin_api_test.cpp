// admin_api_test.cpp — black-box tests of modelgated's HTTP admin API.
//
// Each test case starts a real `modelgated --listen 127.0.0.1:0 --db <tmp>/m.db`
// and talks to it over real sockets: every admin route, the error vocabulary
// (400/401/404/405/409/413) with the registry left unchanged by bad requests,
// secrets kept out of responses and logs, slow and many clients, and a
// graceful exit on SIGTERM / SIGINT.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <regex>
#include <set>
#include <thread>

#include "harness.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;

namespace {

// -- helpers --------------------------------------------------------------------

// j[key], or a marker string when j is no object or lacks the key (so a
// missing field never passes as null).
json field(const json& j, const std::string& key) {
  if (j.is_object() && j.contains(key))
    return j.at(key);
  return json("<missing " + key + ">");
}

json parse(const http_response& r) { return json::parse(r.body, nullptr, false); }

bool contains_key(const json& j, const std::string& key) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (it.key() == key || contains_key(it.value(), key))
        return true;
  } else if (j.is_array()) {
    for (const auto& e : j)
      if (contains_key(e, key))
        return true;
  }
  return false;
}

bool is_rfc3339_ms_utc(const json& v) {
  static const std::regex re(R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$)");
  return v.is_string() && std::regex_match(v.get<std::string>(), re);
}

// Seconds since the epoch of an RFC 3339 UTC time (milliseconds dropped).
std::time_t parse_utc(const std::string& s) {
  std::tm tm{};
  if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return ::timegm(&tm);
}

bool is_server_id(const json& v) {
  static const std::regex re("^srv_[0-9a-f]{12}$");
  return v.is_string() && std::regex_match(v.get<std::string>(), re);
}

// Checks the OpenAI error shape, the status, and optionally the code and a
// word the message must contain.
void check_error(const http_response& r, int status, const std::string& code = {},
                 const std::string& message_word = {}) {
  INFO("response " << r.status << ": " << r.body);
  CHECK(r.status == status);
  auto j = parse(r);
  CHECK_FALSE(j.is_discarded());
  auto e = field(j, "error");
  CHECK(e.is_object());
  CHECK(field(e, "message").is_string());
  CHECK(field(e, "type").is_string());
  CHECK(field(e, "code").is_string());
  if (!code.empty())
    CHECK(field(e, "code") == code);
  if (!message_word.empty() && field(e, "message").is_string())
    CHECK_THAT(field(e, "message").get<std::string>(), Catch::Contains(message_word));
}

const std::vector<std::string> record_keys = {
  "id", "url", "name", "models", "metadata", "health_path", "health_expect", "is_active",
  "status", "consecutive_failures", "last_check_at", "last_response_time_ms", "last_error",
  "last_error_kind", "registered_at", "deregistered_at", "deregistered_reason"};

// A running daemon plus a keep-alive client. Probing is paused (and the
// interval long) so that statuses stay "unknown" for the whole test.
struct admin_daemon {
  explicit admin_daemon(std::vector<std::string> extra = {}, const std::string& token = {},
                        env_list env = {})
    : daemon(modelgated_bin(), make_args(extra, token), std::move(env)),
      client(daemon.host(), daemon.port()) {
    if (!token.empty())
      auth = {{"Authorization", "Bearer " + token}};
    client.post("/v1/health-checker/stop", "", auth);  // best effort
  }

  static std::vector<std::string> make_args(const std::vector<std::string>& extra,
                                            const std::string& token) {
    std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--db", "{dir}/m.db",
                                     "--health-interval", "3600", "--health-timeout", "1"};
    if (!token.empty()) {
      args.push_back("--admin-token");
      args.push_back(token);
    }
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  http_client new_client(std::chrono::milliseconds timeout = 5s) const {
    return http_client(daemon.host(), daemon.port(), timeout);
  }

  // Registers; the test stops unless the answer is 201.
  json register_server(const json& body) {
    auto r = client.post("/v1/servers", body.dump(), auth);
    INFO("POST /v1/servers " << body.dump() << " -> " << r.status << ": " << r.body);
    REQUIRE(r.status == 201);
    auto j = parse(r);
    REQUIRE(j.is_object());
    return j;
  }

  json get_json(const std::string& path, int expected_status = 200) {
    auto r = client.get(path, auth);
    INFO("GET " << path << " -> " << r.status << ": " << r.body);
    REQUIRE(r.status == expected_status);
    auto j = parse(r);
    REQUIRE_FALSE(j.is_discarded());
    return j;
  }

  // Ids of GET /v1/servers{query}, which must be {"data": [...]}.
  std::set<std::string> list_ids(const std::string& query = {}) {
    auto j = get_json("/v1/servers" + query);
    INFO("GET /v1/servers" << query << ": " << j.dump());
    REQUIRE(field(j, "data").is_array());
    std::set<std::string> ids;
    for (const auto& rec : j["data"])
      ids.insert(field(rec, "id").dump());
    return ids;
  }

  // Every record, active or not, ordered by id: the registry's content.
  json snapshot() {
    auto j = get_json("/v1/servers?include_inactive=true");
    REQUIRE(field(j, "data").is_array());
    auto data = j["data"];
    std::sort(data.begin(), data.end(),
              [](const json& a, const json& b) { return field(a, "id").dump() < field(b, "id").dump(); });
    return data;
  }

  daemon_process daemon;
  http_client client;
  header_list auth;
};

std::string as_json_text(const std::string& s) { return json(s).dump(); }

}  // namespace

// -- registration -----------------------------------------------------------------

TEST_CASE_METHOD(admin_daemon, "registering a server answers 201 with the full record and its defaults",
                 "[integration][admin]") {
  auto before = std::time(nullptr);
  auto r = client.post("/v1/servers", R"({"url": "http://127.0.0.1:9001/", "models": ["llama-3-8b"]})");
  INFO(r.body);
  REQUIRE(r.status == 201);
  CHECK_THAT(r.header("content-type"), Catch::Contains("application/json"));
  auto s = parse(r);
  REQUIRE(s.is_object());
  for (const auto& key : record_keys) {
    INFO("record key " << key);
    CHECK(s.contains(key));
  }
  CHECK(is_server_id(field(s, "id")));
  CHECK(field(s, "url") == "http://127.0.0.1:9001");
  CHECK(field(s, "name").is_null());
  CHECK(field(s, "models") == json::array({"llama-3-8b"}));
  CHECK(field(s, "metadata") == json::object());
  CHECK(field(s, "health_path") == "/health");
  CHECK(field(s, "health_expect") == "json");
  CHECK(field(s, "is_active") == true);
  CHECK(field(s, "status") == "unknown");
  CHECK(field(s, "consecutive_failures") == 0);
  CHECK(field(s, "last_check_at").is_null());
  CHECK(field(s, "last_response_time_ms").is_null());
  CHECK(field(s, "last_error").is_null());
  CHECK(field(s, "last_error_kind").is_null());
  CHECK(field(s, "deregistered_at").is_null());
  CHECK(field(s, "deregistered_reason").is_null());
  CHECK_FALSE(s.contains("api_key"));
  REQUIRE(is_rfc3339_ms_utc(field(s, "registered_at")));
  auto at = parse_utc(s["registered_at"].get<std::string>());
  CHECK(at >= before - 5);
  CHECK(at <= std::time(nullptr) + 5);

  // GET by id answers the same record.
  auto got = get_json("/v1/servers/" + s["id"].get<std::string>());
  CHECK(got == s);
}

TEST_CASE_METHOD(admin_daemon, "optional registration fields are stored as given", "[integration][admin]") {
  json body = {{"url", "https://gpu-node-1.example:8443"},
               {"models", {"llama-3-8b", "mistral-7b"}},
               {"name", "gpu-n\u00f6de-1 \u2713"},
               {"metadata", {{"rack", "r1"}, {"gpus", 2}, {"tags", {"a", "b"}}, {"nested", {{"x", nullptr}}}}},
               {"health_path", "/v1/health"},
               {"health_expect", "status"}};
  auto s = register_server(body);
  CHECK(field(s, "url") == "https://gpu-node-1.example:8443");
  CHECK(field(s, "models") == body["models"]);
  CHECK(field(s, "name") == body["name"]);
  CHECK(field(s, "metadata") == body["metadata"]);
  CHECK(field(s, "health_path") == "/v1/health");
  CHECK(field(s, "health_expect") == "status");
  CHECK(get_json("/v1/servers/" + s["id"].get<std::string>()) == s);
}

TEST_CASE_METHOD(admin_daemon, "a registration's api_key is never returned by any endpoint",
                 "[integration][admin][secrets]") {
  const std::string key = "sk-test-9c1e77d0a4";
  auto r = client.post("/v1/servers",
                       json({{"url", "http://127.0.0.1:9003"}, {"models", {"m"}}, {"api_key", key}}).dump());
  REQUIRE(r.status == 201);
  auto id = parse(r)["id"].get<std::string>();
  std::vector<http_response> answers = {r};
  answers.push_back(client.get("/v1/servers/" + id));
  answers.push_back(client.get("/v1/servers"));
  answers.push_back(client.get("/v1/servers?include_inactive=true"));
  answers.push_back(client.get("/v1/servers?model=m"));
  answers.push_back(client.del("/v1/servers/" + id));
  answers.push_back(client.get("/v1/servers/" + id));
  answers.push_back(client.post("/v1/servers/" + id + "/reactivate", ""));
  answers.push_back(client.get("/v1/servers/" + id + "/events"));
  for (const auto& a : answers) {
    INFO(a.status << ": " << a.body);
    CHECK(a.status / 100 == 2);
    CHECK(a.body.find(key) == std::string::npos);
    CHECK_FALSE(contains_key(parse(a), "api_key"));
  }
}

TEST_CASE_METHOD(admin_daemon, "registering a URL that is already active answers 409 and changes nothing",
                 "[integration][admin]") {
  auto s = register_server({{"url", "http://127.0.0.1:9002"}, {"models", {"m1"}}, {"name", "first"}});
  auto before = snapshot();
  for (const std::string url : {"http://127.0.0.1:9002", "http://127.0.0.1:9002/"}) {
    auto r = client.post("/v1/servers", json({{"url", url}, {"models", {"m2"}}, {"name", "second"}}).dump());
    INFO("url " << url);
    check_error(r, 409, "conflict");
  }
  CHECK(snapshot() == before);
}

// -- listing --------------------------------------------------------------------------

TEST_CASE_METHOD(admin_daemon, "the server list returns every active server under data",
                 "[integration][admin]") {
  CHECK(list_ids().empty());
  std::set<std::string> ids;
  for (int i = 0; i < 3; ++i)
    ids.insert(field(register_server({{"url", "http://127.0.0.1:" + std::to_string(9100 + i)},
                                      {"models", {"m"}}}),
                     "id")
                 .dump());
  CHECK(list_ids() == ids);
  auto j = get_json("/v1/servers");
  for (const auto& rec : j["data"]) {
    auto one = get_json("/v1/servers/" + field(rec, "id").get<std::string>());
    CHECK(rec == one);
  }
}

TEST_CASE_METHOD(admin_daemon, "the server list can be filtered by model", "[integration][admin]") {
  auto a = register_server({{"url", "http://127.0.0.1:9201"}, {"models", {"m1"}}})["id"].dump();
  auto b = register_server({{"url", "http://127.0.0.1:9202"}, {"models", {"m2", "m1"}}})["id"].dump();
  auto c = register_server({{"url", "http://127.0.0.1:9203"}, {"models", {"m3"}}})["id"].dump();
  auto hf = register_server({{"url", "http://127.0.0.1:9204"},
                             {"models", {"meta-llama/Meta-Llama-3-8B-Instruct"}}})["id"].dump();
  CHECK(list_ids("?model=m1") == std::set<std::string>{a, b});
  CHECK(list_ids("?model=m2") == std::set<std::string>{b});
  CHECK(list_ids("?model=m3") == std::set<std::string>{c});
  CHECK(list_ids("?model=meta-llama%2FMeta-Llama-3-8B-Instruct") == std::set<std::string>{hf});
  CHECK(list_ids("?model=nothing-serves-this").empty());
  CHECK(list_ids("?include_inactive=false").size() == 4);
}

TEST_CASE_METHOD(admin_daemon, "the server list can be filtered by status", "[integration][admin]") {
  auto a = register_server({{"url", "http://127.0.0.1:9301"}, {"models", {"m"}}})["id"].dump();
  auto b = register_server({{"url", "http://127.0.0.1:9302"}, {"models", {"m"}}})["id"].dump();
  CHECK(list_ids("?status=unknown") == std::set<std::string>{a, b});
  CHECK(list_ids("?status=healthy").empty());
  CHECK(list_ids("?status=unhealthy").empty());
}

// -- deregistration and reactivation ------------------------------------------------------

TEST_CASE_METHOD(admin_daemon, "deregistering a server soft-deletes it with reason manual",
                 "[integration][admin]") {
  auto s = register_server({{"url", "http://127.0.0.1:9401"}, {"models", {"m"}}});
  auto keep = register_server({{"url", "http://127.0.0.1:9402"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();

  auto r = client.del("/v1/servers/" + id);
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto d = parse(r);
  CHECK(field(d, "id") == id);
  CHECK(field(d, "is_active") == false);
  CHECK(field(d, "deregistered_reason") == "manual");
  REQUIRE(is_rfc3339_ms_utc(field(d, "deregistered_at")));
  CHECK(d["deregistered_at"].get<std::string>() >= s["registered_at"].get<std::string>());
  CHECK(field(d, "registered_at") == s["registered_at"]);

  CHECK(get_json("/v1/servers/" + id) == d);  // still there by id
  CHECK(list_ids() == std::set<std::string>{keep["id"].dump()});
  CHECK(list_ids("?include_inactive=true") == std::set<std::string>{keep["id"].dump(), s["id"].dump()});
}

TEST_CASE_METHOD(admin_daemon, "reactivating a deregistered server makes it active again",
                 "[integration][admin]") {
  auto s = register_server({{"url", "http://127.0.0.1:9501"}, {"models", {"m"}}, {"name", "n"}});
  auto id = s["id"].get<std::string>();
  REQUIRE(client.del("/v1/servers/" + id).status == 200);

  auto r = client.post("/v1/servers/" + id + "/reactivate", "");
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto a = parse(r);
  CHECK(field(a, "id") == id);
  CHECK(field(a, "is_active") == true);
  CHECK(field(a, "status") == "unknown");
  CHECK(field(a, "consecutive_failures") == 0);
  for (const char* k : {"last_check_at", "last_response_time_ms", "last_error", "last_error_kind",
                        "deregistered_at", "deregistered_reason"}) {
    INFO(k);
    CHECK(field(a, k).is_null());
  }
  CHECK(field(a, "registered_at") == s["registered_at"]);
  CHECK(field(a, "url") == s["url"]);
  CHECK(field(a, "name") == "n");
  CHECK(field(a, "models") == s["models"]);
  CHECK(get_json("/v1/servers/" + id) == a);
  CHECK(list_ids() == std::set<std::string>{as_json_text(id)});
}

TEST_CASE_METHOD(admin_daemon, "reactivating an active server answers 200 and changes nothing",
                 "[integration][admin]") {
  auto s = register_server({{"url", "http://127.0.0.1:9601"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();
  auto events_before = get_json("/v1/servers/" + id + "/events");
  auto r = client.post("/v1/servers/" + id + "/reactivate", "");
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(parse(r) == s);
  CHECK(get_json("/v1/servers/" + id) == s);
  CHECK(get_json("/v1/servers/" + id + "/events") == events_before);
}

TEST_CASE_METHOD(admin_daemon, "re-registering an inactive URL reactivates it with its old id and registered_at",
                 "[integration][admin]") {
  auto old = register_server({{"url", "http://127.0.0.1:9701"},
                              {"models", {"old-model"}},
                              {"name", "old-name"},
                              {"metadata", {{"a", 1}}},
                              {"health_path", "/hz"},
                              {"health_expect", "status"},
                              {"api_key", "k-old"}});
  auto id = old["id"].get<std::string>();
  REQUIRE(client.del("/v1/servers/" + id).status == 200);

  auto r = client.post("/v1/servers",
                       json({{"url", "http://127.0.0.1:9701/"}, {"models", {"new-model"}}, {"name", "new-name"}}).dump());
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto s = parse(r);
  CHECK(field(s, "id") == id);
  CHECK(field(s, "registered_at") == old["registered_at"]);
  CHECK(field(s, "url") == "http://127.0.0.1:9701");
  CHECK(field(s, "models") == json::array({"new-model"}));
  CHECK(field(s, "name") == "new-name");
  CHECK(field(s, "metadata") == json::object());  // omitted: default
  CHECK(field(s, "health_path") == "/health");
  CHECK(field(s, "health_expect") == "json");
  CHECK(field(s, "is_active") == true);
  CHECK(field(s, "status") == "unknown");
  CHECK(field(s, "consecutive_failures") == 0);
  CHECK(field(s, "deregistered_at").is_null());
  CHECK(field(s, "deregistered_reason").is_null());
  CHECK_FALSE(s.contains("api_key"));
  CHECK(get_json("/v1/servers/" + id) == s);
  CHECK(snapshot().size() == 1);  // no second record for the URL

  auto events = get_json("/v1/servers/" + id + "/events");
  REQUIRE(field(events, "data").is_array());
  REQUIRE_FALSE(events["data"].empty());
  CHECK(field(events["data"].back(), "event") == "reactivated");
}

TEST_CASE_METHOD(admin_daemon, "a deleted server's id is not reused by a new registration",
                 "[integration][admin]") {
  auto a = register_server({{"url", "http://127.0.0.1:9751"}, {"models", {"m"}}});
  REQUIRE(client.del("/v1/servers/" + a["id"].get<std::string>()).status == 200);
  auto b = register_server({{"url", "http://127.0.0.1:9752"}, {"models", {"m"}}});
  CHECK(b["id"] != a["id"]);
}

// -- events -----------------------------------------------------------------------------

TEST_CASE_METHOD(admin_daemon, "a server's events list its transitions oldest first",
                 "[integration][admin]") {
  auto s = register_server({{"url", "http://127.0.0.1:9801"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();
  REQUIRE(client.del("/v1/servers/" + id).status == 200);
  REQUIRE(client.post("/v1/servers/" + id + "/reactivate", "").status == 200);

  auto j = get_json("/v1/servers/" + id + "/events");
  INFO(j.dump());
  REQUIRE(field(j, "data").is_array());
  std::vector<std::string> names;
  std::string last_at;
  for (const auto& e : j["data"]) {
    CHECK(e.contains("detail"));
    names.push_back(field(e, "event").is_string() ? e["event"].get<std::string>() : "?");
    REQUIRE(is_rfc3339_ms_utc(field(e, "at")));
    CHECK(e["at"].get<std::string>() >= last_at);
    last_at = e["at"].get<std::string>();
  }
  CHECK(names == std::vector<std::string>{"registered", "deregistered", "reactivated"});
}

// -- daemon health and connections ----------------------------------------------------------

TEST_CASE_METHOD(admin_daemon, "GET /health answers 200 with status ok", "[integration][admin]") {
  auto r = client.get("/health");
  INFO(r.body);
  CHECK(r.status == 200);
  CHECK(parse(r) == json({{"status", "ok"}}));
}

TEST_CASE_METHOD(admin_daemon, "HTTP/1.1 connections are kept alive between requests",
                 "[integration][admin]") {
  auto c = new_client();
  for (int i = 0; i < 5; ++i) {
    CHECK(c.get("/health").status == 200);
    CHECK(c.get("/v1/servers").status == 200);
  }
  CHECK(c.connections_opened() == 1);
}

TEST_CASE_METHOD(admin_daemon, "a long header arriving in pieces on a kept-alive connection is read whole",
                 "[integration][admin]") {
  tcp_connection c{"127.0.0.1", daemon.port(), 3000ms};
  auto read_status = [&] {
    std::string got;
    auto deadline = clock_type::now() + 3s;
    while (got.find("\r\n\r\n") == std::string::npos && clock_type::now() < deadline) {
      auto some = c.recv_some(500ms);
      if (some && some->empty())
        break;
      if (some)
        got += *some;
    }
    return got.substr(0, got.find("\r\n"));
  };
  REQUIRE(c.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 3000ms));
  CHECK(read_status() == "HTTP/1.1 200 OK");
  // The next request's first bytes are read by the wait between requests;
  // the rest of its 4,000-byte header comes later.
  std::string next = "GET /health HTTP/1.1\r\nHost: x\r\nx-long: " + std::string(4000, 'x') + "\r\n\r\n";
  for (size_t split : {size_t{100}, size_t{4000}}) {
    REQUIRE(c.send_all(next.substr(0, split), 3000ms));
    std::this_thread::sleep_for(50ms); // the pause under test: the server must wait for the rest
    REQUIRE(c.send_all(next.substr(split), 3000ms));
    CHECK(read_status() == "HTTP/1.1 200 OK");
    // (each answer's body is small and read along with its head)
  }
}

// -- bad requests leave the registry unchanged --------------------------------------------

TEST_CASE_METHOD(admin_daemon, "a registration body that is not JSON is rejected with 400 invalid_request",
                 "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9901"}, {"models", {"m"}}});
  auto before = snapshot();
  for (const std::string body : {"not json", "{\"url\": ", "{'url': 'http://127.0.0.1:1'}", ""}) {
    INFO("body: " << body);
    check_error(client.post("/v1/servers", body), 400, "invalid_request");
  }
  CHECK(snapshot() == before);
}

TEST_CASE_METHOD(admin_daemon, "registration fields of the wrong type are rejected with 400 naming the field",
                 "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9902"}, {"models", {"m"}}});
  auto before = snapshot();
  const json valid = {{"url", "http://127.0.0.1:9999"}, {"models", {"m"}}};
  const std::vector<std::pair<json, std::string>> cases = {
    {{{"url", 123}}, "url"},
    {{{"url", json(nullptr)}}, "url"},
    {{{"models", "m"}}, "models"},
    {{{"models", {1, 2}}}, "models"},
    {{{"metadata", json::array()}}, "metadata"},
    {{{"metadata", "x"}}, "metadata"},
    {{{"health_path", "health"}}, "health_path"},
    {{{"health_path", 5}}, "health_path"},
    {{{"health_expect", "maybe"}}, "health_expect"},
    {{{"name", 5}}, "name"},
    {{{"api_key", 5}}, "api_key"},
  };
  for (const auto& [patch, name] : cases) {
    json body = valid;
    body.update(patch);
    INFO("body: " << body.dump());
    check_error(client.post("/v1/servers", body.dump()), 400, {}, name);
    CHECK(snapshot() == before);
  }
}

TEST_CASE_METHOD(admin_daemon, "registrations missing a required field are rejected with 400 naming it",
                 "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9903"}, {"models", {"m"}}});
  auto before = snapshot();
  const std::vector<std::pair<std::string, std::string>> cases = {
    {R"({"models": ["m"]})", "url"},
    {R"({"url": "http://127.0.0.1:9998"})", "models"},
    {R"({"url": "http://127.0.0.1:9998", "models": []})", "models"},
    {R"({"url": "http://127.0.0.1:9998", "models": [""]})", "models"},
    {R"({"url": "http://127.0.0.1:9998", "models": ["m", ""]})", "models"},
    {R"({})", ""},
    {R"([])", ""},
    {R"(null)", ""},
  };
  for (const auto& [body, name] : cases) {
    INFO("body: " << body);
    check_error(client.post("/v1/servers", body), 400, {}, name);
  }
  CHECK(snapshot() == before);
}

TEST_CASE_METHOD(admin_daemon, "URLs outside the rules are rejected with 400 naming url",
                 "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9904"}, {"models", {"m"}}});
  auto before = snapshot();
  for (const std::string url : {"ftp://x", "javascript:alert(1)", "http://u:p@host:1", "http://u@host:1",
                                "http://127.0.0.1:9/?a=1", "http://127.0.0.1:9?a=1",
                                "http://127.0.0.1:9/#frag", "http://", "http:///path", "",
                                "127.0.0.1:9000", "not a url"}) {
    INFO("url: " << url);
    check_error(client.post("/v1/servers", json({{"url", url}, {"models", {"m"}}}).dump()), 400, {}, "url");
  }
  CHECK(snapshot() == before);
}

TEST_CASE_METHOD(admin_daemon, "an invalid re-registration of an inactive URL leaves its record untouched",
                 "[integration][admin][validation]") {
  auto s = register_server({{"url", "http://127.0.0.1:9905"}, {"models", {"m"}}, {"name", "kept"}});
  REQUIRE(client.del("/v1/servers/" + s["id"].get<std::string>()).status == 200);
  auto before = snapshot();
  check_error(client.post("/v1/servers", R"({"url": "http://127.0.0.1:9905", "models": []})"), 400);
  check_error(client.post("/v1/servers", R"({"url": "http://127.0.0.1:9905", "models": ["x"], "metadata": []})"), 400);
  check_error(client.post("/v1/servers", R"({"url": "http://127.0.0.1:9905", "models": ["x"], "health_expect": "maybe"})"), 400);
  CHECK(snapshot() == before);
}

TEST_CASE_METHOD(admin_daemon, "a request body over 1 MiB is rejected with 413 and changes nothing",
                 "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9906"}, {"models", {"m"}}});
  auto before = snapshot();
  json big = {{"url", "http://127.0.0.1:9907"}, {"models", {"m"}},
              {"metadata", {{"pad", std::string(2u << 20, 'x')}}}};
  auto c = new_client(10s);
  check_error(c.post("/v1/servers", big.dump()), 413);
  CHECK(snapshot() == before);
  CHECK(new_client().get("/health").status == 200);
}

TEST_CASE_METHOD(admin_daemon, "a registration body under 1 MiB is accepted", "[integration][admin]") {
  json body = {{"url", "http://127.0.0.1:9908"}, {"models", {"m"}},
               {"metadata", {{"pad", std::string(900u << 10, 'x')}}}};
  auto s = register_server(body);
  CHECK(field(s, "metadata") == body["metadata"]);
}

TEST_CASE_METHOD(admin_daemon, "an unknown server id answers 404 not_found on every server route",
                 "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9909"}, {"models", {"m"}}});
  auto before = snapshot();
  for (const std::string id : {"srv_000000000000", "not-an-id"}) {
    INFO("id " << id);
    check_error(client.get("/v1/servers/" + id), 404, "not_found");
    check_error(client.del("/v1/servers/" + id), 404, "not_found");
    check_error(client.post("/v1/servers/" + id + "/reactivate", ""), 404, "not_found");
    check_error(client.get("/v1/servers/" + id + "/events"), 404, "not_found");
    check_error(client.post("/v1/servers/" + id + "/check", ""), 404, "not_found");
  }
  CHECK(snapshot() == before);
}

TEST_CASE_METHOD(admin_daemon, "a known path with the wrong method answers 405", "[integration][admin][validation]") {
  auto s = register_server({{"url", "http://127.0.0.1:9910"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();
  auto before = snapshot();
  const std::vector<std::pair<std::string, std::string>> cases = {
    {"PUT", "/v1/servers"},
    {"DELETE", "/v1/servers"},
    {"POST", "/v1/servers/" + id},
    {"PUT", "/v1/servers/" + id},
    {"GET", "/v1/servers/" + id + "/reactivate"},
    {"DELETE", "/v1/servers/" + id + "/events"},
    {"DELETE", "/health"},
    {"POST", "/health"},
  };
  for (const auto& [method, path] : cases) {
    INFO(method << " " << path);
    check_error(client.request(method, path, method == "GET" || method == "DELETE" ? "" : "{}"), 405);
  }
  CHECK(snapshot() == before);
}

TEST_CASE_METHOD(admin_daemon, "an unknown path answers 404", "[integration][admin][validation]") {
  auto s = register_server({{"url", "http://127.0.0.1:9911"}, {"models", {"m"}}});
  const std::vector<std::string> paths = {"/nope", "/v1/serverz", "/v1",
                                         "/v1/servers/" + s["id"].get<std::string>() + "/bogus"};
  for (const auto& path : paths) {
    INFO("path " << path);
    check_error(client.get(path), 404);
  }
}

TEST_CASE_METHOD(admin_daemon, "hostile requests never crash the daemon", "[integration][admin][validation]") {
  register_server({{"url", "http://127.0.0.1:9912"}, {"models", {"m"}}});
  auto before = snapshot();
  // Raw bytes that are not (valid) HTTP: the daemon may answer 400 or close.
  const std::vector<std::string> raw = {
    "GARBAGE\r\n\r\n",
    std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + "\r\n\r\n",  // a TLS hello
    "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(200000, 'a') + "\r\n\r\n",
    "POST /v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "POST /v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    "POST /v1/servers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
  };
  for (const auto& bytes : raw) {
    tcp_connection conn(daemon.host(), daemon.port(), 2s);
    conn.send_all(bytes, 2s);
    // Either an answer or a close, within the header timeout at most.
    auto answer = conn.recv_some(12s);
    INFO("sent " << bytes.substr(0, 60) << "... got: " << answer.value_or("<nothing>").substr(0, 200));
    CHECK(answer.has_value());
    if (answer && !answer->empty())
      CHECK(answer->rfind("HTTP/1.1 200", 0) == std::string::npos);
    REQUIRE(new_client(2s).get("/health").status == 200);
  }
  // Valid HTTP, hostile JSON.
  const std::vector<std::string> bodies = {
    std::string(100000, '[') + std::string(100000, ']'),
    R"({"url": "http://127.0.0.1:9913", "models": ["m"], "metadata": {"a": )" + std::string(100000, '[') +
      std::string(100000, ']') + "}}",
    std::string("{\"url\": \"http://127.0.0.1:9914\", \"models\": [\"\xff\xfe\"]}"),  // not UTF-8
    R"({"url": "http://127.0.0.1:9915", "models": ["m"], "url": 5})",
  };
  auto c = new_client(10s);
  for (const auto& body : bodies) {
    INFO("body " << body.substr(0, 80) << "...");
    try {
      auto r = c.post("/v1/servers", body);
      INFO("-> " << r.status << ": " << r.body.substr(0, 300));
      CHECK(r.status / 100 == 4);
    } catch (const std::exception& e) {
      FAIL_CHECK("no answer: " << e.what());
    }
    c.close();
    bool alive = false;
    try {
      alive = new_client(2s).get("/health").status == 200;
    } catch (const std::exception&) {
    }
    auto exit_status = alive ? std::nullopt : daemon.wait_exit(2s);
    INFO("daemon exit status " << exit_status.value_or(-1) << ", stderr:\n" << daemon.stderr_text());
    REQUIRE(alive);
  }
  CHECK(new_client().get("/health").status == 200);
  CHECK(snapshot() == before);
}

// -- admin token ----------------------------------------------------------------------------

TEST_CASE("with --admin-token admin routes answer 401 to a missing or wrong token",
          "[integration][admin][auth]") {
  admin_daemon d({}, "secret");
  auto s = d.register_server({{"url", "http://127.0.0.1:9950"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();
  auto before = d.snapshot();
  const std::vector<header_list> bad_auth = {
    {},
    {{"Authorization", "Bearer wrong"}},
    {{"Authorization", "Bearer secretsecret"}},
    {{"Authorization", "Bearer "}},
    {{"Authorization", "Basic secret"}},
    {{"Authorization", "secret"}},
  };
  const std::vector<std::pair<std::string, std::string>> routes = {
    {"POST", "/v1/servers"},
    {"GET", "/v1/servers"},
    {"GET", "/v1/servers/" + id},
    {"DELETE", "/v1/servers/" + id},
    {"POST", "/v1/servers/" + id + "/reactivate"},
    {"GET", "/v1/servers/" + id + "/events"},
  };
  auto c = d.new_client();
  for (const auto& headers : bad_auth) {
    for (const auto& [method, path] : routes) {
      INFO(method << " " << path << " with " << (headers.empty() ? "no token" : headers[0].second));
      std::string body = method == "POST" && path == "/v1/servers"
                           ? R"({"url": "http://127.0.0.1:9951", "models": ["m"]})"
                           : "";
      check_error(c.request(method, path, body, headers), 401, "unauthorized");
    }
  }
  CHECK(d.snapshot() == before);
}

TEST_CASE("with --admin-token the right bearer token is accepted", "[integration][admin][auth]") {
  admin_daemon d({}, "secret");
  auto s = d.register_server({{"url", "http://127.0.0.1:9952"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();
  CHECK(d.list_ids() == std::set<std::string>{as_json_text(id)});
  CHECK(d.client.del("/v1/servers/" + id, d.auth).status == 200);
  CHECK(d.client.post("/v1/servers/" + id + "/reactivate", "", d.auth).status == 200);
  CHECK(d.client.get("/v1/servers/" + id + "/events", d.auth).status == 200);
}

TEST_CASE("with --admin-token GET /health needs no token", "[integration][admin][auth]") {
  admin_daemon d({}, "secret");
  auto r = d.new_client().get("/health");
  CHECK(r.status == 200);
  CHECK(parse(r) == json({{"status", "ok"}}));
}

TEST_CASE("the admin token never appears in the daemon's log", "[integration][admin][auth][secrets]") {
  const std::string token = "tok-5f2a9e71c3-admin";
  admin_daemon d({"--log-level", "debug"}, token);
  auto s = d.register_server({{"url", "http://127.0.0.1:9953"}, {"models", {"m"}}});
  auto id = s["id"].get<std::string>();
  auto c = d.new_client();
  c.get("/v1/servers", d.auth);
  c.get("/v1/servers");
  c.get("/v1/servers", {{"Authorization", "Bearer wrong-token"}});
  c.del("/v1/servers/" + id, d.auth);
  c.post("/v1/servers/" + id + "/reactivate", "", d.auth);
  c.close();
  d.client.close();
  d.daemon.terminate();
  CHECK(d.daemon.wait_exit(5s) == 0);
  auto log = d.daemon.stderr_text();
  INFO("stderr:\n" << log);
  CHECK(log.find(token) == std::string::npos);
}

TEST_CASE("a registration's api_key never appears in the daemon's log", "[integration][admin][secrets]") {
  const std::string key = "sk-live-8d41b2e6f0";
  admin_daemon d({"--log-level", "debug"});
  auto s = d.register_server({{"url", "http://127.0.0.1:1"}, {"models", {"m"}}, {"api_key", key}});
  auto id = s["id"].get<std::string>();
  d.client.post("/v1/servers/" + id + "/check", "");  // a probe that sends the key and fails
  d.client.get("/v1/servers");
  d.client.del("/v1/servers/" + id);
  d.client.post("/v1/servers", json({{"url", "http://127.0.0.1:1"}, {"models", {"m"}}, {"api_key", key}}).dump());
  d.client.close();
  d.daemon.terminate();
  CHECK(d.daemon.wait_exit(5s) == 0);
  auto log = d.daemon.stderr_text();
  INFO("stderr:\n" << log);
  CHECK(log.find(key) == std::string::npos);
}

// -- slow and many clients ----------------------------------------------------------------------

TEST_CASE("a client dribbling its headers is disconnected after --header-timeout while others are served",
          "[integration][admin][connections]") {
  admin_daemon d({"--header-timeout", "1"});
  std::atomic<bool> done{false};
  bool closed = false;
  double elapsed = 0;
  std::string received;
  std::string slow_error;
  std::thread slow([&] {
    auto start = clock_type::now();
    try {
      tcp_connection conn(d.daemon.host(), d.daemon.port(), 2s);
      conn.send_all("GET /health HTTP/1.1\r\n", 1s);
      const std::string header = "X-Dribble: " + std::string(200, 'a');
      size_t i = 0;
      while (clock_type::now() - start < 5s) {
        auto data = conn.recv_some(200ms);  // paces the dribble: one byte per 200 ms
        if (data && data->empty()) {
          closed = true;
          break;
        }
        if (data) {
          received += *data;
          continue;
        }
        if (!conn.send_all(std::string(1, header[i++ % header.size()]), 1s)) {
          closed = true;
          break;
        }
      }
    } catch (const std::exception& e) {
      slow_error = e.what();
    }
    elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    done = true;
  });

  int served = 0;
  std::vector<std::string> failures;
  auto keep_alive = d.new_client(1s);
  for (int round = 0; !done; ++round) {
    try {
      auto r = (round % 2 == 0) ? keep_alive.get("/health") : d.new_client(1s).get("/v1/servers");
      if (r.status == 200)
        ++served;
      else
        failures.push_back("status " + std::to_string(r.status));
    } catch (const std::exception& e) {
      failures.push_back(e.what());
    }
    wait_until([&] { return done.load(); }, 50ms);
  }
  slow.join();

  INFO("slow client: closed=" << closed << " after " << elapsed << " s, received [" << received
                              << "], error [" << slow_error << "]");
  CHECK(slow_error.empty());
  CHECK(closed);
  CHECK(elapsed < 3.0);
  CHECK(elapsed >= 0.9);
  CHECK(received.find("HTTP/1.1 200") == std::string::npos);
  INFO("other client: " << served << " served, failures: " << failures.size()
                        << (failures.empty() ? "" : " first: " + failures[0]));
  CHECK(failures.empty());
  CHECK(served >= 5);
}

TEST_CASE("200 concurrent connections are all answered", "[integration][admin][connections]") {
  admin_daemon d;
  std::vector<http_client> clients;
  clients.reserve(200);
  std::vector<std::string> failures;
  for (int i = 0; i < 200; ++i) {
    clients.push_back(d.new_client(10s));
    try {
      clients.back().connect();
    } catch (const std::exception& e) {
      failures.push_back(std::string("connect: ") + e.what());
    }
  }
  REQUIRE(failures.empty());
  for (auto& c : clients)
    c.send_request("GET", "/health");
  int ok = 0;
  for (auto& c : clients) {
    try {
      auto r = c.read_response();
      if (r.status == 200 && parse(r) == json({{"status", "ok"}}))
        ++ok;
      else
        failures.push_back(std::to_string(r.status) + " " + r.body);
    } catch (const std::exception& e) {
      failures.push_back(e.what());
    }
  }
  INFO(failures.size() << " failures; first: " << (failures.empty() ? "" : failures[0]));
  CHECK(ok == 200);
  for (auto& c : clients)
    CHECK(c.connections_opened() == 1);
}

// -- shutdown ---------------------------------------------------------------------------------

TEST_CASE("SIGTERM makes the daemon exit 0 within 5 seconds", "[integration][admin][shutdown]") {
  admin_daemon d;
  d.register_server({{"url", "http://127.0.0.1:9960"}, {"models", {"m"}}});
  auto idle = d.new_client();
  REQUIRE(idle.get("/health").status == 200);  // an idle keep-alive connection stays open
  d.daemon.terminate();
  auto status = d.daemon.wait_exit(5s);
  INFO("stderr:\n" << d.daemon.stderr_text());
  REQUIRE(status.has_value());
  CHECK(*status == 0);
  CHECK(d.daemon.stdout_text() == d.daemon.listening_line() + "\n");
}

TEST_CASE("SIGINT makes the daemon exit 0 within 5 seconds", "[integration][admin][shutdown]") {
  admin_daemon d;
  d.register_server({{"url", "http://127.0.0.1:9961"}, {"models", {"m"}}});
  d.daemon.interrupt();
  auto status = d.daemon.wait_exit(5s);
  INFO("stderr:\n" << d.daemon.stderr_text());
  REQUIRE(status.has_value());
  CHECK(*status == 0);
}

TEST_CASE("servers and events registered before SIGTERM are there after a restart",
          "[integration][admin][shutdown]") {
  temp_dir db_dir;
  const std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--db", db_dir.file("m.db"),
                                         "--health-interval", "3600", "--health-timeout", "1"};
  json records = json::array();
  json events = json::array();
  {
    daemon_process daemon(modelgated_bin(), args);
    http_client c(daemon.host(), daemon.port());
    c.post("/v1/health-checker/stop", "");
    for (int i = 0; i < 3; ++i) {
      auto r = c.post("/v1/servers",
                      json({{"url", "http://127.0.0.1:" + std::to_string(9970 + i)},
                            {"models", {"m" + std::to_string(i)}},
                            {"name", "n" + std::to_string(i)},
                            {"metadata", {{"i", i}}}})
                        .dump());
      REQUIRE(r.status == 201);
      records.push_back(parse(r));
    }
    auto del = c.del("/v1/servers/" + records[1]["id"].get<std::string>());
    REQUIRE(del.status == 200);
    records[1] = parse(del);
    for (const auto& rec : records)
      events.push_back(parse(c.get("/v1/servers/" + rec["id"].get<std::string>() + "/events")));
    c.close();
    daemon.terminate();
    REQUIRE(daemon.wait_exit(5s) == 0);
  }
  daemon_process daemon(modelgated_bin(), args);
  http_client c(daemon.host(), daemon.port());
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& before = records[i];
    auto id = before["id"].get<std::string>();
    auto r = c.get("/v1/servers/" + id);
    INFO(id << ": " << r.body);
    REQUIRE(r.status == 200);
    auto after = parse(r);
    for (const char* k : {"id", "url", "name", "models", "metadata", "health_path", "health_expect",
                          "is_active", "registered_at", "deregistered_at", "deregistered_reason"}) {
      INFO(k);
      CHECK(field(after, k) == field(before, k));
    }
    CHECK(parse(c.get("/v1/servers/" + id + "/events")) == events[i]);
  }
}
