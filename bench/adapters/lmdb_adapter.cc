// LMDB (liblmdb) as a non-durable local store: MDB_WRITEMAP | MDB_NOSYNC (no
// fsync or msync at commit; a commit is still atomic and survives the death
// of the process), and a map size fixed up front, which LMDB needs (the file
// can never outgrow it): 1 GiB plus 1 KiB per expected entry.
//
// Gets: each get is its own read transaction, as an application serving
// requests would do; the transaction handle is reused through
// mdb_txn_reset / mdb_txn_renew (LMDB's cheap path), so each get still takes
// a fresh snapshot. Writes: one write transaction per put unless the driver
// brackets a run of them with BeginWrites / CommitWrites.
#include <lmdb.h>

#include <cstring>

#include "adapter.h"

namespace bench {
namespace {

class LmdbEngine final : public Engine {
 public:
  ~LmdbEngine() override {
    if (env_ != nullptr) Close();
  }
  const char* Name() const override { return "LMDB"; }
  bool MultiProcess() const override { return true; }
  bool Transactional() const override { return true; }
  bool AtomicBatch() const override { return true; }

  void Open(const OpenParams& params) override {
    Check(mdb_env_create(&env_), "mdb_env_create");
    const size_t map_size = (size_t{1} << 30) + params.expected * 1024;
    Check(mdb_env_set_mapsize(env_, map_size), "mdb_env_set_mapsize");
    Check(mdb_env_set_maxreaders(env_, 126), "mdb_env_set_maxreaders");
    Check(mdb_env_open(env_, params.dir.c_str(), MDB_WRITEMAP | MDB_NOSYNC, 0600), "mdb_env_open");
    MDB_txn* txn = nullptr;
    Check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    Check(mdb_dbi_open(txn, nullptr, 0, &dbi_), "mdb_dbi_open");
    Check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  void Close() override {
    if (read_txn_ != nullptr) mdb_txn_abort(read_txn_);
    read_txn_ = nullptr;
    if (write_txn_ != nullptr) mdb_txn_abort(write_txn_);
    write_txn_ = nullptr;
    if (env_ != nullptr) mdb_env_close(env_);
    env_ = nullptr;
  }

  void Put(std::string_view key, std::string_view value) override {
    MDB_val k = Val(key), v = Val(value);
    MDB_txn* txn = WriteTxn();
    Check(mdb_put(txn, dbi_, &k, &v, 0), "mdb_put");
    if (txn != write_txn_) Check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  bool Get(std::string_view key, std::string* value) override {
    if (read_txn_ == nullptr) {
      Check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &read_txn_), "mdb_txn_begin(read)");
    } else {
      Check(mdb_txn_renew(read_txn_), "mdb_txn_renew");
    }
    MDB_val k = Val(key), v;
    int rc = mdb_get(read_txn_, dbi_, &k, &v);
    if (rc == 0) value->assign(static_cast<const char*>(v.mv_data), v.mv_size);
    mdb_txn_reset(read_txn_);
    if (rc == MDB_NOTFOUND) return false;
    Check(rc, "mdb_get");
    return true;
  }
  bool Erase(std::string_view key) override {
    MDB_val k = Val(key);
    MDB_txn* txn = WriteTxn();
    int rc = mdb_del(txn, dbi_, &k, nullptr);
    if (rc != 0 && rc != MDB_NOTFOUND) Check(rc, "mdb_del");
    if (txn != write_txn_) Check(mdb_txn_commit(txn), "mdb_txn_commit");
    return rc == 0;
  }
  void BeginWrites() override { Check(mdb_txn_begin(env_, nullptr, 0, &write_txn_), "mdb_txn_begin"); }
  void CommitWrites() override {
    MDB_txn* txn = write_txn_;
    write_txn_ = nullptr;
    Check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  void PutBatch(const std::vector<KeyValue>& kvs) override {
    BeginWrites();
    for (const auto& kv : kvs) Put(kv.first, kv.second);
    CommitWrites();
  }

 private:
  static MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
  static void Check(int rc, const char* what) {
    if (rc != 0) Fail("LMDB", what, mdb_strerror(rc));
  }
  MDB_txn* WriteTxn() {
    if (write_txn_ != nullptr) return write_txn_;
    MDB_txn* txn = nullptr;
    Check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    return txn;
  }
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_txn* read_txn_ = nullptr;
  MDB_txn* write_txn_ = nullptr;
};

}  // namespace

std::unique_ptr<Engine> MakeLmdb() { return std::make_unique<LmdbEngine>(); }

}  // namespace bench
