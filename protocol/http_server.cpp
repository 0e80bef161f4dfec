// Beast side of the HTTP facade. One `session` per connection, on the one
// thread of its io_context: read headers (under the header deadline), check the body limit,
// read the body, hand the request over, write the answer, repeat while
// keep-alive holds. See http_server.hpp for the contract.
#include "protocol/http_server.hpp"

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "protocol/errors.hpp"
#include "protocol/log.hpp"
#include "protocol/validation.hpp"

namespace mg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

/// Idle keep-alive connections to upstream servers, as native handles so
/// that any session can adopt one onto its own io_context. Bounded per server.
class upstream_pool {
public:
  explicit upstream_pool(size_t per_server) : per_server_(per_server) {
  }

  ~upstream_pool() {
    for (auto& kv : idle_)
      for (auto fd : kv.second)
        ::close(fd);
  }

  /// An idle connection to `key`, or -1.
  int take(const std::string& key) {
    std::lock_guard<std::mutex> guard{mtx_};
    auto it = idle_.find(key);
    if (it == idle_.end() || it->second.empty())
      return -1;
    int fd = it->second.back();
    it->second.pop_back();
    return fd;
  }

  void give(const std::string& key, int fd) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      auto& v = idle_[key];
      if (v.size() < per_server_) {
        v.push_back(fd);
        return;
      }
    }
    ::close(fd);
  }

private:
  std::mutex mtx_;
  size_t per_server_;
  std::map<std::string, std::vector<int>> idle_;
};

/// What every session of one server shares; outlives the sessions.
struct shared_state {
  http_server_options options;
  request_handler handler;
  std::atomic<size_t> open_connections{0};
  std::unique_ptr<upstream_pool> pool;
};

std::string sse_error_event(const std::string& message, const char* code) {
  nlohmann::json err = {{"error", {{"message", message}, {"type", "server_error"}, {"code", code}}}};
  return "event: error\ndata: " + err.dump() + "\n\n";
}

constexpr size_t header_limit = 16 * 1024;
/// The largest non-stream upstream answer relayed (it is held whole).
constexpr size_t max_upstream_body = 64u << 20;

class session : public std::enable_shared_from_this<session> {
public:
  session(tcp::socket&& socket, std::shared_ptr<shared_state> state, bool reject)
    : stream_(std::move(socket)), state_(std::move(state)), reject_(reject) {
    ++state_->open_connections;
  }

  ~session() {
    // An upstream connection this client kept warm goes back to the pool.
    if (up_ && up_kept_) {
      beast::error_code ec;
      int fd = up_->socket().release(ec);
      if (!ec && fd >= 0)
        state_->pool->give(up_addr_.key(), fd);
    }
    --state_->open_connections;
  }

  void run() {
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&session::on_start, shared_from_this()));
  }

  /// Called by exchanges from any thread.
  void send(http_response response) {
    asio::post(stream_.get_executor(), [self = shared_from_this(), r = std::move(response)]() mutable {
      self->write(std::move(r));
    });
  }

  const http_request& request() const {
    return request_;
  }

  /// Called by exchanges from any thread: one try against an upstream.
  void proxy(proxy_request upstream, proxy_callback done) {
    asio::dispatch(stream_.get_executor(),
               [self = shared_from_this(), up = std::move(upstream), done = std::move(done)]() mutable {
                 self->start_proxy(std::move(up), std::move(done));
               });
  }

private:
  // -- gateway: one try against an upstream, on this session's thread ---------

  void start_proxy(proxy_request upstream, proxy_callback done) {
    up_req_ = std::move(upstream);
    up_done_ = std::move(done);
    relayed_bytes_ = 0;
    auto addr = split_server_url(up_req_.url);
    if (up_ && up_kept_ && addr.key() == up_addr_.key() && up_->socket().is_open()) {
      // The connection the last request of this client used: no pool, no
      // epoll re-registration.
      up_kept_ = false;
      up_addr_ = std::move(addr);
      relay_done_ = false;
      up_reused_ = true;
      return up_write();
    }
    if (up_ && up_kept_) { // kept for another upstream: hand it to the pool
      beast::error_code ec;
      int fd = up_->socket().release(ec);
      if (!ec && fd >= 0)
        state_->pool->give(up_addr_.key(), fd);
    }
    up_.reset();
    up_kept_ = false;
    up_addr_ = std::move(addr);
    relay_done_ = false;
    relay_res_.reset();
    if (up_addr_.https)
      return proxy_finish(proxy_result::kind::connect_failed, 0,
                          "https upstreams are not supported yet");
    up_.emplace(stream_.get_executor());
    int fd = state_->pool->take(up_addr_.key());
    if (fd >= 0) {
      beast::error_code ec;
      auto address = asio::ip::make_address(up_addr_.host, ec);
      up_->socket().assign(!ec && address.is_v6() ? tcp::v6() : tcp::v4(), fd, ec);
      if (!ec) {
        up_reused_ = true;
        return up_write();
      }
    }
    up_reused_ = false;
    up_connect();
  }

  void up_connect() {
    beast::error_code ec;
    auto address = asio::ip::make_address(up_addr_.host, ec);
    if (!ec) {
      up_endpoints_.assign(1, tcp::endpoint{address, static_cast<unsigned short>(std::stoul(up_addr_.port))});
      return up_connect_endpoints();
    }
    // A host name: looked up asynchronously, under the connect timeout (the
    // resolver has no deadline of its own, so a timer cancels it).
    up_resolver_.emplace(stream_.get_executor());
    up_resolve_timer_.emplace(stream_.get_executor());
    up_resolve_timer_->expires_after(up_req_.connect_timeout);
    up_resolve_timer_->async_wait([self = shared_from_this()](beast::error_code e) {
      if (!e && self->up_resolver_)
        self->up_resolver_->cancel();
    });
    up_resolver_->async_resolve(
      up_addr_.host, up_addr_.port,
      [self = shared_from_this()](beast::error_code e, tcp::resolver::results_type results) {
        self->up_resolve_timer_->cancel();
        if (e == asio::error::operation_aborted)
          return self->proxy_finish(proxy_result::kind::connect_failed, 0,
                                    "name lookup of " + self->up_addr_.host + " timed out");
        if (e || results.empty())
          return self->proxy_finish(proxy_result::kind::connect_failed, 0,
                                    "cannot resolve " + self->up_addr_.host + ": " + e.message());
        self->up_endpoints_.assign(results.begin(), results.end());
        self->up_connect_endpoints();
      });
  }

  void up_connect_endpoints() {
    up_.emplace(stream_.get_executor());
    up_->expires_after(up_req_.connect_timeout);
    up_->async_connect(up_endpoints_, [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
      if (ec == beast::error::timeout)
        return self->proxy_finish(proxy_result::kind::connect_failed, 0, "connect timed out");
      if (ec)
        return self->proxy_finish(proxy_result::kind::connect_failed, 0, "connect: " + ec.message());
      beast::error_code ignored;
      self->up_->socket().set_option(tcp::no_delay(true), ignored);
      self->up_write();
    });
  }

  void up_write() {
    auto req = std::make_shared<http::request<http::string_body>>(http::verb::post,
                                                                  up_addr_.base_path + request_.path, 11);
    req->set(http::field::host, up_addr_.host_header);
    req->set(http::field::content_type, "application/json");
    req->set(http::field::accept, up_req_.stream ? "text/event-stream"
                                                 : (request_.accept.empty() ? "application/json"
                                                                            : request_.accept));
    req->set(http::field::user_agent, "modelgate");
    req->set("x-request-id", up_req_.request_id);
    if (up_req_.api_key)
      req->set(http::field::authorization, "Bearer " + *up_req_.api_key);
    req->body() = request_.body;
    req->keep_alive(true);
    req->prepare_payload();
    // Sending a large body is bounded like a stall (the idle timeout); the
    // upstream timeout counts from the end of the request to the headers.
    up_->expires_after(up_req_.idle_timeout);
    http::async_write(*up_, *req, [self = shared_from_this(), req](beast::error_code ec, size_t) {
      if (ec == beast::error::timeout)
        return self->proxy_finish(proxy_result::kind::timeout, 0, "sending to the upstream timed out");
      if (ec)
        return self->up_retry_or("sending to the upstream: " + ec.message());
      self->up_read_header();
    });
  }

  /// A reused connection the upstream had closed: once more on a new one.
  /// A fresh connection that fails after connecting is not a connect
  /// failure: the upstream got the request, so it is neither retried nor
  /// held against the server (`failed`, 502).
  void up_retry_or(std::string error) {
    if (up_reused_) {
      up_reused_ = false;
      close_upstream();
      return up_connect();
    }
    proxy_finish(proxy_result::kind::failed, 0, std::move(error));
  }

  void up_read_header() {
    up_->expires_after(up_req_.response_timeout);
    up_buffer_.clear();
    up_parser_.emplace();
    up_parser_->body_limit(boost::none);
    http::async_read_header(*up_, up_buffer_, *up_parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->on_up_header(ec, n);
                            });
  }

  void on_up_header(beast::error_code ec, size_t bytes) {
    if (ec == beast::error::timeout)
      return proxy_finish(proxy_result::kind::timeout, 0, "no response headers within the upstream timeout");
    if (ec) {
      if (bytes == 0)
        return up_retry_or("the upstream closed the connection: " + ec.message());
      return proxy_finish(proxy_result::kind::failed, 0, "malformed upstream response: " + ec.message());
    }
    auto& res = up_parser_->get();
    int status = static_cast<int>(res.result_int());
    if (status == 502 || status == 503)
      return proxy_finish(proxy_result::kind::unavailable, status,
                          "upstream answered " + std::to_string(status));
    bool sse = beast::iequals(res[http::field::content_type].substr(0, 17), "text/event-stream");
    if (sse)
      return relay_start(status);
    // A whole (non-stream) answer: read it, then answer the client at once.
    up_body_.clear();
    up_read_body();
  }

  void up_read_body() {
    if (up_parser_->is_done()) // no body (Content-Length: 0, 204, 304)
      return relay_whole();
    if (up_body_.size() > max_upstream_body)
      return proxy_finish(proxy_result::kind::failed, 0,
                          "the upstream's response body is over " + std::to_string(max_upstream_body)
                            + " bytes");
    char* data = up_chunk_.data();
    up_parser_->get().body().data = data;
    up_parser_->get().body().size = up_chunk_.size();
    up_->expires_after(up_req_.idle_timeout);
    http::async_read_some(*up_, up_buffer_, *up_parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            if (ec == http::error::need_buffer)
                              ec = {};
                            auto n = self->up_chunk_.size() - self->up_parser_->get().body().size;
                            if (ec == beast::error::timeout)
                              return self->proxy_finish(proxy_result::kind::timeout, 0,
                                                        "the upstream stalled in its response body");
                            if (ec)
                              return self->proxy_finish(proxy_result::kind::failed, 0,
                                                        "upstream response body: " + ec.message());
                            self->up_body_.append(self->up_chunk_.data(), n);
                            if (!self->up_parser_->is_done())
                              return self->up_read_body();
                            self->relay_whole();
                          });
  }

  void add_gateway_headers(http::fields& f) {
    f.set("x-modelgate-server", up_req_.server_id);
    f.set("x-request-id", up_req_.request_id);
  }

  void relay_whole() {
    auto& res = up_parser_->get();
    http_response r;
    r.status = static_cast<int>(res.result_int());
    r.content_type = res[http::field::content_type].empty()
                       ? "application/json"
                       : std::string{res[http::field::content_type]};
    r.body = std::move(up_body_);
    r.headers = {{"x-modelgate-server", up_req_.server_id}, {"x-request-id", up_req_.request_id}};
    bool reusable = res.keep_alive();
    release_upstream(reusable);
    auto status = r.status;
    relayed_bytes_ = r.body.size();
    proxy_finish(proxy_result::kind::success, status, {});
    write(std::move(r));
  }

  // Streams: our own chunked response, each upstream chunk written as it comes.
  void relay_start(int status) {
    keep_alive_ = false; // the connection closes after a stream
    relay_res_ = std::make_shared<http::response<http::empty_body>>(
      static_cast<http::status>(status), 11);
    auto& res = *relay_res_;
    res.set(http::field::server, "modelgate");
    res.set(http::field::content_type, up_parser_->get()[http::field::content_type]);
    res.set(http::field::cache_control, "no-cache");
    res.set("X-Accel-Buffering", "no");
    add_gateway_headers(res);
    res.chunked(true);
    res.keep_alive(false);
    relay_sr_ = std::make_shared<http::response_serializer<http::empty_body>>(res);
    stream_.expires_after(up_req_.idle_timeout + state_->options.write_timeout);
    http::async_write_header(stream_, *relay_sr_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec)
        return self->relay_client_gone(ec);
      self->watch_client();
      self->relay_read();
    });
  }

  /// A read kept pending on the client socket: a disconnect shows at once,
  /// and the upstream request is closed with it.
  void watch_client() {
    // On the raw socket: a read through the tcp_stream would carry its
    // deadline and end a long but lively stream.
    stream_.socket().async_read_some(asio::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (self->relay_done_)
        return;
      if (ec)
        return self->relay_client_gone(ec);
      self->watch_client(); // stray bytes from the client: ignored
    });
  }

  void relay_read() {
    if (relay_done_ || !up_)
      return;
    if (up_parser_->is_done())
      return relay_end();
    up_parser_->get().body().data = up_chunk_.data();
    up_parser_->get().body().size = up_chunk_.size();
    up_->expires_after(up_req_.idle_timeout);
    http::async_read_some(*up_, up_buffer_, *up_parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            self->on_relay_read(ec);
                          });
  }

  void on_relay_read(beast::error_code ec) {
    if (relay_done_)
      return;
    if (ec == http::error::need_buffer)
      ec = {};
    auto n = up_chunk_.size() - up_parser_->get().body().size;
    if (n > 0) {
      // Write this piece before reading the next: no buffering beyond it.
      auto data = std::make_shared<std::string>(up_chunk_.data(), n);
      relayed_bytes_ += n;
      stream_.expires_after(up_req_.idle_timeout + state_->options.write_timeout);
      asio::async_write(stream_, http::make_chunk(asio::buffer(*data)),
                        [self = shared_from_this(), data, ec](beast::error_code wec, size_t) {
                          if (self->relay_done_) // the client went away meanwhile
                            return;
                          if (wec)
                            return self->relay_client_gone(wec);
                          if (ec)
                            return self->relay_broken(ec);
                          self->relay_read();
                        });
      return;
    }
    if (ec)
      return relay_broken(ec);
    relay_read();
  }

  void relay_broken(beast::error_code ec) {
    bool stalled = ec == beast::error::timeout;
    std::string error = stalled ? "the upstream stream stalled past the idle timeout"
                                : "the upstream stream broke: " + ec.message();
    close_upstream();
    auto event = std::make_shared<std::string>(
      sse_error_event(error, stalled ? "upstream_timeout" : "upstream_failed"));
    relay_done_ = true;
    stream_.expires_after(state_->options.write_timeout);
    asio::async_write(stream_, http::make_chunk(asio::buffer(*event)),
                      [self = shared_from_this(), event](beast::error_code wec, size_t) {
                        if (wec)
                          return self->do_close();
                        asio::async_write(self->stream_, http::make_chunk_last(),
                                          [self](beast::error_code, size_t) { self->do_close(); });
                      });
    proxy_finish(proxy_result::kind::broken, relayed_status(), error);
  }

  void relay_end() {
    relay_done_ = true;
    bool reusable = up_parser_->get().keep_alive();
    release_upstream(reusable);
    stream_.expires_after(state_->options.write_timeout);
    asio::async_write(stream_, http::make_chunk_last(),
                      [self = shared_from_this()](beast::error_code, size_t) { self->do_close(); });
    proxy_finish(proxy_result::kind::success, static_cast<int>(up_parser_->get().result_int()), {});
  }

  void relay_client_gone(beast::error_code ec) {
    if (relay_done_)
      return;
    relay_done_ = true;
    close_upstream(); // the upstream sees the request end at once
    do_close();
    proxy_finish(proxy_result::kind::client_gone, relayed_status(),
                 "the client disconnected: " + ec.message());
  }

  /// The status the client got, once the upstream's headers were relayed.
  int relayed_status() const {
    return relay_res_ ? static_cast<int>(relay_res_->result_int()) : 0;
  }

  /// Puts the upstream connection back in the pool, or closes it.
  void release_upstream(bool reusable) {
    if (!up_)
      return;
    beast::error_code ec;
    if (reusable && up_parser_ && up_parser_->is_done() && up_buffer_.size() == 0) {
      // Kept on this session for its next request; the pool gets it when
      // the client goes away or wants another upstream.
      up_->expires_never();
      up_kept_ = true;
      return;
    }
    close_upstream();
  }

  void close_upstream() {
    up_kept_ = false;
    if (up_) {
      beast::error_code ec;
      up_->socket().shutdown(tcp::socket::shutdown_both, ec);
      up_->close();
      up_.reset();
    }
  }

  void proxy_finish(proxy_result::kind what, int status, std::string error) {
    if (!proxy_result{what, 0, {}}.responded())
      close_upstream();
    auto done = std::move(up_done_);
    up_done_ = nullptr;
    if (done)
      done(proxy_result{what, status, std::move(error), relayed_bytes_});
  }

  void on_start() {
    if (reject_) {
      // Over the connection cap: say so and close, rather than a silent reset.
      keep_alive_ = false;
      http_response r;
      r.status = 503;
      r.body = error_body({errc::unavailable, "too many open connections"});
      write(std::move(r));
      return;
    }
    do_read_header();
  }

  void do_wait_idle() {
    // Between keep-alive requests: wait for the first byte of the next one
    // under the idle deadline; the header deadline starts with it.
    stream_.expires_after(state_->options.idle_timeout);
    stream_.async_read_some(buffer_.prepare(4096),
                            beast::bind_front_handler(&session::on_idle_read, shared_from_this()));
  }

  void on_idle_read(beast::error_code ec, size_t n) {
    if (ec)
      return do_close();
    buffer_.commit(n);
    do_read_header();
  }

  void do_read_header() {
    parser_.emplace();
    parser_->header_limit(header_limit);
    parser_->body_limit(boost::none); // set once the target is known
    stream_.expires_after(state_->options.header_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&session::on_read_header, shared_from_this()));
  }

  void on_read_header(beast::error_code ec, size_t) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout
        || ec == asio::error::connection_reset || ec == asio::error::operation_aborted)
      return do_close();
    if (ec)
      return fail_request(400, "malformed HTTP request: " + ec.message());
    auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    auto target = req.target();
    auto qpos = target.find('?');
    request_ = http_request{};
    request_.method = std::string{req.method_string()};
    request_.path = std::string{target.substr(0, qpos)};
    if (qpos != beast::string_view::npos)
      request_.query = std::string{target.substr(qpos + 1)};
    request_.authorization = std::string{req[http::field::authorization]};
    request_.content_type = std::string{req[http::field::content_type]};
    request_.request_id = std::string{req["x-request-id"]};
    request_.accept = std::string{req[http::field::accept]};
    auto limit = state_->options.body_limit(request_.path);
    if (auto len = parser_->content_length(); len && *len > limit)
      return fail_request(413, "request body is over the limit of " + std::to_string(limit)
                                 + " bytes");
    parser_->body_limit(limit);
    if (parser_->is_done())
      return dispatch_request();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
      stream_.expires_after(state_->options.write_timeout);
      http::async_write(stream_, *cont,
                        [self = shared_from_this(), cont](beast::error_code ec, size_t) {
                          if (ec)
                            return self->do_close();
                          self->do_read_body();
                        });
      return;
    }
    do_read_body();
  }

  void do_read_body() {
    stream_.expires_after(state_->options.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&session::on_read_body, shared_from_this()));
  }

  void on_read_body(beast::error_code ec, size_t) {
    if (ec == http::error::body_limit)
      return fail_request(413, "request body is over the limit of "
                                 + std::to_string(state_->options.body_limit(request_.path))
                                 + " bytes");
    if (ec == beast::error::timeout || ec == http::error::end_of_stream
        || ec == asio::error::connection_reset)
      return do_close();
    if (ec)
      return fail_request(400, "malformed HTTP request body: " + ec.message());
    dispatch_request();
  }

  void dispatch_request();

  void fail_request(int status, std::string message) {
    keep_alive_ = false;
    linger_ = true; // the client may still be sending the body we refused
    http_response r;
    r.status = status;
    r.body = error_body({status == 413 ? errc::payload_too_large : errc::invalid_request,
                         std::move(message)});
    write(std::move(r));
  }

  void write(http_response r) {
    stream_.expires_never();
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(r.status));
    res->set(http::field::server, "modelgate");
    res->set(http::field::content_type, r.content_type);
    for (auto& [name, value] : r.headers)
      res->set(name, value);
    res->body() = std::move(r.body);
    res->keep_alive(keep_alive_);
    res->prepare_payload();
    stream_.expires_after(state_->options.write_timeout);
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        self->on_write(ec);
                      });
  }

  void on_write(beast::error_code ec) {
    if (!ec && linger_)
      return do_linger_close();
    if (ec || !keep_alive_)
      return do_close();
    if (buffer_.size() > 0)
      return do_read_header(); // a pipelined request is already here
    do_wait_idle();
  }

  void do_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.close();
  }

  /// After an error answer to a request whose body was not read: closing at
  /// once with unread bytes would make the kernel send a reset, which can
  /// destroy the answer before the client reads it. So: FIN first, then read
  /// and drop what the client still sends, for at most a second.
  void do_linger_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(1));
    drain();
  }

  void drain() {
    stream_.async_read_some(asio::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec)
        return self->stream_.close();
      self->drain();
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<shared_state> state_;
  http_request request_;
  bool reject_;
  bool keep_alive_ = true;
  bool linger_ = false; // close gracefully after the answer (see do_linger_close)
  // gateway state, valid during a proxy try
  proxy_request up_req_;
  proxy_callback up_done_;
  server_url_parts up_addr_;
  std::optional<beast::tcp_stream> up_;
  std::vector<tcp::endpoint> up_endpoints_;
  std::optional<tcp::resolver> up_resolver_;
  std::optional<asio::steady_timer> up_resolve_timer_;
  beast::flat_buffer up_buffer_;
  std::optional<http::response_parser<http::buffer_body>> up_parser_;
  std::array<char, 16 * 1024> up_chunk_{};
  std::string up_body_;
  bool up_reused_ = false;
  bool up_kept_ = false; // up_ is idle, kept for this client's next request
  uint64_t relayed_bytes_ = 0; // of this try's answer body, to the client
  bool relay_done_ = false;
  std::shared_ptr<http::response<http::empty_body>> relay_res_;
  std::shared_ptr<http::response_serializer<http::empty_body>> relay_sr_;
  std::array<char, 512> watch_buf_{};
};

class exchange final : public http_exchange {
public:
  explicit exchange(std::shared_ptr<session> s) : session_(std::move(s)) {
  }

  ~exchange() override {
    if (!answered_->exchange(true))
      session_->send({500, error_body({errc::internal, "the request was dropped unanswered"}),
                      "application/json", {}});
  }

  const http_request& request() const override {
    return session_->request();
  }

  void respond(http_response response) override {
    if (!answered_->exchange(true))
      session_->send(std::move(response));
  }

  void proxy(proxy_request upstream, proxy_callback done) override {
    if (answered_->load())
      return;
    session_->proxy(std::move(upstream), [answered = answered_, done = std::move(done)](proxy_result r) {
      if (r.responded())
        answered->store(true);
      done(std::move(r));
    });
  }

private:
  std::shared_ptr<session> session_;
  std::shared_ptr<std::atomic<bool>> answered_ = std::make_shared<std::atomic<bool>>(false);
};

void session::dispatch_request() {
  stream_.expires_never();
  request_.body = std::move(parser_->get().body());
  parser_.reset();
  // The session waits here, reading nothing, until the exchange answers.
  state_->handler(std::make_shared<exchange>(shared_from_this()));
}

} // namespace

struct http_server::impl {
  std::shared_ptr<shared_state> state;
  // One io_context per thread: a connection lives on one thread from accept
  // to close, so its handlers never hop threads (no cross-thread wake-ups).
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::atomic<size_t> next_context{0};
  asio::io_context& ioc;
  tcp::acceptor acceptor{asio::make_strand(ioc)};
  asio::steady_timer retry_timer{acceptor.get_executor()};
  std::vector<std::thread> threads;
  std::atomic<uint16_t> port{0};
  std::mutex stop_mutex;
  bool stopped = false;

  explicit impl(int threads) : contexts(make_contexts(threads)), ioc(*contexts.front()) {
  }

  static std::vector<std::unique_ptr<asio::io_context>> make_contexts(int threads) {
    std::vector<std::unique_ptr<asio::io_context>> v;
    for (int i = 0; i < threads; ++i)
      v.push_back(std::make_unique<asio::io_context>(1));
    return v;
  }

  asio::io_context& pick_context() {
    return *contexts[next_context++ % contexts.size()];
  }

  void do_accept() {
    // No strand: each io_context has exactly one thread, which serializes a
    // connection's handlers by itself (and posts from other threads are safe).
    acceptor.async_accept(pick_context().get_executor(), [this](beast::error_code ec, tcp::socket socket) {
      on_accept(ec, std::move(socket));
    });
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open())
      return;
    if (ec) {
      // Typically EMFILE: back off briefly instead of spinning on accept.
      log(log_level::warning, "accept failed", {{"error", ec.message()}});
      retry_timer.expires_after(std::chrono::milliseconds(50));
      retry_timer.async_wait([this](beast::error_code e) {
        if (!e)
          do_accept();
      });
      return;
    }
    bool reject = state->open_connections.load() >= state->options.max_connections;
    if (reject)
      log(log_level::warning, "connection refused: at the connection cap",
          {{"max_connections", state->options.max_connections}});
    socket.set_option(tcp::no_delay(true), ec);
    std::make_shared<session>(std::move(socket), state, reject)->run();
    do_accept();
  }
};

http_server::http_server(http_server_options options, request_handler handler) {
  unsigned threads = options.threads != 0 ? options.threads
                                          : std::max(1u, std::thread::hardware_concurrency());
  options.threads = threads;
  impl_ = std::make_shared<impl>(static_cast<int>(threads));
  impl_->state = std::make_shared<shared_state>();
  impl_->state->options = std::move(options);
  impl_->state->handler = std::move(handler);
  impl_->state->pool = std::make_unique<upstream_pool>(impl_->state->options.upstream_idle_per_server);
}

http_server::~http_server() {
  stop();
}

void http_server::start() {
  const auto& opts = impl_->state->options;
  beast::error_code ec;
  auto address = asio::ip::make_address(opts.host, ec);
  if (ec) {
    // A host name: resolve it once, synchronously, at start-up.
    tcp::resolver resolver{impl_->ioc};
    auto results = resolver.resolve(opts.host, std::to_string(opts.port), ec);
    if (ec || results.empty())
      throw std::runtime_error("cannot resolve listen host " + opts.host + ": " + ec.message());
    address = results.begin()->endpoint().address();
  }
  tcp::endpoint endpoint{address, opts.port};
  auto& acc = impl_->acceptor;
  acc.open(endpoint.protocol(), ec);
  if (!ec)
    acc.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec)
    acc.bind(endpoint, ec);
  if (!ec)
    acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("cannot listen on " + opts.host + ":" + std::to_string(opts.port)
                             + ": " + ec.message());
  impl_->port = acc.local_endpoint().port();
  impl_->do_accept();
  for (unsigned i = 0; i < opts.threads; ++i)
    impl_->threads.emplace_back([ctx = impl_->contexts[i].get()] {
      auto guard = asio::make_work_guard(*ctx); // a thread whose context has no connection yet waits
      ctx->run();
    });
}

uint16_t http_server::port() const {
  return impl_->port;
}

size_t http_server::open_connections() const {
  return impl_->state->open_connections.load();
}

void http_server::stop() {
  std::lock_guard<std::mutex> guard{impl_->stop_mutex};
  if (impl_->stopped)
    return;
  impl_->stopped = true;
  asio::post(impl_->acceptor.get_executor(), [self = impl_.get()] {
    beast::error_code ec;
    self->acceptor.close(ec);
    self->retry_timer.cancel();
  });
  for (auto& ctx : impl_->contexts)
    ctx->stop();
  for (auto& t : impl_->threads)
    if (t.joinable())
      t.join();
  beast::error_code ec;
  impl_->acceptor.close(ec);
}

} // namespace mg
