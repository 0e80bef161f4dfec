// gateway_test.cpp — the OpenAI-compatible gateway end to end: the real
// modelgated in front of real mock-model-servers over loopback.
//
// Routing (only servers serving the model; healthy first, `unknown` only when
// none is healthy, `unhealthy` never; fewest in flight, ties round robin),
// in-flight counts that return to zero after completions, errors and
// disconnects, retries on refused connections with the server marked
// unhealthy at once, every error status of the contract in the OpenAI error
// shape, API keys, what is (and is not) sent upstream, x-request-id, SSE
// streams relayed chunk by chunk with timing checked against the mock's
// steady-clock send stamps, disconnects and broken streams, and the official
// `openai` npm client.
//
// There is no HTTP endpoint for the router's in-flight counts; they are
// checked indirectly: with nothing in flight, 9 concurrent slow requests over
// 3 servers land 3/3/3, and a leak of two or more on one server breaks that.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <cstdlib>
#include <deque>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "admin_calls.hpp"
#include "harness.hpp"
#include "mock_process.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;

namespace {

// -- small helpers ----------------------------------------------------------------

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

json parse_or_null(const std::string& body) {
  return json::parse(body, nullptr, false);
}

/// j[key] when j is an object and that is a string, else "".
std::string str(const json& j, const char* key) {
  if (j.is_object() && j.contains(key) && j[key].is_string())
    return j[key].get<std::string>();
  return {};
}

json chat_body(const std::string& model, bool stream = false) {
  json b = {{"model", model},
            {"messages", json::array({{{"role", "user"}, {"content", "Say hello"}}})}};
  if (stream)
    b["stream"] = true;
  return b;
}

using gw_mock = mock_process;

/// A modelgated for gateway tests; health probes every `interval` seconds.
struct gw_daemon {
  daemon_process proc;
  http_client client;

  explicit gw_daemon(std::vector<std::string> extra = {}, const std::string& interval = "0.2")
    : proc(modelgated_bin(), args(std::move(extra), interval)), client("127.0.0.1", proc.port()) {
  }

  static std::vector<std::string> args(std::vector<std::string> extra, const std::string& interval) {
    std::string timeout = std::stod(interval) < 1.0 ? interval : "1";
    std::vector<std::string> a{"--listen",        "127.0.0.1:0", "--db",           "{dir}/m.db",
                               "--health-interval", interval,    "--health-timeout", timeout,
                               "--max-failures",  "1000",        "--log-level",    "info"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  int port() const { return proc.port(); }
  std::string base_url() const { return proc.base_url(); }

  std::string register_server(const std::string& url, std::vector<std::string> models,
                              const json& extra = json::object()) {
    json body = {{"url", url}, {"models", models}};
    body.update(extra);
    return mg_test::register_server(client, body);
  }

  json record(const std::string& id) { return server_record(client, id); }

  std::string status(const std::string& id) { return record(id)["status"]; }

  bool wait_status(const std::string& id, const std::string& st,
                   std::chrono::milliseconds limit = 5s) {
    return wait_until([&] { return status(id) == st; }, limit);
  }

  /// Pauses probing and waits until no prober runs any more.
  void stop_probing() {
    REQUIRE(client.post("/v1/health-checker/stop", "").status == 200);
    REQUIRE(wait_until(
      [&] { return json::parse(client.get("/v1/health-checker").body)["probers"] == 0; }, 3s));
  }

  void start_probing() { REQUIRE(client.post("/v1/health-checker/start", "").status == 200); }

  /// POST /v1/servers/{id}/check: a probe now (works while probing is stopped).
  json check(const std::string& id) {
    auto r = client.post("/v1/servers/" + id + "/check", "");
    REQUIRE(r.status == 200);
    return json::parse(r.body);
  }

  http_response chat(const std::string& model, const header_list& headers = {}) {
    return client.post("/v1/chat/completions", chat_body(model).dump(), headers);
  }

  std::set<std::string> model_ids(const header_list& headers = {}) {
    auto r = client.get("/v1/models", headers);
    REQUIRE(r.status == 200);
    std::set<std::string> ids;
    auto j = json::parse(r.body);
    for (const auto& m : j["data"])
      ids.insert(m["id"].get<std::string>());
    return ids;
  }
};

/// Checks the OpenAI error shape and, when given, the status and error.code.
void check_error(const http_response& r, int status, const std::string& code = {}) {
  INFO("status " << r.status << " body " << r.body);
  CHECK(r.status == status);
  CHECK(r.header("content-type").find("application/json") != std::string::npos);
  auto j = parse_or_null(r.body);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("error"));
  REQUIRE(j["error"].is_object());
  auto& e = j["error"];
  CHECK(e.contains("message"));
  CHECK(e.value("message", json()).is_string());
  CHECK(!str(e, "message").empty());
  CHECK(e.value("type", json()).is_string());
  CHECK(e.value("code", json()).is_string());
  if (!code.empty())
    CHECK(e.value("code", std::string()) == code);
}

/// `n` chat requests sent at once on `n` connections; the x-modelgate-server
/// of each answer (every answer must be 200).
std::vector<std::string> concurrent_chat(const gw_daemon& d, const std::string& model, int n) {
  std::vector<http_client> clients;
  for (int i = 0; i < n; ++i) {
    clients.emplace_back("127.0.0.1", d.port(), 10s);
    clients.back().connect();
  }
  for (auto& c : clients)
    c.send_request("POST", "/v1/chat/completions", chat_body(model).dump());
  std::vector<std::string> servers;
  for (auto& c : clients) {
    auto r = c.read_response();
    INFO(r.body);
    CHECK(r.status == 200);
    servers.push_back(r.header("x-modelgate-server"));
  }
  return servers;
}

std::map<std::string, int> tally(const std::vector<std::string>& servers) {
  std::map<std::string, int> m;
  for (const auto& s : servers)
    ++m[s];
  return m;
}

// -- SSE over a raw socket ----------------------------------------------------------

struct sse_event {
  std::string name; // "" for a plain data event
  std::string data;
  int64_t at_us = 0; // steady clock when the event was complete at the client
};

/// One streaming POST over its own TCP connection. Decodes the HTTP/1.1
/// response head and (chunked or not) body incrementally and splits the body
/// into SSE events, each stamped with its arrival time.
class sse_client {
public:
  sse_client(int port, const std::string& path, const std::string& body,
             const header_list& headers = {})
    : conn_("127.0.0.1", port, 2000ms) {
    std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                      "\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n" +
                      "Content-Length: " + std::to_string(body.size()) + "\r\n";
    for (const auto& h : headers)
      req += h.first + ": " + h.second + "\r\n";
    req += "\r\n" + body;
    REQUIRE(conn_.send_all(req, 2000ms));
  }

  /// Reads the response head; false on timeout or EOF first.
  bool read_head(std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = clock_type::now() + timeout;
    for (;;) {
      auto end = raw_.find("\r\n\r\n");
      if (end != std::string::npos) {
        auto head = parse_response_head(raw_.substr(0, end));
        status = head.status;
        headers = std::move(head.headers);
        raw_.erase(0, end + 4);
        head_done_ = true;
        std::string te = header("transfer-encoding");
        chunked_ = te.find("chunked") != std::string::npos;
        if (!chunked_ && !header("content-length").empty())
          content_left_ = std::stoll(header("content-length"));
        decode(now_us());
        return true;
      }
      if (!pump(deadline))
        return false;
    }
  }

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }

  /// The next SSE event, or nullopt when the body ended or `timeout` passed.
  std::optional<sse_event> next(std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = clock_type::now() + timeout;
    while (ready_.empty()) {
      if (body_done_ || eof_)
        return std::nullopt;
      if (!pump(deadline))
        return std::nullopt;
    }
    auto e = ready_.front();
    ready_.pop_front();
    return e;
  }

  /// Reads until the body ended (terminating chunk, Content-Length reached or
  /// EOF); false at the deadline.
  bool read_to_end(std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = clock_type::now() + timeout;
    while (!body_done_ && !eof_)
      if (!pump(deadline))
        return body_done_ || eof_;
    return true;
  }

  /// Waits for EOF; false at the deadline.
  bool wait_eof(std::chrono::milliseconds timeout) {
    auto deadline = clock_type::now() + timeout;
    while (!eof_)
      if (!pump(deadline))
        return eof_;
    return true;
  }

  void close() { conn_.close(); }

  bool body_done() const { return body_done_; } // clean end of the HTTP body
  bool eof() const { return eof_; }
  bool timed_out() const { return timed_out_; }
  const std::string& body() const { return body_; } // decoded body so far
  bool head_done() const { return head_done_; }

  int status = 0;
  std::map<std::string, std::string> headers;

private:
  // One recv; false on timeout or EOF.
  bool pump(clock_type::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left.count() <= 0) {
      timed_out_ = true;
      return false;
    }
    auto data = conn_.recv_some(left);
    auto at = now_us();
    if (!data) {
      timed_out_ = true;
      return false;
    }
    if (data->empty()) {
      eof_ = true;
      if (head_done_ && !chunked_ && content_left_ < 0)
        body_done_ = true; // read-until-close body
      split(at, true);
      return false;
    }
    raw_ += *data;
    if (head_done_)
      decode(at);
    return true;
  }

  void decode(int64_t at) {
    if (!chunked_) {
      if (content_left_ >= 0) {
        auto n = std::min<int64_t>(content_left_, static_cast<int64_t>(raw_.size()));
        pending_ += raw_.substr(0, static_cast<size_t>(n));
        body_ += raw_.substr(0, static_cast<size_t>(n));
        raw_.erase(0, static_cast<size_t>(n));
        content_left_ -= n;
        if (content_left_ == 0)
          body_done_ = true;
      } else {
        pending_ += raw_;
        body_ += raw_;
        raw_.clear();
      }
      split(at, body_done_);
      return;
    }
    for (;;) {
      if (body_done_)
        break;
      if (chunk_left_ > 0) {
        if (raw_.empty())
          break;
        auto n = std::min<int64_t>(chunk_left_, static_cast<int64_t>(raw_.size()));
        pending_ += raw_.substr(0, static_cast<size_t>(n));
        body_ += raw_.substr(0, static_cast<size_t>(n));
        raw_.erase(0, static_cast<size_t>(n));
        chunk_left_ -= n;
        if (chunk_left_ == 0)
          need_crlf_ = true;
        continue;
      }
      if (need_crlf_) {
        if (raw_.size() < 2)
          break;
        raw_.erase(0, 2);
        need_crlf_ = false;
        continue;
      }
      auto eol = raw_.find("\r\n");
      if (eol == std::string::npos)
        break;
      auto size = std::strtoll(raw_.c_str(), nullptr, 16);
      if (size == 0) {
        // The last chunk; wait for the blank line after (optional) trailers.
        auto end = raw_.find("\r\n\r\n");
        if (end == std::string::npos)
          break;
        raw_.erase(0, end + 4);
        body_done_ = true;
        break;
      }
      raw_.erase(0, eol + 2);
      chunk_left_ = size;
    }
    split(at, body_done_);
  }

  // Moves every complete event of pending_ into ready_.
  void split(int64_t at, bool final) {
    std::string norm;
    for (char c : pending_)
      if (c != '\r')
        norm += c;
    pending_ = norm;
    for (;;) {
      auto end = pending_.find("\n\n");
      std::string block;
      if (end == std::string::npos) {
        if (!final || pending_.find_first_not_of('\n') == std::string::npos)
          break;
        block = pending_;
        pending_.clear();
      } else {
        block = pending_.substr(0, end);
        pending_.erase(0, end + 2);
      }
      sse_event e;
      e.at_us = at;
      bool any = false;
      std::istringstream in(block);
      for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == ':')
          continue;
        auto colon = line.find(':');
        std::string field = line.substr(0, colon);
        std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
        if (!value.empty() && value[0] == ' ')
          value.erase(0, 1);
        if (field == "event") {
          e.name = value;
          any = true;
        } else if (field == "data") {
          e.data += (e.data.empty() ? "" : "\n") + value;
          any = true;
        }
      }
      if (any)
        ready_.push_back(e);
      if (end == std::string::npos)
        break;
    }
  }

  tcp_connection conn_;
  std::string raw_;     // received, not yet decoded
  std::string pending_; // decoded, not yet split into events
  std::string body_;
  std::deque<sse_event> ready_;
  bool head_done_ = false;
  bool chunked_ = false;
  int64_t content_left_ = -1;
  int64_t chunk_left_ = 0;
  bool need_crlf_ = false;
  bool body_done_ = false;
  bool eof_ = false;
  bool timed_out_ = false;
};

std::unique_ptr<sse_client> start_stream(const gw_daemon& d, const std::string& model,
                                         const std::string& path = "/v1/chat/completions") {
  json body = chat_body(model, true);
  if (path == "/v1/completions")
    body = {{"model", model}, {"prompt", "Say hello"}, {"stream", true}};
  auto s = std::make_unique<sse_client>(d.port(), path, body.dump());
  REQUIRE(s->read_head());
  return s;
}

/// Checks a final SSE error event: `event: error` and a JSON error object.
void check_sse_error_event(const sse_event& e) {
  INFO("event " << e.name << " data " << e.data);
  CHECK(e.name == "error");
  auto j = parse_or_null(e.data);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("error"));
  REQUIRE(j["error"].is_object());
  CHECK(j["error"].value("message", json()).is_string());
  CHECK(!str(j["error"], "message").empty());
  CHECK(j["error"].value("type", json()).is_string());
  CHECK(j["error"].value("code", json()).is_string());
}

/// Three healthy mocks serving "m" behind a daemon, probing stopped once all
/// are healthy (so that slow or hanging modes do not change their status).
struct three_servers {
  gw_daemon d;
  gw_mock a, b, c;
  std::string ida, idb, idc;

  explicit three_servers(std::vector<std::string> daemon_extra = {},
                         std::vector<std::string> a_models = {"m"})
    : d(std::move(daemon_extra)) {
    ida = d.register_server(a.url(), a_models);
    idb = d.register_server(b.url(), {"m"});
    idc = d.register_server(c.url(), {"m"});
    for (const auto& id : {ida, idb, idc})
      REQUIRE(d.wait_status(id, "healthy"));
    d.stop_probing();
  }

  void set_all(const json& settings) {
    for (auto* m : {&a, &b, &c})
      m->set(settings);
  }

  /// 9 concurrent slow requests for "m": true when they land 3/3/3. Retried
  /// (up to `limit`) only to let a release that is still on its way land.
  // Tries again within `limit` when a load spike on the test machine made one
  // round uneven; a leaked in-flight count skews every round, so it still fails.
  bool lands_evenly(std::chrono::milliseconds limit = 3000ms) {
    set_all({{"mode", "slow"}, {"slow_ms", 500}});
    auto deadline = clock_type::now() + limit;
    bool even = false;
    for (int attempt = 0;; ++attempt) {
      auto t = tally(concurrent_chat(d, "m", 9));
      even = t.size() == 3 && t[ida] == 3 && t[idb] == 3 && t[idc] == 3;
      std::ostringstream os;
      for (const auto& kv : t)
        os << kv.first << "=" << kv.second << " ";
      UNSCOPED_INFO("attempt " << attempt << ": " << os.str());
      if (even || clock_type::now() >= deadline)
        break;
    }
    set_all({{"mode", "healthy"}});
    return even;
  }
};

bool file_exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

} // namespace

// -- routing ------------------------------------------------------------------------

TEST_CASE("requests reach only servers that serve the model; /v1/models lists routable models",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock a, b, c;
  auto ida = d.register_server(a.url(), {"alpha"});
  auto idb = d.register_server(b.url(), {"beta"});
  auto idc = d.register_server(c.url(), {"alpha", "beta"});
  for (const auto& id : {ida, idb, idc})
    REQUIRE(d.wait_status(id, "healthy"));

  std::map<std::string, int> alpha;
  for (int i = 0; i < 6; ++i) {
    auto r = d.chat("alpha");
    REQUIRE(r.status == 200);
    auto j = json::parse(r.body);
    CHECK(j["object"] == "chat.completion");
    CHECK(j["model"] == "alpha");
    auto server = r.header("x-modelgate-server");
    ++alpha[server];
    // The answer really comes from the server the header names.
    int port = server == ida ? a.port() : server == idc ? c.port() : b.port();
    CHECK(j["choices"][0]["message"]["content"] == "Hello from mock on port " + std::to_string(port));
  }
  CHECK(alpha.count(idb) == 0);
  CHECK(alpha[ida] == 3); // sequential requests: nothing in flight, round robin
  CHECK(alpha[idc] == 3);
  CHECK(b.requests() == 0);
  CHECK(a.requests() == 3);
  CHECK(c.requests() == 3);

  std::map<std::string, int> beta;
  for (int i = 0; i < 4; ++i) {
    auto r = d.chat("beta");
    REQUIRE(r.status == 200);
    ++beta[r.header("x-modelgate-server")];
  }
  CHECK(beta.count(ida) == 0);
  CHECK(beta[idb] == 2);
  CHECK(beta[idc] == 2);
  CHECK(a.requests() == 3);

  // /v1/completions and /v1/embeddings are routed the same way.
  a.reset();
  for (int i = 0; i < 2; ++i) {
    auto r = d.client.post("/v1/completions", json{{"model", "beta"}, {"prompt", "hi"}}.dump());
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body)["object"] == "text_completion");
    CHECK(r.header("x-modelgate-server") != ida);
    auto e = d.client.post("/v1/embeddings",
                           json{{"model", "beta"}, {"input", json::array({"x", "y"})}}.dump());
    REQUIRE(e.status == 200);
    auto ej = json::parse(e.body);
    CHECK(ej["object"] == "list");
    CHECK(ej["data"].size() == 2);
    CHECK(e.header("x-modelgate-server") != ida);
  }
  CHECK(a.requests("/v1/completions") == 0);
  CHECK(a.requests("/v1/embeddings") == 0);
  CHECK(b.requests("/v1/completions") + c.requests("/v1/completions") == 2);
  CHECK(b.requests("/v1/embeddings") + c.requests("/v1/embeddings") == 2);

  // /v1/models: OpenAI's list shape, models of active servers not unhealthy.
  gw_mock sick{{"--mode", "http_500"}};
  auto idsick = d.register_server(sick.url(), {"delta"});
  gw_mock gone;
  auto idgone = d.register_server(gone.url(), {"epsilon"});
  REQUIRE(d.client.del("/v1/servers/" + idgone).status == 200);
  REQUIRE(d.wait_status(idsick, "unhealthy"));
  auto r = d.client.get("/v1/models");
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["object"] == "list");
  REQUIRE(j["data"].is_array());
  std::multiset<std::string> ids;
  for (const auto& m : j["data"]) {
    CHECK(m["object"] == "model");
    CHECK(m["id"].is_string());
    ids.insert(m["id"].get<std::string>());
  }
  CHECK(ids == std::multiset<std::string>{"alpha", "beta"});
}

TEST_CASE("an unhealthy server is never picked", "[gateway][integration]") {
  gw_daemon d;
  gw_mock a, b, c;
  auto ida = d.register_server(a.url(), {"m"});
  auto idb = d.register_server(b.url(), {"m"});
  auto idc = d.register_server(c.url(), {"m"});
  for (const auto& id : {ida, idb, idc})
    REQUIRE(d.wait_status(id, "healthy"));
  b.set_mode("http_500");
  REQUIRE(d.wait_status(idb, "unhealthy"));
  // Freeze the statuses, then let b answer well: if it were picked, it would
  // serve the request and show up.
  d.stop_probing();
  REQUIRE(d.status(idb) == "unhealthy");
  b.set_mode("healthy");
  b.reset();

  std::map<std::string, int> seen;
  for (int i = 0; i < 12; ++i) {
    auto r = d.chat("m");
    REQUIRE(r.status == 200);
    ++seen[r.header("x-modelgate-server")];
  }
  for (const auto& s : concurrent_chat(d, "m", 6))
    ++seen[s];
  CHECK(seen.count(idb) == 0);
  CHECK(seen[ida] + seen[idc] == 18);
  CHECK(b.requests() == 0);
  CHECK(d.status(idb) == "unhealthy");
}

TEST_CASE("a server of unknown status is used only when no server is healthy",
          "[gateway][integration]") {
  // A long interval and probing stopped before registering: statuses stay
  // `unknown` until an explicit check.
  gw_daemon d({}, "3600");
  d.stop_probing();
  gw_mock a, b;
  auto ida = d.register_server(a.url(), {"m"});
  auto idb = d.register_server(b.url(), {"m"});
  REQUIRE(d.status(ida) == "unknown");
  REQUIRE(d.status(idb) == "unknown");
  CHECK(d.model_ids() == std::set<std::string>{"m"}); // unknown is not unhealthy

  // None healthy: the unknown ones are used, round robin.
  std::map<std::string, int> seen;
  for (int i = 0; i < 4; ++i) {
    auto r = d.chat("m");
    REQUIRE(r.status == 200);
    ++seen[r.header("x-modelgate-server")];
  }
  CHECK(seen[ida] == 2);
  CHECK(seen[idb] == 2);

  // a healthy, b unknown: only a.
  REQUIRE(d.check(ida)["healthy"] == true);
  REQUIRE(d.status(ida) == "healthy");
  b.reset();
  seen.clear();
  for (int i = 0; i < 6; ++i) {
    auto r = d.chat("m");
    REQUIRE(r.status == 200);
    ++seen[r.header("x-modelgate-server")];
  }
  for (const auto& s : concurrent_chat(d, "m", 4))
    ++seen[s];
  CHECK(seen[ida] == 10);
  CHECK(seen.count(idb) == 0);
  CHECK(b.requests() == 0);

  // a unhealthy, b unknown: only b (the unknown one is the only candidate).
  a.set_mode("http_500");
  REQUIRE(d.check(ida)["healthy"] == false);
  REQUIRE(d.status(ida) == "unhealthy");
  a.reset();
  seen.clear();
  for (int i = 0; i < 4; ++i) {
    auto r = d.chat("m");
    REQUIRE(r.status == 200);
    ++seen[r.header("x-modelgate-server")];
  }
  CHECK(seen[idb] == 4);
  CHECK(a.requests() == 0);
  CHECK(d.status(idb) == "unknown");
}

TEST_CASE("9 concurrent slow requests over 3 servers land 3/3/3", "[gateway][integration]") {
  three_servers s;
  s.set_all({{"mode", "slow"}, {"slow_ms", 500}});
  for (auto* m : {&s.a, &s.b, &s.c})
    m->reset();
  auto t0 = clock_type::now();
  auto t = tally(concurrent_chat(s.d, "m", 9));
  auto took = clock_type::now() - t0;
  CHECK(t[s.ida] == 3);
  CHECK(t[s.idb] == 3);
  CHECK(t[s.idc] == 3);
  CHECK(s.a.requests() == 3);
  CHECK(s.b.requests() == 3);
  CHECK(s.c.requests() == 3);
  // Concurrent for real: all 9 took about one slow answer, not three.
  CHECK(took < 1400ms);
}

TEST_CASE("in-flight counts return to zero after completions, errors and disconnects",
          "[gateway][integration]") {
  // Server a alone also serves "only_a": every scenario below runs there, so
  // a leaked in-flight count piles up on a alone and breaks 3/3/3 for "m"
  // (a leak of two or more always does; each scenario runs three times).
  three_servers s({"--upstream-timeout", "1"}, {"m", "only_a"});
  REQUIRE(s.lands_evenly());

  {
    INFO("after completions");
    for (int i = 0; i < 3; ++i)
      REQUIRE(s.d.chat("only_a").status == 200);
    auto t = tally(concurrent_chat(s.d, "only_a", 3));
    CHECK(t[s.ida] == 3);
    for (int i = 0; i < 3; ++i) {
      auto st = start_stream(s.d, "only_a");
      int events = 0;
      while (st->next())
        ++events;
      CHECK(events == 6); // 5 chunks and [DONE]
    }
    CHECK(s.lands_evenly());
  }
  {
    INFO("after upstream error answers");
    s.a.set_mode("http_500");
    for (int i = 0; i < 3; ++i) {
      auto r = s.d.chat("only_a");
      CHECK(r.status >= 500);
    }
    s.a.set_mode("healthy");
    CHECK(s.lands_evenly());
  }
  {
    INFO("after upstream timeouts");
    s.a.set_mode("hang");
    std::vector<http_client> clients;
    for (int i = 0; i < 3; ++i) {
      clients.emplace_back("127.0.0.1", s.d.port(), 5s);
      clients.back().send_request("POST", "/v1/chat/completions", chat_body("only_a").dump());
    }
    for (auto& c : clients)
      check_error(c.read_response(), 504);
    s.a.set_mode("healthy");
    CHECK(s.lands_evenly());
  }
  {
    INFO("after refused connections (retried, then failed)");
    s.a.set_mode("refuse");
    check_error(s.d.chat("only_a"), 502); // its only server, refused
    REQUIRE(wait_until([&] { return s.d.status(s.ida) == "unhealthy"; }, 1s));
    s.a.set_mode("healthy");
    REQUIRE(s.d.check(s.ida)["healthy"] == true);
    REQUIRE(s.d.status(s.ida) == "healthy");
    for (int round = 0; round < 3; ++round) {
      // Three requests in a row over three tied servers: round robin makes
      // one of them try a, which is retried on b or c.
      s.a.set_mode("refuse");
      for (int i = 0; i < 3; ++i) {
        auto r = s.d.chat("m");
        CHECK(r.status == 200);
        CHECK(r.header("x-modelgate-server") != s.ida);
      }
      REQUIRE(wait_until([&] { return s.d.status(s.ida) == "unhealthy"; }, 1s));
      s.a.set_mode("healthy");
      REQUIRE(s.d.check(s.ida)["healthy"] == true);
      REQUIRE(s.d.status(s.ida) == "healthy");
    }
    CHECK(s.lands_evenly());
  }
  {
    INFO("after streams broken upstream");
    s.a.set_mode("die_mid_stream");
    for (int i = 0; i < 3; ++i) {
      auto st = start_stream(s.d, "only_a");
      std::vector<sse_event> events;
      while (auto e = st->next())
        events.push_back(*e);
      REQUIRE(!events.empty());
      CHECK(events.back().name == "error");
    }
    s.a.set_mode("healthy");
    CHECK(s.lands_evenly());
  }
  {
    INFO("after clients left streams");
    s.a.set({{"chunks", 50}, {"chunk_delay_ms", 100}});
    {
      std::vector<std::unique_ptr<sse_client>> streams;
      for (int i = 0; i < 3; ++i) {
        streams.push_back(start_stream(s.d, "only_a"));
        REQUIRE(streams.back()->next());
      }
      REQUIRE(s.a.open_streams() == 3);
    }
    CHECK(wait_until([&] { return s.a.open_streams() == 0; }, 2s));
    s.a.set({{"chunks", 5}, {"chunk_delay_ms", 0}});
    // The release follows the upstream close; give it a moment to land.
    CHECK(s.lands_evenly(2s));
  }
  {
    INFO("after clients left non-streaming requests");
    s.a.set_mode("hang");
    s.a.reset();
    {
      std::vector<http_client> clients;
      for (int i = 0; i < 3; ++i) {
        clients.emplace_back("127.0.0.1", s.d.port(), 5s);
        clients.back().send_request("POST", "/v1/chat/completions", chat_body("only_a").dump());
      }
      REQUIRE(wait_until([&] { return s.a.requests() == 3; }, 3s));
    }
    s.a.set_mode("healthy");
    // A hung upstream is given up at the latest at the 1 s upstream timeout.
    CHECK(s.lands_evenly(3s));
  }
}

// -- failures and retries -------------------------------------------------------------

TEST_CASE("a refused server: the request succeeds on another, the refused one is unhealthy at once",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock a, b;
  auto ida = d.register_server(a.url(), {"m"});
  auto idb = d.register_server(b.url(), {"m"});
  REQUIRE(d.wait_status(ida, "healthy"));
  REQUIRE(d.wait_status(idb, "healthy"));
  // No probe may mark a unhealthy from now on: only the gateway can.
  d.stop_probing();
  auto before = d.record(ida);
  REQUIRE(before["consecutive_failures"] == 0);
  a.set_mode("refuse");

  // Two requests in a row: round robin makes one of them try a.
  for (int i = 0; i < 2; ++i) {
    auto r = d.chat("m");
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.header("x-modelgate-server") == idb);
    CHECK(json::parse(r.body)["choices"][0]["message"]["content"] ==
          "Hello from mock on port " + std::to_string(b.port()));
  }
  CHECK(b.requests() == 2);
  REQUIRE(wait_until([&] { return d.status(ida) == "unhealthy"; }, 1s));
  auto rec = d.record(ida);
  CHECK(rec["is_active"] == true);
  CHECK(rec["consecutive_failures"] == 0); // does not count toward deregistration
  CHECK(rec["last_error_kind"] == "connect");
  auto ev = d.client.get("/v1/servers/" + ida + "/events");
  CHECK(json::parse(ev.body)["data"].back()["event"] == "unhealthy");

  // Still routed around while unhealthy.
  for (int i = 0; i < 3; ++i)
    CHECK(d.chat("m").header("x-modelgate-server") == idb);

  // The next successful probe clears it.
  a.set_mode("healthy");
  d.start_probing();
  REQUIRE(d.wait_status(ida, "healthy"));
  CHECK(d.record(ida)["consecutive_failures"] == 0);
}

TEST_CASE("connect failures are retried at most twice, never on the same server",
          "[gateway][integration]") {
  gw_daemon d({}, "3600");
  d.stop_probing();
  // Four servers refusing connections, status unknown (so routable).
  std::vector<std::unique_ptr<gw_mock>> mocks;
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    mocks.push_back(std::make_unique<gw_mock>(std::vector<std::string>{"--mode", "refuse"}));
    ids.push_back(d.register_server(mocks.back()->url(), {"r"}));
  }
  check_error(d.chat("r"), 502);
  // One try and two retries: exactly three servers marked unhealthy.
  auto count = [&](const std::string& st) {
    int n = 0;
    for (const auto& id : ids)
      n += d.status(id) == st ? 1 : 0;
    return n;
  };
  REQUIRE(wait_until([&] { return count("unhealthy") == 3; }, 1s));
  CHECK(count("unknown") == 1);
  for (const auto& id : ids)
    CHECK(d.record(id)["consecutive_failures"] == 0);
  // The fourth is tried next, and fails too.
  check_error(d.chat("r"), 502);
  REQUIRE(wait_until([&] { return count("unhealthy") == 4; }, 1s));
  // Now nothing is routable.
  check_error(d.chat("r"), 503);
  CHECK(d.model_ids().count("r") == 0);
}

TEST_CASE("gateway errors: each of the contract's status codes in the OpenAI error shape",
          "[gateway][integration]") {
  gw_daemon d({"--upstream-timeout", "0.5"});
  gw_mock ok, sick{{"--mode", "http_500"}};
  auto idok = d.register_server(ok.url(), {"m"});
  auto idsick = d.register_server(sick.url(), {"sick"});
  REQUIRE(d.wait_status(idok, "healthy"));
  REQUIRE(d.wait_status(idsick, "unhealthy"));

  SECTION("404 model_not_found") {
    for (const char* path : {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}) {
      INFO(path);
      check_error(d.client.post(path, json{{"model", "no-such-model"}, {"input", "x"}}.dump()),
                  404, "model_not_found");
    }
    // A model served only by a deregistered server is not served either.
    REQUIRE(d.client.del("/v1/servers/" + idsick).status == 200);
    check_error(d.chat("sick"), 404, "model_not_found");
  }
  SECTION("400 for a body that is not JSON or lacks a string model") {
    for (const char* path : {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}) {
      INFO(path);
      check_error(d.client.post(path, "this is { not json"), 400);
      check_error(d.client.post(path, "[1, 2]"), 400);
      auto missing = d.client.post(path, json{{"messages", json::array()}}.dump());
      check_error(missing, 400);
      CHECK(str(parse_or_null(missing.body)["error"], "message").find("model") !=
            std::string::npos);
      auto wrong = d.client.post(path, json{{"model", 42}}.dump());
      check_error(wrong, 400);
      CHECK(str(parse_or_null(wrong.body)["error"], "message").find("model") !=
            std::string::npos);
      check_error(d.client.post(path, R"({"model":"m"} trailing)"), 400);
      check_error(d.client.post(path, R"({"model":"m")"), 400);
      // Only a top-level "model" counts, and the last one wins, as in a parsed document.
      check_error(d.client.post(path, R"({"x":{"model":"m"}})"), 400);
      check_error(d.client.post(path, R"({"model":"m","model":null})"), 400);
      check_error(d.client.post(path, R"({"model":""})"), 400);
      std::string deep = R"({"model":"m","x":)" + std::string(100, '[') + std::string(100, ']') + "}";
      auto nested = d.client.post(path, deep);
      check_error(nested, 400);
      CHECK(str(parse_or_null(nested.body)["error"], "message").find("nests") != std::string::npos);
    }
    CHECK(ok.requests() == 0);
  }
  SECTION("413 for a body over 32 MiB; 32 MiB itself is accepted") {
    const size_t limit = 32u << 20;
    std::string head = R"({"model":"m","messages":[{"role":"user","content":")";
    std::string tail = R"("}]})";
    std::string big = head + std::string(limit + 1 - head.size() - tail.size(), 'a') + tail;
    REQUIRE(big.size() == limit + 1);
    http_client c{"127.0.0.1", d.port(), 15s};
    check_error(c.post("/v1/chat/completions", big), 413);
    CHECK(ok.requests() == 0);
    big = head + std::string(limit - head.size() - tail.size(), 'a') + tail;
    http_client c2{"127.0.0.1", d.port(), 15s};
    auto r = c2.post("/v1/chat/completions", big);
    CHECK(r.status == 200);
    CHECK(ok.requests() == 1);
    auto seen = ok.last_request();
    CHECK(seen.is_object());
  }
  SECTION("503 when every server of the model is unhealthy") {
    check_error(d.chat("sick"), 503);
    CHECK(sick.requests() == 0);
  }
  SECTION("502 when every try failed") {
    d.stop_probing();
    gw_mock dead{{"--mode", "refuse"}};
    d.register_server(dead.url(), {"dead"}); // unknown: routable
    check_error(d.chat("dead"), 502);
  }
  SECTION("504 when the upstream sends no headers within --upstream-timeout") {
    d.stop_probing();
    ok.set_mode("hang");
    auto t0 = clock_type::now();
    check_error(d.chat("m"), 504);
    auto took = clock_type::now() - t0;
    CHECK(took >= 400ms);
    CHECK(took < 3s);
    CHECK(ok.requests() == 1);
    // A timeout is not a connect failure: the server stays routable.
    ok.set_mode("healthy");
    CHECK(d.chat("m").status == 200);
  }
  SECTION("405 for a gateway path with the wrong method") {
    check_error(d.client.get("/v1/chat/completions"), 405);
  }
}

TEST_CASE("with --api-key the OpenAI routes need one of the keys as Bearer",
          "[gateway][integration]") {
  gw_daemon d({"--api-key", "key-one", "--api-key", "key-two"});
  gw_mock mock;
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  const header_list none{}, wrong{{"Authorization", "Bearer key-three"}},
    basic{{"Authorization", "Basic key-one"}}, one{{"Authorization", "Bearer key-one"}},
    two{{"Authorization", "Bearer key-two"}};
  for (const auto* h : {&none, &wrong, &basic}) {
    check_error(d.client.get("/v1/models", *h), 401, "unauthorized");
    check_error(d.chat("m", *h), 401, "unauthorized");
    check_error(d.client.post("/v1/completions", json{{"model", "m"}, {"prompt", "x"}}.dump(), *h),
                401, "unauthorized");
    check_error(d.client.post("/v1/embeddings", json{{"model", "m"}, {"input", "x"}}.dump(), *h),
                401, "unauthorized");
  }
  // Even a request the gateway would reject for other reasons needs the key first.
  check_error(d.chat("no-such-model"), 401, "unauthorized");
  CHECK(mock.requests() == 0);

  CHECK(d.model_ids(one) == std::set<std::string>{"m"});
  CHECK(d.model_ids(two) == std::set<std::string>{"m"});
  auto r = d.chat("m", two);
  CHECK(r.status == 200);
  CHECK(d.chat("m", one).status == 200);
  // The client's key never goes upstream (this server has no api_key).
  auto seen = mock.last_request();
  REQUIRE(seen.is_object());
  CHECK(!seen["headers"].contains("authorization"));
  // Admin routes and /health do not need an API key.
  CHECK(d.client.get("/health").status == 200);
  CHECK(d.client.get("/v1/servers").status == 200);
}

TEST_CASE("the server's api_key goes upstream, the client's credentials never do",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock keyed, open;
  auto idk = d.register_server(keyed.url(), {"keyed"}, {{"api_key", "sk-upstream-secret"}});
  auto ido = d.register_server(open.url(), {"open"});
  REQUIRE(d.wait_status(idk, "healthy"));
  REQUIRE(d.wait_status(ido, "healthy"));
  const header_list client_creds{{"Authorization", "Bearer sk-client-secret"},
                                 {"Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="},
                                 {"X-Custom-Header", "kept"}};

  std::string body = chat_body("keyed").dump();
  auto r = d.client.post("/v1/chat/completions", body, client_creds);
  REQUIRE(r.status == 200);
  CHECK(r.header("x-modelgate-server") == idk);
  auto seen = keyed.last_request();
  REQUIRE(seen.is_object());
  CHECK(seen["headers"].value("authorization", "") == "Bearer sk-upstream-secret");
  CHECK(!seen["headers"].contains("proxy-authorization"));
  CHECK(seen["body"] == body); // forwarded unchanged

  r = d.client.post("/v1/chat/completions", chat_body("open").dump(), client_creds);
  REQUIRE(r.status == 200);
  CHECK(r.header("x-modelgate-server") == ido);
  seen = open.last_request();
  REQUIRE(seen.is_object());
  CHECK(!seen["headers"].contains("authorization"));
  CHECK(!seen["headers"].contains("proxy-authorization"));

  // Streams too.
  auto st = std::make_unique<sse_client>(d.port(), "/v1/chat/completions",
                                         chat_body("open", true).dump(), client_creds);
  REQUIRE(st->read_head());
  CHECK(st->read_to_end());
  seen = open.last_request();
  CHECK(!seen["headers"].contains("authorization"));

  auto log = d.proc.stderr_text();
  CHECK(log.find("sk-upstream-secret") == std::string::npos);
  CHECK(log.find("sk-client-secret") == std::string::npos);
}

TEST_CASE("x-request-id is kept or created, and sent both ways", "[gateway][integration]") {
  gw_daemon d;
  gw_mock mock;
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  auto kept = d.chat("m", {{"X-Request-Id", "req-from-client-42"}});
  REQUIRE(kept.status == 200);
  CHECK(kept.header("x-request-id") == "req-from-client-42");
  CHECK(mock.last_request()["headers"].value("x-request-id", "") == "req-from-client-42");

  auto made1 = d.chat("m");
  REQUIRE(made1.status == 200);
  auto rid1 = made1.header("x-request-id");
  CHECK(!rid1.empty());
  CHECK(mock.last_request()["headers"].value("x-request-id", "") == rid1);
  auto made2 = d.chat("m");
  auto rid2 = made2.header("x-request-id");
  CHECK(!rid2.empty());
  CHECK(rid2 != rid1);
  CHECK(mock.last_request()["headers"].value("x-request-id", "") == rid2);

  // Error answers carry one too, and a stream sends it upstream.
  auto err = d.chat("no-such-model", {{"X-Request-Id", "req-err-7"}});
  CHECK(err.status == 404);
  CHECK(err.header("x-request-id") == "req-err-7");
  auto st = std::make_unique<sse_client>(d.port(), "/v1/chat/completions",
                                         chat_body("m", true).dump(),
                                         header_list{{"X-Request-Id", "req-stream-9"}});
  REQUIRE(st->read_head());
  CHECK(st->header("x-request-id") == "req-stream-9");
  CHECK(st->read_to_end());
  CHECK(mock.last_request()["headers"].value("x-request-id", "") == "req-stream-9");
}

// -- streaming ------------------------------------------------------------------------

TEST_CASE("a stream is relayed chunk by chunk as the upstream produces it",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock mock{{"--chunks", "20", "--chunk-delay-ms", "100"}};
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  auto st = start_stream(d, "m");
  CHECK(st->status == 200);
  CHECK(st->header("content-type").find("text/event-stream") != std::string::npos);
  CHECK(st->header("cache-control").find("no-cache") != std::string::npos);
  CHECK(st->header("x-accel-buffering") == "no");
  CHECK(st->header("x-modelgate-server") == id);

  std::vector<sse_event> events;
  while (auto e = st->next(3000ms))
    events.push_back(*e);
  CHECK(!st->timed_out());
  CHECK(st->body_done()); // ends cleanly
  REQUIRE(events.size() == 21);
  CHECK(events.back().data == "[DONE]");

  std::vector<int64_t> sent;
  std::string text;
  for (size_t i = 0; i < 20; ++i) {
    INFO("event " << i << ": " << events[i].data);
    CHECK(events[i].name.empty());
    auto j = parse_or_null(events[i].data);
    REQUIRE(j.is_object());
    REQUIRE(j.contains("mock_sent_at_us"));
    CHECK(j["object"] == "chat.completion.chunk");
    text += j["choices"][0]["delta"].value("content", "");
    sent.push_back(j["mock_sent_at_us"].get<int64_t>());
  }
  std::string expected;
  for (int i = 0; i < 20; ++i)
    expected += "tok" + std::to_string(i) + " ";
  CHECK(text == expected);

  // The first chunk is at the client before the third one is produced.
  CHECK(events[0].at_us < sent[2]);
  // Every chunk arrives within 20 ms of leaving the upstream.
  int64_t worst = 0;
  for (size_t i = 0; i < 20; ++i) {
    auto lag = events[i].at_us - sent[i];
    INFO("chunk " << i << " lag " << lag << " us");
    CHECK(lag >= 0);
    CHECK(lag <= 20000);
    worst = std::max(worst, lag);
  }
  // [DONE] follows the last event at once.
  CHECK(events[20].at_us - sent[19] <= 20000);
  UNSCOPED_INFO("worst chunk lag " << worst << " us");
  // The connection closes after a stream.
  CHECK(st->wait_eof(2000ms));
}

TEST_CASE("/v1/completions streams are relayed too", "[gateway][integration]") {
  gw_daemon d;
  gw_mock mock{{"--chunks", "3"}};
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));
  auto st = start_stream(d, "m", "/v1/completions");
  CHECK(st->status == 200);
  std::string text;
  std::vector<sse_event> events;
  while (auto e = st->next(3000ms))
    events.push_back(*e);
  REQUIRE(events.size() == 4);
  CHECK(events.back().data == "[DONE]");
  for (size_t i = 0; i < 3; ++i)
    text += parse_or_null(events[i].data)["choices"][0].value("text", "");
  CHECK(text == "tok0 tok1 tok2 ");
}

TEST_CASE("an HTTP/1.0 client gets the stream unchunked and ended by a close",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock mock{{"--chunks", "3"}};
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  tcp_connection c{"127.0.0.1", d.proc.port(), 3000ms};
  std::string body = R"({"model":"m","stream":true,"messages":[]})";
  REQUIRE(c.send_all("POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                     "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body,
                     3000ms));
  std::string all;
  auto deadline = clock_type::now() + 5s;
  while (clock_type::now() < deadline) {
    auto got = c.recv_some(1000ms);
    if (!got || got->empty())
      break; // closed: the end of an HTTP/1.0 body
    all += *got;
  }
  auto head_end = all.find("\r\n\r\n");
  REQUIRE(head_end != std::string::npos);
  auto head = all.substr(0, head_end);
  auto stream = all.substr(head_end + 4);
  CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(head.find("Transfer-Encoding") == std::string::npos);
  CHECK(head.find("Connection: close") != std::string::npos);
  CHECK(stream.rfind("data: {", 0) == 0); // no chunk-size line before the first event
  CHECK(stream.find("tok2 ") != std::string::npos);
  CHECK(stream.size() >= 14);
  CHECK(stream.substr(stream.size() - 14) == "data: [DONE]\n\n");
}

TEST_CASE("a client that disconnects mid-stream closes the upstream stream within 1 s",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock mock{{"--chunks", "100", "--chunk-delay-ms", "100"}};
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  auto st = start_stream(d, "m");
  REQUIRE(st->status == 200);
  REQUIRE(st->next());
  REQUIRE(st->next());
  REQUIRE(mock.open_streams() == 1);
  auto t0 = clock_type::now();
  st->close();
  CHECK(wait_until([&] { return mock.open_streams() == 0; }, t0 + 1s, 5ms));
  INFO("closed after "
       << std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count()
       << " ms");
  // The daemon is fine and the server still routable.
  CHECK(d.chat("m").status == 200);
  CHECK(d.status(id) == "healthy");
}

TEST_CASE("a streaming client that leaves before the upstream's headers ends the try at once",
          "[gateway][integration]") {
  gw_daemon d;
  // Probing stopped: the server stays `unknown`, routable, and its slow
  // health answers cannot make it unhealthy meanwhile.
  REQUIRE(d.client.post("/v1/health-checker/stop", "").status == 200);
  gw_mock mock{{"--mode", "slow", "--slow-ms", "3000"}};
  auto id = d.register_server(mock.url(), {"m"});
  auto in_flight = [&] {
    auto text = d.client.get("/metrics").body;
    auto at = text.find("\nmodelgate_requests_in_flight ");
    return at == std::string::npos ? -1 : std::stoi(text.substr(at + 30));
  };
  tcp_connection c{"127.0.0.1", d.proc.port(), 3000ms};
  std::string body = R"({"model":"m","stream":true,"messages":[]})";
  REQUIRE(c.send_all("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body,
                     3000ms));
  REQUIRE(wait_until([&] { return mock.requests("/v1/chat/completions") == 1; }, 2s));
  REQUIRE(in_flight() == 1);
  auto t0 = clock_type::now();
  c.close(); // long before the upstream's headers (3 s)
  CHECK(wait_until([&] { return in_flight() == 0; }, t0 + 1s, 10ms));
  CHECK(d.status(id) == "unknown"); // a client leaving is not the server's failure
}

TEST_CASE("an upstream killed mid-stream ends the client's stream with an SSE error event",
          "[gateway][integration]") {
  gw_daemon d;
  gw_mock mock{{"--mode", "die_mid_stream", "--chunks", "10", "--chunk-delay-ms", "20"}};
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  auto st = start_stream(d, "m");
  REQUIRE(st->status == 200);
  std::vector<sse_event> events;
  while (auto e = st->next(3000ms))
    events.push_back(*e);
  CHECK(!st->timed_out());
  CHECK(st->body_done()); // the response ends cleanly, not by a reset
  REQUIRE(events.size() == 3);
  CHECK(parse_or_null(events[0].data)["choices"][0]["delta"]["content"] == "tok0 ");
  CHECK(parse_or_null(events[1].data)["choices"][0]["delta"]["content"] == "tok1 ");
  check_sse_error_event(events[2]);
  for (const auto& e : events)
    CHECK(e.data != "[DONE]");
  CHECK(st->body().find("[DONE]") == std::string::npos);
}

TEST_CASE("a stream stalled past --stream-idle-timeout ends with an SSE error event",
          "[gateway][integration]") {
  gw_daemon d({"--stream-idle-timeout", "0.3"});
  gw_mock mock{{"--chunks", "3", "--chunk-delay-ms", "2000"}};
  auto id = d.register_server(mock.url(), {"m"});
  REQUIRE(d.wait_status(id, "healthy"));

  auto st = start_stream(d, "m");
  REQUIRE(st->status == 200);
  auto first = st->next(3000ms);
  REQUIRE(first);
  CHECK(first->name.empty());
  auto err = st->next(3000ms);
  REQUIRE(err);
  check_sse_error_event(*err);
  auto gap = err->at_us - first->at_us;
  CHECK(gap >= 250000);
  CHECK(gap < 1500000);
  CHECK(!st->next(3000ms));
  CHECK(st->body_done());
  CHECK(st->body().find("[DONE]") == std::string::npos);
  // The stalled upstream stream is closed too.
  CHECK(wait_until([&] { return mock.open_streams() == 0; }, 1s));
}

// -- the official openai npm client ---------------------------------------------------

TEST_CASE("the official openai npm client chats and streams through the gateway",
          "[gateway][integration][openai]") {
  const std::string dir = OPENAI_CLIENT_DIR;
  if (!file_exists(dir + "/node_modules/openai/package.json"))
    FAIL("the openai npm package is not installed in " << dir
         << "/node_modules; tools/test.sh installs it (npm ci --prefix " << dir << ")");

  gw_daemon d;
  gw_mock mock{{"--chunks", "4", "--chunk-delay-ms", "10"}};
  auto id = d.register_server(mock.url(), {"gpt-mock"});
  REQUIRE(d.wait_status(id, "healthy"));

  auto r = run_process({"node", dir + "/chat.mjs", d.base_url(), "gpt-mock"}, {}, 30s, dir);
  INFO("stdout: " << r.out);
  INFO("stderr: " << r.err);
  REQUIRE(!r.timed_out);
  REQUIRE(r.exit_code == 0);
  auto j = parse_or_null(r.out);
  REQUIRE(j.is_object());
  CHECK(j["content"] == "Hello from mock on port " + std::to_string(mock.port()));
  CHECK(j["streamed"] == "tok0 tok1 tok2 tok3 ");
  CHECK(j["chunks"] == 4);
  CHECK(j["model"] == "gpt-mock");
  CHECK(mock.requests() == 2);
  // The client's api key stayed at the gateway.
  CHECK(!mock.last_request()["headers"].contains("authorization"));
}

TEST_CASE("SIGTERM with gateway requests in flight exits 0 within 5 seconds",
          "[gateway][integration]") {
  gw_daemon d;
  REQUIRE(d.client.post("/v1/health-checker/stop", "").status == 200);
  gw_mock mock{{"--mode", "slow", "--slow-ms", "10000"}};
  d.register_server(mock.url(), {"m"});
  // Tries in flight, a plain one and a stream, each holding its exchange:
  // they must not keep the daemon from exiting.
  std::vector<std::unique_ptr<tcp_connection>> clients;
  for (bool stream : {false, true, false}) {
    auto c = std::make_unique<tcp_connection>("127.0.0.1", d.proc.port(), 3000ms);
    std::string body = chat_body("m", stream).dump();
    REQUIRE(c->send_all("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                        "Content-Type: application/json\r\nContent-Length: "
                          + std::to_string(body.size()) + "\r\n\r\n" + body,
                        3000ms));
    clients.push_back(std::move(c));
  }
  REQUIRE(wait_until([&] { return mock.requests("/v1/chat/completions") == 3; }, 3s));
  auto t0 = clock_type::now();
  d.proc.terminate();
  auto status = d.proc.wait_exit(5s);
  REQUIRE(status);
  CHECK(*status == 0);
  CHECK(clock_type::now() - t0 < 5s);
}
