// durability_test.cpp — black-box crash test of modelgated's registry.
//
// 32 client threads register servers concurrently against a file database;
// once at least 500 registrations were acknowledged with 201, the daemon is
// killed with SIGKILL while registrations are still in flight. Then the
// SQLite file must pass `PRAGMA integrity_check`, and a daemon restarted on it
// must know every acknowledged id, with its URL.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <SQLiteCpp/SQLiteCpp.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "harness.hpp"

using json = nlohmann::json;
using namespace mg_test;
using namespace std::chrono_literals;

TEST_CASE("every acknowledged registration survives kill -9 and the database stays intact",
          "[integration][durability]") {
  constexpr int threads = 32;
  constexpr int wanted = 500;     // acknowledged registrations before the kill
  constexpr int max_tries = 4000; // upper bound on attempts, never reached in practice
  temp_dir db_dir("mgdurable");
  const auto db_path = db_dir.file("m.db");
  const std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--db", db_path,
                                         "--health-interval", "3600", "--health-timeout", "1"};

  std::mutex mtx;
  std::map<std::string, std::string> acked;  // id -> url
  std::vector<std::string> unexpected;       // answers other than 201 while alive
  std::atomic<int> acked_count{0};
  std::atomic<int> next{0};
  std::atomic<bool> killed{false};

  {
    daemon_process daemon(modelgated_bin(), args);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        http_client c(daemon.host(), daemon.port(), 10s);
        for (int i = next++; i < max_tries; i = next++) {
          auto url = "http://127.0.0.1:" + std::to_string(10000 + i);
          try {
            auto r = c.post("/v1/servers", json({{"url", url}, {"models", {"m"}}}).dump());
            auto j = json::parse(r.body, nullptr, false);
            std::lock_guard<std::mutex> guard(mtx);
            if (r.status == 201 && j.is_object() && j.contains("id") && j["id"].is_string()) {
              acked.emplace(j["id"].get<std::string>(), url);
              ++acked_count;
            } else if (!killed) {
              unexpected.push_back(std::to_string(r.status) + " " + r.body);
            }
          } catch (const std::exception& e) {
            std::lock_guard<std::mutex> guard(mtx);
            if (!killed)
              unexpected.push_back(e.what());
            return;  // connection lost: after the kill, that is expected
          }
          if (killed)
            return;
        }
      });
    }
    bool reached = wait_until([&] { return acked_count >= wanted; }, 90s);
    killed = true;
    daemon.kill9();  // registrations are still in flight here
    for (auto& w : workers)
      w.join();
    auto status = daemon.wait_exit(5s);
    INFO("acknowledged before the kill: " << acked_count << "; daemon stderr:\n" << daemon.stderr_text());
    REQUIRE(reached);
    REQUIRE(status == 128 + 9);
    {
      std::lock_guard<std::mutex> guard(mtx);
      INFO(unexpected.size() << " unexpected answers; first: " << (unexpected.empty() ? "" : unexpected[0]));
      CHECK(unexpected.empty());
    }
  }

  // The file as the crash left it (WAL included) must be a sound database.
  {
    SQLite::Database db(db_path, SQLite::OPEN_READWRITE, 5000);
    auto result = db.execAndGet("PRAGMA integrity_check").getString();
    CHECK(result == "ok");
  }

  daemon_process daemon(modelgated_bin(), args);
  http_client c(daemon.host(), daemon.port(), 10s);
  auto list = c.get("/v1/servers?include_inactive=true");
  REQUIRE(list.status == 200);
  auto j = json::parse(list.body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("data"));
  REQUIRE(j["data"].is_array());
  std::set<std::string> listed;
  for (const auto& rec : j["data"])
    if (rec.contains("id") && rec["id"].is_string())
      listed.insert(rec["id"].get<std::string>());
  CHECK(listed.size() == j["data"].size());  // no id twice

  std::vector<std::string> missing_from_list;
  std::vector<std::string> bad_get;
  for (const auto& [id, url] : acked) {
    if (listed.count(id) == 0)
      missing_from_list.push_back(id);
    auto r = c.get("/v1/servers/" + id);
    auto rec = json::parse(r.body, nullptr, false);
    if (r.status != 200 || !rec.is_object() || rec.value("url", "") != url)
      bad_get.push_back(id + " (" + url + ") -> " + std::to_string(r.status) + " " + r.body);
  }
  INFO(acked.size() << " acknowledged ids checked");
  INFO(missing_from_list.size() << " missing from the list; first: "
                                << (missing_from_list.empty() ? "" : missing_from_list[0]));
  INFO(bad_get.size() << " failed GET by id; first: " << (bad_get.empty() ? "" : bad_get[0]));
  CHECK(acked.size() >= static_cast<size_t>(wanted));
  CHECK(missing_from_list.empty());
  CHECK(bad_get.empty());
}
