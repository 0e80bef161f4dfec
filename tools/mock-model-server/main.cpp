// mock-model-server: a test backend that behaves like a vLLM / llama.cpp
// (OpenAI-compatible) model server, with fault modes switchable at run time.
// Used by the integration tests of health probing and of the OpenAI gateway,
// and by the scale benchmarks (one process can serve 10,000 ports).
//
// Usage (every option is optional):
//   mock-model-server [--listen HOST:PORT] [--ports N] [--control HOST:PORT]
//                     [--model NAME]... [--mode MODE] [--chunks N]
//                     [--chunk-delay-ms MS] [--slow-ms MS] [--threads N]
//                     [--idle-timeout-ms MS]
// HOST is an IP literal (IPv6 in brackets) or "localhost" (= 127.0.0.1); no
// name is ever resolved. Bad usage exits 2 with one line on stderr; a port
// that cannot be bound exits 1.
//
// stdout, flushed, in this order:
//   mock-model-server control on http://HOST:PORT
//   mock-model-server listening on http://HOST:PORT      (the first serving port)
//   mock-model-server ports FIRST-LAST                   (only when --ports N > 1)
// With --listen HOST:0 and --ports N > 1 the server still takes N
// *consecutive* ports: it starts at a port the kernel picks and, when one of
// the range is taken, retries after it (wrapping to 1024 at the top).
//
// Serving routes (all ports but the control port): GET /health,
// GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
// POST /v1/embeddings (any "model" is accepted and echoed). Control routes
// (on the control port, and on the serving ports while not refusing):
// GET /control, POST /control, POST /control/reset. See README.md here.
//
// One io_context run by --threads threads; every connection on its own strand;
// all acceptors of the serving ports on one strand (so `refuse` can close and
// re-open them in order). SIGTERM / SIGINT: exit 0 at once.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using json = nlohmann::ordered_json;  // keys in insertion order, as OpenAI writes them
using std::chrono::milliseconds;

namespace {

// -- constants ----------------------------------------------------------------

constexpr uint64_t body_limit = uint64_t{64} << 20;     // 64 MiB
constexpr uint32_t header_limit = 64 * 1024;
constexpr size_t recorded_body_limit = 64 * 1024;       // of last_requests[...].body
constexpr auto write_timeout = std::chrono::seconds(30);
constexpr auto body_timeout = std::chrono::seconds(120);
constexpr auto hang_timeout = std::chrono::minutes(10);
constexpr auto rebind_retry = milliseconds(200);
constexpr auto accept_retry = milliseconds(100);
constexpr int64_t created_at = 1700000000;  // "created" of the model list

// -- fault modes ----------------------------------------------------------------

enum class fault {
  healthy,
  http_500,
  invalid_json,
  empty_body,
  hang,
  slow,
  close,
  refuse,
  die_mid_stream
};

const std::vector<std::string>& fault_names() {
  static const std::vector<std::string> names{"healthy", "http_500", "invalid_json",
                                              "empty_body", "hang", "slow",
                                              "close", "refuse", "die_mid_stream"};
  return names;
}

const std::string& to_string(fault f) { return fault_names()[static_cast<size_t>(f)]; }

std::optional<fault> parse_fault(const std::string& s) {
  const auto& names = fault_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == s)
      return static_cast<fault>(i);
  return std::nullopt;
}

// -- options --------------------------------------------------------------------

struct options {
  asio::ip::address host = asio::ip::make_address_v4("127.0.0.1");
  unsigned port = 0;
  int ports = 1;
  asio::ip::address control_host = asio::ip::make_address_v4("127.0.0.1");
  unsigned control_port = 0;
  std::vector<std::string> models;
  fault mode = fault::healthy;
  int chunks = 5;
  int chunk_delay_ms = 0;
  int slow_ms = 2000;
  int threads = 1;
  int idle_timeout_ms = 60000;
};

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "HOST:PORT", "[V6]:PORT"; HOST an IP literal or "localhost".
void parse_host_port(const std::string& opt, const std::string& s, asio::ip::address& addr,
                     unsigned& port) {
  std::string host, port_text;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      throw usage_error(opt + ": expected [IPV6]:PORT, got '" + s + "'");
    host = s.substr(1, close - 1);
    port_text = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos)
      throw usage_error(opt + ": expected HOST:PORT, got '" + s + "'");
    host = s.substr(0, colon);
    port_text = s.substr(colon + 1);
  }
  if (host.empty())
    throw usage_error(opt + ": missing host in '" + s + "'");
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw usage_error(opt + ": bad port in '" + s + "'");
  unsigned long p = std::stoul(port_text);
  if (p > 65535)
    throw usage_error(opt + ": port out of range in '" + s + "'");
  port = static_cast<unsigned>(p);
  if (host == "localhost") {
    addr = asio::ip::make_address_v4("127.0.0.1");
    return;
  }
  error_code ec;
  addr = asio::ip::make_address(host, ec);
  if (ec)
    throw usage_error(opt + ": host must be an IP address or localhost, got '" + host + "'");
}

std::string host_text(const asio::ip::address& a) {
  return a.is_v6() ? "[" + a.to_string() + "]" : a.to_string();
}

// -- helpers --------------------------------------------------------------------

int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t unix_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string lower(beast::string_view v) {
  std::string s(v.data(), v.size());
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string error_body(const std::string& message, const std::string& type,
                       const std::string& code) {
  return json{{"error", {{"message", message}, {"type", type}, {"code", code}}}}.dump();
}

class session;

// -- the shared state -------------------------------------------------------------

struct port_listener {
  port_listener(asio::strand<asio::io_context::executor_type>& strand, tcp::endpoint e)
    : acceptor(strand), retry(strand), ep(e) {}
  tcp::acceptor acceptor;
  asio::steady_timer retry;  // rebind / accept-error retry
  tcp::endpoint ep;          // the real port once bound
  uint64_t gen = 0;          // bumped on every close / re-open; stale handlers return
  bool is_open = false;
};

struct control_update {
  std::optional<fault> mode;
  std::optional<int> slow_ms, chunks, chunk_delay_ms;
};

class server {
public:
  server(asio::io_context& ioc, options opt)
    : ioc_(ioc), opt_(std::move(opt)), lstrand_(asio::make_strand(ioc)),
      control_(std::make_unique<port_listener>(lstrand_, tcp::endpoint{})) {
    mode_ = static_cast<int>(opt_.mode);
    slow_ms_ = opt_.slow_ms;
    chunks_ = opt_.chunks;
    chunk_delay_ms_ = opt_.chunk_delay_ms;
  }

  const options& opt() const { return opt_; }

  // Near the descriptor limit (10,000 ports and a keep-alive prober per port
  // need more than a 20,000 hard limit allows), answers carry
  // `Connection: close` so that connections churn instead of piling up.
  bool fd_pressure() const { return open_connections_.load() >= connection_budget_; }

  fault mode() const { return static_cast<fault>(mode_.load()); }
  int slow_ms() const { return slow_ms_; }
  int chunks() const { return chunks_; }
  int chunk_delay_ms() const { return chunk_delay_ms_; }
  uint64_t next_completion_id() { return ++completion_ids_; }

  // Binds the control port and the serving ports; before run(). Throws
  // std::runtime_error with a one-line message on failure.
  void bind_all();
  void print_ready() const;
  // Starts accepting (called once, before the io threads run).
  void start();

  // A request reached a serving route (not /control...): count and record it.
  void record(const http::request<http::string_body>& req, const std::string& path,
              unsigned short port);
  json status() const;
  void reset();
  static bool parse_update(const json& body, control_update& u, std::string& err);
  void apply(const control_update& u);
  // Makes the serving listeners match the current mode (closed under
  // `refuse`, open otherwise), closes every serving connection when it closes
  // them except `skip_session`, then calls `done` (on the listener strand).
  void sync_listeners(uint64_t skip_session, std::function<void()> done);

  void session_opened(uint64_t id, const std::weak_ptr<session>& s);
  void session_closed(uint64_t id);
  void stream_opened() { ++open_streams_; }
  void stream_closed() { --open_streams_; }
  uint64_t next_session_id() { return ++session_ids_; }

private:
  bool try_open(port_listener& l, error_code& ec);
  void bind_serving_ports();
  void arm(port_listener& l, bool serving);
  void reopen(port_listener& l);
  void close_serving_sessions(uint64_t skip);

  asio::io_context& ioc_;
  options opt_;
  asio::strand<asio::io_context::executor_type> lstrand_;
  std::unique_ptr<port_listener> control_;
  std::vector<std::unique_ptr<port_listener>> serving_;
  bool serving_open_ = false;  // on lstrand_
  unsigned short first_port_ = 0, last_port_ = 0;

  std::atomic<int> mode_{0};
  std::atomic<int> slow_ms_{0}, chunks_{0}, chunk_delay_ms_{0};
  std::atomic<int64_t> open_streams_{0}, open_connections_{0};
  int64_t connection_budget_ = INT64_MAX;  // set by bind_all()
  std::atomic<uint64_t> connections_total_{0}, completion_ids_{0}, session_ids_{0};

  mutable std::mutex mtx_;  // guards the next four and apply()
  std::map<std::string, uint64_t> requests_;
  uint64_t requests_total_ = 0;
  json last_headers_ = json::object();
  json last_requests_ = json::object();

  std::mutex sessions_mtx_;
  std::unordered_map<uint64_t, std::weak_ptr<session>> sessions_;
};

// -- one connection ---------------------------------------------------------------

class session : public std::enable_shared_from_this<session> {
public:
  session(tcp::socket&& socket, server& srv, unsigned short port, bool control_port)
    : stream_(std::move(socket)), timer_(stream_.get_executor()), srv_(srv), port_(port),
      control_port_(control_port), id_(srv.next_session_id()) {}

  ~session() {
    if (stream_counted_)
      srv_.stream_closed();
    if (!control_port_)
      srv_.session_closed(id_);
  }

  uint64_t id() const { return id_; }

  void start() {
    if (!control_port_)
      srv_.session_opened(id_, weak_from_this());
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  // From any thread.
  void force_close() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->close(); });
  }

private:
  // ---- reading a request ----
  void read_header() {
    if (closed_)
      return;
    parser_.emplace();
    parser_->header_limit(header_limit);
    parser_->body_limit(body_limit);
    version_ = 11;
    keep_alive_ = true;
    request_id_.clear();
    stream_.expires_after(milliseconds(srv_.opt().idle_timeout_ms));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](error_code ec, size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(error_code ec) {
    if (closed_)
      return;
    if (ec)
      return on_read_error(ec);
    auto& h = parser_->get();
    version_ = h.version();
    request_id_ = std::string(h["x-request-id"]);
    if (beast::iequals(h[http::field::expect], "100-continue") && !parser_->is_done()) {
      static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
      stream_.expires_after(write_timeout);
      asio::async_write(stream_, asio::buffer(continue_line, sizeof continue_line - 1),
                        [self = shared_from_this()](error_code ec2, size_t) {
                          if (ec2)
                            return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    if (closed_)
      return;
    if (parser_->is_done())
      return handle();
    stream_.expires_after(body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](error_code ec, size_t) {
                       if (self->closed_)
                         return;
                       if (ec)
                         return self->on_read_error(ec);
                       self->handle();
                     });
  }

  void on_read_error(error_code ec) {
    keep_alive_ = false;
    if (ec == http::error::header_limit)
      return reply(http::status::request_header_fields_too_large,
                   error_body("request headers too large", "invalid_request_error",
                              "header_too_large"));
    if (ec == http::error::body_limit)
      return reply(http::status::payload_too_large,
                   error_body("request body over 64 MiB", "invalid_request_error",
                              "body_too_large"));
    if (ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message)
      return reply(http::status::bad_request,
                   error_body("malformed HTTP request: " + ec.message(), "invalid_request_error",
                              "bad_request"));
    close();  // end of stream, timeout, reset, ...
  }

  // ---- dispatching ----
  void handle() {
    req_ = parser_->release();
    keep_alive_ = req_.keep_alive();
    std::string target(req_.target());
    path_ = target.substr(0, target.find('?'));
    if (path_ == "/control" || path_.rfind("/control/", 0) == 0)
      return handle_control();
    if (control_port_)
      return reply(http::status::not_found,
                   error_body("the control port serves only /control routes",
                              "invalid_request_error", "not_found"));
    srv_.record(req_, path_, port_);
    switch (srv_.mode()) {
    case fault::refuse:  // a request that raced with the switch to refuse
    case fault::close:
      return close();
    case fault::hang:
      stream_.expires_after(hang_timeout);
      return hang_read();
    case fault::slow:
      timer_.expires_after(milliseconds(srv_.slow_ms()));
      timer_.async_wait([self = shared_from_this()](error_code ec) {
        if (ec || self->closed_)
          return;
        self->serve(false);
      });
      return;
    case fault::http_500:
      return reply(http::status::internal_server_error,
                   error_body("mock fault: http_500", "server_error", "internal_error"));
    case fault::invalid_json:
      return reply(http::status::ok, "this is not json");
    case fault::empty_body:
      return reply(http::status::ok, std::string(), nullptr);
    case fault::die_mid_stream:
      return serve(true);
    case fault::healthy:
      return serve(false);
    }
  }

  void serve(bool die_mid_stream) {
    const auto method = req_.method();
    auto wrong_method = [this] {
      reply(http::status::method_not_allowed,
            error_body("method not allowed on " + path_, "invalid_request_error",
                       "method_not_allowed"));
    };
    if (path_ == "/health") {
      if (method != http::verb::get)
        return wrong_method();
      return reply(http::status::ok, R"({"status":"ok"})");
    }
    if (path_ == "/v1/models") {
      if (method != http::verb::get)
        return wrong_method();
      json data = json::array();
      for (const auto& m : srv_.opt().models)
        data.push_back(
            {{"id", m}, {"object", "model"}, {"created", created_at}, {"owned_by", "mock"}});
      return reply(http::status::ok, json{{"object", "list"}, {"data", data}}.dump());
    }
    const bool chat = path_ == "/v1/chat/completions";
    const bool completions = path_ == "/v1/completions";
    const bool embeddings = path_ == "/v1/embeddings";
    if (!chat && !completions && !embeddings)
      return reply(http::status::not_found,
                   error_body("no route " + path_, "invalid_request_error", "not_found"));
    if (method != http::verb::post)
      return wrong_method();
    json body = json::parse(req_.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object())
      return reply(http::status::bad_request,
                   error_body("the request body is not a JSON object", "invalid_request_error",
                              "invalid_json"));
    std::string model = srv_.opt().models.front();
    if (auto it = body.find("model"); it != body.end() && it->is_string())
      model = it->get<std::string>();
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    const uint64_t n = srv_.next_completion_id();
    const std::string content = "Hello from mock on port " + std::to_string(port_);
    const json usage = {{"prompt_tokens", 10}, {"completion_tokens", 6}, {"total_tokens", 16}};

    if (embeddings) {
      size_t count = 1;
      if (auto it = body.find("input");
          it != body.end() && it->is_array() && !it->empty() &&
          ((*it)[0].is_string() || (*it)[0].is_array()))
        count = it->size();
      json data = json::array();
      for (size_t i = 0; i < count; ++i)
        data.push_back({{"object", "embedding"},
                        {"index", i},
                        {"embedding", {0.1, 0.2, 0.3, 0.4}}});
      return reply(http::status::ok,
                   json{{"object", "list"},
                        {"data", data},
                        {"model", model},
                        {"usage", {{"prompt_tokens", 10}, {"total_tokens", 10}}}}
                       .dump());
    }
    if (auto it = body.find("stream"); it != body.end() && it->is_boolean() && it->get<bool>())
      return start_stream(chat, model, n, now, die_mid_stream);
    if (chat)
      return reply(http::status::ok,
                   json{{"id", "chatcmpl-mock-" + std::to_string(n)},
                        {"object", "chat.completion"},
                        {"created", now},
                        {"model", model},
                        {"choices",
                         {{{"index", 0},
                           {"message", {{"role", "assistant"}, {"content", content}}},
                           {"finish_reason", "stop"}}}},
                        {"usage", usage}}
                       .dump());
    return reply(http::status::ok,
                 json{{"id", "cmpl-mock-" + std::to_string(n)},
                      {"object", "text_completion"},
                      {"created", now},
                      {"model", model},
                      {"choices",
                       {{{"index", 0},
                         {"text", content},
                         {"logprobs", nullptr},
                         {"finish_reason", "stop"}}}},
                      {"usage", usage}}
                     .dump());
  }

  // ---- control routes ----
  void handle_control() {
    const auto method = req_.method();
    if (path_ == "/control/reset") {
      if (method != http::verb::post)
        return reply(http::status::method_not_allowed,
                     error_body("use POST /control/reset", "invalid_request_error",
                                "method_not_allowed"));
      srv_.reset();
      return reply(http::status::ok, srv_.status().dump());
    }
    if (path_ != "/control")
      return reply(http::status::not_found,
                   error_body("no route " + path_, "invalid_request_error", "not_found"));
    if (method == http::verb::get)
      return reply(http::status::ok, srv_.status().dump());
    if (method != http::verb::post)
      return reply(http::status::method_not_allowed,
                   error_body("use GET or POST /control", "invalid_request_error",
                              "method_not_allowed"));
    json body = req_.body().empty() ? json::object() : json::parse(req_.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object())
      return reply(http::status::bad_request,
                   error_body("the body is not a JSON object", "invalid_request_error",
                              "invalid_json"));
    control_update u;
    std::string err;
    if (!server::parse_update(body, u, err))
      return reply(http::status::bad_request,
                   error_body(err, "invalid_request_error", "invalid_value"));
    srv_.apply(u);
    // Answer only once the listeners match the new mode, so that a client may
    // rely on "refused" / "accepting" as soon as it has the answer.
    if (!control_port_ && srv_.mode() == fault::refuse)
      keep_alive_ = false;  // this serving connection goes down with the others
    srv_.sync_listeners(control_port_ ? 0 : id_, [self = shared_from_this()] {
      asio::post(self->stream_.get_executor(), [self] {
        if (!self->closed_)
          self->reply(http::status::ok, self->srv_.status().dump());
      });
    });
  }

  // ---- writing a plain response ----
  void reply(http::status status, std::string body, const char* content_type = "application/json") {
    res_ = {};
    res_.result(status);
    res_.version(version_ >= 11 ? 11 : version_);
    res_.set(http::field::server, "mock-model-server");
    if (content_type)
      res_.set(http::field::content_type, content_type);
    if (!request_id_.empty())
      res_.set("x-request-id", request_id_);
    if (!control_port_)
      res_.set("x-mock-port", std::to_string(port_));
    if (!control_port_ && srv_.fd_pressure())
      keep_alive_ = false;
    res_.keep_alive(keep_alive_);
    res_.body() = std::move(body);
    res_.prepare_payload();
    stream_.expires_after(write_timeout);
    http::async_write(stream_, res_, [self = shared_from_this()](error_code ec, size_t) {
      if (self->closed_)
        return;
      if (ec || !self->res_.keep_alive())
        return self->close();
      self->read_header();
    });
  }

  // ---- hang: read and drop until the peer closes or 10 minutes pass ----
  void hang_read() {
    buffer_.consume(buffer_.size());
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, size_t n) {
                              if (self->closed_)
                                return;
                              if (ec)
                                return self->close();
                              self->buffer_.commit(n);
                              self->hang_read();
                            });
  }

  // ---- streaming (SSE over chunked encoding) ----
  void start_stream(bool chat, const std::string& model, uint64_t n, int64_t created, bool die) {
    stream_chat_ = chat;
    stream_model_ = model;
    stream_id_ = (chat ? "chatcmpl-mock-" : "cmpl-mock-") + std::to_string(n);
    stream_created_ = created;
    stream_die_ = die;
    stream_chunks_ = srv_.chunks();
    stream_delay_ms_ = srv_.chunk_delay_ms();
    chunk_index_ = 0;
    raw_ = version_ < 11;  // HTTP/1.0: no chunked encoding, the end is the close
    if (raw_ || srv_.fd_pressure())
      keep_alive_ = false;
    srv_.stream_opened();
    stream_counted_ = true;

    sres_ = {};
    sres_.result(http::status::ok);
    sres_.version(raw_ ? 10 : 11);
    sres_.set(http::field::server, "mock-model-server");
    sres_.set(http::field::content_type, "text/event-stream");
    sres_.set(http::field::cache_control, "no-cache");
    sres_.set("x-mock-port", std::to_string(port_));
    if (!request_id_.empty())
      sres_.set("x-request-id", request_id_);
    sres_.keep_alive(keep_alive_);
    if (!raw_)
      sres_.chunked(true);
    sr_.emplace(sres_);
    stream_.expires_after(write_timeout);
    http::async_write_header(stream_, *sr_, [self = shared_from_this()](error_code ec, size_t) {
      if (self->closed_)
        return;
      if (ec)
        return self->close();
      self->next_event();
    });
    // Notice a client that goes away while we wait between chunks.
    start_detect();
  }

  void start_detect() {
    if (detect_pending_ || closed_ || buffer_.size() > (1u << 20))
      return;
    detect_pending_ = true;
    // On the raw socket: the tcp_stream's timeouts are for the writes.
    stream_.socket().async_read_some(buffer_.prepare(4096),
                                     [self = shared_from_this()](error_code ec, size_t n) {
                                       self->on_detect(ec, n);
                                     });
  }

  void on_detect(error_code ec, size_t n) {
    detect_pending_ = false;
    if (closed_)
      return;
    if (!ec) {
      buffer_.commit(n);  // a pipelined request: kept for later
      if (stream_counted_)
        return start_detect();
    }
    if (!stream_counted_ && resume_after_detect_ && (!ec || ec == asio::error::operation_aborted)) {
      resume_after_detect_ = false;
      return read_header();
    }
    close();  // the client closed or reset the connection
  }

  std::string event_json(int i) const {
    const bool last = i + 1 == stream_chunks_;
    const std::string tok = "tok" + std::to_string(i) + " ";
    json choice = {{"index", 0}, {"finish_reason", last ? json("stop") : json(nullptr)}};
    if (stream_chat_) {
      json delta = {{"content", tok}};
      if (i == 0)
        delta["role"] = "assistant";
      choice["delta"] = std::move(delta);
    } else {
      choice["text"] = tok;
    }
    return json{{"id", stream_id_},
                {"object", stream_chat_ ? "chat.completion.chunk" : "text_completion"},
                {"created", stream_created_},
                {"model", stream_model_},
                {"choices", json::array({std::move(choice)})},
                {"mock_port", port_},
                {"mock_sent_at_us", steady_us()},
                {"mock_sent_at_unix_us", unix_us()}}
        .dump();
  }

  std::string frame(const std::string& payload) const {
    if (raw_)
      return payload;
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", payload.size());
    return size + payload + "\r\n";
  }

  void next_event() {
    if (closed_)
      return;
    const bool done = chunk_index_ >= stream_chunks_;
    if (done)
      out_ = frame("data: [DONE]\n\n") + (raw_ ? "" : "0\r\n\r\n");
    else
      out_ = frame("data: " + event_json(chunk_index_) + "\n\n");
    stream_.expires_after(write_timeout);
    asio::async_write(stream_, asio::buffer(out_),
                      [self = shared_from_this(), done](error_code ec, size_t) {
                        self->on_event_written(ec, done);
                      });
  }

  void on_event_written(error_code ec, bool done) {
    if (closed_)
      return;
    if (ec)
      return close();
    if (done)
      return end_stream();
    ++chunk_index_;
    if (stream_die_ && (chunk_index_ >= 2 || chunk_index_ >= stream_chunks_))
      return close();  // die_mid_stream: no [DONE], no terminating chunk
    if (stream_delay_ms_ > 0 && chunk_index_ < stream_chunks_) {
      timer_.expires_after(milliseconds(stream_delay_ms_));
      timer_.async_wait([self = shared_from_this()](error_code ec2) {
        if (ec2 || self->closed_)
          return;
        self->next_event();
      });
      return;
    }
    next_event();
  }

  void end_stream() {
    stream_counted_ = false;
    srv_.stream_closed();
    sr_.reset();
    if (!keep_alive_)
      return close();
    if (detect_pending_) {
      resume_after_detect_ = true;
      error_code ec;
      stream_.socket().cancel(ec);  // on_detect continues with read_header()
      return;
    }
    read_header();
  }

  // ---- closing ----
  void close() {
    if (closed_)
      return;
    closed_ = true;
    if (stream_counted_) {
      stream_counted_ = false;
      srv_.stream_closed();
    }
    timer_.cancel();
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_;
  server& srv_;
  const unsigned short port_;
  const bool control_port_;
  const uint64_t id_;

  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  http::response<http::string_body> res_;
  std::string path_;
  std::string request_id_;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool closed_ = false;

  // streaming
  http::response<http::empty_body> sres_;
  std::optional<http::response_serializer<http::empty_body>> sr_;
  std::string out_;
  std::string stream_model_, stream_id_;
  int64_t stream_created_ = 0;
  int stream_chunks_ = 0, stream_delay_ms_ = 0, chunk_index_ = 0;
  bool stream_chat_ = true, stream_die_ = false, raw_ = false;
  bool stream_counted_ = false, detect_pending_ = false, resume_after_detect_ = false;
};

// -- server: listeners ----------------------------------------------------------

bool server::try_open(port_listener& l, error_code& ec) {
  auto& a = l.acceptor;
  if (a.is_open())
    a.close(ec);
  ec = {};
  a.open(l.ep.protocol(), ec);
  if (!ec)
    a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec)
    a.bind(l.ep, ec);
  if (!ec)
    a.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) {
    auto local = a.local_endpoint(ec);
    if (!ec) {
      l.ep = local;
      l.is_open = true;
      return true;
    }
  }
  error_code ignored;
  a.close(ignored);
  l.is_open = false;
  return false;
}

void server::bind_serving_ports() {
  const int n = opt_.ports;
  auto fail = [](const tcp::endpoint& ep, const error_code& ec) {
    throw std::runtime_error("cannot listen on " + host_text(ep.address()) + ":" +
                             std::to_string(ep.port()) + ": " + ec.message());
  };
  for (int i = 0; i < n; ++i)
    serving_.push_back(std::make_unique<port_listener>(lstrand_, tcp::endpoint{opt_.host, 0}));
  error_code ec;
  if (opt_.port != 0 || n == 1) {
    for (int i = 0; i < n; ++i) {
      auto& l = *serving_[i];
      l.ep.port(static_cast<unsigned short>(opt_.port == 0 ? 0 : opt_.port + i));
      if (!try_open(l, ec))
        fail(l.ep, ec);
    }
    return;
  }
  // Port 0 and N > 1: N consecutive free ports, preferably below the
  // ephemeral range (ip_local_port_range) so that the source ports of
  // outgoing connections (e.g. thousands of probes in TIME_WAIT) neither
  // block the search nor a re-open after `refuse`. Candidates, in order:
  // from a random start in [10000, ephemeral low) upwards, then from 10000,
  // then from the ephemeral low end, then from 1024.
  error_code ignored;
  unsigned ephemeral_low = 32768;
  if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    unsigned lo = 0, hi = 0;
    if (std::fscanf(f, "%u %u", &lo, &hi) == 2 && lo >= 1024)
      ephemeral_low = lo;
    std::fclose(f);
  }
  unsigned random_start = 10000;
  if (ephemeral_low > 10000u + static_cast<unsigned>(n))
    random_start += static_cast<unsigned>(std::random_device{}() %
                                          (ephemeral_low - 10000u - static_cast<unsigned>(n)));
  const unsigned last_start = 65536 - static_cast<unsigned>(n);
  // Tries every start in [from, to]; true once all N are bound.
  auto scan = [&](unsigned from, unsigned to) {
    for (unsigned start = from; start <= to && start <= last_start;) {
      int ok = 0;
      for (; ok < n; ++ok) {
        auto& l = *serving_[ok];
        l.ep = tcp::endpoint{opt_.host, static_cast<unsigned short>(start + ok)};
        if (!try_open(l, ec))
          break;
      }
      if (ok == n)
        return true;
      for (int i = 0; i < ok; ++i) {
        serving_[i]->acceptor.close(ignored);
        serving_[i]->is_open = false;
      }
      if (ec == asio::error::no_descriptors)
        fail(serving_[ok]->ep, ec);
      start += ok + 1;
    }
    return false;
  };
  const unsigned below_ephemeral = ephemeral_low - static_cast<unsigned>(n);  // last start
  if (scan(random_start, below_ephemeral) || scan(10000, random_start) ||
      scan(ephemeral_low, last_start) || scan(1024, 10000))
    return;
  throw std::runtime_error("cannot find " + std::to_string(n) + " consecutive free ports on " +
                           host_text(opt_.host));
}

void server::bind_all() {
  control_->ep = tcp::endpoint{opt_.control_host, static_cast<unsigned short>(opt_.control_port)};
  error_code ec;
  if (!try_open(*control_, ec))
    throw std::runtime_error("cannot listen on " + host_text(control_->ep.address()) + ":" +
                             std::to_string(control_->ep.port()) + ": " + ec.message());
  bind_serving_ports();
  serving_open_ = true;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    connection_budget_ = std::max<int64_t>(
        16, static_cast<int64_t>(rl.rlim_cur) - static_cast<int64_t>(serving_.size()) - 128);
  first_port_ = serving_.front()->ep.port();
  last_port_ = serving_.back()->ep.port();
  if (mode() == fault::refuse) {  // the ports are known (and printed), but closed
    for (auto& l : serving_) {
      l->acceptor.close(ec);
      l->is_open = false;
    }
    serving_open_ = false;
  }
}

void server::print_ready() const {
  const auto& first = serving_.front()->ep;
  std::printf("mock-model-server control on http://%s:%u\n",
              host_text(control_->ep.address()).c_str(), unsigned{control_->ep.port()});
  std::printf("mock-model-server listening on http://%s:%u\n", host_text(first.address()).c_str(),
              unsigned{first.port()});
  if (serving_.size() > 1)
    std::printf("mock-model-server ports %u-%u\n", unsigned{first.port()},
                unsigned{serving_.back()->ep.port()});
  std::fflush(stdout);
}

void server::start() {
  asio::dispatch(lstrand_, [this] {
    arm(*control_, false);
    for (auto& l : serving_)
      if (l->is_open)
        arm(*l, true);
  });
}

// On lstrand_.
void server::arm(port_listener& l, bool serving) {
  const uint64_t gen = l.gen;
  l.acceptor.async_accept(
      asio::make_strand(ioc_), [this, &l, gen, serving](error_code ec, tcp::socket socket) {
        if (gen != l.gen || !l.is_open)
          return;  // closed (refuse) or re-opened since
        if (ec) {
          if (ec == asio::error::operation_aborted)
            return;
          // Out of descriptors (or the like): do not spin, retry shortly.
          l.retry.expires_after(accept_retry);
          l.retry.async_wait([this, &l, gen, serving](error_code ec2) {
            if (!ec2 && gen == l.gen && l.is_open)
              arm(l, serving);
          });
          return;
        }
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        unsigned short port = l.ep.port();
        if (serving) {
          ++open_connections_;
          ++connections_total_;
        }
        auto s = std::make_shared<session>(std::move(socket), *this, port, !serving);
        s->start();  // registers it before a later sync_listeners() can run here
        arm(l, serving);
      });
}

// On lstrand_: re-open one serving port, retrying while it cannot be bound.
void server::reopen(port_listener& l) {
  ++l.gen;
  error_code ec;
  if (try_open(l, ec)) {
    arm(l, true);
    return;
  }
  std::fprintf(stderr, "mock-model-server: cannot re-open port %u: %s (retrying)\n",
               unsigned{l.ep.port()}, ec.message().c_str());
  const uint64_t gen = l.gen;
  l.retry.expires_after(rebind_retry);
  l.retry.async_wait([this, &l, gen](error_code ec2) {
    if (!ec2 && gen == l.gen && serving_open_)
      reopen(l);
  });
}

void server::sync_listeners(uint64_t skip_session, std::function<void()> done) {
  asio::post(lstrand_, [this, skip_session, done = std::move(done)] {
    const bool want_open = mode() != fault::refuse;
    if (want_open != serving_open_) {
      serving_open_ = want_open;
      for (auto& l : serving_) {
        if (want_open) {
          reopen(*l);
        } else {
          ++l->gen;
          l->retry.cancel();
          error_code ec;
          l->acceptor.close(ec);
          l->is_open = false;
        }
      }
      if (!want_open)
        close_serving_sessions(skip_session);
    }
    done();
  });
}

void server::session_opened(uint64_t id, const std::weak_ptr<session>& s) {
  std::lock_guard<std::mutex> g(sessions_mtx_);
  sessions_.emplace(id, s);
}

void server::session_closed(uint64_t id) {
  --open_connections_;
  std::lock_guard<std::mutex> g(sessions_mtx_);
  sessions_.erase(id);
}

void server::close_serving_sessions(uint64_t skip) {
  std::vector<std::shared_ptr<session>> live;
  {
    std::lock_guard<std::mutex> g(sessions_mtx_);
    live.reserve(sessions_.size());
    for (auto& [id, w] : sessions_)
      if (id != skip)
        if (auto s = w.lock())
          live.push_back(std::move(s));
  }
  for (auto& s : live)
    s->force_close();
}

// -- server: counters and control -------------------------------------------------

void server::record(const http::request<http::string_body>& req, const std::string& path,
                    unsigned short port) {
  json headers = json::object();
  for (const auto& f : req) {
    std::string name = lower(f.name_string());
    std::string value(f.value().data(), f.value().size());
    auto it = headers.find(name);
    if (it == headers.end())
      headers[name] = std::move(value);
    else
      *it = it->get<std::string>() + ", " + value;
  }
  const auto& b = req.body();
  json last = {{"method", std::string(req.method_string())},
               {"target", std::string(req.target())},
               {"port", port},
               {"headers", headers},
               {"body", b.size() > recorded_body_limit ? b.substr(0, recorded_body_limit) : b}};
  std::lock_guard<std::mutex> g(mtx_);
  ++requests_[path];
  ++requests_total_;
  last_headers_ = std::move(headers);
  last_requests_[path] = std::move(last);
}

json server::status() const {
  json j = {{"mode", to_string(mode())},
            {"slow_ms", slow_ms_.load()},
            {"chunks", chunks_.load()},
            {"chunk_delay_ms", chunk_delay_ms_.load()},
            {"open_streams", open_streams_.load()},
            {"open_connections", open_connections_.load()},
            {"connections_total", connections_total_.load()},
            {"models", opt_.models},
            {"ports", {first_port_, last_port_}}};
  std::lock_guard<std::mutex> g(mtx_);
  json requests = json::object();
  for (const auto& [path, n] : requests_)
    requests[path] = n;
  j["requests"] = std::move(requests);
  j["requests_total"] = requests_total_;
  j["last_headers"] = last_headers_;
  j["last_requests"] = last_requests_;
  return j;
}

void server::reset() {
  std::lock_guard<std::mutex> g(mtx_);
  requests_.clear();
  requests_total_ = 0;
  last_headers_ = json::object();
  last_requests_ = json::object();
  connections_total_ = 0;
}

bool server::parse_update(const json& body, control_update& u, std::string& err) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "mode") {
      std::optional<fault> f;
      if (v.is_string())
        f = parse_fault(v.get<std::string>());
      if (!f) {
        err = "mode: unknown mode " + v.dump() + " (healthy, http_500, invalid_json, empty_body, "
              "hang, slow, close, refuse, die_mid_stream)";
        return false;
      }
      u.mode = f;
      continue;
    }
    std::optional<int>* slot = key == "slow_ms"          ? &u.slow_ms
                               : key == "chunks"         ? &u.chunks
                               : key == "chunk_delay_ms" ? &u.chunk_delay_ms
                                                         : nullptr;
    if (!slot) {
      err = key + ": unknown field (mode, slow_ms, chunks, chunk_delay_ms)";
      return false;
    }
    const int64_t max = key == "chunks" ? 100000 : 3600000;
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > max) {
      err = key + ": must be an integer from 0 to " + std::to_string(max);
      return false;
    }
    *slot = static_cast<int>(v.get<int64_t>());
  }
  return true;
}

void server::apply(const control_update& u) {
  std::lock_guard<std::mutex> g(mtx_);
  if (u.slow_ms)
    slow_ms_ = *u.slow_ms;
  if (u.chunks)
    chunks_ = *u.chunks;
  if (u.chunk_delay_ms)
    chunk_delay_ms_ = *u.chunk_delay_ms;
  if (u.mode)
    mode_ = static_cast<int>(*u.mode);
}

// -- command line -------------------------------------------------------------------

options parse_options(int argc, char** argv) {
  options o;
  std::string listen = "127.0.0.1:0", control, mode = "healthy";
  CLI::App app{"mock-model-server: an OpenAI-compatible test backend with fault modes"};
  app.add_option("--listen", listen, "HOST:PORT to serve on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--ports", o.ports,
                 "serve N consecutive ports from PORT (with port 0: any N consecutive free ports)")
      ->check(CLI::Range(1, 65535))
      ->capture_default_str();
  app.add_option("--control", control,
                 "HOST:PORT of the control port (default: the --listen host, any free port)");
  app.add_option("--model", o.models, "a served model name (repeatable; default mock-model)")
      ->allow_extra_args(false);
  app.add_option("--mode", mode, "initial fault mode")
      ->check(CLI::IsMember(fault_names()))
      ->capture_default_str();
  app.add_option("--chunks", o.chunks, "SSE data events per streamed answer")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--chunk-delay-ms", o.chunk_delay_ms, "delay between two SSE events")
      ->check(CLI::Range(0, 3600000))
      ->capture_default_str();
  app.add_option("--slow-ms", o.slow_ms, "answer delay of the slow mode")
      ->check(CLI::Range(0, 3600000))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "threads running the io_context")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--idle-timeout-ms", o.idle_timeout_ms,
                 "close a connection idle (or sending its request headers) this long")
      ->check(CLI::Range(1, 3600000))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help
    std::cout << app.help();
    std::exit(0);
  } catch (const CLI::ParseError& e) {
    throw usage_error(e.what());
  }
  parse_host_port("--listen", listen, o.host, o.port);
  if (o.port != 0 && o.port + static_cast<unsigned>(o.ports) - 1 > 65535)
    throw usage_error("--ports: " + std::to_string(o.ports) + " ports from " +
                      std::to_string(o.port) + " go past 65535");
  o.control_host = o.host;
  if (!control.empty())
    parse_host_port("--control", control, o.control_host, o.control_port);
  if (o.models.empty())
    o.models.push_back("mock-model");
  for (const auto& m : o.models)
    if (m.empty())
      throw usage_error("--model: empty model name");
  o.mode = *parse_fault(mode);
  return o;
}

// Soft limit up to the hard limit; and when the hard limit is below what
// `ports` listeners with a few connections each need (10,000 ports with a
// keep-alive prober need > 20,000), try to raise the hard limit as well
// (works as root / with CAP_SYS_RESOURCE, up to fs.nr_open).
void raise_fd_limit(int ports) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  rlim_t wanted = static_cast<rlim_t>(ports) * 3 + 4096;
  if (FILE* f = std::fopen("/proc/sys/fs/nr_open", "r")) {
    unsigned long nr_open = 0;
    if (std::fscanf(f, "%lu", &nr_open) == 1 && nr_open > 0)
      wanted = std::min<rlim_t>(wanted, nr_open);
    std::fclose(f);
  }
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < wanted) {
    rlimit more{wanted, wanted};
    if (::setrlimit(RLIMIT_NOFILE, &more) == 0)
      return;
  }
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  try {
    opt = parse_options(argc, argv);
  } catch (const usage_error& e) {
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    std::fprintf(stderr, "mock-model-server: %s\n", msg.c_str());
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  raise_fd_limit(opt.ports);

  asio::io_context ioc{opt.threads};
  server srv{ioc, opt};
  try {
    srv.bind_all();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mock-model-server: %s\n", e.what());
    return 1;
  }
  asio::signal_set signals{ioc, SIGINT, SIGTERM};
  signals.async_wait([&ioc](error_code ec, int) {
    if (!ec)
      ioc.stop();
  });
  auto guard = asio::make_work_guard(ioc);
  srv.start();
  srv.print_ready();

  std::vector<std::thread> threads;
  for (int i = 1; i < opt.threads; ++i)
    threads.emplace_back([&ioc] { ioc.run(); });
  ioc.run();
  for (auto& t : threads)
    t.join();
  // Sessions still pending hold references into `srv`; skip tearing them down.
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(0);
}
