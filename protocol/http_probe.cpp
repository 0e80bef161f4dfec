// Beast side of health probing. One `probe_client` per server; each probe is
// resolve -> connect -> write -> read under a single deadline, reusing the
// previous connection when the server kept it open. Between probes the kept
// connection is watched: when the server closes it, the client reconnects at
// once, and a refused reconnect fails like a probe (a server that died is
// found in milliseconds, not at its next probe).
//
// Cost matters here: at 10,000 servers a second every microsecond per probe is
// 1 % of a core. So the runtime runs one I/O thread (no strands needed), the
// deadlines of all probes live in one list swept by one timer (no timer per
// probe, no timer syscalls per probe), the response is parsed by a Beast
// parser that keeps only status, body and keep-alive (no header allocations),
// scheduled probes are sent and their answers read in batches (the drain,
// below), and finished probes are handed on in batches, so that the CAF
// thread receiving them wakes once per batch rather than once per probe.
#include "protocol/http_probe.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <sstream>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "protocol/round_wakeups.hpp"
#include "protocol/self_connect.hpp"
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
  // finishes, without allocating. All probes of a daemon share one
  // timeout, so a new probe's deadline is nearly the latest: at most a
  // tenth of the timeout earlier when it keeps to the schedule (see
  // scheduled_probe::interval), so the insertion, walking back from the
  // end, passes only probes started within that tenth.
  probe_client* earliest = nullptr;
  probe_client* latest = nullptr;
  timer_type sweeper{ioc.get_executor()};
  static constexpr auto sweep_step = std::chrono::milliseconds(1);
  std::optional<clock_type::time_point> sweeper_at;

  // Finished probes waiting to be handed on. A report with news for the
  // registry (a failure, or a success after a failure or as the first) goes
  // out at the end of its drain pass, or at once; routine successes, which
  // change only timings, gather for up to `routine_flush_delay`, so the
  // registry's thread wakes a few times a second, not once per slot. Their
  // figures (last_check_at, last_response_time_ms) are the probe's own and
  // reach the registry that much later. On-demand probes are handed on at
  // once.
  static constexpr auto routine_flush_delay = std::chrono::milliseconds(200);
  probe_report_sink report_sink;
  std::vector<probe_report> reports;                                // scheduled probes
  std::vector<std::pair<probe_callback, probe_outcome>> finished;  // on-demand probes
  timer_type flusher{ioc.get_executor()};
  bool flush_armed = false;
  bool urgent_flush_posted = false;
  bool news_waiting = false; // a report in `reports` has news
  clock_type::time_point last_flush = clock_type::now();

  // Scheduled probes handed over by the probers' threads, and how the I/O
  // thread runs them. On this kind of machine (a virtual one) every wake-up
  // of a sleeping thread costs 20-40 µs of CPU, more than a probe itself, so
  // the batch path is built to wake the I/O thread as seldom as possible:
  //  - the probers push onto a lock-free stack (a mutex here made the I/O
  //    thread sleep on it 34 times a second at 10,000 servers), and only the
  //    push onto an empty stack, when no drain runs, signals the drain;
  //  - the signal is an eventfd of the runtime's own, not asio::post: a post
  //    interrupts epoll_wait while holding asio's scheduler mutex, so the
  //    woken thread then sleeps on that mutex and is woken a second time;
  //  - a slot's ticks run as one round on the scheduler's clock thread,
  //    which signals once, at the round's end (round_wakeups.hpp); probes
  //    handed over outside a round signal at once, and those handed over
  //    while a drain runs are taken by its next pass;
  //  - the drain sends every request handed over, sleeps
  //    `collect_window` while the answers come in, then reads them all in one
  //    pass and hands the reports on at once. Answers that trickled in one
  //    by one woke the thread 230 times a second at 10,000 servers, and each
  //    read started right after its send made a recv that failed. An answer
  //    not there yet is waited for as usual (an asio readiness wait);
  //  - the collect wait adapts: it grows while answers still arrive in its
  //    last quarter and shrinks while they all come early (a server that
  //    hangs never counts), between `min_collect` and `max_collect`;
  //  - deadlines due during the collect wait are swept on time, and those
  //    due during the send or read pass right after it, so a probe times
  //    out late by a pass's sending or reading at most (see collect).
  // The drain blocks the I/O thread for those few milliseconds: on-demand
  // probes wait at most that long. Response times are not
  // stretched by the wait: they come from the kernel's receive timestamps.
  std::chrono::microseconds min_collect{500}; // set once, by the constructor
  // Up to 20 ms: the mock servers of tools/bench answer a 50 ms slot's 500
  // probes one after another, over about 10 ms. Servers that answer in
  // parallel keep the wait near its minimum.
  static constexpr auto max_collect = std::chrono::microseconds(20'000);
  std::chrono::microseconds collect_window{1000}; // I/O thread
  // Where every client reads its answers (I/O thread), one buffer for all:
  // each probe's own memory is touched once an interval, and every page
  // of it counts where the host takes idle pages away (a 512-byte buffer
  // per client was a tenth of what a probe touched).
  beast::flat_buffer read_buffer;
  std::atomic<probe_client*> start_stack{nullptr}; // pushed by probers, taken by the drain
  std::atomic<bool> draining{false};
  bool in_batch = false;                   // I/O thread: a drain's send or read pass runs
  // I/O thread: sent in this pass, to read after it; held, since a sweep in
  // the wait may end one and let go of its last other owner.
  std::vector<std::shared_ptr<probe_client>> collecting;
  // I/O thread: the earliest deadline among `collecting`; the collect wait
  // ends before it, so the sweep in the wait never ends a probe it reads.
  clock_type::time_point collecting_due = clock_type::time_point::max();
  int drain_fd = -1;                       // eventfd: written by hand_over, read by the I/O thread
  std::optional<asio::posix::basic_stream_descriptor<executor_type>> drain_signal;

  // Kept connections of scheduled probes, watched between probes for the
  // server closing them: a server whose process dies closes them all, and
  // the client then reconnects at once, so a server that stopped listening
  // fails within milliseconds instead of at its next probe (see
  // probe_client::on_hangup). They sit in an epoll set of their own,
  // registered once per connection for the peer's close only
  // (EPOLLRDHUP, edge-triggered): answers arriving never wake it, so
  // probing costs nothing more. asio waits on the set as one descriptor.
  int hangup_fd = -1;
  std::optional<asio::posix::basic_stream_descriptor<executor_type>> hangup_signal;
  // By watch id, weakly: a driver may be dropped on any thread.
  std::unordered_map<uint64_t, std::weak_ptr<probe_client>> watched;
  uint64_t last_watch_id = 0;
  size_t watched_at_cleanup = 0;

  void watch(probe_client& client);
  void unwatch(probe_client& client);
  void await_hangups();

  void hand_over(probe_client& client);
  static void signal_drain(void* self);
  void await_drain_signal();
  void drain();
  probe_client* take_starts();
  void collect();

  ~impl();
  void add_deadline(probe_client& client, clock_type::time_point at);
  std::shared_ptr<probe_client> remove_deadline(probe_client& client);
  void arm_sweeper();
  void sweep();
  void hand_on(probe_callback done, probe_outcome out);
  void hand_on(probe_report report, bool news);
  void post_urgent_flush();
  void arm_flusher();
  void flush_if_due();
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

  bool probe_scheduled(const scheduled_probe& probe) override {
    if (scheduled_busy_.exchange(true, std::memory_order_acq_rel))
      return false;
    // The I/O thread reads these once it has taken this client off the
    // runtime's stack; until the probe finishes, nobody else writes them.
    handed_over_.probe = probe;
    handed_over_.at = clock_type::now();
    handed_over_.hold = shared_from_this();
    rt_.hand_over(*this);
    return true;
  }

  /// The scheduled probe handed over, between the hand-over and its start;
  /// `next` links the runtime's stack of them.
  struct hand_over_entry {
    scheduled_probe probe;
    clock_type::time_point at;
    std::shared_ptr<probe_client> hold; // keeps it alive while on the stack
    probe_client* next = nullptr;
  } handed_over_;

  /// Starts the scheduled probe handed over (I/O thread).
  void start_scheduled(clock_type::time_point now) {
    auto keep_alive = std::move(handed_over_.hold); // released when this returns
    if (abandoned_.load(std::memory_order_acquire)) { // its prober stopped meanwhile
      scheduled_busy_.store(false, std::memory_order_release);
      return;
    }
    scheduled_ = true;
    const auto& probe = handed_over_.probe;
    generation_ = probe.generation;
    lateness_ms_ = probe.lateness_ms
                   + std::chrono::duration<double, std::milli>(now - handed_over_.at).count();
    // On the schedule, this probe ends one interval plus the timeout after
    // the last one started (see scheduled_probe::interval). A server that
    // answered that one and hangs from then on is found within one interval
    // plus the timeout after that start, even when this probe starts a few
    // milliseconds later in its slot than the last one did.
    std::optional<clock_type::time_point> on_schedule;
    if (probe.interval.count() > 0 && last_scheduled_start_
        && now - *last_scheduled_start_ < probe.interval + probe.interval / 2)
      on_schedule = *last_scheduled_start_ + probe.interval + probe.timeout;
    start(probe.timeout, on_schedule);
    last_scheduled_start_ = started_;
  }

  /// Reads the answer of a request sent in a drain's send pass (I/O thread);
  /// when that finished the probe, when its last bytes arrived.
  std::optional<std::chrono::system_clock::time_point> read_collected() {
    auto self = shared_from_this(); // finishing may release the runtime's hold
    if (finished_) // by a sweep in the wait (which ends before its deadline, but may oversleep)
      return std::nullopt;
    try_read();
    if (!finished_)
      return std::nullopt;
    return arrival_;
  }

  void abandon() override {
    abandoned_.store(true, std::memory_order_release);
    asio::post(rt_.ioc, [self = shared_from_this()] {
      if (self->scheduled_)
        self->expire(); // ends it (as a timeout, or with an answer already in), unreported
      else
        self->cancel_reconnect();
      if (self->finished_) // an on-demand probe in flight keeps its connection
        self->close_socket(); // no probe will use the kept connection again
      self->rt_.unwatch(*self);
    });
  }

  /// This client's place in the runtime's watch of kept connections:
  /// `id` keys it (from its first watch on), `registered` says whether the
  /// connection now open is in the epoll set.
  struct watch_entry {
    uint64_t id = 0;
    bool registered = false;
  } watching;

  ~probe_client() override {
    if (parked_fd_ >= 0)
      ::close(parked_fd_);
  }

  /// The kept connection's descriptor, parked or in asio's reactor; -1 if none.
  int native_socket() {
    return parked_fd_ >= 0 ? parked_fd_ : socket_.native_handle();
  }

  /// The server closed the connection this client keeps for its probes
  /// (I/O thread). Between probes that is news only if the server is
  /// gone: one that closes idle connections after a keep-alive timeout
  /// still accepts a new one. So the client reconnects at once: a refused
  /// reconnect is the next probe's failure at its connect step found early,
  /// reported as a failure (probe_outcome::between_probes; the health
  /// policy says how it counts); an accepted one is kept for the next
  /// probe, nothing reported, no request sent.
  ///
  /// A connection made this way and closed again before any probe used it
  /// is made again only if it was reset (`events` has EPOLLERR or
  /// EPOLLHUP), at most `max_reconnects` times per probe: a server closing
  /// idle connections sends a FIN, so it costs one reconnect per probe
  /// whatever its keep-alive timeout; a dying process may close the kept
  /// connection before its listener, so the reconnect lands in the
  /// listener's queue, and is reset when the listener closes.
  void on_hangup(uint32_t events) {
    if (!finished_) { // the probe in flight reads the close itself
      hangup_pending_ = true;
      return;
    }
    if (reconnecting_ || !connected())
      return;
    close_socket();
    bool reset = (events & (EPOLLERR | EPOLLHUP)) != 0;
    bool again = !from_reconnect_ || (reset && reconnects_since_probe_ < max_reconnects);
    from_reconnect_ = false;
    if (again && !abandoned_.load(std::memory_order_acquire))
      reconnect();
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
  /// or it was abandoned. A reconnect between probes ends unreported.
  void expire() {
    if (reconnecting_)
      return end_reconnect(); // the next probe tells what happened
    if (finished_)
      return;
    if (step_ == step::read && parser_) {
      // The usual case, a server that does not answer: report now, at the
      // deadline. The wait's handler, if one is pending, run later (after
      // the drain, when the sweep ran in one), must not: it is stale from
      // here on. A probe still in the drain's collect list is read here too.
      ++answer_wait_;
      // Unless the answer is here, having come in time while this thread
      // was busy (a drain's wait): it counts, as it would had its handler
      // run first.
      beast::error_code ignored;
      if (read_available(ignored) == read_state::complete && arrived_by(deadline.at))
        return on_response();
      timed_out_ = true;
      close_socket();
      return finish_timeout();
    }
    timed_out_ = true;
    // Every pending operation completes with operation_aborted; its handler
    // reports the timeout for the step it was in.
    resolver_.cancel();
    close_socket();
  }

private:
  enum class step { resolve, connect, write, read };

  /// Starts a probe that ends by `timeout` from now, or at `no_later`
  /// if that is sooner, though never before nine tenths of `timeout`.
  void start(std::chrono::milliseconds timeout,
             std::optional<clock_type::time_point> no_later = std::nullopt) {
    cancel_reconnect(); // the probe connects itself
    hangup_pending_ = false;
    from_reconnect_ = false; // a probe uses the connection from now on
    reconnects_since_probe_ = 0;
    timeout_ = timeout;
    started_ = clock_type::now();
    started_wall_ = std::chrono::system_clock::now();
    arrival_.reset();
    finished_ = false;
    timed_out_ = false;
    if (url_.https)
      return finish_error("protocol", "https health checks are not supported yet");
    auto deadline = started_ + timeout;
    if (no_later && *no_later < deadline)
      deadline = std::max(*no_later, started_ + timeout - timeout / 10);
    rt_.add_deadline(*this, deadline);
    if (connected()) {
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
                        [self = shared_from_this()](beast::error_code ec, const tcp::endpoint& to) {
                          self->connected_to_ = to;
                          self->on_connect(ec);
                        });
  }

  void on_connect(beast::error_code ec) {
    if (timed_out_)
      return finish_timeout();
    if (ec)
      return finish_error("connect", ec.message());
    if (connected_to_itself(socket_.native_handle()))
      return finish_error("connect", self_connect_error);
    prepare_connection();
    do_write();
  }

  void prepare_connection() {
    beast::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    // The request is written by a direct non-blocking send (do_write), and
    // the answer read by recvmsg with the kernel's receive timestamp, so
    // that its response time does not depend on when this thread reads it.
    socket_.non_blocking(true, ignored);
    int on = 1;
    ::setsockopt(socket_.native_handle(), SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
  }

  /// Connects again after the server closed the kept connection between
  /// probes (see on_hangup), under the probes' timeout.
  void reconnect() {
    reconnecting_ = true;
    ++reconnects_since_probe_;
    reconnect_started_ = clock_type::now();
    auto attempt = ++reconnect_attempt_;
    rt_.add_deadline(*this, reconnect_started_ + timeout_);
    // To the address the kept connection went to, in one operation: the
    // composed connect over several addresses would, cancelled while a
    // probe reopens the socket, go on to the next address on the probe's
    // socket.
    socket_.async_connect(connected_to_, [self = shared_from_this(), attempt](beast::error_code ec) {
      self->on_reconnect(attempt, ec);
    });
  }

  void on_reconnect(uint64_t attempt, beast::error_code ec) {
    if (attempt != reconnect_attempt_)
      return; // ended meanwhile: by a probe's start, the deadline or abandon
    reconnecting_ = false;
    auto hold = rt_.remove_deadline(*this);
    if (!ec && connected_to_itself(socket_.native_handle()))
      ec = asio::error::connection_refused;
    if (!ec) {
      prepare_connection();
      park();
      from_reconnect_ = true;
      rt_.watch(*this);
      return;
    }
    close_socket();
    if (abandoned_.load(std::memory_order_acquire))
      return;
    probe_outcome out;
    out.error_kind = "connect";
    out.error = "the server closed the kept connection and refused a new one: " + ec.message();
    out.response_time_ms =
      std::chrono::duration<double, std::milli>(clock_type::now() - reconnect_started_).count();
    out.at = now_ms();
    out.between_probes = true;
    last_reported_healthy_ = false; // so the success that clears it is news
    rt_.hand_on(probe_report{target_.server_id, generation_, std::move(out)}, true);
  }

  /// Ends a reconnect in flight, unreported; the deadline sweep, which
  /// has already taken it off the list, calls end_reconnect directly.
  void cancel_reconnect() {
    if (!reconnecting_)
      return;
    auto hold = rt_.remove_deadline(*this);
    end_reconnect();
  }

  void end_reconnect() {
    ++reconnect_attempt_;
    reconnecting_ = false;
    close_socket();
  }

  // The request is a few hundred bytes: one send() writes it whole on an
  // idle connection, with no asio operation; only a short write waits for
  // the socket (async_write of the rest).
  void do_write() {
    step_ = step::write;
    auto n = ::send(native_socket(), request_bytes_.data(), request_bytes_.size(),
                    MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return retry_or_fail("protocol", "sending the request failed: "
                                         + beast::error_code(errno, boost::system::system_category()).message());
    auto sent = static_cast<size_t>(std::max<ssize_t>(n, 0));
    if (sent == request_bytes_.size())
      return start_read();
    beast::error_code ec;
    if (!unpark(ec))
      return retry_or_fail("protocol", "sending the request failed: " + ec.message());
    asio::async_write(socket_, asio::buffer(request_bytes_.data() + sent, request_bytes_.size() - sent),
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
    // Part of a header line left by a probe that ended unanswered (or by a
    // failed try on a reused connection) is not part of this answer; this is
    // the one place it is dropped. (Bytes after a complete response, a stray
    // CRLF say, are never kept: they stay in the shared buffer, cleared by
    // the next read.)
    std::string().swap(unparsed_);
    received_ = 0;
    parser_.emplace(body_);
    parser_->eager(true);
    if (rt_.in_batch) {
      rt_.collecting.push_back(shared_from_this()); // read after the drain's collect wait
      rt_.collecting_due = std::min(rt_.collecting_due, deadline.at);
    } else {
      wait_readable();
    }
  }

  // A readiness wait, not async_read_some: asio's read first tries a recv
  // at once, which right after the send nearly always fails. (The wait costs
  // two epoll_ctl calls instead, a parked connection going into asio's
  // reactor and out again when the probe ends, so it is only for answers
  // that are not there when the drain reads.)
  void wait_readable() {
    beast::error_code ec;
    if (!unpark(ec))
      return read_failed(ec);
    auto wait = ++answer_wait_;
    socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this(), wait](beast::error_code ec) {
      if (wait != self->answer_wait_)
        return; // the probe was ended meanwhile (expire)
      if (self->timed_out_)
        return self->finish_timeout();
      if (ec)
        return self->read_failed(ec);
      self->try_read();
    });
  }

  /// Reads what has arrived, without blocking, and parses it; waits for
  /// readiness when the answer is not complete yet.
  void try_read() {
    beast::error_code failure;
    switch (read_available(failure)) {
    case read_state::complete: return on_response();
    case read_state::need_more: return wait_readable();
    case read_state::failed: return read_failed(failure);
    }
  }

  enum class read_state { complete, need_more, failed };

  /// Reads what has arrived, without waiting, and parses it: whether the
  /// response is complete, needs more, or failed (`failure` says how).
  read_state read_available(beast::error_code& failure) {
    // Read into the runtime's buffer, shared by all clients: a health
    // answer nearly always comes whole and is parsed at once, so a buffer
    // of each client's own would only be memory touched every probe (see
    // probe_runtime::impl::read_buffer). Bytes the parser left (part of a
    // header line) wait in `unparsed_` for the rest.
    auto& buffer = rt_.read_buffer;
    buffer.clear();
    if (!unparsed_.empty()) {
      auto space = buffer.prepare(unparsed_.size());
      std::memcpy(space.data(), unparsed_.data(), unparsed_.size());
      buffer.commit(unparsed_.size());
      std::string().swap(unparsed_);
    }
    auto state = read_into(buffer, failure);
    if (state == read_state::need_more && buffer.size() > 0)
      unparsed_.assign(static_cast<const char*>(buffer.data().data()), buffer.size());
    return state;
  }

  read_state read_into(beast::flat_buffer& buffer, beast::error_code& failure) {
    for (;;) {
      auto space = buffer.prepare(read_chunk);
      iovec iov{space.data(), space.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      auto n = ::recvmsg(native_socket(), &msg, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          return read_state::need_more;
        failure = beast::error_code(errno, boost::system::system_category());
        return read_state::failed;
      }
      note_arrival(msg);
      beast::error_code ec;
      if (n == 0) { // the server closed the connection
        if (parser_->got_some() && parser_->need_eof()) {
          parser_->put_eof(ec); // a body delimited by the connection's end
          if (!ec)
            return read_state::complete;
        }
        failure = asio::error::eof;
        return read_state::failed;
      }
      buffer.commit(static_cast<size_t>(n));
      received_ += static_cast<size_t>(n);
      while (buffer.size() > 0 && !parser_->is_done()) {
        auto used = parser_->put(buffer.data(), ec);
        buffer.consume(used);
        if (ec == http::error::need_more)
          break;
        if (ec) {
          failure = ec;
          return read_state::failed;
        }
      }
      if (parser_->is_done())
        return read_state::complete;
      // A short read emptied the receive queue: the rest is not there yet.
      if (static_cast<size_t>(n) < space.size())
        return read_state::need_more;
    }
  }

  /// Whether the answer's last bytes arrived by `at` (the kernel's receive
  /// timestamp, on the wall clock the probe started on).
  bool arrived_by(clock_type::time_point at) const {
    if (!arrival_)
      return false;
    auto at_wall = started_wall_ + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                       at - started_);
    return *arrival_ <= at_wall;
  }

  /// Remembers when the data just read arrived (SO_TIMESTAMPNS).
  void note_arrival(msghdr& msg) {
    for (auto* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
        timespec ts;
        std::memcpy(&ts, CMSG_DATA(c), sizeof ts);
        arrival_ = std::chrono::system_clock::time_point{
          std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec))};
      }
    }
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
    auto elapsed = std::chrono::duration<double, std::milli>(clock_type::now() - started_).count();
    out.response_time_ms = elapsed;
    if (out.healthy || out.status_code) {
      // Up to the arrival of the answer's last bytes, not to this moment,
      // which may be up to a collect window later. The wall clock could
      // have been stepped in between: then the elapsed time stands.
      if (arrival_) {
        auto to_arrival = std::chrono::duration<double, std::milli>(*arrival_ - started_wall_).count();
        if (to_arrival >= 0 && to_arrival <= elapsed)
          out.response_time_ms = to_arrival;
      }
    }
    out.at = now_ms();
    parser_.reset();
    park(); // a kept connection waits for the next probe out of asio's reactor
    if (scheduled_) {
      scheduled_ = false;
      out.lateness_ms = lateness_ms_;
      if (!abandoned_.load(std::memory_order_acquire)) {
        bool news = !out.healthy || !last_reported_healthy_;
        last_reported_healthy_ = out.healthy;
        rt_.hand_on(probe_report{target_.server_id, generation_, std::move(out)}, news);
        if (connected()) { // kept for the next probe: watched until then
          rt_.watch(*this);
          if (hangup_pending_) { // closed while the probe was in flight
            hangup_pending_ = false;
            on_hangup(0);
          }
        }
      }
      scheduled_busy_.store(false, std::memory_order_release);
    } else if (done_) {
      rt_.hand_on(std::move(done_), std::move(out));
    }
    done_ = nullptr;
  }

  void close_socket() {
    watching.registered = false; // closing the socket takes it out of the epoll set
    hangup_pending_ = false;     // it was this connection's
    if (parked_fd_ >= 0) {
      ::shutdown(parked_fd_, SHUT_RDWR);
      ::close(parked_fd_);
      parked_fd_ = -1;
    }
    if (socket_.is_open()) {
      beast::error_code ec;
      socket_.shutdown(tcp::socket::shutdown_both, ec);
      socket_.close(ec);
    }
  }

  bool connected() {
    return parked_fd_ >= 0 || socket_.is_open();
  }

  /// Takes the connection out of asio's reactor between probes and while a
  /// drain's request waits for its answer: in the reactor's epoll set (it
  /// has every socket, for input, edge-triggered) every answer arriving
  /// was an event the thread woke for or walked through, and a drain reads
  /// the answers itself. Only what needs asio (a readiness wait for a late
  /// answer, the rest of a short write) puts it back (unpark), until the
  /// probe ends.
  void park() {
    if (parked_fd_ >= 0 || !socket_.is_open())
      return;
    beast::error_code ec;
    auto fd = socket_.release(ec);
    if (!ec)
      parked_fd_ = fd;
  }

  bool unpark(beast::error_code& ec) {
    if (parked_fd_ < 0) {
      if (!socket_.is_open())
        ec = asio::error::not_connected;
      return socket_.is_open();
    }
    socket_.assign(connected_to_.protocol(), parked_fd_, ec);
    if (ec)
      return false; // still parked: closed with the client's other state
    parked_fd_ = -1;
    return true;
  }

  probe_runtime::impl& rt_;
  static constexpr size_t read_chunk = 512; // a health answer is a few hundred bytes
  resolver_type resolver_;
  socket_type socket_;
  int parked_fd_ = -1; // the kept connection, out of asio's reactor (see park)
  probe_target target_;
  server_url_parts url_;
  std::string request_bytes_;
  std::vector<tcp::endpoint> endpoints_;
  tcp::endpoint connected_to_; // of the last connection a probe made
  std::string unparsed_; // of the answer read so far: rarely any (see read_available)
  size_t received_ = 0; // bytes of the response read so far
  std::string body_;
  std::optional<health_response_parser> parser_;
  // The probe in flight reports either through done_ (on demand) or, when
  // scheduled_, to the runtime's report sink with generation_ and
  // lateness_ms_. scheduled_busy_ is the one flag other threads read.
  probe_callback done_;
  bool scheduled_ = false;
  bool last_reported_healthy_ = false; // of the last scheduled report
  uint64_t generation_ = 0;
  double lateness_ms_ = 0;
  std::atomic<bool> scheduled_busy_{false};
  std::atomic<bool> abandoned_{false}; // the prober stopped: report nothing more
  clock_type::time_point started_;
  std::optional<clock_type::time_point> last_scheduled_start_; // see start_scheduled
  std::chrono::system_clock::time_point started_wall_; // the receive timestamps' clock
  std::optional<std::chrono::system_clock::time_point> arrival_; // of the last bytes read
  step step_ = step::resolve;
  std::chrono::milliseconds timeout_{0}; // of the last probe; reconnects use it too
  // Between probes (see on_hangup): a reconnect runs (attempt numbers tell
  // its completion from a later one's), the kept connection was made by
  // one, or the server closed the connection while a probe was in flight.
  bool reconnecting_ = false;
  uint64_t reconnect_attempt_ = 0;
  clock_type::time_point reconnect_started_;
  bool from_reconnect_ = false;
  int reconnects_since_probe_ = 0;
  static constexpr int max_reconnects = 3;
  bool hangup_pending_ = false;
  bool reused_ = false;
  // Numbers the readiness waits for an answer: a wait's handler acts only
  // if this still has the number it was started with.
  uint64_t answer_wait_ = 0;
  bool timed_out_ = false;
  bool finished_ = true;
};

} // namespace

void probe_runtime::impl::watch(probe_client& client) {
  auto& entry = client.watching;
  if (entry.registered)
    return; // once per connection, not per probe
  if (entry.id == 0) {
    entry.id = ++last_watch_id;
    watched.emplace(entry.id, client.weak_from_this());
    // Abandoned clients leave (unwatch); one dropped without being
    // abandoned leaves an expired entry, cleared here now and then.
    if (watched.size() > 2 * watched_at_cleanup + 64) {
      for (auto it = watched.begin(); it != watched.end();)
        it = it->second.expired() ? watched.erase(it) : std::next(it);
      watched_at_cleanup = watched.size();
    }
  }
  epoll_event ev{};
  ev.events = EPOLLRDHUP | EPOLLET; // errors and hang-ups are always reported
  ev.data.u64 = entry.id;
  if (::epoll_ctl(hangup_fd, EPOLL_CTL_ADD, client.native_socket(), &ev) == 0 || errno == EEXIST)
    entry.registered = true;
}

void probe_runtime::impl::unwatch(probe_client& client) {
  if (client.watching.id != 0)
    watched.erase(client.watching.id);
}

void probe_runtime::impl::await_hangups() {
  hangup_signal->async_wait(asio::posix::descriptor_base::wait_read, [this](beast::error_code ec) {
    if (ec)
      return; // stopping
    epoll_event events[64];
    for (;;) {
      int n = ::epoll_wait(hangup_fd, events, 64, 0);
      if (n < 0 && errno == EINTR)
        continue;
      for (int i = 0; i < n; ++i) {
        auto it = watched.find(events[i].data.u64);
        if (it == watched.end())
          continue;
        if (auto client = it->second.lock())
          client->on_hangup(events[i].events);
        else
          watched.erase(it);
      }
      if (n < 64)
        break;
    }
    await_hangups();
  });
}

void probe_runtime::impl::hand_over(probe_client& client) {
  auto* top = start_stack.load(std::memory_order_relaxed);
  do {
    client.handed_over_.next = top;
  } while (!start_stack.compare_exchange_weak(top, &client, std::memory_order_seq_cst,
                                              std::memory_order_relaxed));
  // The first of a batch signals the drain, unless one runs: that one takes
  // this probe before it ends (see drain's last check). Within a round of
  // the scheduler's clock thread, the signal waits for the round's end, when
  // the whole batch is here.
  if (top == nullptr && !draining.load(std::memory_order_seq_cst)) {
    if (!round_wakeups::defer(&impl::signal_drain, this))
      signal_drain(this);
  }
}

void probe_runtime::impl::signal_drain(void* self) {
  uint64_t one = 1;
  while (::write(static_cast<impl*>(self)->drain_fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

void probe_runtime::impl::await_drain_signal() {
  drain_signal->async_wait(asio::posix::descriptor_base::wait_read, [this](beast::error_code ec) {
    if (ec)
      return; // stopping
    uint64_t count;
    while (::read(drain_fd, &count, sizeof count) < 0 && errno == EINTR) {
    }
    drain();
    await_drain_signal();
  });
}

probe_client* probe_runtime::impl::take_starts() {
  // The stack holds the newest first: reversed, probes start in the order
  // they were handed over.
  probe_client* top = start_stack.exchange(nullptr, std::memory_order_seq_cst);
  probe_client* in_order = nullptr;
  while (top != nullptr) {
    auto* next = top->handed_over_.next;
    top->handed_over_.next = in_order;
    in_order = top;
    top = next;
  }
  return in_order;
}

void probe_runtime::impl::drain() {
  // Only this thread drains, so nothing else ever sets `draining`.
  draining.store(true, std::memory_order_seq_cst);
  for (;;) {
    auto* batch = take_starts();
    if (batch == nullptr) {
      // Seq_cst against hand_over: either the pusher sees `draining` false
      // and signals the drain, or this load sees its push.
      draining.store(false, std::memory_order_seq_cst);
      if (start_stack.load(std::memory_order_seq_cst) == nullptr)
        return;
      draining.store(true, std::memory_order_seq_cst);
      continue;
    }
    in_batch = true;
    auto now = clock_type::now();
    while (batch != nullptr) {
      auto* client = batch;
      batch = client->handed_over_.next;
      client->handed_over_.next = nullptr;
      client->start_scheduled(now);
    }
    if (!collecting.empty())
      collect();
    in_batch = false;
    sweep(); // what came due while the drain held the thread
    flush_if_due(); // news at once, routine successes every routine_flush_delay
  }
}

void probe_runtime::impl::collect() {
  auto waited_from = std::chrono::system_clock::now(); // the receive timestamps' clock
  // Deadlines due during the wait are swept on time, not after it. Those of
  // hanging servers fall right in it: timeouts are whole 50 ms slots, so a
  // probe sent in one slot's drain expires during a later slot's.
  // A probe of this pass whose timeout is shorter than the wait (a few
  // milliseconds) ends it early instead: it is read before its deadline.
  auto wake = std::min(clock_type::now() + collect_window, collecting_due - sweep_step);
  while (earliest != nullptr) {
    auto due = round_down(earliest->deadline.at, sweep_step);
    if (due >= wake)
      break;
    std::this_thread::sleep_until(due);
    sweep(); // takes at least the earliest off the list
    if (news_waiting)
      flush(); // the timeouts just reported, not after the whole pass
  }
  std::this_thread::sleep_until(wake);
  auto reading = std::move(collecting);
  collecting.clear();
  collecting_due = clock_type::time_point::max();
  // Late: in the last quarter of the wait as it went (sweeps may stretch it).
  auto late_from = waited_from + (std::chrono::system_clock::now() - waited_from) * 3 / 4;
  size_t answered = 0, late = 0;
  for (const auto& client : reading) {
    if (auto arrival = client->read_collected()) {
      ++answered;
      if (*arrival >= late_from)
        ++late;
    }
  }
  if (answered >= 8) { // too few say nothing
    if (late * 10 >= answered)
      collect_window = std::min<std::chrono::microseconds>(collect_window * 3 / 2,
                                                           std::max(max_collect, min_collect));
    else if (late * 50 < answered)
      collect_window = std::max<std::chrono::microseconds>(collect_window * 9 / 10, min_collect);
  }
  if (collecting.empty()) { // keep the capacity for the next pass
    reading.clear();
    collecting.swap(reading);
  }
}

probe_runtime::impl::~impl() {
  // The I/O thread has stopped: let go of the probes handed over but never
  // started, and of those still listed.
  for (auto* client = take_starts(); client != nullptr;) {
    auto* next = client->handed_over_.next;
    client->handed_over_.hold.reset(); // may destroy the client
    client = next;
  }
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
  // Sweeps land on 1 ms steps, at or before the deadline: one wake-up
  // expires every probe due in the step after it, up to 1 ms early, so no
  // probe ends later than its deadline (see scheduled_probe::interval).
  auto at = round_down(earliest->deadline.at, sweep_step);
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
  while (earliest != nullptr && earliest->deadline.at < now + sweep_step) {
    auto client = remove_deadline(*earliest);
    client->expire();
  }
  arm_sweeper();
}

void probe_runtime::impl::hand_on(probe_callback done, probe_outcome out) {
  finished.emplace_back(std::move(done), std::move(out));
  post_urgent_flush(); // someone waits for it
}

void probe_runtime::impl::hand_on(probe_report report, bool news) {
  reports.push_back(std::move(report));
  news_waiting = news_waiting || news;
  if (in_batch)
    return; // the drain flushes at the end of its pass
  if (news)
    post_urgent_flush(); // after the handlers now ready have run
  else
    arm_flusher();
}

void probe_runtime::impl::post_urgent_flush() {
  if (urgent_flush_posted)
    return;
  urgent_flush_posted = true;
  asio::post(ioc, [this] {
    urgent_flush_posted = false;
    flush();
  });
}

void probe_runtime::impl::flush_if_due() {
  if (news_waiting || clock_type::now() - last_flush >= routine_flush_delay)
    flush();
  else if (!reports.empty())
    arm_flusher();
}

void probe_runtime::impl::arm_flusher() {
  if (flush_armed)
    return;
  flush_armed = true;
  flusher.expires_at(last_flush + routine_flush_delay);
  flusher.async_wait([this](beast::error_code ec) {
    if (ec == asio::error::operation_aborted)
      return; // flushed meanwhile (or stopping)
    flush_armed = false;
    flush();
  });
}

void probe_runtime::impl::flush() {
  last_flush = clock_type::now();
  news_waiting = false;
  if (flush_armed) { // this flush is the one it waited for
    flush_armed = false;
    flusher.cancel();
  }
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

probe_runtime::probe_runtime(probe_report_sink reports, std::chrono::microseconds shortest_collect_wait)
  : impl_(std::make_unique<impl>()) {
  impl_->report_sink = std::move(reports);
  impl_->min_collect = std::max(shortest_collect_wait, std::chrono::microseconds(100)); // it grows by half
  impl_->collect_window = std::max(impl_->collect_window, impl_->min_collect);
  impl_->drain_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (impl_->drain_fd < 0)
    throw std::system_error(errno, std::system_category(), "eventfd for the probe runtime");
  // The descriptor owns the eventfd from here on and closes it.
  impl_->drain_signal.emplace(impl_->ioc.get_executor(), impl_->drain_fd);
  impl_->await_drain_signal();
  impl_->hangup_fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (impl_->hangup_fd < 0)
    throw std::system_error(errno, std::system_category(), "epoll set for the probe runtime");
  impl_->hangup_signal.emplace(impl_->ioc.get_executor(), impl_->hangup_fd); // owns it from here
  impl_->await_hangups();
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
