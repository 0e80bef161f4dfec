// The store on ":memory:" and on a file: schema, migration from an empty
// file, atomic batches, reopening.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include "storage/server_store.hpp"

using namespace mg;
namespace fs = std::filesystem;

namespace {

/// A temporary folder removed at the end of the test.
struct temp_dir {
  fs::path path;
  temp_dir() {
    char tmpl[] = "/tmp/mg-store-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

server_record make_record(const std::string& id, const std::string& url) {
  server_record r;
  r.id = id;
  r.url = url;
  r.models = {"m1", "m2"};
  r.metadata = {{"zone", "a"}};
  r.api_key = "sk-key";
  r.registered_at = 1000;
  r.updated_at = 1000;
  return r;
}

} // namespace

TEST_CASE("an in-memory store starts empty at the current schema version", "[store]") {
  server_store store{":memory:"};
  CHECK(store.load_all().empty());
  CHECK(store.user_version() == server_store::schema_version);
}

TEST_CASE("a batch commits records and events together and they load back", "[store]") {
  server_store store{":memory:"};
  write_batch batch;
  batch.records.push_back(make_record("srv_000000000001", "http://a:1"));
  batch.records.push_back(make_record("srv_000000000002", "http://b:1"));
  batch.events.push_back({"srv_000000000001", 1000, "registered", std::string{"http://a:1"}});
  batch.events.push_back({"srv_000000000001", 2000, "deregistered", std::string{"manual"}});
  store.commit(batch);
  auto all = store.load_all();
  REQUIRE(all.size() == 2);
  CHECK(all[0].api_key == std::optional<std::string>{"sk-key"});
  CHECK(all[0].metadata == nlohmann::json{{"zone", "a"}});
  CHECK(all[0].models == std::vector<std::string>{"m1", "m2"});
  auto events = store.events("srv_000000000001");
  REQUIRE(events.size() == 2);
  CHECK(events[0].event == "registered");
  CHECK(events[1].event == "deregistered");
  CHECK(events[1].detail == std::optional<std::string>{"manual"});
  CHECK(store.events("srv_000000000002").empty());
}

TEST_CASE("a failing batch leaves nothing behind", "[store]") {
  server_store store{":memory:"};
  write_batch ok;
  ok.records.push_back(make_record("srv_000000000001", "http://a:1"));
  store.commit(ok);
  write_batch bad;
  bad.records.push_back(make_record("srv_000000000002", "http://b:1"));
  bad.records.push_back(make_record("srv_000000000003", "http://a:1")); // duplicate url
  CHECK_THROWS(store.commit(bad));
  auto all = store.load_all();
  REQUIRE(all.size() == 1);
  CHECK(all[0].id == "srv_000000000001");
}

TEST_CASE("an upsert replaces the whole record", "[store]") {
  server_store store{":memory:"};
  auto r = make_record("srv_000000000001", "http://a:1");
  store.commit({{r}, {}, {}});
  r.is_active = false;
  r.deregistered_at = 5000;
  r.deregistered_reason = "manual";
  r.status = server_status::unhealthy;
  r.consecutive_failures = 2;
  r.last_error = "boom";
  r.api_key.reset();
  store.commit({{r}, {}, {}});
  auto all = store.load_all();
  REQUIRE(all.size() == 1);
  CHECK_FALSE(all[0].is_active);
  CHECK(all[0].deregistered_at == std::optional<epoch_ms>{5000});
  CHECK(all[0].status == server_status::unhealthy);
  CHECK(all[0].consecutive_failures == 2);
  CHECK(all[0].last_error == std::optional<std::string>{"boom"});
  CHECK_FALSE(all[0].api_key);
}

TEST_CASE("a health update changes only the health fields", "[store]") {
  server_store store{":memory:"};
  auto r = make_record("srv_000000000001", "http://a:1");
  store.commit({{r}, {}, {}});
  auto probed = r;
  probed.status = server_status::healthy;
  probed.consecutive_failures = 0;
  probed.last_check_at = 7000;
  probed.last_response_time_ms = 3.5;
  probed.updated_at = 7000;
  probed.models = {"changed-in-memory-only"}; // not a health field: not written
  store.commit({{}, {&probed}, {{r.id, 7000, "healthy", std::nullopt}}}, durability::normal);
  auto all = store.load_all();
  REQUIRE(all.size() == 1);
  CHECK(all[0].status == server_status::healthy);
  CHECK(all[0].last_check_at == std::optional<epoch_ms>{7000});
  CHECK(all[0].last_response_time_ms == std::optional<double>{3.5});
  CHECK(all[0].updated_at == 7000);
  CHECK(all[0].models == std::vector<std::string>{"m1", "m2"});
  CHECK(store.events(r.id).size() == 1);
}

TEST_CASE("a file store is created, migrated from an empty file, and reopened intact", "[store]") {
  temp_dir dir;
  auto path = (dir.path / "m.db").string();
  { std::FILE* f = std::fopen(path.c_str(), "w"); std::fclose(f); } // empty file: version 0
  {
    server_store store{path};
    CHECK(store.user_version() == server_store::schema_version);
    CHECK(store.journal_mode() == "wal");
    store.commit({{make_record("srv_000000000001", "http://a:1")},
                  {},
                  {{"srv_000000000001", 1000, "registered", std::nullopt}}});
  }
  server_store again{path};
  auto all = again.load_all();
  REQUIRE(all.size() == 1);
  CHECK(all[0].url == "http://a:1");
  CHECK(again.events("srv_000000000001").size() == 1);
  SQLite::Database db{path, SQLite::OPEN_READONLY, 5000};
  CHECK(db.execAndGet("PRAGMA integrity_check").getString() == "ok");
  CHECK(db.tableExists("model_servers"));
  CHECK(db.tableExists("server_events"));
}

TEST_CASE("a file that is not a database or is from a newer schema is refused", "[store]") {
  temp_dir dir;
  auto garbage = (dir.path / "garbage.db").string();
  {
    std::FILE* f = std::fopen(garbage.c_str(), "w");
    std::fputs("this is not a sqlite database, not even close..........................", f);
    std::fclose(f);
  }
  CHECK_THROWS_WITH(server_store{garbage}, Catch::Contains("garbage.db"));
  auto newer = (dir.path / "newer.db").string();
  {
    SQLite::Database db{newer, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE};
    db.exec("PRAGMA user_version = 99");
  }
  CHECK_THROWS_WITH(server_store{newer}, Catch::Contains("newer than this build"));
}
