// Kyoto Cabinet's HashDB (libkyotocabinet, Debian's 1.2.79): a bucket array
// of 2x the expected entries (fixed at creation), the memory-mapped region
// (tune_map) sized to hold the whole file (3x the raw bytes, at least
// 64 MiB, its default), no automatic transactions or sync. Atomic batches use
// its soft transactions (begin_transaction(false)).
#include <kchashdb.h>

#include <algorithm>

#include "adapter.h"

namespace bench {
namespace {

class KyotoEngine final : public Engine {
 public:
  ~KyotoEngine() override { Close(); }
  const char* Name() const override { return "Kyoto"; }
  const char* MultiProcessNote() const override {
    return "a writer holds an exclusive file lock; other processes cannot open it meanwhile";
  }
  bool AtomicBatch() const override { return true; }

  void Open(const OpenParams& params) override {
    db_ = std::make_unique<kyotocabinet::HashDB>();
    const uint64_t raw = params.expected * (params.key_size + params.value_size);
    db_->tune_buckets(static_cast<int64_t>(std::max<uint64_t>(2 * params.expected, 1024)));
    db_->tune_map(static_cast<int64_t>(std::max<uint64_t>(3 * raw, uint64_t{64} << 20)));
    uint32_t mode = kyotocabinet::HashDB::OWRITER | kyotocabinet::HashDB::OCREATE;
    if (params.create) mode |= kyotocabinet::HashDB::OTRUNCATE;
    if (!db_->open(params.dir + "/store.kch", mode)) Error("open");
  }
  void Close() override {
    if (db_ && !db_->close()) Error("close");
    db_.reset();
  }

  void Put(std::string_view key, std::string_view value) override {
    if (!db_->set(key.data(), key.size(), value.data(), value.size())) Error("set");
  }
  bool Get(std::string_view key, std::string* value) override {
    // The buffer form copies without allocating (the others return new[]
    // memory or need a std::string key).
    int32_t size = db_->get(key.data(), key.size(), buffer_.data(), buffer_.size());
    if (size >= 0 && static_cast<size_t>(size) <= buffer_.size()) {
      value->assign(buffer_.data(), static_cast<size_t>(size));
      return true;
    }
    if (size >= 0) Fail("Kyoto", "get", "value larger than the bench's buffer");
    if (db_->error().code() == kyotocabinet::BasicDB::Error::NOREC) return false;
    Error("get");
  }
  bool Erase(std::string_view key) override {
    if (db_->remove(key.data(), key.size())) return true;
    if (db_->error().code() == kyotocabinet::BasicDB::Error::NOREC) return false;
    Error("remove");
  }
  void PutBatch(const std::vector<KeyValue>& kvs) override {
    if (!db_->begin_transaction(false)) Error("begin_transaction");
    for (const auto& kv : kvs) Put(kv.first, kv.second);
    if (!db_->end_transaction(true)) Error("end_transaction");
  }

 private:
  [[noreturn]] void Error(const char* what) {
    kyotocabinet::BasicDB::Error e = db_->error();
    Fail("Kyoto", what, std::string(e.name()) + ": " + e.message());
  }
  std::unique_ptr<kyotocabinet::HashDB> db_;
  std::vector<char> buffer_ = std::vector<char>(1 << 20);
};

}  // namespace

std::unique_ptr<Engine> MakeKyoto() { return std::make_unique<KyotoEngine>(); }

}  // namespace bench
