// mock_model_server_test.cpp — black-box tests of tools/mock-model-server, the
// fake vLLM / llama.cpp backend the gateway and health-check tests rely on.
//
// Each test starts the mock (MOCK_SERVER_PATH) on 127.0.0.1 with free ports,
// talks to it over plain sockets (harness.hpp's http_client / tcp_connection,
// plus a small chunk-by-chunk SSE reader here), and drives its fault modes
// through the control port. Nothing sleeps to let things settle: every wait
// is a condition with a deadline. Tagged [mock].
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "harness.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;
using Catch::Contains;

namespace {

std::string mock_bin() { return MOCK_SERVER_PATH; }

int ms_left(clock_type::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

int64_t steady_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             clock_type::now().time_since_epoch())
      .count();
}

// -- the mock as a child process ----------------------------------------------------

// Starts the mock with `args` (a --listen 127.0.0.1:0 is added unless given),
// stdout on a pipe and stderr in a temporary file, and returns once it printed
// its control, listening and (with --ports N > 1) ports lines. The destructor
// kills (SIGKILL) and reaps it.
class mock_process {
public:
  explicit mock_process(std::vector<std::string> args = {},
                        std::chrono::milliseconds ready_timeout = 10s)
    : dir_("mgmock") {
    bool has_listen = false;
    bool multi_ports = false;
    for (size_t i = 0; i < args.size(); ++i) {
      has_listen = has_listen || args[i] == "--listen";
      if (args[i] == "--ports" && i + 1 < args.size())
        multi_ports = std::stoi(args[i + 1]) > 1;
    }
    if (!has_listen) {
      args.insert(args.begin(), "127.0.0.1:0");
      args.insert(args.begin(), "--listen");
    }
    args.insert(args.begin(), mock_bin());
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);

    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe2 failed");
    std::string err_path = dir_.file("stderr.log");
    int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(null_fd, 0);
      ::dup2(out[1], 1);
      ::dup2(err_fd, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err_fd);
    ::close(null_fd);
    out_fd_ = out[0];
    if (pid_ < 0)
      throw std::runtime_error("fork failed");

    static const std::regex control_re(R"(^mock-model-server control on http://(\S+):([0-9]+)$)");
    static const std::regex listen_re(R"(^mock-model-server listening on http://(\S+):([0-9]+)$)");
    static const std::regex ports_re(R"(^mock-model-server ports ([0-9]+)-([0-9]+)$)");
    auto deadline = clock_type::now() + ready_timeout;
    std::string pending;
    bool have_control = false, have_listen = false, have_ports = !multi_ports;
    while (!(have_control && have_listen && have_ports)) {
      if (clock_type::now() >= deadline || reap(false))
        break;
      pollfd p{out_fd_, POLLIN, 0};
      if (::poll(&p, 1, std::min(50, std::max(1, ms_left(deadline)))) <= 0)
        continue;
      char buf[4096];
      auto got = ::read(out_fd_, buf, sizeof buf);
      if (got <= 0) {
        if (got == 0)  // stdout closed: it is exiting
          wait_exit(std::chrono::milliseconds(ms_left(deadline)));
        if (got == 0 || (errno != EINTR && errno != EAGAIN))
          break;
        continue;
      }
      stdout_.append(buf, static_cast<size_t>(got));
      pending.append(buf, static_cast<size_t>(got));
      for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        lines_.push_back(line);
        std::smatch m;
        if (std::regex_match(line, m, control_re)) {
          control_port_ = std::stoi(m[2].str());
          have_control = true;
        } else if (std::regex_match(line, m, listen_re)) {
          host_ = m[1].str();
          port_ = first_port_ = last_port_ = std::stoi(m[2].str());
          have_listen = true;
        } else if (std::regex_match(line, m, ports_re)) {
          first_port_ = std::stoi(m[1].str());
          last_port_ = std::stoi(m[2].str());
          have_ports = true;
        }
      }
    }
    if (!(have_control && have_listen && have_ports)) {
      std::string msg = "mock-model-server did not get ready; stdout: [" + stdout_ +
                        "]; stderr: [" + stderr_text() + "]";
      cleanup();
      throw std::runtime_error(msg);
    }
  }

  ~mock_process() { cleanup(); }
  mock_process(const mock_process&) = delete;
  mock_process& operator=(const mock_process&) = delete;

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  int control_port() const { return control_port_; }
  int first_port() const { return first_port_; }
  int last_port() const { return last_port_; }
  const std::vector<std::string>& lines() const { return lines_; }

  std::string stderr_text() const {
    std::ifstream in(dir_.file("stderr.log"));
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  void signal(int sig) {
    if (!reap(false))
      ::kill(pid_, sig);
  }

  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    wait_until([this] { return reap(false); }, timeout, 2ms);
    return status_;
  }

private:
  bool reap(bool block) {
    if (status_)
      return true;
    int st = 0;
    pid_t r;
    do {
      r = ::waitpid(pid_, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r != pid_)
      return false;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return true;
  }

  void cleanup() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      reap(true);
    }
    if (out_fd_ >= 0) {
      ::close(out_fd_);
      out_fd_ = -1;
    }
  }

  temp_dir dir_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::optional<int> status_;
  std::string host_ = "127.0.0.1";
  int port_ = 0, control_port_ = 0, first_port_ = 0, last_port_ = 0;
  std::string stdout_;
  std::vector<std::string> lines_;
};

// -- control API ------------------------------------------------------------------------

json control_status(const mock_process& m) {
  http_client c(m.host(), m.control_port(), 3s);
  auto r = c.get("/control");
  REQUIRE(r.status == 200);
  return json::parse(r.body);
}

json control_post(const mock_process& m, const json& body, int expected_status = 200) {
  http_client c(m.host(), m.control_port(), 3s);
  auto r = c.post("/control", body.dump());
  INFO("POST /control " << body.dump() << " -> " << r.status << " " << r.body);
  REQUIRE(r.status == expected_status);
  return json::parse(r.body);
}

void set_mode(const mock_process& m, const std::string& mode) {
  auto st = control_post(m, {{"mode", mode}});
  REQUIRE(st["mode"] == mode);
}

uint64_t route_count(const json& status, const std::string& path) {
  auto& req = status.at("requests");
  return req.contains(path) ? req[path].get<uint64_t>() : 0;
}

// Waits until `/control`'s field `key` equals `value`.
bool wait_status(const mock_process& m, const std::string& key, int64_t value,
                 std::chrono::milliseconds timeout = 3s) {
  return wait_until([&] { return control_status(m).at(key).get<int64_t>() == value; }, timeout);
}

bool connect_refused(const mock_process& m, int port) {
  try {
    tcp_connection c(m.host(), port, 1s);
    return false;
  } catch (const http_error& e) {
    return std::string(e.what()).find("refused") != std::string::npos;
  }
}

// -- a chunk-by-chunk reader of a streamed (chunked) response ----------------------------

struct http_chunk {
  std::string data;
  int64_t arrived_us = 0;  // steady clock (CLOCK_MONOTONIC), as the mock's mock_sent_at_us
};

class chunk_reader {
public:
  chunk_reader(const std::string& host, int port) : conn_(host, port, 2s) {}

  void send_post(const std::string& path, const std::string& body) {
    std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    REQUIRE(conn_.send_all(req, 2s));
  }

  // Reads the status line and headers; returns the status.
  int read_head(std::chrono::milliseconds timeout = 5s) {
    auto deadline = clock_type::now() + timeout;
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill(deadline))
        throw http_error("no response head");
    auto head = parse_response_head(buf_.substr(0, end));
    headers = std::move(head.headers);
    buf_.erase(0, end + 4);
    return head.status;
  }

  // The next HTTP chunk; nullopt when the last (empty) chunk came or the
  // connection closed first (then `closed_early` is set).
  std::optional<http_chunk> next(std::chrono::milliseconds timeout = 5s) {
    auto deadline = clock_type::now() + timeout;
    size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos)
      if (!fill(deadline))
        return closed();
    size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
    while (buf_.size() < eol + 2 + size + 2)
      if (!fill(deadline))
        return closed();
    http_chunk c{buf_.substr(eol + 2, size), last_fill_us_};
    buf_.erase(0, eol + 2 + size + 2);
    if (size == 0) {
      finished = true;
      return std::nullopt;
    }
    return c;
  }

  // Everything until the end of the stream.
  std::vector<http_chunk> all(std::chrono::milliseconds timeout = 10s) {
    std::vector<http_chunk> out;
    auto deadline = clock_type::now() + timeout;
    while (auto c = next(std::chrono::milliseconds(ms_left(deadline))))
      out.push_back(std::move(*c));
    return out;
  }

  tcp_connection& connection() { return conn_; }

  std::map<std::string, std::string> headers;
  bool finished = false;      // the terminating chunk was read
  bool closed_early = false;  // the peer closed before it

private:
  std::optional<http_chunk> closed() {
    closed_early = true;
    return std::nullopt;
  }

  bool fill(clock_type::time_point deadline) {
    auto data = conn_.recv_some(std::chrono::milliseconds(ms_left(deadline)));
    if (!data)
      throw http_error("timed out reading the stream");
    if (data->empty())
      return false;
    last_fill_us_ = steady_now_us();
    buf_ += *data;
    return true;
  }

  tcp_connection conn_;
  std::string buf_;
  int64_t last_fill_us_ = 0;
};

// The JSON of a "data: {...}\n\n" event; nullopt for anything else.
std::optional<json> event_json(const std::string& chunk) {
  if (chunk.rfind("data: {", 0) != 0 || chunk.size() < 8 ||
      chunk.compare(chunk.size() - 2, 2, "\n\n") != 0)
    return std::nullopt;
  json j = json::parse(chunk.substr(6, chunk.size() - 8), nullptr, false);
  if (j.is_discarded())
    return std::nullopt;
  return j;
}

process_result run_mock(std::vector<std::string> args) {
  args.insert(args.begin(), mock_bin());
  return run_process(args, {}, 5s);
}

void check_usage_error(const process_result& r, const std::string& needle) {
  INFO("exit " << r.exit_code << "\nstdout: [" << r.out << "]\nstderr: [" << r.err << "]");
  CHECK(r.exit_code == 2);
  CHECK(r.out.empty());
  REQUIRE(!r.err.empty());
  CHECK(r.err.back() == '\n');
  CHECK(r.err.find('\n') == r.err.size() - 1);
  CHECK_THAT(r.err, Contains(needle));
}

const std::string chat_path = "/v1/chat/completions";

}  // namespace

// -- tests ----------------------------------------------------------------------------------

TEST_CASE("mock: bad usage exits 2 with one stderr line", "[mock]") {
  check_usage_error(run_mock({"--mode", "bogus"}), "--mode");
  check_usage_error(run_mock({"--listen", "nohost:1"}), "--listen");
  check_usage_error(run_mock({"--listen", "127.0.0.1"}), "--listen");
  check_usage_error(run_mock({"--listen", "127.0.0.1:70000"}), "--listen");
  check_usage_error(run_mock({"--chunks", "-1"}), "--chunks");
  check_usage_error(run_mock({"--ports", "0"}), "--ports");
  check_usage_error(run_mock({"--listen", "127.0.0.1:65535", "--ports", "2"}), "--ports");
  check_usage_error(run_mock({"--threads", "x"}), "--threads");
  check_usage_error(run_mock({"--control", "1.2.3"}), "--control");
  check_usage_error(run_mock({"stray"}), "stray");
}

TEST_CASE("mock: a port already in use exits 1 with one stderr line", "[mock]") {
  mock_process m;
  auto r = run_mock({"--listen", "127.0.0.1:" + std::to_string(m.port())});
  INFO("stderr: [" << r.err << "]");
  CHECK(r.exit_code == 1);
  CHECK(r.err.find('\n') == r.err.size() - 1);
  CHECK_THAT(r.err, Contains(std::to_string(m.port())));
}

TEST_CASE("mock: announces its ports and serves the OpenAI routes", "[mock]") {
  mock_process m({"--model", "llama-3-8b", "--model", "qwen-7b"});
  REQUIRE(m.lines().size() == 2);
  CHECK(m.lines()[0] ==
        "mock-model-server control on http://127.0.0.1:" + std::to_string(m.control_port()));
  CHECK(m.lines()[1] ==
        "mock-model-server listening on http://127.0.0.1:" + std::to_string(m.port()));
  CHECK(m.port() != m.control_port());

  http_client c(m.host(), m.port());
  const std::string port_text = std::to_string(m.port());

  auto health = c.get("/health");
  CHECK(health.status == 200);
  CHECK(json::parse(health.body) == json{{"status", "ok"}});

  auto models = json::parse(c.get("/v1/models").body);
  CHECK(models["object"] == "list");
  REQUIRE(models["data"].size() == 2);
  CHECK(models["data"][0] == json{{"id", "llama-3-8b"},
                                  {"object", "model"},
                                  {"created", 1700000000},
                                  {"owned_by", "mock"}});
  CHECK(models["data"][1]["id"] == "qwen-7b");

  auto chat = c.post(chat_path, R"({"model":"qwen-7b","messages":[{"role":"user","content":"hi"}]})",
                     {{"x-request-id", "req-42"}, {"Authorization", "Bearer server-key"}});
  CHECK(chat.status == 200);
  CHECK(chat.header("x-request-id") == "req-42");
  auto cj = json::parse(chat.body);
  CHECK(cj["object"] == "chat.completion");
  CHECK_THAT(cj["id"].get<std::string>(), Contains("chatcmpl-mock-"));
  CHECK(cj["model"] == "qwen-7b");
  CHECK(cj["choices"][0]["message"]["role"] == "assistant");
  CHECK(cj["choices"][0]["message"]["content"] == "Hello from mock on port " + port_text);
  CHECK(cj["choices"][0]["finish_reason"] == "stop");
  CHECK(cj["usage"]["total_tokens"].is_number());
  {
    auto st = control_status(m);  // what the server saw of that request
    auto& seen = st["last_requests"][chat_path];
    CHECK(seen["method"] == "POST");
    CHECK(seen["headers"]["authorization"] == "Bearer server-key");
    CHECK(seen["headers"]["x-request-id"] == "req-42");
    CHECK(json::parse(seen["body"].get<std::string>())["model"] == "qwen-7b");
    CHECK(st["last_headers"]["authorization"] == "Bearer server-key");
  }

  auto cmpl = json::parse(c.post("/v1/completions", R"({"model":"llama-3-8b","prompt":"x"})").body);
  CHECK(cmpl["object"] == "text_completion");
  CHECK(cmpl["choices"][0]["text"] == "Hello from mock on port " + port_text);

  auto emb = json::parse(c.post("/v1/embeddings", R"({"model":"llama-3-8b","input":"x"})").body);
  CHECK(emb["object"] == "list");
  CHECK(emb["model"] == "llama-3-8b");
  REQUIRE(emb["data"].size() == 1);
  CHECK(emb["data"][0]["object"] == "embedding");
  CHECK(emb["data"][0]["embedding"] == json{0.1, 0.2, 0.3, 0.4});
  CHECK(emb["usage"].is_object());

  CHECK(c.post(chat_path, "not json").status == 400);
  CHECK(c.get("/nowhere").status == 404);
  CHECK(c.post("/health", "{}").status == 405);
  CHECK(c.connections_opened() == 1);  // keep-alive throughout

  auto st = control_status(m);
  CHECK(st["mode"] == "healthy");
  CHECK(route_count(st, "/health") == 2);  // with the 405
  CHECK(route_count(st, "/v1/models") == 1);
  CHECK(route_count(st, chat_path) == 2);
  CHECK(route_count(st, "/v1/completions") == 1);
  CHECK(route_count(st, "/v1/embeddings") == 1);
  CHECK(route_count(st, "/nowhere") == 1);
  CHECK(st["requests_total"] == 8);
  CHECK(st["last_headers"].contains("host"));  // the 405 on /health came last
  CHECK_FALSE(st["last_headers"].contains("authorization"));
  CHECK(st["last_requests"][chat_path]["body"] == "not json");

  // Control routes are served on the serving port too, and are not counted.
  auto via_serving = c.get("/control");
  CHECK(via_serving.status == 200);
  CHECK(json::parse(via_serving.body)["requests_total"] == 8);

  auto reset = json::parse(c.post("/control/reset", "").body);
  CHECK(reset["requests_total"] == 0);
  CHECK(reset["requests"].empty());
  CHECK(reset["last_headers"].empty());
  CHECK(route_count(control_status(m), "/health") == 0);

  // The control port serves only the control routes.
  http_client ctl(m.host(), m.control_port());
  CHECK(ctl.get("/health").status == 404);
}

TEST_CASE("mock: default model and control API validation", "[mock]") {
  mock_process m({"--chunks", "3", "--slow-ms", "150", "--chunk-delay-ms", "7"});
  http_client c(m.host(), m.port());
  auto models = json::parse(c.get("/v1/models").body);
  REQUIRE(models["data"].size() == 1);
  CHECK(models["data"][0]["id"] == "mock-model");

  auto st = control_status(m);
  CHECK(st["mode"] == "healthy");
  CHECK(st["chunks"] == 3);
  CHECK(st["slow_ms"] == 150);
  CHECK(st["chunk_delay_ms"] == 7);
  CHECK(st["open_streams"] == 0);

  auto after = control_post(m, {{"slow_ms", 10}, {"chunks", 2}, {"chunk_delay_ms", 0}});
  CHECK(after["mode"] == "healthy");
  CHECK(after["slow_ms"] == 10);
  CHECK(after["chunks"] == 2);
  CHECK(after["chunk_delay_ms"] == 0);

  control_post(m, {{"mode", "bogus"}}, 400);
  control_post(m, {{"mode", 3}}, 400);
  control_post(m, {{"slow_ms", -1}}, 400);
  control_post(m, {{"chunks", "many"}}, 400);
  control_post(m, {{"unknown", 1}}, 400);
  http_client ctl(m.host(), m.control_port());
  CHECK(ctl.post("/control", "{not json").status == 400);
  CHECK(ctl.get("/control/reset").status == 405);
  CHECK(ctl.request("DELETE", "/control").status == 405);
  CHECK(control_status(m)["mode"] == "healthy");  // nothing applied by the rejected ones
  CHECK(control_status(m)["slow_ms"] == 10);
}

TEST_CASE("mock: fault modes", "[mock]") {
  mock_process m({"--slow-ms", "300"});
  http_client c(m.host(), m.port(), 3s);

  SECTION("http_500 applies to every serving route") {
    set_mode(m, "http_500");
    for (const auto& path : {"/health", "/v1/models"}) {
      auto r = c.get(path);
      CHECK(r.status == 500);
      CHECK(json::parse(r.body)["error"]["message"].is_string());
    }
    CHECK(c.post(chat_path, R"({"model":"x"})").status == 500);
    CHECK(route_count(control_status(m), "/health") == 1);
  }
  SECTION("invalid_json") {
    set_mode(m, "invalid_json");
    auto r = c.get("/health");
    CHECK(r.status == 200);
    CHECK(r.body == "this is not json");
    CHECK(json::parse(r.body, nullptr, false).is_discarded());
  }
  SECTION("empty_body") {
    set_mode(m, "empty_body");
    auto r = c.get("/health");
    CHECK(r.status == 200);
    CHECK(r.header("content-length") == "0");
    CHECK(r.body.empty());
  }
  SECTION("slow answers normally after slow_ms") {
    set_mode(m, "slow");
    auto t0 = clock_type::now();
    auto r = c.get("/health");
    auto took = clock_type::now() - t0;
    CHECK(r.status == 200);
    CHECK(r.body == R"({"status":"ok"})");
    CHECK(took >= 290ms);
    control_post(m, {{"slow_ms", 0}});
    t0 = clock_type::now();
    CHECK(c.get("/health").status == 200);
    CHECK(clock_type::now() - t0 < 250ms);
  }
  SECTION("close reads the request and closes without an answer") {
    set_mode(m, "close");
    tcp_connection t(m.host(), m.port(), 2s);
    REQUIRE(t.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 2s));
    auto got = t.recv_some(3s);
    REQUIRE(got.has_value());
    CHECK(got->empty());  // EOF, no bytes
    CHECK(route_count(control_status(m), "/health") == 1);
  }
  SECTION("hang reads the request and never answers, until the client leaves") {
    set_mode(m, "hang");
    {
      tcp_connection t(m.host(), m.port(), 2s);
      REQUIRE(t.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 2s));
      CHECK(wait_until([&] { return route_count(control_status(m), "/health") == 1; }, 3s));
      CHECK_FALSE(t.recv_some(300ms).has_value());  // nothing within 300 ms
      CHECK_FALSE(t.peer_closed());
      set_mode(m, "healthy");  // a hung request stays hung
      CHECK_FALSE(t.recv_some(100ms).has_value());
      CHECK(c.get("/health").status == 200);  // new requests are served again
      c.close();
      CHECK(wait_status(m, "open_connections", 1));
    }
    // The client went away: the mock drops the hung connection.
    CHECK(wait_status(m, "open_connections", 0));
  }
  SECTION("refuse closes the listener and drops connections; leaving it re-opens the port") {
    tcp_connection idle(m.host(), m.port(), 2s);
    CHECK(c.get("/health").status == 200);
    set_mode(m, "refuse");
    CHECK(connect_refused(m, m.port()));
    CHECK(wait_until([&] { return idle.peer_closed(); }, 3s));
    CHECK(control_status(m)["mode"] == "refuse");  // the control port still answers
    set_mode(m, "healthy");
    http_client again(m.host(), m.port());
    CHECK(again.get("/health").status == 200);
  }
  SECTION("die_mid_stream: two events, then the connection closes; plain requests are fine") {
    set_mode(m, "die_mid_stream");
    CHECK(c.post(chat_path, R"({"model":"x"})").status == 200);
    chunk_reader s(m.host(), m.port());
    s.send_post(chat_path, R"({"model":"x","stream":true})");
    REQUIRE(s.read_head() == 200);
    auto chunks = s.all();
    CHECK(chunks.size() == 2);
    CHECK(s.closed_early);
    CHECK_FALSE(s.finished);
    for (auto& ch : chunks)
      CHECK(ch.data.find("[DONE]") == std::string::npos);
    CHECK(wait_status(m, "open_streams", 0));
  }
}

TEST_CASE("mock: starting in refuse mode", "[mock]") {
  mock_process m({"--mode", "refuse"});
  CHECK(connect_refused(m, m.port()));
  set_mode(m, "healthy");
  http_client c(m.host(), m.port());
  CHECK(c.get("/health").status == 200);
}

TEST_CASE("mock: streaming sends one SSE event per HTTP chunk, chunk_delay_ms apart", "[mock]") {
  mock_process m({"--chunks", "4", "--chunk-delay-ms", "100", "--model", "m1"});
  chunk_reader s(m.host(), m.port());
  s.send_post(chat_path, R"({"model":"m1","stream":true,"messages":[]})");
  REQUIRE(s.read_head() == 200);
  CHECK_THAT(s.headers["content-type"], Contains("text/event-stream"));
  CHECK_THAT(s.headers["transfer-encoding"], Contains("chunked"));
  auto chunks = s.all();
  CHECK(s.finished);
  REQUIRE(chunks.size() == 5);
  CHECK(chunks.back().data == "data: [DONE]\n\n");
  int64_t prev_sent = 0, prev_arrived = 0;
  for (int i = 0; i < 4; ++i) {
    auto ev = event_json(chunks[i].data);
    REQUIRE(ev.has_value());
    CHECK((*ev)["object"] == "chat.completion.chunk");
    CHECK((*ev)["model"] == "m1");
    CHECK((*ev)["choices"][0]["delta"]["content"] == "tok" + std::to_string(i) + " ");
    const int64_t sent = (*ev)["mock_sent_at_us"].get<int64_t>();
    // Same clock (CLOCK_MONOTONIC) in both processes: a local hop takes < 1 s.
    CHECK(chunks[i].arrived_us >= sent);
    CHECK(chunks[i].arrived_us - sent < 1000000);
    if (i > 0) {
      CHECK(sent - prev_sent >= 99000);
      CHECK(chunks[i].arrived_us - prev_arrived >= 50000);  // not buffered together
    }
    prev_sent = sent;
    prev_arrived = chunks[i].arrived_us;
  }
  CHECK(event_json(chunks[3].data).value()["choices"][0]["finish_reason"] == "stop");
  CHECK(wait_status(m, "open_streams", 0));

  // /v1/completions streams text_completion chunks with choices[0].text.
  control_post(m, {{"chunk_delay_ms", 0}, {"chunks", 2}});
  chunk_reader t(m.host(), m.port());
  t.send_post("/v1/completions", R"({"model":"m1","prompt":"x","stream":true})");
  REQUIRE(t.read_head() == 200);
  auto tc = t.all();
  REQUIRE(tc.size() == 3);
  CHECK(event_json(tc[1].data).value()["choices"][0]["text"] == "tok1 ");
  CHECK(event_json(tc[1].data).value()["object"] == "text_completion");
}

TEST_CASE("mock: the connection stays usable after a stream", "[mock]") {
  mock_process m({"--chunks", "3"});
  http_client c(m.host(), m.port());
  auto r = c.post(chat_path, R"({"model":"x","stream":true})", {{"x-request-id", "s-1"}});
  CHECK(r.status == 200);
  CHECK(r.header("x-request-id") == "s-1");
  size_t events = 0;
  for (size_t pos = r.body.find("data: "); pos != std::string::npos;
       pos = r.body.find("data: ", pos + 1))
    ++events;
  CHECK(events == 4);
  CHECK_THAT(r.body, Contains("data: [DONE]\n\n"));
  CHECK(c.get("/health").status == 200);
  CHECK(c.connections_opened() == 1);
  CHECK(control_status(m)["open_streams"] == 0);
}

TEST_CASE("mock: a client leaving mid-stream is noticed at once", "[mock]") {
  mock_process m({"--chunks", "1000", "--chunk-delay-ms", "1000"});
  chunk_reader s(m.host(), m.port());
  s.send_post(chat_path, R"({"model":"x","stream":true})");
  REQUIRE(s.read_head() == 200);
  REQUIRE(s.next().has_value());
  REQUIRE(wait_status(m, "open_streams", 1));
  s.connection().close();
  auto t0 = clock_type::now();
  CHECK(wait_status(m, "open_streams", 0, 2s));
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0);
  INFO("open_streams dropped to 0 after " << took.count() << " ms");
  CHECK(took < 500ms);  // in practice a few ms; the timer would have waited 1 s
  CHECK(wait_status(m, "open_connections", 0));
}

TEST_CASE("mock: --ports N serves N consecutive ports", "[mock]") {
  mock_process m({"--ports", "3"});
  REQUIRE(m.lines().size() == 3);
  CHECK(m.lines()[2] == "mock-model-server ports " + std::to_string(m.first_port()) + "-" +
                            std::to_string(m.last_port()));
  CHECK(m.first_port() == m.port());
  REQUIRE(m.last_port() == m.first_port() + 2);
  for (int p = m.first_port(); p <= m.last_port(); ++p) {
    http_client c(m.host(), p);
    auto r = c.post(chat_path, R"({"model":"x"})");
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body)["choices"][0]["message"]["content"] ==
          "Hello from mock on port " + std::to_string(p));
  }
  auto st = control_status(m);
  CHECK(route_count(st, chat_path) == 3);
  CHECK(st["ports"] == json{m.first_port(), m.last_port()});

  set_mode(m, "refuse");
  for (int p = m.first_port(); p <= m.last_port(); ++p)
    CHECK(connect_refused(m, p));
  set_mode(m, "healthy");
  for (int p = m.first_port(); p <= m.last_port(); ++p) {
    http_client c(m.host(), p);
    CHECK(c.get("/health").status == 200);
  }
}

TEST_CASE("mock: idle keep-alive connections are closed after --idle-timeout-ms", "[mock]") {
  mock_process m({"--idle-timeout-ms", "200"});
  tcp_connection t(m.host(), m.port(), 2s);
  REQUIRE(t.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 2s));
  auto got = t.recv_some(2s);
  REQUIRE(got.has_value());
  CHECK_THAT(*got, Contains("200 OK"));
  CHECK(wait_until([&] { return t.peer_closed(); }, 3s));
}

TEST_CASE("mock: SIGTERM and SIGINT exit 0 promptly", "[mock]") {
  for (int sig : {SIGTERM, SIGINT}) {
    mock_process m({"--ports", "2", "--threads", "2"});
    // With a stream and a hung request in flight.
    control_post(m, {{"chunk_delay_ms", 1000}, {"chunks", 100}});
    chunk_reader s(m.host(), m.port());
    s.send_post(chat_path, R"({"model":"x","stream":true})");
    REQUIRE(s.read_head() == 200);
    m.signal(sig);
    auto status = m.wait_exit(2s);
    REQUIRE(status.has_value());
    CHECK(*status == 0);
  }
}
