// LevelDB (libleveldb, Debian's 1.23) as a non-durable local store: writes
// go to its log without sync (WriteOptions::sync = false, the default). Tuned
// for point lookups like RocksDB: a 10-bit Bloom filter, a block cache of 2x
// the raw bytes (at least 256 MiB), no compression, and a 64 MiB write buffer
// (RocksDB's default; LevelDB's own is 4 MiB).
#include <leveldb/cache.h>
#include <leveldb/db.h>
#include <leveldb/filter_policy.h>
#include <leveldb/write_batch.h>

#include <algorithm>

#include "adapter.h"

namespace bench {
namespace {

class LeveldbEngine final : public Engine {
 public:
  ~LeveldbEngine() override { Close(); }
  const char* Name() const override { return "LevelDB"; }
  const char* MultiProcessNote() const override { return "one process at a time (LOCK file)"; }
  bool AtomicBatch() const override { return true; }

  void Open(const OpenParams& params) override {
    const uint64_t raw = params.expected * (params.key_size + params.value_size);
    cache_.reset(leveldb::NewLRUCache(std::max<uint64_t>(uint64_t{256} << 20, 2 * raw)));
    filter_.reset(leveldb::NewBloomFilterPolicy(10));
    leveldb::Options options;
    options.create_if_missing = params.create;
    options.compression = leveldb::kNoCompression;
    options.block_cache = cache_.get();
    options.filter_policy = filter_.get();
    options.write_buffer_size = size_t{64} << 20;
    leveldb::DB* db = nullptr;
    Check(leveldb::DB::Open(options, params.dir, &db), "open");
    db_.reset(db);
  }
  void Close() override {
    db_.reset();
    cache_.reset();
    filter_.reset();
  }

  void Put(std::string_view key, std::string_view value) override {
    Check(db_->Put(write_, Slice(key), Slice(value)), "put");
  }
  bool Get(std::string_view key, std::string* value) override {
    leveldb::Status s = db_->Get(read_, Slice(key), value);
    if (s.IsNotFound()) return false;
    Check(s, "get");
    return true;
  }
  bool Erase(std::string_view key) override {
    Check(db_->Delete(write_, Slice(key)), "delete");
    return true;
  }
  void PutBatch(const std::vector<KeyValue>& kvs) override {
    leveldb::WriteBatch batch;
    for (const auto& kv : kvs) batch.Put(Slice(kv.first), Slice(kv.second));
    Check(db_->Write(write_, &batch), "write batch");
  }

 private:
  static leveldb::Slice Slice(std::string_view s) { return leveldb::Slice(s.data(), s.size()); }
  static void Check(const leveldb::Status& s, const char* what) {
    if (!s.ok()) Fail("LevelDB", what, s.ToString());
  }
  std::unique_ptr<leveldb::Cache> cache_;
  std::unique_ptr<const leveldb::FilterPolicy> filter_;
  std::unique_ptr<leveldb::DB> db_;
  leveldb::WriteOptions write_;
  leveldb::ReadOptions read_;
};

}  // namespace

std::unique_ptr<Engine> MakeLeveldb() { return std::make_unique<LeveldbEngine>(); }

}  // namespace bench
