// adapter.h: the one interface peer_bench drives every engine through.
//
// An adapter wraps one embedded store (or the in-memory bound) behind the
// operations the workloads need. Errors are thrown as BenchError with a
// message naming the engine, the operation and the library's own message; the
// driver prints it and stops, since a failed operation makes every figure after
// it meaningless.
#ifndef MAPKV_BENCH_ADAPTER_H_
#define MAPKV_BENCH_ADAPTER_H_

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bench {

class BenchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws BenchError("<engine>: <what>: <detail>").
[[noreturn]] void Fail(std::string_view engine, std::string_view what, std::string_view detail);

struct OpenParams {
  std::string dir;        // a directory of its own; the engine keeps all its files in it
  uint64_t expected = 0;  // entries the store will hold (to size bucket arrays, map sizes, caches)
  size_t key_size = 16;
  size_t value_size = 100;
  bool create = false;  // true: a fresh store (dir is empty); false: open the existing one
};

using KeyValue = std::pair<std::string_view, std::string_view>;

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const char* Name() const = 0;
  // False for the in-memory bound: no file, no reopen.
  virtual bool Persistent() const { return true; }
  // Several processes may have the store open at once, one of them writing.
  // When false, MultiProcessNote() says why not.
  virtual bool MultiProcess() const { return false; }
  virtual const char* MultiProcessNote() const { return ""; }
  // Writes are grouped in explicit transactions (LMDB, SQLite): BeginWrites /
  // CommitWrites bracket a run of puts or erases; without them every write is
  // its own transaction.
  virtual bool Transactional() const { return false; }
  // PutBatch applies a group of puts all or nothing.
  virtual bool AtomicBatch() const { return false; }

  virtual void Open(const OpenParams& params) = 0;
  virtual void Close() = 0;

  virtual void Put(std::string_view key, std::string_view value) = 0;
  // Copies the value into *value; false when the key is absent.
  virtual bool Get(std::string_view key, std::string* value) = 0;
  // False when the key was absent.
  virtual bool Erase(std::string_view key) = 0;

  virtual void BeginWrites() {}
  virtual void CommitWrites() {}
  virtual void PutBatch(const std::vector<KeyValue>& kvs) {
    for (const auto& kv : kvs) Put(kv.first, kv.second);
  }
};

// One factory per adapter file; each returns nullptr when the engine was not
// built in (its library missing at configure time).
std::unique_ptr<Engine> MakeMapkv();
std::unique_ptr<Engine> MakeMapkvLargePages();  // Options::large_pages
std::unique_ptr<Engine> MakeAbsl();
std::unique_ptr<Engine> MakeLmdb();
std::unique_ptr<Engine> MakeRocksdb();
std::unique_ptr<Engine> MakeLeveldb();
std::unique_ptr<Engine> MakeTkrzw();
std::unique_ptr<Engine> MakeKyoto();
std::unique_ptr<Engine> MakeSqlite();
std::unique_ptr<Engine> MakeGdbm();

}  // namespace bench

#endif  // MAPKV_BENCH_ADAPTER_H_
