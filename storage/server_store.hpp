// Durable storage of server records and their events, in one SQLite file.
//
// `server_store` owns one SQLite connection (WAL, synchronous=FULL, busy
// timeout) and its prepared statements. The schema version lives in
// `PRAGMA user_version` and is migrated forward at open. Every write goes
// through `commit`, which applies a whole `write_batch` in one transaction:
// all of it or none of it. Not thread-safe: one owner (the registry actor)
// uses it from one thread at a time. No CAF in here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "protocol/server_record.hpp"

namespace mg {

/// Writes that become durable together.
struct write_batch {
  std::vector<server_record> records; // inserted or replaced whole, by id
  /// Records whose health fields alone changed (status, failures, last_*,
  /// updated_at): a narrow UPDATE, much cheaper than a whole row. Not owned:
  /// the records must outlive the commit (the registry's own map entries).
  std::vector<const server_record*> health;
  std::vector<server_event> events; // appended

  bool empty() const {
    return records.empty() && health.empty() && events.empty();
  }
  void clear() {
    records.clear();
    health.clear();
    events.clear();
  }
};

/// How hard a commit must be on the disk.
enum class durability {
  full,   // fsync before returning: acknowledged changes (survive power loss)
  normal, // WAL without fsync: survives a crash of the process, not of the OS;
          // for probe results, which the next probe recomputes anyway
};

class server_store {
public:
  /// The schema version this build writes.
  static constexpr int schema_version = 1;

  /// Opens (creating if missing) and migrates the database at `path`
  /// (":memory:" allowed). Throws std::runtime_error with the path and the
  /// reason when the file cannot be opened, is not a database, or has a
  /// schema newer than this build.
  explicit server_store(const std::string& path);
  ~server_store();
  server_store(const server_store&) = delete;
  server_store& operator=(const server_store&) = delete;

  /// Every record, active or not.
  std::vector<server_record> load_all();

  /// Applies `batch` in one transaction. Throws on failure, after rolling back.
  void commit(const write_batch& batch, durability level = durability::full);

  /// The events of one server, oldest first.
  std::vector<server_event> events(const std::string& server_id);

  /// `PRAGMA user_version` as found on disk after migration.
  int user_version();

  /// The journal mode in effect ("wal", or "memory" for ":memory:").
  std::string journal_mode();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace mg
