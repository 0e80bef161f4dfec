// probe_runtime_test.cpp — the HTTP probe client's hand-over of scheduled
// probes: probes handed over together all run, each once, and report with
// their generation and their lateness; a probe of an abandoned driver never
// reaches the server.
#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

#include "../actors/fakes.hpp" // wait_until
#include "../scripted_server.hpp"
#include "protocol/http_probe.hpp"
#include "protocol/self_connect.hpp"

using namespace std::chrono_literals;

namespace {

/// Collects the reports a runtime hands on.
struct report_collector {
  std::mutex mutex;
  std::vector<mg::probe_report> reports;

  mg::probe_report_sink sink() {
    return [this](std::vector<mg::probe_report> batch) {
      std::lock_guard<std::mutex> lock(mutex);
      for (auto& r : batch)
        reports.push_back(std::move(r));
    };
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mutex);
    return reports.size();
  }
  std::vector<mg::probe_report> all() {
    std::lock_guard<std::mutex> lock(mutex);
    return reports;
  }
};

mg_test::scripted_server::answer_fn healthy_answer() {
  return [](int fd) {
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    return true;
  };
}

/// Calls `visit(fd, events)` for every descriptor registered in any epoll
/// set of this process, as /proc/self/fdinfo lists them.
template <class Visit>
void for_each_epoll_registration(Visit visit) {
  namespace fs = std::filesystem;
  for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (fs::read_symlink(entry.path(), ec).string() != "anon_inode:[eventpoll]" || ec)
      continue;
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    for (std::string line; std::getline(info, line);) {
      auto at = line.find("events:");
      if (line.rfind("tfd:", 0) == 0 && at != std::string::npos)
        visit(std::stoi(line.substr(4)), std::stoul(line.substr(at + 7), nullptr, 16));
    }
  }
}

/// Connections this process watches for the server's close: entries of an
/// epoll set registered for EPOLLRDHUP (the probe runtime's watch; asio's
/// own set never asks for it). The client's side of the watch, which the
/// server cannot see.
int watched_connections() {
  int count = 0;
  for_each_epoll_registration([&](int, unsigned long events) {
    if ((events & 0x2000) != 0) // EPOLLRDHUP
      ++count;
  });
  return count;
}

/// Sockets of this process registered for input in any of its epoll sets:
/// asio's reactor registers every socket it holds so, edge-triggered.
int sockets_watched_for_input() {
  int count = 0;
  for_each_epoll_registration([&](int fd, unsigned long events) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
    if ((events & 0x1) != 0 && !ec && target.string().rfind("socket:", 0) == 0) // EPOLLIN
      ++count;
  });
  return count;
}

mg::probe_target target_for(const std::string& id, const std::string& url) {
  mg::probe_target t;
  t.server_id = id;
  t.url = url;
  t.health_path = "/health";
  return t;
}

/// A runtime whose one driver has probed a healthy server once, on a
/// connection it keeps.
struct probed_once {
  std::unique_ptr<mg_test::scripted_server> server =
    std::make_unique<mg_test::scripted_server>(healthy_answer());
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  std::shared_ptr<mg::probe_driver> driver;

  probed_once(const std::string& id, uint64_t generation)
    : driver(runtime.make_driver(target_for(id, server->url()))) {
    REQUIRE(driver->probe_scheduled({2000ms, generation, 0.0}));
    REQUIRE(mg::test::wait_until([&] { return collected.size() >= 1; }, 10s));
    REQUIRE(collected.all()[0].outcome.healthy);
  }
};

} // namespace

TEST_CASE("scheduled probes handed over together all run once and report their generation and lateness",
          "[probe_runtime]") {
  // No answer before every probe is handed over: a test thread preempted
  // between its two calls must not see the first probe done already.
  std::atomic<bool> answer{false};
  mg_test::scripted_server server{[&](int fd) {
    mg::test::wait_until([&] { return answer.load(); }, 10s);
    return healthy_answer()(fd);
  }};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  constexpr int count = 40;
  std::vector<std::shared_ptr<mg::probe_driver>> drivers;
  for (int i = 0; i < count; ++i)
    drivers.push_back(runtime.make_driver(target_for("s" + std::to_string(i), server.url())));
  for (int i = 0; i < count; ++i) {
    REQUIRE(drivers[i]->probe_scheduled({2000ms, uint64_t(100 + i), 5.0}));
    CHECK_FALSE(drivers[i]->probe_scheduled({2000ms, uint64_t(100 + i), 5.0})); // one in flight at most
  }
  answer = true;
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= count; }, 10s));
  std::map<std::string, mg::probe_report> by_id;
  for (auto& r : collected.all()) {
    CHECK(by_id.count(r.server_id) == 0);
    by_id[r.server_id] = r;
  }
  REQUIRE(by_id.size() == count);
  for (int i = 0; i < count; ++i) {
    const auto& r = by_id.at("s" + std::to_string(i));
    CHECK(r.generation == static_cast<uint64_t>(100 + i));
    CHECK(r.outcome.healthy);
    CHECK(r.outcome.lateness_ms >= 5.0); // the prober's lateness plus the hand-over's wait
  }
  // Reported, so free again: the next tick starts a probe, on the kept connection.
  REQUIRE(drivers[0]->probe_scheduled({2000ms, 100, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= count + 1; }, 10s));
  CHECK(mg::test::wait_until([&] { return server.answered() >= count + 1; }, 10s));
}

TEST_CASE("a scheduled probe of an abandoned driver never reaches the server",
          "[probe_runtime]") {
  // The prober abandons its driver when it stops; a tick handed over just
  // before (or, as here, after) must not go out when its batch starts.
  mg_test::scripted_server server{healthy_answer()};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  auto abandoned = runtime.make_driver(target_for("gone", server.url()));
  auto kept = runtime.make_driver(target_for("kept", server.url()));
  abandoned->abandon();
  REQUIRE(abandoned->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(kept->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 1; }, 10s));
  REQUIRE(kept->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2 && server.answered() >= 2; }, 10s));
  for (const auto& r : collected.all())
    CHECK(r.server_id == "kept");
  CHECK(server.answered() == 2); // the kept driver's two probes only
  // Skipped, not stuck: the abandoned driver takes the next tick again.
  CHECK(mg::test::wait_until([&] { return abandoned->probe_scheduled({2000ms, 1, 0.0}); }, 10s));
}

TEST_CASE("a kept connection's answer is timed from its arrival, not from when the drain reads it",
          "[probe_runtime]") {
  // The drain reads a batch's answers after its collect wait; the response
  // time must still end when the answer arrived, which here is right after
  // the server wrote it.
  std::mutex mutex;
  std::chrono::steady_clock::time_point written;
  mg_test::scripted_server server{[&](int fd) {
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    std::lock_guard<std::mutex> lock(mutex);
    written = std::chrono::steady_clock::now();
    return true;
  }};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  auto driver = runtime.make_driver(target_for("timed", server.url()));
  REQUIRE(driver->probe_scheduled({2000ms, 1, 0.0})); // connects
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 1; }, 10s));
  auto handed_over = std::chrono::steady_clock::now();
  REQUIRE(driver->probe_scheduled({2000ms, 1, 0.0})); // the kept connection: the drain's path
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2; }, 10s));
  auto report = collected.all().back();
  REQUIRE(report.outcome.healthy);
  REQUIRE(report.outcome.response_time_ms);
  double until_written;
  {
    std::lock_guard<std::mutex> lock(mutex);
    until_written = std::chrono::duration<double, std::milli>(written - handed_over).count();
  }
  // The probe started its lateness after the hand-over, and the answer
  // arrived within microseconds of its writing; the collect wait (at least
  // 0.5 ms, most of it after the answer came) is not in it.
  CHECK(*report.outcome.response_time_ms <= until_written - report.outcome.lateness_ms + 0.3);
  CHECK(server.answered() == 2);
}

TEST_CASE("an answer slower than the drain's collect wait is still read and timed",
          "[probe_runtime]") {
  mg_test::scripted_server server{[](int fd) {
    std::this_thread::sleep_for(60ms); // longer than the longest collect wait (20 ms)
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    return true;
  }};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  auto driver = runtime.make_driver(target_for("slow", server.url()));
  for (size_t probes = 1; probes <= 3; ++probes) { // a new connection, then the kept one
    REQUIRE(driver->probe_scheduled({2000ms, 7, 0.0}));
    REQUIRE(mg::test::wait_until([&] { return collected.size() >= probes; }, 10s));
    auto report = collected.all().back();
    CHECK(report.outcome.healthy);
    CHECK(report.generation == 7);
    REQUIRE(report.outcome.response_time_ms);
    CHECK(*report.outcome.response_time_ms >= 59.0);
    CHECK(*report.outcome.response_time_ms < 1000.0);
  }
  CHECK(server.answered() == 3);
}

TEST_CASE("an answer split inside a header line is parsed whole while other answers are read",
          "[probe_runtime]") {
  // Clients read through one buffer of the runtime's; the part of a header
  // line that came first must wait in its own client, untouched by the
  // other probes' answers read meanwhile.
  mg_test::scripted_server split{[](int fd) {
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Le");
    std::this_thread::sleep_for(100ms); // the scenario: the rest comes later
    mg_test::write_all(fd, "ngth: 15\r\n\r\n{\"split\": true}");
    return true;
  }};
  mg_test::scripted_server whole{[](int fd) {
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"whole\": [1, 2]}");
    return true;
  }};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  auto split_driver = runtime.make_driver(target_for("split", split.url()));
  auto whole_driver = runtime.make_driver(target_for("whole", whole.url()));
  for (size_t round = 1; round <= 3; ++round) { // new connections, then kept ones
    REQUIRE(split_driver->probe_scheduled({2000ms, 1, 0.0}));
    REQUIRE(whole_driver->probe_scheduled({2000ms, 1, 0.0}));
    REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2 * round; }, 10s));
  }
  for (const auto& report : collected.all()) {
    INFO(report.server_id << ": " << report.outcome.error);
    CHECK(report.outcome.healthy);
  }
  CHECK(split.answered() == 3);
  CHECK(whole.answered() == 3);
}

namespace {

/// A server that answers its first probe and never another, and a runtime
/// whose one driver probes it on a kept connection.
struct answers_once {
  std::atomic<int> requests{0};
  mg_test::scripted_server server{[this](int fd) {
    if (++requests == 1)
      mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    return true; // later requests: never answered
  }};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  std::shared_ptr<mg::probe_driver> driver = runtime.make_driver(target_for("hangs", server.url()));

  /// Runs `probe` and waits for its report, the `n`th.
  mg::probe_outcome run(const mg::scheduled_probe& probe, size_t n) {
    REQUIRE(driver->probe_scheduled(probe));
    REQUIRE(mg::test::wait_until([&] { return collected.size() >= n; }, 10s));
    return collected.all()[n - 1].outcome;
  }
};

/// The response time of a probe that times out (its server answered the
/// last probe and hangs from then on), scheduled `gap` after that last one
/// with `interval` and `timeout`. The gap is the scenario (a probe that
/// starts late), so the test thread sleeps it out.
double hang_timeout_after(std::chrono::milliseconds interval, std::chrono::milliseconds timeout,
                          std::chrono::milliseconds gap) {
  answers_once s;
  auto first = std::chrono::steady_clock::now();
  REQUIRE(s.run({timeout, 1, 0.0, interval}, 1).healthy);
  std::this_thread::sleep_until(first + gap);
  auto timed_out = s.run({timeout, 1, 0.0, interval}, 2);
  CHECK(timed_out.error_kind == "timeout");
  REQUIRE(timed_out.response_time_ms);
  return *timed_out.response_time_ms;
}

} // namespace

// The upper bounds leave 100 ms or more for a loaded machine's wake-ups.
TEST_CASE("a probe late on its schedule ends one interval plus the timeout after the last one started",
          "[probe_runtime]") {
  // Started 150 ms late, it ends at 4,000 ms (interval + timeout after the
  // first probe), 1,850 ms after its own start instead of 2,000.
  auto waited = hang_timeout_after(2000ms, 2000ms, 2150ms);
  CHECK(waited >= 1798.9); // the sweep may end it up to 1 ms early
  CHECK(waited < 1960.0);
}

TEST_CASE("a probe very late on its schedule still gets nine tenths of its timeout",
          "[probe_runtime]") {
  auto waited = hang_timeout_after(2000ms, 2000ms, 2350ms); // the schedule would leave 1,650 ms
  CHECK(waited >= 1798.9);
  CHECK(waited < 1900.0);
}

TEST_CASE("a probe that does not follow the last one by about an interval gets its whole timeout",
          "[probe_runtime]") {
  // Half an interval late or more: a tick was skipped, or probing paused.
  auto waited = hang_timeout_after(1000ms, 500ms, 2000ms);
  CHECK(waited >= 498.9);
}

TEST_CASE("a probe whose timeout is shorter than the drain's collect wait reports a timeout and no reconnect",
          "[probe_runtime]") {
  answers_once s;
  REQUIRE(s.run({2000ms, 1, 0.0}, 1).healthy);
  // On the kept connection the request goes out in a drain's send pass;
  // 1 ms is shorter than its collect wait, which ends before the deadline.
  CHECK(s.run({1ms, 1, 0.0}, 2).error_kind == "timeout");
  CHECK(s.server.accepted() == 1); // an expired probe never connects again
}

TEST_CASE("an answer that came in time while a drain held the I/O thread counts though the deadline passed",
          "[probe_runtime]") {
  // A's server answers after 150 ms, A's timeout is 300 ms. B's probe, sent
  // 100 ms after A's, holds the I/O thread in a 400 ms collect wait (the
  // runtime's shortest, set for this test) across A's answer and deadline.
  mg_test::scripted_server slow{[](int fd) {
    std::this_thread::sleep_for(150ms);
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    return true;
  }};
  mg_test::scripted_server fast{healthy_answer()};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink(), 400ms};
  auto a = runtime.make_driver(target_for("a", slow.url()));
  auto b = runtime.make_driver(target_for("b", fast.url()));
  REQUIRE(b->probe_scheduled({2000ms, 1, 0.0})); // connects: B's next probe goes in a drain
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 1; }, 10s));
  auto a_sent = std::chrono::steady_clock::now();
  REQUIRE(a->probe_scheduled({300ms, 1, 0.0})); // connects, sends, waits for the answer
  std::this_thread::sleep_until(a_sent + 100ms);
  REQUIRE(b->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 3; }, 10s));
  // B's report came after its 400 ms wait: the thread was held through A's
  // answer and deadline, so the sweep, not A's wait, found the answer.
  CHECK(std::chrono::steady_clock::now() - a_sent >= 450ms);
  for (const auto& r : collected.all()) {
    INFO(r.server_id << ": " << r.outcome.error);
    CHECK(r.outcome.healthy);
    if (r.server_id == "a") {
      REQUIRE(r.outcome.response_time_ms);
      CHECK(*r.outcome.response_time_ms >= 149.0);
      CHECK(*r.outcome.response_time_ms < 300.0);
    }
  }
}

TEST_CASE("a kept connection waits for its next probe out of the reactor's epoll set",
          "[probe_runtime]") {
  // In it, every answer arriving was an event for the I/O thread, though a
  // drain reads the answers itself.
  probed_once p("parked", 1);
  CHECK(sockets_watched_for_input() == 0);
  REQUIRE(p.driver->probe_scheduled({2000ms, 1, 0.0})); // the kept connection: a drain's
  REQUIRE(mg::test::wait_until([&] { return p.collected.size() >= 2; }, 10s));
  CHECK(p.collected.all()[1].outcome.healthy);
  CHECK(sockets_watched_for_input() == 0);
  CHECK(watched_connections() == 1); // still watched for the server's close
}

TEST_CASE("a server that dies between probes is reported unhealthy without waiting for a probe",
          "[probe_runtime]") {
  // Its kept connection closes; the reconnect is refused: one report, a
  // failure at the connect step, with the probes' generation.
  probed_once p{"dies", 4};
  auto& collected = p.collected;
  auto& driver = p.driver;
  p.server.reset(); // stops listening, then closes its connections: no probe is handed over
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2; }, 10s));
  auto lost = collected.all()[1];
  CHECK(lost.outcome.between_probes);
  CHECK(lost.server_id == "dies");
  CHECK(lost.generation == 4);
  CHECK_FALSE(lost.outcome.healthy);
  CHECK(lost.outcome.error_kind == "connect");
  CHECK(lost.outcome.error.find("refused a new one") != std::string::npos);
  // The next tick's probe fails the same way, as a probe.
  REQUIRE(driver->probe_scheduled({2000ms, 4, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 3; }, 10s));
  auto probed = collected.all()[2];
  CHECK_FALSE(probed.outcome.between_probes);
  CHECK(probed.outcome.error_kind == "connect");
}

TEST_CASE("a server that closes idle connections but still listens gets no report and no extra probe",
          "[probe_runtime]") {
  // As a keep-alive timeout does: the server closes after each answer. The
  // client reconnects at once, reports nothing, and its next probe goes
  // over that connection; a connection no probe used is not made again.
  mg_test::scripted_server server{[](int fd) {
    mg_test::write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    return false;
  }};
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  auto driver = runtime.make_driver(target_for("idle", server.url()));
  REQUIRE(driver->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 1; }, 10s));
  // Reconnected and watching the new connection: the first one was closed
  // before the server could accept the second.
  REQUIRE(mg::test::wait_until(
    [&] { return server.accepted() >= 2 && watched_connections() == 1; }, 10s));
  REQUIRE(driver->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2; }, 10s));
  REQUIRE(mg::test::wait_until(
    [&] { return server.accepted() >= 3 && watched_connections() == 1; }, 10s));
  CHECK(server.answered() == 2);
  CHECK(server.accepted() == 3);         // the 2nd probe used the reconnected one
  CHECK(server.closed_by_client() == 0); // and the client never dropped one
  CHECK(collected.size() == 2);
  for (const auto& r : collected.all()) {
    CHECK_FALSE(r.outcome.between_probes);
    CHECK(r.outcome.healthy);
  }
}

TEST_CASE("an abandoned driver closes its kept connection and never reconnects",
          "[probe_runtime]") {
  probed_once p{"stopped", 1};
  auto& collected = p.collected;
  REQUIRE(mg::test::wait_until([&] { return watched_connections() == 1; }, 10s));
  p.driver->abandon(); // its prober stopped: the server dying now is no news
  // The server may see the close (the shutdown's FIN) an instant before
  // the descriptor is closed and leaves the epoll set.
  REQUIRE(mg::test::wait_until([&] { return p.server->closed_by_client() >= 1; }, 10s));
  CHECK(mg::test::wait_until([&] { return watched_connections() == 0; }, 10s));
  auto witness = p.runtime.make_driver(target_for("witness", p.server->url()));
  REQUIRE(witness->probe_scheduled({2000ms, 1, 0.0}));
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2; }, 10s));
  p.server.reset();
  // The witness, still probing, reports the death; the abandoned one nothing.
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 3; }, 10s));
  auto all = collected.all();
  CHECK(all[2].server_id == "witness");
  CHECK(all[2].outcome.between_probes);
  for (const auto& r : all)
    CHECK((r.server_id != "stopped" || !r.outcome.between_probes));
}

TEST_CASE("a reconnect reset by a dying server's listener is made again and then refused",
          "[probe_runtime]") {
  // A dying process may close the kept connection before its listener: the
  // reconnect lands in the listener's queue and is reset when the listener
  // closes. That reset is no keep-alive timeout: the client tries again.
  auto [listener, port] = mg_test::listen_on_loopback(8);
  auto readable = [](int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 5000) == 1;
  };
  report_collector collected;
  mg::probe_runtime runtime{collected.sink()};
  auto driver = runtime.make_driver(target_for("dying", "http://127.0.0.1:" + std::to_string(port)));
  REQUIRE(driver->probe_scheduled({2000ms, 9, 0.0}));
  REQUIRE(readable(listener));
  int kept = ::accept(listener, nullptr, nullptr);
  REQUIRE(kept >= 0);
  std::string request;
  char buf[1024];
  while (request.find("\r\n\r\n") == std::string::npos && readable(kept)) {
    auto n = ::read(kept, buf, sizeof buf);
    REQUIRE(n > 0);
    request.append(buf, static_cast<size_t>(n));
  }
  mg_test::write_all(kept, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 1; }, 10s));
  REQUIRE(mg::test::wait_until([&] { return watched_connections() == 1; }, 10s));
  ::close(kept);               // the kept connection first...
  REQUIRE(readable(listener)); // ...the reconnect waits in the queue...
  ::close(listener);           // ...and is reset with the listener
  REQUIRE(mg::test::wait_until([&] { return collected.size() >= 2; }, 10s));
  auto lost = collected.all()[1];
  CHECK(lost.outcome.between_probes);
  CHECK(lost.generation == 9);
  CHECK(lost.outcome.error_kind == "connect");
}

TEST_CASE("a connection that reached its own port is told from a real one", "[probe_runtime]") {
  // Forced here by binding the source port first: a connect to a port
  // nothing listens on then meets itself (simultaneous open) and succeeds.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  CHECK(mg::connected_to_itself(fd));
  ::close(fd);
  auto [listener, port] = mg_test::listen_on_loopback();
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  a.sin_port = htons(port);
  REQUIRE(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  CHECK_FALSE(mg::connected_to_itself(client));
  ::close(client);
  ::close(listener);
}
