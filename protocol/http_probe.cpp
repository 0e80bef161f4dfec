// Beast side of health probing. One `probe_client` per server, on its own
// strand; each probe is resolve -> connect -> write -> read under a single
// deadline, reusing the previous connection when the server kept it open.
#include "protocol/http_probe.hpp"

#include <atomic>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "protocol/validation.hpp"

namespace mg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

void judge_health_response(health_expect expect, int status, const std::string& body,
                           probe_outcome& out) {
  out.status_code = status;
  if (expect == health_expect::status) {
    if (status < 200 || status > 299) {
      out.error_kind = "http_status";
      out.error = "HTTP " + std::to_string(status) + " (expected 2xx)";
      return;
    }
  } else {
    if (status != 200) {
      out.error_kind = "http_status";
      out.error = "HTTP " + std::to_string(status) + " (expected 200)";
      return;
    }
    if (!nlohmann::json::accept(body)) {
      out.error_kind = "invalid_body";
      out.error = body.empty() ? "empty body (expected JSON)" : "body is not valid JSON";
      return;
    }
  }
  out.healthy = true;
}

struct probe_runtime::impl {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> guard{ioc.get_executor()};
  std::vector<std::thread> threads;
  std::atomic<bool> stopped{false};
};

namespace {

using clock_type = std::chrono::steady_clock;

class probe_client : public probe_driver, public std::enable_shared_from_this<probe_client> {
public:
  probe_client(asio::io_context& ioc, const probe_target& target)
    : strand_(asio::make_strand(ioc)), resolver_(strand_), timer_(strand_), target_(target),
      url_(split_server_url(target.url)) {
    req_.version(11);
    req_.method(http::verb::get);
    req_.target(url_.base_path + target.health_path);
    req_.set(http::field::host, url_.host_header);
    req_.set(http::field::user_agent, "modelgate-health-check");
    req_.set(http::field::accept, "application/json");
    if (target.api_key)
      req_.set(http::field::authorization, "Bearer " + *target.api_key);
    req_.keep_alive(true);
    // The request never changes: serialize it once, send the bytes each time.
    std::ostringstream out;
    out << req_;
    request_bytes_ = out.str();
  }

  void probe(std::chrono::milliseconds timeout, probe_callback done) override {
    asio::dispatch(strand_, [self = shared_from_this(), timeout, done = std::move(done)]() mutable {
      self->start(timeout, std::move(done));
    });
  }

private:
  void start(std::chrono::milliseconds timeout, probe_callback done) {
    done_ = std::move(done);
    started_ = clock_type::now();
    deadline_ = started_ + timeout;
    finished_ = false;
    if (url_.https)
      return finish_error("protocol", "https health checks are not supported yet");
    if (stream_ && stream_->socket().is_open()) {
      reused_ = true;
      return do_write();
    }
    reused_ = false;
    do_resolve();
  }

  std::chrono::nanoseconds remaining() const {
    auto left = deadline_ - clock_type::now();
    return left > std::chrono::nanoseconds::zero() ? left : std::chrono::nanoseconds(1);
  }

  void do_resolve() {
    beast::error_code ec;
    auto address = asio::ip::make_address(url_.host, ec);
    if (!ec) { // numeric: no lookup
      unsigned long port = std::stoul(url_.port);
      endpoints_.assign(1, tcp::endpoint{address, static_cast<unsigned short>(port)});
      return do_connect();
    }
    // async_resolve is not covered by the stream's deadline: a timer cancels it.
    timer_.expires_at(deadline_);
    timer_.async_wait([self = shared_from_this()](beast::error_code e) {
      if (!e)
        self->resolver_.cancel();
    });
    resolver_.async_resolve(url_.host, url_.port,
                            beast::bind_front_handler(&probe_client::on_resolve, shared_from_this()));
  }

  void on_resolve(beast::error_code ec, tcp::resolver::results_type results) {
    timer_.cancel();
    if (ec == asio::error::operation_aborted)
      return finish_error("timeout", "name lookup timed out");
    if (ec)
      return finish_error("resolve", "cannot resolve " + url_.host + ": " + ec.message());
    endpoints_.assign(results.begin(), results.end());
    do_connect();
  }

  void do_connect() {
    stream_.emplace(strand_);
    stream_->expires_after(remaining());
    stream_->async_connect(endpoints_,
                           [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                             self->on_connect(ec);
                           });
  }

  void on_connect(beast::error_code ec) {
    if (ec == beast::error::timeout)
      return finish_error("timeout", "connect timed out");
    if (ec)
      return finish_error("connect", ec.message());
    beast::error_code ignored;
    stream_->socket().set_option(tcp::no_delay(true), ignored);
    do_write();
  }

  void do_write() {
    // One deadline for the whole probe: set once, it covers connect (set in
    // do_connect with the same instant), write and read. Re-arming it per
    // step would cost a timer update each time.
    if (reused_)
      stream_->expires_after(remaining());
    asio::async_write(*stream_, asio::buffer(request_bytes_),
                      beast::bind_front_handler(&probe_client::on_write, shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    if (ec == beast::error::timeout)
      return finish_error("timeout", "sending the request timed out");
    if (ec)
      return retry_or_fail("protocol", "sending the request failed: " + ec.message());
    buffer_.clear();
    parser_.emplace();
    parser_->body_limit(health_body_limit);
    http::async_read(*stream_, buffer_, *parser_,
                     beast::bind_front_handler(&probe_client::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t bytes) {
    if (ec == beast::error::timeout)
      return finish_error("timeout", "no complete response within the timeout");
    if (ec == http::error::body_limit)
      return finish_error("invalid_body", "health body over the 64 KiB cap");
    if (ec) {
      // A kept-alive connection the server closed meanwhile: try once afresh.
      if (bytes == 0)
        return retry_or_fail("protocol", "the server closed the connection: " + ec.message());
      return finish_error("protocol", "malformed response: " + ec.message());
    }
    auto& res = parser_->get();
    probe_outcome out;
    judge_health_response(expect(), static_cast<int>(res.result_int()), res.body(), out);
    if (!res.keep_alive())
      close_stream();
    finish(std::move(out));
  }

  health_expect expect() const {
    return target_.expect;
  }

  void retry_or_fail(const char* kind, std::string message) {
    if (reused_) {
      reused_ = false;
      close_stream();
      return do_resolve();
    }
    finish_error(kind, std::move(message));
  }

  void finish_error(const char* kind, std::string message) {
    close_stream();
    probe_outcome out;
    out.error_kind = kind;
    out.error = std::move(message);
    finish(std::move(out));
  }

  void finish(probe_outcome out) {
    if (finished_)
      return;
    finished_ = true;
    out.response_time_ms =
      std::chrono::duration<double, std::milli>(clock_type::now() - started_).count();
    out.at = now_ms();
    auto done = std::move(done_);
    done_ = nullptr;
    parser_.reset();
    if (done)
      done(std::move(out));
  }

  void close_stream() {
    if (stream_) {
      beast::error_code ec;
      stream_->socket().shutdown(tcp::socket::shutdown_both, ec);
      stream_->close();
      stream_.reset();
    }
  }

  asio::strand<asio::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  asio::steady_timer timer_;
  probe_target target_;
  server_url_parts url_;
  http::request<http::empty_body> req_;
  std::string request_bytes_;
  std::optional<beast::tcp_stream> stream_;
  std::vector<tcp::endpoint> endpoints_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
  probe_callback done_;
  clock_type::time_point started_;
  clock_type::time_point deadline_;
  bool reused_ = false;
  bool finished_ = true;
};

} // namespace

probe_runtime::probe_runtime(unsigned threads) : impl_(std::make_unique<impl>()) {
  if (threads == 0)
    threads = 1;
  for (unsigned i = 0; i < threads; ++i)
    impl_->threads.emplace_back([this] { impl_->ioc.run(); });
}

probe_runtime::~probe_runtime() {
  stop();
}

std::shared_ptr<probe_driver> probe_runtime::make_driver(const probe_target& target) {
  return std::make_shared<probe_client>(impl_->ioc, target);
}

void probe_runtime::stop() {
  if (impl_->stopped.exchange(true))
    return;
  impl_->guard.reset();
  impl_->ioc.stop();
  for (auto& t : impl_->threads)
    if (t.joinable())
      t.join();
}

} // namespace mg
