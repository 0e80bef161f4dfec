// Beast side of the HTTP facade. One `session` per connection, on its own
// strand: read headers (under the header deadline), check the body limit,
// read the body, hand the request over, write the answer, repeat while
// keep-alive holds. See http_server.hpp for the contract.
#include "protocol/http_server.hpp"

#include <atomic>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "protocol/errors.hpp"
#include "protocol/log.hpp"

namespace mg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

/// What every session of one server shares; outlives the sessions.
struct shared_state {
  http_server_options options;
  request_handler handler;
  std::atomic<size_t> open_connections{0};
};

constexpr size_t header_limit = 16 * 1024;

class session : public std::enable_shared_from_this<session> {
public:
  session(tcp::socket&& socket, std::shared_ptr<shared_state> state, bool reject)
    : stream_(std::move(socket)), state_(std::move(state)), reject_(reject) {
    ++state_->open_connections;
  }

  ~session() {
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

private:
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

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<shared_state> state_;
  http_request request_;
  bool reject_;
  bool keep_alive_ = true;
};

class exchange final : public http_exchange {
public:
  explicit exchange(std::shared_ptr<session> s) : session_(std::move(s)) {
  }

  ~exchange() override {
    if (!answered_.exchange(true))
      session_->send({500, error_body({errc::internal, "the request was dropped unanswered"}),
                      "application/json", {}});
  }

  const http_request& request() const override {
    return session_->request();
  }

  void respond(http_response response) override {
    if (!answered_.exchange(true))
      session_->send(std::move(response));
  }

private:
  std::shared_ptr<session> session_;
  std::atomic<bool> answered_{false};
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
  asio::io_context ioc;
  tcp::acceptor acceptor{asio::make_strand(ioc)};
  asio::steady_timer retry_timer{acceptor.get_executor()};
  std::vector<std::thread> threads;
  std::atomic<uint16_t> port{0};
  std::mutex stop_mutex;
  bool stopped = false;

  explicit impl(int concurrency) : ioc(concurrency) {
  }

  void do_accept() {
    acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
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
    impl_->threads.emplace_back([self = impl_.get()] { self->ioc.run(); });
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
  impl_->ioc.stop();
  for (auto& t : impl_->threads)
    if (t.joinable())
      t.join();
  beast::error_code ec;
  impl_->acceptor.close(ec);
}

} // namespace mg
