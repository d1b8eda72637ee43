// RocksDB (librocksdb, Debian's 7.8) as a non-durable local store: writes go
// to the write-ahead log without sync (WriteOptions::sync = false, the
// default; a write survives the death of the process, as mapkv's do). Tuned
// for point lookups the way its own guide suggests: a 10-bit Bloom filter per
// table, a block cache large enough to hold the whole data set (2x the raw
// bytes, at least 256 MiB), no compression (the values are random bytes).
// Other options are RocksDB's defaults (64 MiB memtable, level compaction in
// background threads).
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>

#include "adapter.h"

namespace bench {
namespace {

class RocksdbEngine final : public Engine {
 public:
  const char* Name() const override { return "RocksDB"; }
  const char* MultiProcessNote() const override {
    return "one process at a time (LOCK file); secondary instances only catch up on demand";
  }
  bool AtomicBatch() const override { return true; }

  void Open(const OpenParams& params) override {
    rocksdb::Options options;
    options.create_if_missing = params.create;
    options.compression = rocksdb::kNoCompression;
    rocksdb::BlockBasedTableOptions table;
    const uint64_t raw = params.expected * (params.key_size + params.value_size);
    table.block_cache = rocksdb::NewLRUCache(std::max<uint64_t>(uint64_t{256} << 20, 2 * raw));
    table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    rocksdb::DB* db = nullptr;
    Check(rocksdb::DB::Open(options, params.dir, &db), "open");
    db_.reset(db);
  }
  void Close() override {
    if (db_) Check(db_->Close(), "close");
    db_.reset();
  }

  void Put(std::string_view key, std::string_view value) override {
    Check(db_->Put(write_, Slice(key), Slice(value)), "put");
  }
  bool Get(std::string_view key, std::string* value) override {
    rocksdb::Status s = db_->Get(read_, Slice(key), value);
    if (s.IsNotFound()) return false;
    Check(s, "get");
    return true;
  }
  bool Erase(std::string_view key) override {
    // Delete does not say whether the key was there; the driver only erases
    // present keys.
    Check(db_->Delete(write_, Slice(key)), "delete");
    return true;
  }
  void PutBatch(const std::vector<KeyValue>& kvs) override {
    rocksdb::WriteBatch batch;
    for (const auto& kv : kvs) Check(batch.Put(Slice(kv.first), Slice(kv.second)), "batch put");
    Check(db_->Write(write_, &batch), "write batch");
  }

 private:
  static rocksdb::Slice Slice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
  static void Check(const rocksdb::Status& s, const char* what) {
    if (!s.ok()) Fail("RocksDB", what, s.ToString());
  }
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::WriteOptions write_;
  rocksdb::ReadOptions read_;
};

}  // namespace

std::unique_ptr<Engine> MakeRocksdb() { return std::make_unique<RocksdbEngine>(); }

}  // namespace bench
