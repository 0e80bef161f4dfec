// Beast side of the HTTP facade. One `session` per connection, on the one
// thread of its io_context: read headers (under the header deadline), check the body limit,
// read the body, hand the request over, write the answer, repeat while
// keep-alive holds. See http_server.hpp for the contract.
#include "protocol/http_server.hpp"

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <unordered_map>
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
#include "protocol/self_connect.hpp"
#include "protocol/validation.hpp"

namespace mg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// Sockets, timers and resolvers bound to an io_context's own executor type:
// the polymorphic any_io_executor costs a copy and a destroy per handler.
using executor_type = asio::io_context::executor_type;
using socket_type = asio::basic_stream_socket<tcp, executor_type>;
using timer_type = asio::basic_waitable_timer<std::chrono::steady_clock,
                                              asio::wait_traits<std::chrono::steady_clock>, executor_type>;
using resolver_type = asio::ip::basic_resolver<tcp, executor_type>;
using clock_type = std::chrono::steady_clock;

/// The deadline of one socket, without a timer operation per read or write:
/// `set` stores the time; the timer is armed only when idle or when the new
/// deadline is earlier than the armed one, and when it fires it re-checks
/// the stored deadline (re-arming for a later one). On expiry the owner
/// closes the socket, so pending operations complete at once; `expired()`
/// tells their handlers why. Beast's tcp_stream arms and cancels a timer on
/// every operation, which cost several microseconds per proxied request.
class socket_deadline {
public:
  explicit socket_deadline(executor_type ex) : timer_(ex) {
  }

  /// Expire `after` from now. `owner` is a weak handle of the object that
  /// holds this deadline (it is locked while the timer's handler runs);
  /// `on_expire(owner)` runs on the socket's thread.
  template <class Owner, class OnExpire>
  void set(clock_type::duration after, const std::weak_ptr<Owner>& owner, OnExpire on_expire) {
    expired_ = false;
    due_ = clock_type::now() + after;
    if (armed_ <= due_)
      return; // the armed wait fires first and re-checks
    arm(owner, std::move(on_expire));
  }

  void clear() {
    due_ = clock_type::time_point::max();
  }

  /// Stops the timer for good (the socket is closing).
  void cancel() {
    due_ = clock_type::time_point::max();
    armed_ = clock_type::time_point::max();
    timer_.cancel();
  }

  bool expired() const {
    return expired_;
  }

private:
  template <class Owner, class OnExpire>
  void arm(const std::weak_ptr<Owner>& owner, OnExpire on_expire) {
    armed_ = due_;
    timer_.expires_at(due_);
    timer_.async_wait([this, owner, on_expire = std::move(on_expire)](beast::error_code ec) mutable {
      if (ec)
        return; // re-armed or cancelled: `this` may be gone, touch nothing
      auto alive = owner.lock();
      if (!alive)
        return;
      armed_ = clock_type::time_point::max();
      if (due_ == clock_type::time_point::max())
        return; // cleared meanwhile
      if (clock_type::now() < due_)
        return arm(owner, std::move(on_expire)); // moved later meanwhile
      expired_ = true;
      due_ = clock_type::time_point::max();
      on_expire(*alive);
    });
  }

  timer_type timer_;
  clock_type::time_point due_ = clock_type::time_point::max();
  clock_type::time_point armed_ = clock_type::time_point::max();
  bool expired_ = false;
};

/// Appends `name: value\r\n`. Values come from validated or parsed input;
/// a CR or LF that got through anyway becomes a space (see header_safe)
/// rather than a second header.
void add_header(std::string& out, std::string_view name, std::string_view value) {
  out.append(name.data(), name.size());
  out += ": ";
  if (value.find_first_of("\r\n") == std::string_view::npos)
    out.append(value.data(), value.size());
  else
    out += header_safe(value);
  out += "\r\n";
}

/// The status line of an HTTP/1.1 response.
void add_status_line(std::string& out, int status) {
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out += ' ';
  auto reason = http::obsolete_reason(static_cast<http::status>(status));
  out.append(reason.data(), reason.size());
  out += "\r\n";
}

/// Feeds `parser` what `buffer` already holds, without reading the socket:
/// a small message usually arrives whole with its header, and finishing it
/// here saves a trip through the event loop. Stops at the end of the
/// header, at the end of the message, when the buffer runs dry, or on an
/// error (left in `ec`).
/// True when the whole Content-Length body is already in `buffer`.
template <class Parser>
bool content_length_buffered(const Parser& parser, const beast::flat_buffer& buffer) {
  auto len = parser.content_length();
  return len && *len <= buffer.size();
}

template <class Parser>
void parse_buffered(Parser& parser, beast::flat_buffer& buffer, beast::error_code& ec) {
  while (!parser.is_done() && buffer.size() > 0) {
    bool header_was_done = parser.is_header_done();
    auto n = parser.put(buffer.data(), ec);
    if (ec == http::error::need_more) {
      ec = {};
      return;
    }
    if (ec)
      return;
    buffer.consume(n);
    if (n == 0 || (!header_was_done && parser.is_header_done()))
      return; // the header is done: the caller looks at it before the body
  }
}

/// 1xx, 204 and 304 answers carry no body and no Content-Length.
bool status_has_body(int status) {
  return status >= 200 && status != 204 && status != 304;
}

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

class session;

/// What every session of one server shares; outlives the sessions.
struct shared_state {
  http_server_options options;
  request_handler handler;
  std::atomic<size_t> open_connections{0};
  std::unique_ptr<upstream_pool> pool;
  // Live sessions, so that stop() can end the proxy tries still running
  // (see session::abandon). Guarded by sessions_mutex.
  std::mutex sessions_mutex;
  std::unordered_map<const session*, std::weak_ptr<session>> sessions;
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
  session(socket_type&& socket, std::shared_ptr<shared_state> state, bool reject)
    : socket_(std::move(socket)), client_deadline_(socket_.get_executor()),
      up_deadline_(socket_.get_executor()), state_(std::move(state)), reject_(reject) {
    ++state_->open_connections;
  }

  ~session() {
    {
      std::lock_guard<std::mutex> guard{state_->sessions_mutex};
      state_->sessions.erase(this);
    }
    // An upstream connection this client kept warm goes back to the pool.
    if (up_ && up_kept_) {
      beast::error_code ec;
      int fd = up_->release(ec);
      if (!ec && fd >= 0)
        state_->pool->give(up_addr_.key(), fd);
    }
    --state_->open_connections;
  }

  void run() {
    {
      std::lock_guard<std::mutex> guard{state_->sessions_mutex};
      state_->sessions.emplace(this, weak_from_this());
    }
    asio::dispatch(socket_.get_executor(),
                   beast::bind_front_handler(&session::on_start, shared_from_this()));
  }

  /// Called by exchanges from any thread.
  void send(http_response response) {
    asio::post(socket_.get_executor(), [self = shared_from_this(), r = std::move(response)]() mutable {
      self->write(std::move(r));
    });
  }

  const http_request& request() const {
    return request_;
  }

  /// Called once the server's threads have stopped, so no handler of this
  /// session runs again: drops the try in flight. Its callback holds the
  /// exchange, which holds this session: a cycle that, left alone, would
  /// keep the session, the request handler and the actors it refers to
  /// alive for ever (and the daemon would hang at exit). Once it is broken,
  /// destroying the stopped io_context frees the session and its sockets.
  void abandon() {
    auto done = std::move(up_done_);
    up_done_ = nullptr;
    // `done` goes here; the exchange it held answers nobody (its answer is
    // posted to a stopped io_context).
  }

  /// Called by exchanges from any thread: one try against an upstream.
  void proxy(proxy_request upstream, proxy_callback done) {
    asio::dispatch(socket_.get_executor(),
               [self = shared_from_this(), up = std::move(upstream), done = std::move(done)]() mutable {
                 self->start_proxy(std::move(up), std::move(done));
               });
  }

private:
  // -- deadlines ---------------------------------------------------------------

  void client_expires_after(clock_type::duration after) {
    client_deadline_.set(after, weak_from_this(), [](session& s) {
      beast::error_code ec;
      s.socket_.close(ec);
    });
  }

  void up_expires_after(clock_type::duration after) {
    up_deadline_.set(after, weak_from_this(), [](session& s) {
      if (s.up_resolver_)
        s.up_resolver_->cancel();
      if (s.up_) {
        beast::error_code ec;
        s.up_->close(ec);
      }
    });
  }

  /// The completion handler of one upstream step: `step(session, ec, ...)`
  /// runs only while the try is still on (a client who left has ended it,
  /// and its upstream was closed), with an error the upstream deadline
  /// caused reported as a timeout.
  template <class Step>
  auto upstream_step(Step step) {
    return [self = shared_from_this(), step = std::move(step)](beast::error_code ec,
                                                                auto&&... rest) mutable {
      if (!self->up_done_)
        return;
      step(*self, self->up_ec(ec), std::forward<decltype(rest)>(rest)...);
    };
  }

  /// An operation that failed because its socket's deadline closed it.
  beast::error_code client_ec(beast::error_code ec) const {
    return ec && client_deadline_.expired() ? beast::error::timeout : ec;
  }
  beast::error_code up_ec(beast::error_code ec) const {
    return ec && up_deadline_.expired() ? beast::error::timeout : ec;
  }

  // -- gateway: one try against an upstream, on this session's thread ---------

  void start_proxy(proxy_request upstream, proxy_callback done) {
    up_req_ = std::move(upstream);
    up_done_ = std::move(done);
    relayed_bytes_ = 0;
    if (up_req_.stream) {
      // A stream request can wait long for its first byte (a model's
      // prefill): watch the client from now on, so that one who leaves
      // closes the upstream request at once, not when its headers come.
      // The connection closes after a stream anyway, so bytes the client
      // sends meanwhile are not a next request.
      keep_alive_ = false;
      watch_client();
    }
    // The same server as this client's last request (the common case): the
    // URL was split then, and its kept connection needs no pool and no
    // epoll re-registration.
    bool same_url = up_req_.url == up_url_;
    if (up_ && up_kept_ && same_url && up_->is_open()) {
      up_kept_ = false;
      relay_done_ = false;
      relay_status_ = 0;
      up_reused_ = true;
      return up_write();
    }
    if (up_ && up_kept_) { // kept for another upstream: hand it to the pool
      beast::error_code ec;
      int fd = up_->release(ec);
      if (!ec && fd >= 0)
        state_->pool->give(up_addr_.key(), fd);
    }
    up_.reset();
    up_kept_ = false;
    if (!same_url) {
      up_addr_ = split_server_url(up_req_.url);
      up_url_ = up_req_.url;
    }
    relay_done_ = false;
    relay_status_ = 0;
    if (up_addr_.https)
      return proxy_finish(proxy_result::kind::connect_failed, 0,
                          "https upstreams are not supported yet");
    up_.emplace(socket_.get_executor());
    int fd = state_->pool->take(up_addr_.key());
    if (fd >= 0) {
      beast::error_code ec;
      auto address = asio::ip::make_address(up_addr_.host, ec);
      up_->assign(!ec && address.is_v6() ? tcp::v6() : tcp::v4(), fd, ec);
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
    up_resolver_.emplace(socket_.get_executor());
    up_expires_after(up_req_.connect_timeout);
    up_resolver_->async_resolve(
      up_addr_.host, up_addr_.port,
      upstream_step([](session& s, beast::error_code ec, resolver_type::results_type results) {
        s.up_deadline_.clear();
        if (ec == asio::error::operation_aborted || ec == beast::error::timeout)
          return s.proxy_finish(proxy_result::kind::connect_failed, 0,
                                "name lookup of " + s.up_addr_.host + " timed out");
        if (ec || results.empty())
          return s.proxy_finish(proxy_result::kind::connect_failed, 0,
                                "cannot resolve " + s.up_addr_.host + ": " + ec.message());
        s.up_endpoints_.assign(results.begin(), results.end());
        s.up_connect_endpoints();
      }));
  }

  void up_connect_endpoints() {
    up_.emplace(socket_.get_executor());
    up_expires_after(up_req_.connect_timeout);
    asio::async_connect(*up_, up_endpoints_,
                        upstream_step([](session& s, beast::error_code ec, const tcp::endpoint&) {
                          if (ec == beast::error::timeout)
                            return s.proxy_finish(proxy_result::kind::connect_failed, 0, "connect timed out");
                          if (ec)
                            return s.proxy_finish(proxy_result::kind::connect_failed, 0,
                                                  "connect: " + ec.message());
                          if (connected_to_itself(s.up_->native_handle()))
                            return s.proxy_finish(proxy_result::kind::connect_failed, 0,
                                                  std::string("connect: ") + self_connect_error);
                          beast::error_code ignored;
                          s.up_->set_option(tcp::no_delay(true), ignored);
                          s.up_write();
                        }));
  }

  void up_write() {
    // Serialized by hand into a buffer kept between requests, and sent with
    // the client's body in one gather write: no header container, no copy
    // of the body.
    auto& head = up_head_;
    head.clear();
    head += "POST ";
    head += up_addr_.base_path;
    head += request_.path;
    head += " HTTP/1.1\r\n";
    add_header(head, "Host", up_addr_.host_header);
    add_header(head, "Content-Type", "application/json");
    add_header(head, "Accept", up_req_.stream ? "text/event-stream"
                                               : (request_.accept.empty() ? "application/json"
                                                                          : request_.accept));
    add_header(head, "User-Agent", "modelgate");
    add_header(head, "x-request-id", up_req_.request_id);
    if (up_req_.api_key)
      add_header(head, "Authorization", "Bearer " + *up_req_.api_key);
    add_header(head, "Content-Length", std::to_string(request_.body.size()));
    head += "\r\n";
    // Sending a large body is bounded like a stall (the idle timeout); the
    // upstream timeout counts from the end of the request to the headers.
    up_expires_after(up_req_.idle_timeout);
    std::array<asio::const_buffer, 2> buffers{asio::buffer(up_head_), asio::buffer(request_.body)};
    asio::async_write(*up_, buffers, upstream_step([](session& s, beast::error_code ec, size_t) {
      if (ec == beast::error::timeout)
        return s.proxy_finish(proxy_result::kind::timeout, 0, "sending to the upstream timed out");
      if (ec)
        return s.up_retry_or("sending to the upstream: " + ec.message());
      s.up_read_header();
    }));
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
    up_expires_after(up_req_.response_timeout);
    up_buffer_.clear();
    up_parser_.emplace();
    up_parser_->body_limit(boost::none);
    http::async_read_header(*up_, up_buffer_, *up_parser_,
                            upstream_step([](session& s, beast::error_code ec, size_t n) {
                              s.on_up_header(ec, n);
                            }));
  }

  void on_up_header(beast::error_code ec, size_t bytes) {
    // The deadline covers the upstream read only: writing to a slow client
    // (the stream's head) must not expire the upstream.
    up_deadline_.clear();
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
    // What the header read already buffered is parsed here, without a trip
    // through the event loop: a small answer is usually complete by now.
    while (!up_parser_->is_done() && up_buffer_.size() > 0) {
      up_parser_->get().body().data = up_chunk_.data();
      up_parser_->get().body().size = up_chunk_.size();
      beast::error_code ec;
      auto used = up_parser_->put(up_buffer_.data(), ec);
      up_buffer_.consume(used);
      auto n = up_chunk_.size() - up_parser_->get().body().size;
      up_body_.append(up_chunk_.data(), n);
      if (ec == http::error::need_buffer)
        continue; // up_chunk_ was full
      if (ec == http::error::need_more || (used == 0 && n == 0))
        break;
      if (ec)
        return proxy_finish(proxy_result::kind::failed, 0, "upstream response body: " + ec.message());
    }
    if (up_parser_->is_done()) // the whole body, or none (Content-Length: 0, 204, 304)
      return relay_whole();
    if (up_body_.size() > max_upstream_body)
      return proxy_finish(proxy_result::kind::failed, 0,
                          "the upstream's response body is over " + std::to_string(max_upstream_body)
                            + " bytes");
    char* data = up_chunk_.data();
    up_parser_->get().body().data = data;
    up_parser_->get().body().size = up_chunk_.size();
    up_expires_after(up_req_.idle_timeout);
    http::async_read_some(*up_, up_buffer_, *up_parser_,
                          upstream_step([](session& s, beast::error_code ec, size_t) {
                            if (ec == http::error::need_buffer)
                              ec = {};
                            auto n = s.up_chunk_.size() - s.up_parser_->get().body().size;
                            if (ec == beast::error::timeout)
                              return s.proxy_finish(proxy_result::kind::timeout, 0,
                                                    "the upstream stalled in its response body");
                            if (ec)
                              return s.proxy_finish(proxy_result::kind::failed, 0,
                                                    "upstream response body: " + ec.message());
                            s.up_body_.append(s.up_chunk_.data(), n);
                            if (!s.up_parser_->is_done())
                              return s.up_read_body();
                            s.relay_whole();
                          }));
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
    // The answer goes out first: the gateway's bookkeeping (metrics, access
    // log, in-flight counts) is not on the client's critical path.
    write(std::move(r));
    proxy_finish(proxy_result::kind::success, status, {});
  }

  // Streams: our own response, each upstream chunk written as it comes;
  // chunked to HTTP/1.1 clients, ended by closing to HTTP/1.0 ones.
  void relay_start(int status) {
    keep_alive_ = false; // the connection closes after a stream
    relay_status_ = status;
    auto& head = out_head_;
    head.clear();
    add_status_line(head, status);
    add_header(head, "Server", "modelgate");
    add_header(head, "Content-Type", up_parser_->get()[http::field::content_type]);
    add_header(head, "Cache-Control", "no-cache");
    add_header(head, "X-Accel-Buffering", "no");
    add_header(head, "x-modelgate-server", up_req_.server_id);
    add_header(head, "x-request-id", up_req_.request_id);
    if (!client_http10_)
      add_header(head, "Transfer-Encoding", "chunked");
    add_header(head, "Connection", "close");
    head += "\r\n";
    client_expires_after(up_req_.idle_timeout + state_->options.write_timeout);
    asio::async_write(socket_, asio::buffer(out_head_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec)
        return self->relay_client_gone(ec);
      self->watch_client();
      self->relay_read();
    });
  }

  /// Writes one piece of a streamed body: as a chunk, or raw to HTTP/1.0.
  template <class Handler>
  void write_stream_piece(asio::const_buffer piece, Handler&& handler) {
    if (client_http10_)
      asio::async_write(socket_, piece, std::forward<Handler>(handler));
    else
      asio::async_write(socket_, http::make_chunk(piece), std::forward<Handler>(handler));
  }

  /// Ends a streamed body (the last chunk, or nothing for HTTP/1.0), then closes.
  void end_stream_and_close() {
    if (client_http10_)
      return do_close();
    asio::async_write(socket_, http::make_chunk_last(),
                      [self = shared_from_this()](beast::error_code, size_t) { self->do_close(); });
  }

  /// A read kept pending on the client socket: a disconnect shows at once,
  /// and the upstream request is closed with it.
  void watch_client() {
    if (watching_)
      return; // one read pending is enough (a stream's later tries, its relay)
    watching_ = true;
    // Without a deadline: the client may wait as long as the stream lasts.
    socket_.async_read_some(asio::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->watching_ = false;
      if (self->relay_done_ || !self->up_done_)
        return; // no try in flight: nothing upstream to close
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
    up_expires_after(up_req_.idle_timeout);
    http::async_read_some(*up_, up_buffer_, *up_parser_,
                          upstream_step([](session& s, beast::error_code ec, size_t) {
                            s.on_relay_read(ec);
                          }));
  }

  void on_relay_read(beast::error_code ec) {
    up_deadline_.clear(); // the client write below is not the upstream's stall
    if (relay_done_)
      return;
    if (ec == http::error::need_buffer)
      ec = {};
    auto n = up_chunk_.size() - up_parser_->get().body().size;
    if (n > 0) {
      // Write this piece before reading the next: no buffering beyond it,
      // and up_chunk_ stays untouched until the write is done.
      relayed_bytes_ += n;
      client_expires_after(up_req_.idle_timeout + state_->options.write_timeout);
      write_stream_piece(asio::buffer(up_chunk_.data(), n),
                        [self = shared_from_this(), ec](beast::error_code wec, size_t) {
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
    client_expires_after(state_->options.write_timeout);
    write_stream_piece(asio::buffer(*event), [self = shared_from_this(), event](beast::error_code wec, size_t) {
      if (wec)
        return self->do_close();
      self->end_stream_and_close();
    });
    proxy_finish(proxy_result::kind::broken, relay_status_, error);
  }

  void relay_end() {
    relay_done_ = true;
    bool reusable = up_parser_->get().keep_alive();
    release_upstream(reusable);
    client_expires_after(state_->options.write_timeout);
    end_stream_and_close();
    proxy_finish(proxy_result::kind::success, static_cast<int>(up_parser_->get().result_int()), {});
  }

  void relay_client_gone(beast::error_code ec) {
    if (relay_done_)
      return;
    relay_done_ = true;
    close_upstream(); // the upstream sees the request end at once
    do_close();
    // Before the upstream's headers nothing was relayed: 499, "client
    // closed request" (as nginx logs it), not an upstream failure.
    proxy_finish(proxy_result::kind::client_gone, relay_status_ != 0 ? relay_status_ : 499,
                 "the client disconnected: " + ec.message());
  }

  /// Puts the upstream connection back in the pool, or closes it.
  void release_upstream(bool reusable) {
    if (!up_)
      return;
    beast::error_code ec;
    if (reusable && up_parser_ && up_parser_->is_done() && up_buffer_.size() == 0) {
      // Kept on this session for its next request; the pool gets it when
      // the client goes away or wants another upstream.
      up_deadline_.clear();
      up_kept_ = true;
      return;
    }
    close_upstream();
  }

  void close_upstream() {
    up_kept_ = false;
    up_deadline_.clear();
    if (up_) {
      beast::error_code ec;
      up_->shutdown(tcp::socket::shutdown_both, ec);
      up_->close(ec);
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
    client_expires_after(state_->options.idle_timeout);
    socket_.async_read_some(buffer_.prepare(4096),
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
    client_expires_after(state_->options.header_timeout);
    auto buffered = std::string_view{static_cast<const char*>(buffer_.data().data()), buffer_.size()};
    if (buffered.find("\r\n\r\n") != std::string_view::npos) {
      // The idle wait already read the whole header: parse it here rather
      // than through another turn of the event loop. (The parser stops at
      // the end of the header.) Only a whole header: a parser that was
      // given part of one by hand misparsed the rest read later by
      // async_read_header ("bad field" for a 4,000-byte header line).
      beast::error_code ec;
      parse_buffered(*parser_, buffer_, ec);
      if (ec || parser_->is_header_done())
        return on_read_header(ec, 0);
    }
    http::async_read_header(socket_, buffer_, *parser_,
                            beast::bind_front_handler(&session::on_read_header, shared_from_this()));
  }

  void on_read_header(beast::error_code ec, size_t) {
    ec = client_ec(ec);
    if (ec == http::error::end_of_stream || ec == beast::error::timeout
        || ec == asio::error::connection_reset || ec == asio::error::operation_aborted)
      return do_close();
    if (ec)
      return fail_request(400, "malformed HTTP request: " + ec.message());
    auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    client_http10_ = req.version() < 11;
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
    if (!parser_->is_done() && content_length_buffered(*parser_, buffer_)) {
      beast::error_code pec;
      parse_buffered(*parser_, buffer_, pec);
      if (pec)
        return on_read_body(pec, 0);
    }
    if (parser_->is_done())
      return dispatch_request();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
      client_expires_after(state_->options.write_timeout);
      http::async_write(socket_, *cont,
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
    client_expires_after(state_->options.body_timeout);
    http::async_read(socket_, buffer_, *parser_,
                     beast::bind_front_handler(&session::on_read_body, shared_from_this()));
  }

  void on_read_body(beast::error_code ec, size_t) {
    ec = client_ec(ec);
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
    // Serialized by hand into buffers kept between requests (Beast's
    // serializer cost more CPU than the rest of a proxied request's HTTP work).
    auto& head = out_head_;
    head.clear();
    add_status_line(head, r.status);
    add_header(head, "Server", "modelgate");
    add_header(head, "Content-Type", r.content_type);
    for (const auto& [name, value] : r.headers)
      add_header(head, name, value);
    if (status_has_body(r.status))
      add_header(head, "Content-Length", std::to_string(r.body.size()));
    else
      r.body.clear();
    if (!keep_alive_)
      add_header(head, "Connection", "close");
    head += "\r\n";
    out_body_ = std::move(r.body);
    client_expires_after(state_->options.write_timeout);
    std::array<asio::const_buffer, 2> buffers{asio::buffer(out_head_), asio::buffer(out_body_)};
    asio::async_write(socket_, buffers, [self = shared_from_this()](beast::error_code ec, size_t) {
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
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    socket_.close(ec);
    client_deadline_.cancel();
  }

  /// After an error answer to a request whose body was not read: closing at
  /// once with unread bytes would make the kernel send a reset, which can
  /// destroy the answer before the client reads it. So: FIN first, then read
  /// and drop what the client still sends, for at most a second.
  void do_linger_close() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    client_expires_after(std::chrono::seconds(1));
    drain();
  }

  void drain() {
    socket_.async_read_some(asio::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec)
        return self->do_close();
      self->drain();
    });
  }

  socket_type socket_;
  socket_deadline client_deadline_;
  socket_deadline up_deadline_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<shared_state> state_;
  http_request request_;
  bool reject_;
  bool keep_alive_ = true;
  bool client_http10_ = false; // streams go without chunked encoding
  std::string out_head_;       // of the response being written
  std::string out_body_;
  bool linger_ = false; // close gracefully after the answer (see do_linger_close)
  // gateway state, valid during a proxy try
  proxy_request up_req_;
  proxy_callback up_done_;
  server_url_parts up_addr_; // of up_url_
  std::string up_url_;
  std::optional<socket_type> up_;
  std::vector<tcp::endpoint> up_endpoints_;
  std::optional<resolver_type> up_resolver_;
  std::string up_head_; // the upstream request's head
  beast::flat_buffer up_buffer_;
  std::optional<http::response_parser<http::buffer_body>> up_parser_;
  std::array<char, 16 * 1024> up_chunk_{};
  std::string up_body_;
  bool up_reused_ = false;
  bool up_kept_ = false; // up_ is idle, kept for this client's next request
  uint64_t relayed_bytes_ = 0; // of this try's answer body, to the client
  bool relay_done_ = false;
  bool watching_ = false; // a read is pending on the client socket (watch_client)
  int relay_status_ = 0; // of the streamed response, once its headers went out
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
  client_deadline_.clear();
  request_.body = std::move(parser_->get().body());
  parser_.reset();
  // The session waits here, reading nothing, until the exchange answers.
  state_->handler(std::make_shared<exchange>(shared_from_this()));
}

} // namespace

namespace {

/// Runs `ctx` until it stops. After each burst of work the thread keeps
/// polling for `spin` before it blocks in epoll_wait: the next request, or
/// the upstream's answer, usually comes within tens of microseconds, and
/// catching it without having slept saves the wake-up, which on a virtual
/// machine costs more than the work (HAProxy's `busy-polling` is the same
/// idea, always on). Each idle turn yields the core, so other threads that
/// have work (the mock on the same machine, the CAF workers) are not starved.
void run_busy_polling(asio::io_context& ctx, std::chrono::microseconds spin) {
  if (spin.count() <= 0) {
    ctx.run();
    return;
  }
  using clk = std::chrono::steady_clock;
  auto last_work = clk::now();
  while (!ctx.stopped()) {
    if (ctx.poll() > 0) {
      last_work = clk::now();
      continue;
    }
    if (clk::now() - last_work < spin) {
      std::this_thread::yield();
      continue;
    }
    if (ctx.run_one() == 0)
      break;
    last_work = clk::now();
  }
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
    acceptor.async_accept(pick_context().get_executor(), [this](beast::error_code ec, socket_type socket) {
      on_accept(ec, std::move(socket));
    });
  }

  void on_accept(beast::error_code ec, socket_type socket) {
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
    impl_->threads.emplace_back([ctx = impl_->contexts[i].get(), spin = opts.busy_poll] {
      auto guard = asio::make_work_guard(*ctx); // a thread whose context has no connection yet waits
      run_busy_polling(*ctx, spin);
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
  // No handler runs any more: end the sessions' tries in flight (see
  // session::abandon), outside sessions_mutex, since ending a try may
  // destroy sessions, which take it.
  std::vector<std::shared_ptr<session>> live;
  {
    std::lock_guard<std::mutex> guard{impl_->state->sessions_mutex};
    for (auto& [ptr, weak] : impl_->state->sessions)
      if (auto s = weak.lock())
        live.push_back(std::move(s));
  }
  for (auto& s : live)
    s->abandon();
  live.clear();
}

} // namespace mg
