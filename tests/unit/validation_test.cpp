// Validation of registration bodies and URLs: table-driven, one row per rule
// of the contract.
#include <catch2/catch.hpp>

#include "protocol/validation.hpp"

using namespace mg;

namespace {

struct url_case {
  const char* input;
  const char* expected; // nullptr: rejected
};

const url_case url_cases[] = {
  {"http://127.0.0.1:8001", "http://127.0.0.1:8001"},
  {"http://127.0.0.1:8001/", "http://127.0.0.1:8001"},
  {"https://gpu-node-1.example:443/", "https://gpu-node-1.example:443"},
  {"http://host", "http://host"},
  {"http://host/v1/", "http://host/v1"},
  {"http://host/base//", "http://host/base"},
  {"http://[::1]:8000", "http://[::1]:8000"},
  {"HTTP://host:1", "HTTP://host:1"},
  {"ftp://host", nullptr},
  {"javascript:alert(1)", nullptr},
  {"host:8000", nullptr},
  {"http://", nullptr},
  {"http:///path", nullptr},
  {"http://:8000", nullptr},
  {"http://user:pass@host:1", nullptr},
  {"http://user@host", nullptr},
  {"http://host:1/?x=1", nullptr},
  {"http://host:1/#frag", nullptr},
  {"http://host:0", nullptr},
  {"http://host:65536", nullptr},
  {"http://host:abc", nullptr},
  {"http://ho st", nullptr},
  {"http://host\n", nullptr},
  {"http://[::1", nullptr},
  {"", nullptr},
};

} // namespace

TEST_CASE("server URLs are accepted and normalized exactly as the contract says", "[validation]") {
  for (const auto& c : url_cases) {
    INFO("url: " << c.input);
    std::string why;
    auto result = normalize_server_url(c.input, why);
    if (c.expected) {
      REQUIRE(result);
      CHECK(*result == c.expected);
    } else {
      CHECK_FALSE(result);
      CHECK_FALSE(why.empty());
    }
  }
}

namespace {

struct body_case {
  const char* body;
  const char* field; // nullptr: accepted; otherwise the message must start with this
};

const body_case body_cases[] = {
  {R"({"url":"http://h:1","models":["m"]})", nullptr},
  {R"({"url":"http://h:1","models":["m","n"],"name":"a","metadata":{"k":1},
      "health_path":"/healthz","health_expect":"status","api_key":"sk"})", nullptr},
  {R"({"url":"http://h:1","models":["m"],"name":null,"metadata":null})", nullptr},
  {R"(not json)", "request body is not valid JSON"},
  {R"([1,2])", "request body must be a JSON object"},
  {R"("text")", "request body must be a JSON object"},
  {R"({"models":["m"]})", "url"},
  {R"({"url":null,"models":["m"]})", "url"},
  {R"({"url":5,"models":["m"]})", "url"},
  {R"({"url":"ftp://h","models":["m"]})", "url"},
  {R"j({"url":"javascript:alert(1)","models":["m"]})j", "url"},
  {R"({"url":"http://u:p@h:1","models":["m"]})", "url"},
  {R"({"url":"http://h:1"})", "models"},
  {R"({"url":"http://h:1","models":[]})", "models"},
  {R"({"url":"http://h:1","models":"m"})", "models"},
  {R"({"url":"http://h:1","models":[1]})", "models"},
  {R"({"url":"http://h:1","models":[""]})", "models"},
  {R"({"url":"http://h:1","models":["m"],"name":5})", "name"},
  {R"({"url":"http://h:1","models":["m"],"metadata":[]})", "metadata"},
  {R"({"url":"http://h:1","models":["m"],"metadata":"x"})", "metadata"},
  {R"({"url":"http://h:1","models":["m"],"health_path":"health"})", "health_path"},
  {R"({"url":"http://h:1","models":["m"],"health_path":""})", "health_path"},
  {R"({"url":"http://h:1","models":["m"],"health_path":7})", "health_path"},
  {R"({"url":"http://h:1","models":["m"],"health_expect":"maybe"})", "health_expect"},
  {R"({"url":"http://h:1","models":["m"],"health_expect":true})", "health_expect"},
  {R"({"url":"http://h:1","models":["m"],"api_key":1})", "api_key"},
  {R"({"url":"http://h:1","models":["m"],"api_key":"sk\r\nX-Injected: 1"})", "api_key"},
  {R"({"url":"http://h:1","models":["m"],"api_key":"sk\u0000"})", "api_key"},
};

} // namespace

TEST_CASE("registration bodies are accepted or rejected naming the field", "[validation]") {
  for (const auto& c : body_cases) {
    INFO("body: " << c.body);
    auto result = parse_registration(c.body);
    if (!c.field) {
      CHECK(std::holds_alternative<registration>(result));
    } else {
      REQUIRE(std::holds_alternative<api_error>(result));
      const auto& err = std::get<api_error>(result);
      CHECK(err.code == errc::invalid_request);
      CHECK(err.message.rfind(c.field, 0) == 0);
    }
  }
}

TEST_CASE("a registration takes the contract's defaults for omitted fields", "[validation]") {
  auto result = parse_registration(R"({"url":"http://h:1/","models":["m","m"]})");
  REQUIRE(std::holds_alternative<registration>(result));
  const auto& reg = std::get<registration>(result);
  CHECK(reg.url == "http://h:1");
  CHECK(reg.models == std::vector<std::string>{"m"});
  CHECK_FALSE(reg.name);
  CHECK(reg.metadata == nlohmann::json::object());
  CHECK(reg.health_path == "/health");
  CHECK(reg.expect == health_expect::json);
  CHECK_FALSE(reg.api_key);
}

TEST_CASE("deeply nested bodies are refused before parsing", "[validation]") {
  std::string deep = R"({"url":"http://h:1","models":["m"],"metadata":{"a":)";
  deep += std::string(100000, '[') + std::string(100000, ']') + "}}";
  auto result = parse_registration(deep);
  REQUIRE(std::holds_alternative<api_error>(result));
  CHECK(std::get<api_error>(result).message.find("nests deeper") != std::string::npos);
  CHECK(json_depth_within(R"({"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})"));
  CHECK(json_depth_within(R"({"a":"\"[[["})", 2));
  CHECK_FALSE(json_depth_within("[[[", 2));
}

TEST_CASE("header values never carry a CR or LF", "[validation]") {
  CHECK(header_safe("sk-plain") == "sk-plain");
  CHECK(header_safe("sk\r\nX-Injected: 1") == "sk  X-Injected: 1");
  CHECK(header_safe("") == "");
}
