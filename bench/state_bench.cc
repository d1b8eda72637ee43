// state_bench: the costs of saving process state with mapkv, beside LMDB in
// the same run (issue: atomic batches, counters).
//
//   state_bench [--n N] [--runs R] [--dir DIR] [--help]
//
// Workloads (16-byte keys in random order, fresh stores per run, engines
// interleaved; medians of R runs):
//   put        N single puts of 100-byte values
//   batch100   the same N puts in atomic batches of 100
//   put8       N single puts of 8-byte values over 1000 keys
//   incr       N Increment calls over the same 1000 keys (read, add, write
//              under one hold of the write lock)
//   incr1      N Increment calls of one counter
// LMDB (MDB_WRITEMAP | MDB_NOSYNC, the fastest setting that still survives
// a killed process) does each increment as one write transaction (get, add,
// put, commit), as an application would, and `put` as one transaction per
// put. The report gives ns/op and the ratios the issue asks for.
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "mapkv/store.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  size_t n = 1000000;
  int runs = 5;
  std::string dir = "/tmp";
};

std::string Key16(uint64_t i) {
  std::string k(16, 'k');
  const uint64_t x = i * 0x9E3779B97F4A7C15ull;
  std::memcpy(k.data(), &i, 8);
  std::memcpy(k.data() + 8, &x, 8);
  return k;
}

double NsPerOp(Clock::time_point a, Clock::time_point b, size_t ops) {
  return std::chrono::duration<double, std::nano>(b - a).count() / static_cast<double>(ops);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "state_bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const mapkv::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.ToString());
}
void CheckMdb(int rc, const char* what) {
  if (rc != 0) Die(std::string(what) + ": " + mdb_strerror(rc));
}

// ---- mapkv ----------------------------------------------------------------

mapkv::Store OpenMapkv(const std::string& path) {
  ::unlink(path.c_str());
  mapkv::Options o;
  o.checkpoint_on_close = false;
  mapkv::Store store;
  Check(mapkv::Store::Open(path, o, &store), "open");
  return store;
}

double MapkvPut(const std::string& path, const std::vector<std::string>& keys, const std::string& value) {
  mapkv::Store store = OpenMapkv(path);
  auto t0 = Clock::now();
  for (const auto& k : keys) Check(store.Put(k, value), "put");
  return NsPerOp(t0, Clock::now(), keys.size());
}

double MapkvBatch(const std::string& path, const std::vector<std::string>& keys, const std::string& value) {
  mapkv::Store store = OpenMapkv(path);
  mapkv::WriteBatch batch;
  auto t0 = Clock::now();
  for (size_t i = 0; i < keys.size(); ++i) {
    batch.Put(keys[i], value);
    if (batch.Count() == 100) {
      Check(store.Write(batch), "write");
      batch.Clear();
    }
  }
  if (batch.Count() > 0) Check(store.Write(batch), "write");
  return NsPerOp(t0, Clock::now(), keys.size());
}

double MapkvPut8(const std::string& path, const std::vector<std::string>& keys, const std::vector<uint32_t>& order) {
  mapkv::Store store = OpenMapkv(path);
  auto t0 = Clock::now();
  for (size_t i = 0; i < order.size(); ++i) Check(store.PutValue<int64_t>(keys[order[i]], int64_t(i)), "put8");
  return NsPerOp(t0, Clock::now(), order.size());
}

double MapkvIncr(const std::string& path, const std::vector<std::string>& keys, const std::vector<uint32_t>& order,
                 int64_t* check) {
  mapkv::Store store = OpenMapkv(path);
  auto t0 = Clock::now();
  for (uint32_t k : order) Check(store.Increment(keys[k], 1), "increment");
  double ns = NsPerOp(t0, Clock::now(), order.size());
  int64_t total = 0;
  for (const auto& k : keys) {
    int64_t v = 0;
    if (store.GetValue(k, &v).ok()) total += v;
  }
  *check = total;
  return ns;
}

// ---- LMDB ------------------------------------------------------------------

struct Lmdb {
  MDB_env* env = nullptr;
  MDB_dbi dbi = 0;
  explicit Lmdb(const std::string& path) {
    ::unlink(path.c_str());
    ::unlink((path + "-lock").c_str());
    CheckMdb(mdb_env_create(&env), "mdb_env_create");
    CheckMdb(mdb_env_set_mapsize(env, size_t{8} << 30), "mdb_env_set_mapsize");
    CheckMdb(mdb_env_open(env, path.c_str(), MDB_NOSUBDIR | MDB_WRITEMAP | MDB_NOSYNC, 0600), "mdb_env_open");
    MDB_txn* txn;
    CheckMdb(mdb_txn_begin(env, nullptr, 0, &txn), "mdb_txn_begin");
    CheckMdb(mdb_dbi_open(txn, nullptr, 0, &dbi), "mdb_dbi_open");
    CheckMdb(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  ~Lmdb() { mdb_env_close(env); }
};

double LmdbPut(const std::string& path, const std::vector<std::string>& keys, const std::string& value) {
  Lmdb db(path);
  auto t0 = Clock::now();
  for (const auto& k : keys) {
    MDB_txn* txn;
    CheckMdb(mdb_txn_begin(db.env, nullptr, 0, &txn), "begin");
    MDB_val key{k.size(), const_cast<char*>(k.data())}, val{value.size(), const_cast<char*>(value.data())};
    CheckMdb(mdb_put(txn, db.dbi, &key, &val, 0), "put");
    CheckMdb(mdb_txn_commit(txn), "commit");
  }
  return NsPerOp(t0, Clock::now(), keys.size());
}

double LmdbIncr(const std::string& path, const std::vector<std::string>& keys, const std::vector<uint32_t>& order,
                int64_t* check) {
  Lmdb db(path);
  auto t0 = Clock::now();
  for (uint32_t i : order) {
    MDB_txn* txn;
    CheckMdb(mdb_txn_begin(db.env, nullptr, 0, &txn), "begin");
    MDB_val key{keys[i].size(), const_cast<char*>(keys[i].data())}, val;
    int64_t v = 0;
    int rc = mdb_get(txn, db.dbi, &key, &val);
    if (rc == 0 && val.mv_size == sizeof v) std::memcpy(&v, val.mv_data, sizeof v);
    ++v;
    MDB_val nv{sizeof v, &v};
    CheckMdb(mdb_put(txn, db.dbi, &key, &nv, 0), "put");
    CheckMdb(mdb_txn_commit(txn), "commit");
  }
  double ns = NsPerOp(t0, Clock::now(), order.size());
  int64_t total = 0;
  MDB_txn* txn;
  CheckMdb(mdb_txn_begin(db.env, nullptr, MDB_RDONLY, &txn), "begin");
  for (const auto& k : keys) {
    MDB_val key{k.size(), const_cast<char*>(k.data())}, val;
    int64_t v = 0;
    if (mdb_get(txn, db.dbi, &key, &val) == 0) std::memcpy(&v, val.mv_data, sizeof v);
    total += v;
  }
  mdb_txn_abort(txn);
  *check = total;
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app("The costs of saving process state with mapkv, beside LMDB in one run.", "state_bench");
  app.add_option("--n", c.n, "operations per workload")
      ->check(CLI::Range(size_t{1}, size_t{1} << 32))
      ->capture_default_str();
  app.add_option("--runs", c.runs, "runs; figures are medians over them")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--dir", c.dir, "directory for the store files")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::mt19937_64 rng(42);
  std::vector<std::string> keys(c.n);
  for (size_t i = 0; i < c.n; ++i) keys[i] = Key16(i);
  std::shuffle(keys.begin(), keys.end(), rng);
  std::vector<std::string> counters(1000);
  for (size_t i = 0; i < counters.size(); ++i) counters[i] = Key16(1ull << 40 | i);
  std::vector<uint32_t> spread(c.n), hot(c.n, 0);
  for (auto& o : spread) o = static_cast<uint32_t>(rng() % counters.size());
  const std::string value(100, 'v');
  const std::string mk = c.dir + "/state_bench.mkv", lm = c.dir + "/state_bench.lmdb";

  std::map<std::string, std::vector<double>> r;
  for (int run = 0; run < c.runs; ++run) {
    int64_t total = 0;
    r["mapkv put"].push_back(MapkvPut(mk, keys, value));
    r["lmdb put"].push_back(LmdbPut(lm, keys, value));
    r["mapkv batch100"].push_back(MapkvBatch(mk, keys, value));
    r["mapkv put8"].push_back(MapkvPut8(mk, counters, spread));
    r["mapkv incr"].push_back(MapkvIncr(mk, counters, spread, &total));
    if (total != static_cast<int64_t>(c.n)) Die("mapkv increments lost: " + std::to_string(total));
    r["lmdb incr"].push_back(LmdbIncr(lm, counters, spread, &total));
    if (total != static_cast<int64_t>(c.n)) Die("lmdb increments lost: " + std::to_string(total));
    r["mapkv incr1"].push_back(MapkvIncr(mk, counters, hot, &total));
    r["lmdb incr1"].push_back(LmdbIncr(lm, counters, hot, &total));
    std::fprintf(stderr, "run %d of %d done\n", run + 1, c.runs);
  }
  ::unlink(mk.c_str());
  ::unlink(lm.c_str());
  ::unlink((lm + "-lock").c_str());
  auto m = [&](const char* k) { return Median(r[k]); };
  std::printf("state_bench: N=%zu, medians of %d runs, ns/op\n", c.n, c.runs);
  for (auto& [k, v] : r) std::printf("  %-16s %8.1f\n", k.c_str(), Median(v));
  std::printf("batch of 100 vs 100 single puts:   %.2fx the time (target <= 1.3x)\n",
              m("mapkv batch100") / m("mapkv put"));
  std::printf("increments, 1000 counters:         LMDB/mapkv = %.2fx (target >= 3x)\n",
              m("lmdb incr") / m("mapkv incr"));
  std::printf("increments, one counter:           LMDB/mapkv = %.2fx (target >= 3x)\n",
              m("lmdb incr1") / m("mapkv incr1"));
  std::printf("Increment vs plain put (8 bytes):  %.2fx the time (target <= 2x)\n", m("mapkv incr") / m("mapkv put8"));
  return 0;
}
