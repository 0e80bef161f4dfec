// register_bench.cpp — registration throughput and memory benchmark of modelgated.
//
// Starts modelgated (path: argv[1], else $MODELGATED, else the build's
// MODELGATED_PATH) on a file database in a temporary directory and measures,
// over HTTP keep-alive connections with unique URLs, durably acknowledged
// registrations (each 201 is a committed write) per second and p50/p99
// latency at 1 and at 64 concurrent clients, then fills the registry up to
// 10,000 servers and reports the daemon's RSS then and right after start.
// Baseline in the same run: raw SQLite (SQLiteCpp), WAL + synchronous=FULL,
// one row per transaction, on a file in the same temporary directory.
// $BENCH_SECONDS sets each timed phase's length (default 5).
#include <SQLiteCpp/SQLiteCpp.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../../tests/integration/harness.hpp"

using namespace mg_test;
using namespace std::chrono_literals;

namespace {

struct phase_result {
  int clients = 0;
  long ok = 0;
  long errors = 0;
  double seconds = 0;
  std::vector<double> latencies_ms;
  std::string first_error;

  double rate() const { return seconds > 0 ? static_cast<double>(ok) / seconds : 0; }
  double percentile(double p) const {
    if (latencies_ms.empty())
      return 0;
    auto idx = static_cast<size_t>(p * static_cast<double>(latencies_ms.size() - 1) + 0.5);
    return latencies_ms[std::min(idx, latencies_ms.size() - 1)];
  }
};

// A unique, valid server URL for registration number n.
std::string server_url(long n) {
  return "http://127." + std::to_string((n >> 16) & 255) + "." + std::to_string((n >> 8) & 255) + "." +
         std::to_string(n & 255) + ":8000";
}

long vm_rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0)
      return std::atol(line.c_str() + 6);
  return -1;
}

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// Registers with `clients` keep-alive connections until `duration` elapsed or
// the registration counter `next` reaches `limit`.
phase_result run_phase(const daemon_process& d, int clients, std::chrono::milliseconds duration,
                       std::atomic<long>& next, long limit) {
  phase_result res;
  res.clients = clients;
  std::mutex mtx;
  auto start = clock_type::now();
  auto deadline = start + duration;
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&] {
      http_client c(d.host(), d.port(), 30s);
      std::vector<double> lat;
      long ok = 0;
      long errors = 0;
      int failed_in_a_row = 0;
      std::string first_error;
      while (clock_type::now() < deadline) {
        long n = next++;
        if (n >= limit)
          break;
        std::string body = "{\"url\":\"" + server_url(n) + "\",\"models\":[\"bench-model\"]}";
        auto t0 = clock_type::now();
        try {
          auto r = c.post("/v1/servers", body);
          if (r.status == 201) {
            lat.push_back(ms_since(t0));
            ++ok;
          } else {
            ++errors;
            if (first_error.empty())
              first_error = std::to_string(r.status) + " " + r.body.substr(0, 200);
          }
        } catch (const std::exception& e) {
          ++errors;
          if (first_error.empty())
            first_error = e.what();
          c.close();
          if (++failed_in_a_row >= 10)
            break;  // the daemon is gone or refusing: do not spin
          continue;
        }
        failed_in_a_row = 0;
      }
      std::lock_guard<std::mutex> guard(mtx);
      res.ok += ok;
      res.errors += errors;
      res.latencies_ms.insert(res.latencies_ms.end(), lat.begin(), lat.end());
      if (res.first_error.empty())
        res.first_error = first_error;
    });
  }
  for (auto& t : threads)
    t.join();
  res.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  std::sort(res.latencies_ms.begin(), res.latencies_ms.end());
  return res;
}

void print_phase(const char* label, const phase_result& r, daemon_process& d) {
  std::printf("%-28s %9.1f registrations/s  p50 %7.2f ms  p99 %7.2f ms  (%ld in %.2f s, %ld errors)\n",
              label, r.rate(), r.percentile(0.50), r.percentile(0.99), r.ok, r.seconds, r.errors);
  if (!r.first_error.empty())
    std::printf("  first error: %s\n", r.first_error.c_str());
  bool alive = d.running();
  if (r.errors > 0 || !alive) {
    auto err = d.stderr_text();
    if (!alive)
      std::printf("  the daemon exited with status %d\n", d.wait_exit(0s).value_or(-1));
    std::printf("  the daemon's stderr ends with:\n%s\n", err.substr(err.size() > 2000 ? err.size() - 2000 : 0).c_str());
  }
  if (!alive)
    throw std::runtime_error("the daemon died during the benchmark");
}

phase_result sqlite_baseline(const std::string& path, std::chrono::milliseconds duration) {
  SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE, 5000);
  db.exec("PRAGMA journal_mode=WAL");
  db.exec("PRAGMA synchronous=FULL");
  db.exec("CREATE TABLE servers (id TEXT PRIMARY KEY, url TEXT NOT NULL UNIQUE, record TEXT NOT NULL)");
  SQLite::Statement insert(db, "INSERT INTO servers (id, url, record) VALUES (?, ?, ?)");
  phase_result res;
  res.clients = 1;
  auto start = clock_type::now();
  for (long n = 0; clock_type::now() - start < duration; ++n) {
    auto t0 = clock_type::now();
    SQLite::Transaction tx(db);
    char id[32];
    std::snprintf(id, sizeof id, "srv_%012lx", n);
    insert.bind(1, id);
    insert.bind(2, server_url(n));
    insert.bind(3, "{\"models\":[\"bench-model\"],\"metadata\":{},\"health_path\":\"/health\"}");
    insert.exec();
    insert.reset();
    tx.commit();
    res.latencies_ms.push_back(ms_since(t0));
    ++res.ok;
  }
  res.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  std::sort(res.latencies_ms.begin(), res.latencies_ms.end());
  return res;
}

void stop_probing(const daemon_process& d) {
  http_client c(d.host(), d.port());
  c.post("/v1/health-checker/stop", "");  // best effort: no probes of the fake URLs
}

std::string fs_type(const std::string& path) {
  struct statfs st {};
  if (::statfs(path.c_str(), &st) != 0)
    return "unknown fs";
  switch (static_cast<unsigned long>(st.f_type)) {
    case 0xEF53: return "ext4";
    case 0x01021994: return "tmpfs: fsync costs nothing";
    case 0x794C7630: return "overlayfs";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "fs type 0x%lx", static_cast<unsigned long>(st.f_type));
      return buf;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string binary;
  if (argc > 1)
    binary = argv[1];
  else if (const char* env = std::getenv("MODELGATED"))
    binary = env;
#ifdef MODELGATED_PATH
  else
    binary = MODELGATED_PATH;
#endif
  if (binary.empty()) {
    std::fprintf(stderr, "usage: %s PATH_TO_MODELGATED (or set MODELGATED)\n", argv[0]);
    return 2;
  }
  double seconds = 5;
  if (const char* s = std::getenv("BENCH_SECONDS"))
    seconds = std::atof(s);
  auto phase = std::chrono::milliseconds(static_cast<long>(seconds * 1000));
  constexpr long target = 10000;

  try {
    std::printf("nproc: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    std::printf("modelgated: %s\n", binary.c_str());
    const std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--db", "{dir}/bench.db",
                                           "--health-interval", "3600", "--health-timeout", "10"};

    // 1. Throughput, on one daemon: 1 client, then 64 clients, each for a fixed time.
    {
      daemon_process d(binary, args);
      stop_probing(d);
      std::printf("temp dir: %s (%s); timed phases: %.1f s each\n\n", d.dir().c_str(),
                  fs_type(d.dir()).c_str(), seconds);
      auto base = sqlite_baseline(d.file("baseline.db"), phase);
      std::printf("%-28s %9.1f rows/s           p50 %7.2f ms  p99 %7.2f ms  (%ld in %.2f s)\n",
                  "raw sqlite WAL+FULL 1 row/tx:", base.rate(), base.percentile(0.50), base.percentile(0.99),
                  base.ok, base.seconds);
      std::atomic<long> next{0};
      auto one = run_phase(d, 1, phase, next, std::numeric_limits<long>::max());
      print_phase("modelgated, 1 client:", one, d);
      auto many = run_phase(d, 64, phase, next, std::numeric_limits<long>::max());
      print_phase("modelgated, 64 clients:", many, d);
      std::printf("ratio 64/1: %.2f\n", one.rate() > 0 ? many.rate() / one.rate() : 0.0);
      std::printf("modelgated 64 clients / raw sqlite: %.2f\n\n", base.rate() > 0 ? many.rate() / base.rate() : 0.0);
      d.terminate();
      auto status = d.wait_exit(10s);
      std::printf("daemon exit status after SIGTERM with %ld servers: %s\n\n", next.load(),
                  status ? std::to_string(*status).c_str() : "still running after 10 s");
    }

    // 2. Memory, on a fresh daemon: RSS right after start and with 10,000 servers.
    {
      daemon_process d(binary, args);
      stop_probing(d);
      long rss_start = vm_rss_kib(d.pid());
      std::atomic<long> next{0};
      auto fill = run_phase(d, 64, std::chrono::hours(1), next, target);
      print_phase("fresh daemon, fill to 10000:", fill, d);
      http_client c(d.host(), d.port(), 60s);
      auto t0 = clock_type::now();
      auto list = c.get("/v1/servers");
      double list_ms = ms_since(t0);
      long registered = 0;
      for (auto pos = list.body.find("\"id\""); pos != std::string::npos; pos = list.body.find("\"id\"", pos + 1))
        ++registered;
      std::printf("GET /v1/servers: %ld servers, %zu bytes in %.1f ms\n", registered, list.body.size(), list_ms);
      std::printf("daemon rss right after start: %ld KiB\n", rss_start);
      std::printf("daemon rss with %ld servers: %ld KiB\n", registered, vm_rss_kib(d.pid()));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "register_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
