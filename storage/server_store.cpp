#include "storage/server_store.hpp"

#include <stdexcept>

#include <SQLiteCpp/SQLiteCpp.h>

namespace mg {

namespace {

// Migration i takes the schema from version i to i + 1. Append, never edit.
const char* const migrations[] = {
  // 0 -> 1: the first schema.
  R"sql(
  CREATE TABLE model_servers (
    id                    TEXT PRIMARY KEY,
    url                   TEXT NOT NULL UNIQUE,
    name                  TEXT,
    models                TEXT NOT NULL,      -- JSON array of strings
    metadata              TEXT NOT NULL,      -- JSON object
    health_path           TEXT NOT NULL,
    health_expect         TEXT NOT NULL,
    api_key               TEXT,
    is_active             INTEGER NOT NULL,
    status                TEXT NOT NULL,
    consecutive_failures  INTEGER NOT NULL,
    last_check_at         INTEGER,            -- ms since the epoch
    last_response_time_ms REAL,
    last_error            TEXT,
    last_error_kind       TEXT,
    registered_at         INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    deregistered_at       INTEGER,
    deregistered_reason   TEXT
  );
  CREATE TABLE server_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id  TEXT NOT NULL REFERENCES model_servers(id),
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    detail     TEXT
  );
  CREATE INDEX server_events_by_server ON server_events(server_id, seq);
  )sql",
};

constexpr int migration_count = static_cast<int>(sizeof migrations / sizeof migrations[0]);
static_assert(migration_count == server_store::schema_version);

template <class T>
void bind_opt(SQLite::Statement& st, int index, const std::optional<T>& value) {
  if (value)
    st.bind(index, *value);
  else
    st.bind(index);
}

template <class T>
std::optional<T> column_opt(SQLite::Statement& st, int index) {
  if (st.isColumnNull(index))
    return std::nullopt;
  if constexpr (std::is_same_v<T, std::string>)
    return st.getColumn(index).getString();
  else if constexpr (std::is_same_v<T, double>)
    return st.getColumn(index).getDouble();
  else
    return static_cast<T>(st.getColumn(index).getInt64());
}

/// Binds the health columns — status, consecutive_failures, last_check_at,
/// last_response_time_ms, last_error, last_error_kind — to the parameters
/// `first` .. `first + 5`, in that order, in both the upsert and the update.
void bind_health_fields(SQLite::Statement& st, int first, const server_record& r) {
  st.bind(first, to_string(r.status));
  st.bind(first + 1, r.consecutive_failures);
  bind_opt(st, first + 2, r.last_check_at);
  bind_opt(st, first + 3, r.last_response_time_ms);
  bind_opt(st, first + 4, r.last_error);
  bind_opt(st, first + 5, r.last_error_kind);
}

} // namespace

struct server_store::impl {
  SQLite::Database db;
  std::unique_ptr<SQLite::Statement> upsert;
  std::unique_ptr<SQLite::Statement> update_health;
  std::unique_ptr<SQLite::Statement> insert_event;
  durability level = durability::full;
  std::unique_ptr<SQLite::Statement> select_events;

  explicit impl(const std::string& path)
    : db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE, 5000) {
  }
};

server_store::server_store(const std::string& path) {
  try {
    impl_ = std::make_unique<impl>(path);
    auto& db = impl_->db;
    // Fails here, not later, when the file is not a database.
    db.execAndGet("PRAGMA journal_mode=WAL");
    // FULL: a commit survives power loss, not only a crash of the process;
    // group commit in the registry keeps the fsyncs few.
    db.exec("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
    int version = db.execAndGet("PRAGMA user_version").getInt();
    if (version > schema_version)
      throw std::runtime_error("schema version " + std::to_string(version)
                               + " is newer than this build's " + std::to_string(schema_version));
    for (; version < schema_version; ++version) {
      SQLite::Transaction tx{db};
      db.exec(migrations[version]);
      db.exec("PRAGMA user_version = " + std::to_string(version + 1));
      tx.commit();
    }
    impl_->upsert = std::make_unique<SQLite::Statement>(db, R"sql(
      INSERT INTO model_servers (id, url, name, models, metadata, health_path, health_expect,
        api_key, is_active, status, consecutive_failures, last_check_at, last_response_time_ms,
        last_error, last_error_kind, registered_at, updated_at, deregistered_at, deregistered_reason)
      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
      ON CONFLICT(id) DO UPDATE SET url = excluded.url, name = excluded.name,
        models = excluded.models, metadata = excluded.metadata,
        health_path = excluded.health_path, health_expect = excluded.health_expect,
        api_key = excluded.api_key, is_active = excluded.is_active, status = excluded.status,
        consecutive_failures = excluded.consecutive_failures,
        last_check_at = excluded.last_check_at,
        last_response_time_ms = excluded.last_response_time_ms,
        last_error = excluded.last_error, last_error_kind = excluded.last_error_kind,
        registered_at = excluded.registered_at, updated_at = excluded.updated_at,
        deregistered_at = excluded.deregistered_at,
        deregistered_reason = excluded.deregistered_reason)sql");
    impl_->update_health = std::make_unique<SQLite::Statement>(db, R"sql(
      UPDATE model_servers SET status = ?2, consecutive_failures = ?3, last_check_at = ?4,
        last_response_time_ms = ?5, last_error = ?6, last_error_kind = ?7, updated_at = ?8
      WHERE id = ?1)sql");
    impl_->insert_event = std::make_unique<SQLite::Statement>(
      db, "INSERT INTO server_events (server_id, at, event, detail) VALUES (?1, ?2, ?3, ?4)");
    impl_->select_events = std::make_unique<SQLite::Statement>(
      db, "SELECT server_id, at, event, detail FROM server_events WHERE server_id = ?1 "
          "ORDER BY seq");
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot open database " + path + ": " + e.what());
  }
}

server_store::~server_store() = default;

std::vector<server_record> server_store::load_all() {
  SQLite::Statement q{impl_->db, R"sql(
    SELECT id, url, name, models, metadata, health_path, health_expect, api_key, is_active,
      status, consecutive_failures, last_check_at, last_response_time_ms, last_error,
      last_error_kind, registered_at, updated_at, deregistered_at, deregistered_reason
    FROM model_servers ORDER BY registered_at, id)sql"};
  std::vector<server_record> result;
  while (q.executeStep()) {
    server_record r;
    r.id = q.getColumn(0).getString();
    r.url = q.getColumn(1).getString();
    r.name = column_opt<std::string>(q, 2);
    r.models = nlohmann::json::parse(q.getColumn(3).getString()).get<std::vector<std::string>>();
    r.metadata = nlohmann::json::parse(q.getColumn(4).getString());
    r.health_path = q.getColumn(5).getString();
    r.expect = parse_health_expect(q.getColumn(6).getString()).value_or(health_expect::json);
    r.api_key = column_opt<std::string>(q, 7);
    r.is_active = q.getColumn(8).getInt() != 0;
    r.status = parse_server_status(q.getColumn(9).getString()).value_or(server_status::unknown);
    r.consecutive_failures = q.getColumn(10).getInt();
    r.last_check_at = column_opt<epoch_ms>(q, 11);
    r.last_response_time_ms = column_opt<double>(q, 12);
    r.last_error = column_opt<std::string>(q, 13);
    r.last_error_kind = column_opt<std::string>(q, 14);
    r.registered_at = q.getColumn(15).getInt64();
    r.updated_at = q.getColumn(16).getInt64();
    r.deregistered_at = column_opt<epoch_ms>(q, 17);
    r.deregistered_reason = column_opt<std::string>(q, 18);
    result.push_back(std::move(r));
  }
  return result;
}

void server_store::commit(const write_batch& batch, durability level) {
  if (batch.empty())
    return;
  if (level != impl_->level) {
    impl_->db.exec(level == durability::full ? "PRAGMA synchronous=FULL"
                                             : "PRAGMA synchronous=NORMAL");
    impl_->level = level;
  }
  SQLite::Transaction tx{impl_->db, SQLite::TransactionBehavior::IMMEDIATE};
  auto& up = *impl_->upsert;
  for (const auto& r : batch.records) {
    up.reset();
    up.clearBindings();
    up.bind(1, r.id);
    up.bind(2, r.url);
    bind_opt(up, 3, r.name);
    up.bind(4, nlohmann::json(r.models).dump());
    up.bind(5, r.metadata.dump());
    up.bind(6, r.health_path);
    up.bind(7, to_string(r.expect));
    bind_opt(up, 8, r.api_key);
    up.bind(9, r.is_active ? 1 : 0);
    bind_health_fields(up, 10, r);
    up.bind(16, r.registered_at);
    up.bind(17, r.updated_at);
    bind_opt(up, 18, r.deregistered_at);
    bind_opt(up, 19, r.deregistered_reason);
    up.exec();
  }
  auto& hu = *impl_->update_health;
  for (const auto* r : batch.health) {
    hu.reset();
    hu.clearBindings();
    hu.bind(1, r->id);
    bind_health_fields(hu, 2, *r);
    hu.bind(8, r->updated_at);
    hu.exec();
  }
  auto& ins = *impl_->insert_event;
  for (const auto& ev : batch.events) {
    ins.reset();
    ins.clearBindings();
    ins.bind(1, ev.server_id);
    ins.bind(2, ev.at);
    ins.bind(3, ev.event);
    bind_opt(ins, 4, ev.detail);
    ins.exec();
  }
  tx.commit();
}

std::vector<server_event> server_store::events(const std::string& server_id) {
  auto& q = *impl_->select_events;
  q.reset();
  q.bind(1, server_id);
  std::vector<server_event> result;
  while (q.executeStep()) {
    server_event ev;
    ev.server_id = q.getColumn(0).getString();
    ev.at = q.getColumn(1).getInt64();
    ev.event = q.getColumn(2).getString();
    ev.detail = column_opt<std::string>(q, 3);
    result.push_back(std::move(ev));
  }
  q.reset();
  return result;
}

int server_store::user_version() {
  return impl_->db.execAndGet("PRAGMA user_version").getInt();
}

std::string server_store::journal_mode() {
  return impl_->db.execAndGet("PRAGMA journal_mode").getString();
}

} // namespace mg
