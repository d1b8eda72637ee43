// SQLite (libsqlite3, Debian's 3.40) as a non-durable local store: one
// WITHOUT ROWID table keyed by a BLOB, journal_mode=WAL, synchronous=OFF,
// mmap_size of 2 GiB (reads through the mapping, not read()), a 64 MiB page
// cache, prepared statements reused for every operation. Each statement is
// its own transaction unless the driver brackets a run of writes with
// BeginWrites / CommitWrites. Several processes may share the file (WAL: one
// writer and any number of readers at once).
#include <sqlite3.h>

#include "adapter.h"

namespace bench {
namespace {

class SqliteEngine final : public Engine {
 public:
  ~SqliteEngine() override { Close(); }
  const char* Name() const override { return "SQLite"; }
  bool MultiProcess() const override { return true; }
  bool Transactional() const override { return true; }
  bool AtomicBatch() const override { return true; }

  void Open(const OpenParams& params) override {
    const std::string path = params.dir + "/store.sqlite";
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (params.create ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
      std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      Close();
      Fail("SQLite", "open " + path, msg);
    }
    sqlite3_busy_timeout(db_, 10000);
    Exec("PRAGMA journal_mode=WAL");
    Exec("PRAGMA synchronous=OFF");
    Exec("PRAGMA mmap_size=2147418112");
    Exec("PRAGMA cache_size=-65536");
    if (params.create) Exec("CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID");
    put_ = Prepare("INSERT OR REPLACE INTO kv(k, v) VALUES(?1, ?2)");
    get_ = Prepare("SELECT v FROM kv WHERE k = ?1");
    erase_ = Prepare("DELETE FROM kv WHERE k = ?1");
    begin_ = Prepare("BEGIN");
    commit_ = Prepare("COMMIT");
  }
  void Close() override {
    for (sqlite3_stmt** s : {&put_, &get_, &erase_, &begin_, &commit_}) {
      sqlite3_finalize(*s);
      *s = nullptr;
    }
    if (db_ != nullptr && sqlite3_close(db_) != SQLITE_OK) Fail("SQLite", "close", sqlite3_errmsg(db_));
    db_ = nullptr;
  }

  void Put(std::string_view key, std::string_view value) override {
    Bind(put_, 1, key);
    Bind(put_, 2, value);
    Step(put_, SQLITE_DONE, "put");
  }
  bool Get(std::string_view key, std::string* value) override {
    Bind(get_, 1, key);
    int rc = sqlite3_step(get_);
    if (rc == SQLITE_ROW) {
      value->assign(static_cast<const char*>(sqlite3_column_blob(get_, 0)),
                    static_cast<size_t>(sqlite3_column_bytes(get_, 0)));
    }
    sqlite3_reset(get_);
    if (rc == SQLITE_DONE) return false;
    if (rc != SQLITE_ROW) Fail("SQLite", "get", sqlite3_errmsg(db_));
    return true;
  }
  bool Erase(std::string_view key) override {
    Bind(erase_, 1, key);
    Step(erase_, SQLITE_DONE, "delete");
    return sqlite3_changes(db_) > 0;
  }
  void BeginWrites() override { Step(begin_, SQLITE_DONE, "begin"); }
  void CommitWrites() override { Step(commit_, SQLITE_DONE, "commit"); }
  void PutBatch(const std::vector<KeyValue>& kvs) override {
    BeginWrites();
    for (const auto& kv : kvs) Put(kv.first, kv.second);
    CommitWrites();
  }

 private:
  void Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err != nullptr ? err : "unknown error";
      sqlite3_free(err);
      Fail("SQLite", sql, msg);
    }
  }
  sqlite3_stmt* Prepare(const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
      Fail("SQLite", std::string("prepare ") + sql, sqlite3_errmsg(db_));
    }
    return stmt;
  }
  void Bind(sqlite3_stmt* stmt, int index, std::string_view s) {
    if (sqlite3_bind_blob(stmt, index, s.data(), static_cast<int>(s.size()), SQLITE_STATIC) != SQLITE_OK) {
      Fail("SQLite", "bind", sqlite3_errmsg(db_));
    }
  }
  void Step(sqlite3_stmt* stmt, int want, const char* what) {
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != want) Fail("SQLite", what, sqlite3_errmsg(db_));
  }
  sqlite3* db_ = nullptr;
  sqlite3_stmt* put_ = nullptr;
  sqlite3_stmt* get_ = nullptr;
  sqlite3_stmt* erase_ = nullptr;
  sqlite3_stmt* begin_ = nullptr;
  sqlite3_stmt* commit_ = nullptr;
};

}  // namespace

std::unique_ptr<Engine> MakeSqlite() { return std::make_unique<SqliteEngine>(); }

}  // namespace bench
