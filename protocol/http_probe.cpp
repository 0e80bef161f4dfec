// Beast side of health probing. One `probe_client` per server; each probe is
// resolve -> connect -> write -> read under a single deadline, reusing the
// previous connection when the server kept it open.
//
// Cost matters here: at 10,000 servers a second every microsecond per probe is
// 1 % of a core. So the runtime runs one I/O thread (no strands needed), the
// deadlines of all probes live in one list swept by one timer (no timer per
// probe, no timer syscalls per probe), the response is parsed by a Beast
// parser that keeps only status, body and keep-alive (no header allocations),
// and finished probes are handed on in batches, so that the CAF thread
// receiving them wakes once per batch rather than once per probe.
#include "protocol/http_probe.hpp"

#include <atomic>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "protocol/time.hpp"
#include "protocol/validation.hpp"

namespace mg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
// Sockets, resolver and timers bound to the io_context's own executor type:
// the default any_io_executor costs a type-erased copy per operation.
using executor_type = asio::io_context::executor_type;
using socket_type = asio::basic_stream_socket<tcp, executor_type>;
using resolver_type = asio::ip::basic_resolver<tcp, executor_type>;
using timer_type = asio::basic_waitable_timer<std::chrono::steady_clock,
                                              asio::wait_traits<std::chrono::steady_clock>,
                                              executor_type>;

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

namespace {

using clock_type = std::chrono::steady_clock;

class probe_client;

/// A health response as the probe needs it: status, body (capped by the
/// parser's body limit) and keep-alive; header fields are not stored.
class health_response_parser : public http::basic_parser<false> {
public:
  explicit health_response_parser(std::string& body) : body_(body) {
    body_.clear();
    body_limit(health_body_limit);
  }
  int status() const {
    return status_;
  }

private:
  void on_request_impl(http::verb, beast::string_view, beast::string_view, int,
                       beast::error_code& ec) override {
    ec = http::error::bad_method; // never called for a response parser
  }
  void on_response_impl(int code, beast::string_view, int, beast::error_code&) override {
    status_ = code;
  }
  void on_field_impl(http::field, beast::string_view, beast::string_view,
                     beast::error_code&) override {}
  void on_header_impl(beast::error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>& length,
                         beast::error_code&) override {
    if (length && *length <= health_body_limit)
      body_.reserve(static_cast<size_t>(*length));
  }
  size_t on_body_impl(beast::string_view s, beast::error_code&) override {
    body_.append(s.data(), s.size());
    return s.size();
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, beast::error_code&) override {}
  size_t on_chunk_body_impl(std::uint64_t, beast::string_view s, beast::error_code&) override {
    body_.append(s.data(), s.size());
    return s.size();
  }
  void on_finish_impl(beast::error_code&) override {}

  std::string& body_;
  int status_ = 0;
};

} // namespace

struct probe_runtime::impl {
  asio::io_context ioc{1}; // one thread runs it
  asio::executor_work_guard<asio::io_context::executor_type> guard{ioc.get_executor()};
  std::thread thread;
  std::atomic<bool> stopped{false};

  // Probes in flight, earliest deadline first, in a list threaded through
  // the clients themselves: a probe joins at its start and leaves when it
  // finishes, in O(1) and without allocating. All probes of a daemon share
  // one timeout, so start order is deadline order and a new probe goes to
  // the end; the insertion still walks back past later deadlines.
  probe_client* earliest = nullptr;
  probe_client* latest = nullptr;
  timer_type sweeper{ioc.get_executor()};
  std::optional<clock_type::time_point> sweeper_at;

  // Finished probes waiting to be handed on: all that finish within one
  // flush delay go out together, so the receiving threads wake once per
  // batch instead of once per probe. The delay adds at most that much to the
  // time a result takes to reach the registry.
  static constexpr auto flush_delay = std::chrono::milliseconds(2);
  probe_report_sink report_sink;
  std::vector<probe_report> reports;                                // scheduled probes
  std::vector<std::pair<probe_callback, probe_outcome>> finished;  // on-demand probes
  timer_type flusher{ioc.get_executor()};
  bool flush_armed = false;
  bool urgent_flush_posted = false;

  // Scheduled probes handed over by the probers' threads. The ticks of a
  // 25 ms slot arrive within a millisecond or so; posting each to the I/O
  // thread woke it for nearly every one (860 wake-ups a second at 10,000
  // servers, each an epoll_ctl on the worker and a context switch here).
  // Instead the first of a batch posts a drain that runs `start_batch_window`
  // later and starts every probe handed over by then.
  struct start_request {
    std::shared_ptr<probe_client> client;
    std::chrono::milliseconds timeout;
    uint64_t generation;
    double lateness_ms;
    clock_type::time_point handed_over;
  };
  static constexpr auto start_batch_window = std::chrono::milliseconds(1);
  std::mutex starts_mutex;
  std::vector<start_request> starts; // guarded by starts_mutex
  bool drain_posted = false;         // guarded by starts_mutex
  std::vector<start_request> starting; // I/O thread only: the batch being started
  timer_type starter{ioc.get_executor()};

  void hand_over(start_request request);
  void start_batch();

  ~impl();
  void add_deadline(probe_client& client, clock_type::time_point at);
  std::shared_ptr<probe_client> remove_deadline(probe_client& client);
  void arm_sweeper();
  void sweep();
  void hand_on(probe_callback done, probe_outcome out);
  void hand_on(probe_report report);
  void arm_flusher();
  void flush();
};

namespace {

class probe_client : public probe_driver, public std::enable_shared_from_this<probe_client> {
public:
  probe_client(probe_runtime::impl& rt, const probe_target& target)
    : rt_(rt), resolver_(rt.ioc.get_executor()), socket_(rt.ioc.get_executor()), target_(target),
      url_(split_server_url(target.url)) {
    http::request<http::empty_body> req;
    req.version(11);
    req.method(http::verb::get);
    req.target(url_.base_path + target.health_path);
    req.set(http::field::host, url_.host_header);
    req.set(http::field::user_agent, "modelgate-health-check");
    req.set(http::field::accept, "application/json");
    if (target.api_key)
      req.set(http::field::authorization, "Bearer " + header_safe(*target.api_key));
    req.keep_alive(true);
    // The request never changes: serialize it once, send the bytes each time.
    std::ostringstream out;
    out << req;
    request_bytes_ = out.str();
  }

  void probe(std::chrono::milliseconds timeout, probe_callback done) override {
    asio::post(rt_.ioc, [self = shared_from_this(), timeout, done = std::move(done)]() mutable {
      self->done_ = std::move(done);
      self->start(timeout);
    });
  }

  bool probe_scheduled(std::chrono::milliseconds timeout, uint64_t generation,
                       double lateness_ms) override {
    if (scheduled_busy_.exchange(true, std::memory_order_acq_rel))
      return false;
    rt_.hand_over({shared_from_this(), timeout, generation, lateness_ms, clock_type::now()});
    return true;
  }

  /// Starts a scheduled probe handed over `waited_ms` ago (I/O thread).
  void start_scheduled(const probe_runtime::impl::start_request& request, double waited_ms) {
    if (abandoned_.load(std::memory_order_acquire)) { // its prober stopped meanwhile
      scheduled_busy_.store(false, std::memory_order_release);
      return;
    }
    scheduled_ = true;
    generation_ = request.generation;
    lateness_ms_ = request.lateness_ms + waited_ms;
    start(request.timeout);
  }

  void abandon() override {
    abandoned_.store(true, std::memory_order_release);
    asio::post(rt_.ioc, [self = shared_from_this()] {
      if (self->scheduled_)
        self->expire(); // ends as a timeout, unreported
    });
  }

  /// Its place in the runtime's deadline list, which only the runtime
  /// touches: listed from its start until it finishes or expires.
  struct deadline_entry {
    clock_type::time_point at;
    probe_client* earlier = nullptr;
    probe_client* later = nullptr;
    std::shared_ptr<probe_client> hold; // set while listed: keeps it alive
  } deadline;

  /// Ends the probe in flight, if any, as a timeout: its deadline passed,
  /// or it was abandoned.
  void expire() {
    if (finished_)
      return;
    timed_out_ = true;
    // Every pending operation completes with operation_aborted; its handler
    // reports the timeout for the step it was in.
    resolver_.cancel();
    close_socket();
  }

private:
  enum class step { resolve, connect, write, read };

  void start(std::chrono::milliseconds timeout) {
    started_ = clock_type::now();
    finished_ = false;
    timed_out_ = false;
    if (url_.https)
      return finish_error("protocol", "https health checks are not supported yet");
    rt_.add_deadline(*this, started_ + timeout);
    if (socket_.is_open()) {
      reused_ = true;
      return do_write();
    }
    reused_ = false;
    do_resolve();
  }

  void do_resolve() {
    step_ = step::resolve;
    beast::error_code ec;
    auto address = asio::ip::make_address(url_.host, ec);
    if (!ec) { // numeric: no lookup
      unsigned long port = std::stoul(url_.port);
      endpoints_.assign(1, tcp::endpoint{address, static_cast<unsigned short>(port)});
      return do_connect();
    }
    resolver_.async_resolve(url_.host, url_.port,
                            [self = shared_from_this()](beast::error_code e,
                                                        resolver_type::results_type results) {
                              self->on_resolve(e, std::move(results));
                            });
  }

  void on_resolve(beast::error_code ec, resolver_type::results_type results) {
    if (timed_out_)
      return finish_timeout();
    if (ec)
      return finish_error("resolve", "cannot resolve " + url_.host + ": " + ec.message());
    endpoints_.assign(results.begin(), results.end());
    do_connect();
  }

  void do_connect() {
    step_ = step::connect;
    asio::async_connect(socket_, endpoints_,
                        [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                          self->on_connect(ec);
                        });
  }

  void on_connect(beast::error_code ec) {
    if (timed_out_)
      return finish_timeout();
    if (ec)
      return finish_error("connect", ec.message());
    beast::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    // The request is written by a direct non-blocking send (do_write).
    socket_.non_blocking(true, ignored);
    do_write();
  }

  // The request is a few hundred bytes: one send() writes it whole on an
  // idle connection, with no asio operation; only a short write waits for
  // the socket (async_write of the rest).
  void do_write() {
    step_ = step::write;
    beast::error_code ec;
    auto n = socket_.write_some(asio::buffer(request_bytes_), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again)
      n = 0;
    else if (ec)
      return retry_or_fail("protocol", "sending the request failed: " + ec.message());
    if (n == request_bytes_.size())
      return start_read();
    asio::async_write(socket_, asio::buffer(request_bytes_.data() + n, request_bytes_.size() - n),
                      [self = shared_from_this()](beast::error_code e, size_t) {
                        if (self->timed_out_)
                          return self->finish_timeout();
                        if (e)
                          return self->retry_or_fail("protocol",
                                                     "sending the request failed: " + e.message());
                        self->start_read();
                      });
  }

  void start_read() {
    step_ = step::read;
    // Bytes left after the last response (a stray CRLF, say) are not part
    // of this one.
    buffer_.clear();
    received_ = 0;
    parser_.emplace(body_);
    parser_->eager(true);
    read_more();
  }

  // Reads with async_read_some and feeds the parser directly: Beast's
  // composed read operations cost more than the parsing. (A readiness wait
  // with async_wait would be cheaper still, were it not for the epoll_ctl
  // asio issues for every wait.)
  void read_more() {
    socket_.async_read_some(buffer_.prepare(read_chunk),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->on_read_some(ec, n);
                            });
  }

  void on_read_some(beast::error_code ec, size_t n) {
    if (timed_out_)
      return finish_timeout();
    if (ec == asio::error::eof && parser_->got_some() && parser_->need_eof()) {
      parser_->put_eof(ec); // a body delimited by the connection's end
      if (!ec)
        return on_response();
    }
    if (ec)
      return read_failed(ec);
    buffer_.commit(n);
    received_ += n;
    while (buffer_.size() > 0 && !parser_->is_done()) {
      auto used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec == http::error::need_more)
        break;
      if (ec)
        return read_failed(ec);
    }
    if (parser_->is_done())
      return on_response();
    read_more();
  }

  void read_failed(beast::error_code ec) {
    if (ec == http::error::body_limit)
      return finish_error("invalid_body", "health body over the 64 KiB cap");
    // A kept-alive connection the server closed meanwhile: try once afresh.
    if (received_ == 0)
      return retry_or_fail("protocol", "the server closed the connection: " + ec.message());
    finish_error("protocol", "malformed response: " + ec.message());
  }

  void on_response() {
    probe_outcome out;
    judge_health_response(target_.expect, parser_->status(), body_, out);
    if (!parser_->keep_alive())
      close_socket();
    finish(std::move(out));
  }

  void retry_or_fail(const char* kind, std::string message) {
    if (reused_) {
      reused_ = false;
      close_socket();
      buffer_.clear();
      return do_resolve();
    }
    finish_error(kind, std::move(message));
  }

  void finish_timeout() {
    switch (step_) {
    case step::resolve: return finish_error("timeout", "name lookup timed out");
    case step::connect: return finish_error("timeout", "connect timed out");
    case step::write: return finish_error("timeout", "sending the request timed out");
    case step::read: return finish_error("timeout", "no complete response within the timeout");
    }
  }

  void finish_error(const char* kind, std::string message) {
    close_socket();
    buffer_.clear();
    probe_outcome out;
    out.error_kind = kind;
    out.error = std::move(message);
    finish(std::move(out));
  }

  void finish(probe_outcome out) {
    if (finished_)
      return;
    finished_ = true;
    auto keep_alive = rt_.remove_deadline(*this); // released when finish returns
    out.response_time_ms =
      std::chrono::duration<double, std::milli>(clock_type::now() - started_).count();
    out.at = now_ms();
    parser_.reset();
    if (scheduled_) {
      scheduled_ = false;
      out.lateness_ms = lateness_ms_;
      if (!abandoned_.load(std::memory_order_acquire))
        rt_.hand_on(probe_report{target_.server_id, generation_, std::move(out)});
      scheduled_busy_.store(false, std::memory_order_release);
    } else if (done_) {
      rt_.hand_on(std::move(done_), std::move(out));
    }
    done_ = nullptr;
  }

  void close_socket() {
    if (socket_.is_open()) {
      beast::error_code ec;
      socket_.shutdown(tcp::socket::shutdown_both, ec);
      socket_.close(ec);
    }
  }

  probe_runtime::impl& rt_;
  static constexpr size_t read_chunk = 512; // a health answer is a few hundred bytes
  resolver_type resolver_;
  socket_type socket_;
  probe_target target_;
  server_url_parts url_;
  std::string request_bytes_;
  std::vector<tcp::endpoint> endpoints_;
  beast::flat_buffer buffer_;
  size_t received_ = 0; // bytes of the response read so far
  std::string body_;
  std::optional<health_response_parser> parser_;
  // The probe in flight reports either through done_ (on demand) or, when
  // scheduled_, to the runtime's report sink with generation_ and
  // lateness_ms_. scheduled_busy_ is the one flag other threads read.
  probe_callback done_;
  bool scheduled_ = false;
  uint64_t generation_ = 0;
  double lateness_ms_ = 0;
  std::atomic<bool> scheduled_busy_{false};
  std::atomic<bool> abandoned_{false}; // the prober stopped: report nothing more
  clock_type::time_point started_;
  step step_ = step::resolve;
  bool reused_ = false;
  bool timed_out_ = false;
  bool finished_ = true;
};

} // namespace

void probe_runtime::impl::hand_over(start_request request) {
  bool post;
  {
    std::lock_guard<std::mutex> lock(starts_mutex);
    starts.push_back(std::move(request));
    post = !drain_posted;
    drain_posted = true;
  }
  if (!post)
    return;
  asio::post(ioc, [this] {
    starter.expires_after(start_batch_window);
    // Whatever ends the wait, the batch starts: a batch left waiting would
    // leave its probers skipping every tick as "still in flight".
    starter.async_wait([this](beast::error_code) { start_batch(); });
  });
}

void probe_runtime::impl::start_batch() {
  {
    std::lock_guard<std::mutex> lock(starts_mutex);
    starting.swap(starts); // both keep their capacity
    drain_posted = false;
  }
  auto now = clock_type::now();
  for (auto& request : starting) {
    auto waited = std::chrono::duration<double, std::milli>(now - request.handed_over).count();
    request.client->start_scheduled(request, waited);
  }
  starting.clear();
}

probe_runtime::impl::~impl() {
  // The I/O thread has stopped: let go of the probes still listed.
  while (earliest != nullptr)
    remove_deadline(*earliest);
}

void probe_runtime::impl::add_deadline(probe_client& client, clock_type::time_point at) {
  auto& entry = client.deadline;
  entry.at = at;
  entry.hold = client.shared_from_this();
  probe_client* before = latest; // the entry goes right after `before`
  while (before != nullptr && before->deadline.at > at)
    before = before->deadline.earlier;
  entry.earlier = before;
  entry.later = before != nullptr ? before->deadline.later : earliest;
  (entry.later != nullptr ? entry.later->deadline.earlier : latest) = &client;
  (before != nullptr ? before->deadline.later : earliest) = &client;
  arm_sweeper();
}

std::shared_ptr<probe_client> probe_runtime::impl::remove_deadline(probe_client& client) {
  auto& entry = client.deadline;
  if (!entry.hold)
    return nullptr; // not listed
  (entry.earlier != nullptr ? entry.earlier->deadline.later : earliest) = entry.later;
  (entry.later != nullptr ? entry.later->deadline.earlier : latest) = entry.earlier;
  entry.earlier = entry.later = nullptr;
  return std::move(entry.hold);
}

void probe_runtime::impl::arm_sweeper() {
  // The sweeper stays armed for a deadline even if its probe finishes
  // first; it then finds nothing due and re-arms for the earliest left.
  if (earliest == nullptr)
    return;
  // Sweeps land on 1 ms steps: one wake-up expires every probe due in it.
  auto at = round_up(earliest->deadline.at, std::chrono::milliseconds(1));
  if (sweeper_at && *sweeper_at <= at)
    return; // already armed early enough
  sweeper_at = at;
  sweeper.expires_at(at);
  sweeper.async_wait([this](beast::error_code ec) {
    if (ec == asio::error::operation_aborted)
      return; // re-armed earlier, or stopping
    sweeper_at.reset();
    sweep();
  });
}

void probe_runtime::impl::sweep() {
  auto now = clock_type::now();
  while (earliest != nullptr && earliest->deadline.at <= now) {
    auto client = remove_deadline(*earliest);
    client->expire();
  }
  arm_sweeper();
}

void probe_runtime::impl::hand_on(probe_callback done, probe_outcome out) {
  finished.emplace_back(std::move(done), std::move(out));
  arm_flusher();
}

void probe_runtime::impl::hand_on(probe_report report) {
  bool news = !report.outcome.healthy;
  reports.push_back(std::move(report));
  arm_flusher();
  if (news && !urgent_flush_posted) {
    // A failure may change a server's status: it goes out as soon as the
    // handlers now ready have run, not after the batching delay.
    urgent_flush_posted = true;
    asio::post(ioc, [this] {
      urgent_flush_posted = false;
      flush();
    });
  }
}

void probe_runtime::impl::arm_flusher() {
  if (flush_armed)
    return;
  flush_armed = true;
  flusher.expires_after(flush_delay);
  flusher.async_wait([this](beast::error_code) {
    flush_armed = false;
    flush();
  });
}

void probe_runtime::impl::flush() {
  if (!reports.empty()) {
    auto batch = std::move(reports);
    reports = std::vector<probe_report>();
    reports.reserve(batch.size());
    if (report_sink)
      report_sink(std::move(batch));
  }
  auto batch = std::move(finished);
  finished.clear();
  for (auto& [done, out] : batch)
    done(std::move(out));
  if (finished.empty()) { // keep the capacity for the next batch
    batch.clear();
    finished.swap(batch);
  }
}

probe_runtime::probe_runtime(probe_report_sink reports) : impl_(std::make_unique<impl>()) {
  impl_->report_sink = std::move(reports);
  impl_->thread = std::thread([this] { impl_->ioc.run(); });
}

probe_runtime::~probe_runtime() {
  stop();
}

std::shared_ptr<probe_driver> probe_runtime::make_driver(const probe_target& target) {
  return std::make_shared<probe_client>(*impl_, target);
}

void probe_runtime::stop() {
  if (impl_->stopped.exchange(true))
    return;
  impl_->guard.reset();
  // Reports still waiting for their batch go out first, so the registry's
  // final flush has them; probes in flight never complete.
  asio::post(impl_->ioc, [i = impl_.get()] {
    i->flush();
    i->ioc.stop();
  });
  if (impl_->thread.joinable())
    impl_->thread.join();
}

} // namespace mg
