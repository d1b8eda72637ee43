// peer_bench: mapkv against the embedded stores a user would otherwise pick
// (LMDB, RocksDB, LevelDB, tkrzw HashDBM, Kyoto HashDB, SQLite, GDBM) and the
// in-memory bound (absl::flat_hash_map), on the same workloads in one run.
//
//   peer_bench [--n 1000000] [--runs 3] [--dir DIR] [--out DIR] [--label NAME]
//              [--engines mapkv,LMDB,...] [--key 16] [--value 100]
//              [--txn-batch 1000] [--txn1-ops 100000] [--reopens 5]
//              [--fresh-opens 3] [--mp-seconds 3] [--no-mp]
//              [--only get,miss,...] [--help]
//
// Each run gives every engine a fresh store and runs, in this order:
//   fill            N puts of new keys, random order
//   (close; the files' size against the raw bytes N*(key+value))
//   reopen          open the existing store and serve one get (the first
//                   reopen after the writer closed, then the median of --reopens)
//   fresh open      the same in a new process (fork, then exec of peer_bench
//                   with --open-child), the median of --fresh-opens: what a
//                   program resuming its state after a restart waits for
//   get             N gets of present keys, random order
//   miss            N gets of absent keys
//   overwrite       N puts over present keys, random order
//   overwrite_txn1  --txn1-ops puts, one transaction each for LMDB and
//                   SQLite; the plain put for the others (already its own unit)
//   batch100        N puts in atomic batches of 100 (engines that have them)
//   mixed           N operations, 90% gets and 10% puts, one at a time
//   erase_half      N/2 erases of present keys, random order
// Engines that group writes in transactions (LMDB, SQLite) do fill,
// overwrite and erase_half in transactions of --txn-batch writes (the way
// they are meant to be loaded); mixed uses one per put. Runs interleave the
// engines (the order rotates each run) and every engine sees the same keys in
// the same order within a run. Then, for the engines that allow it, a
// multi-process run: one writer process (random overwrites, one at a time)
// and two reader processes (random gets) on one file for --mp-seconds.
//
// Keys are 16 bytes derived from the key's index (no key array to miss in
// cache); values are 100 bytes cut from a 1 MiB block of random bytes, so no
// engine gains from compression.
//
// Before the runs it times one cache miss on this machine (miss_latency.h)
// and puts it in the report's header: the unit in which to read the figures.
// For stores of 1 GiB and more it times one again at about the store's size,
// where page walks miss the caches too.
//
// Output: a summary on stdout and, with --out, <label>.md (ratios to mapkv,
// medians, targets), <label>.csv (every measurement) and <label>.dat (the
// medians for bench/plot.sh).
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "miss_latency.h"
#include "run_self.h"

namespace bench {

void Fail(std::string_view engine, std::string_view what, std::string_view detail) {
  std::string msg;
  msg.append(engine).append(": ").append(what).append(": ").append(detail);
  throw BenchError(msg);
}

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct Config {
  uint64_t n = 1000000;
  int runs = 3;
  std::string dir = "/var/tmp/mapkv-peer-bench";
  std::string out;
  std::string label;
  std::vector<std::string> engines;  // empty: all built in
  std::vector<std::string> only;     // workloads to run after the fill; empty: all
  size_t key = 16;
  size_t value = 100;
  uint64_t txn_batch = 1000;
  uint64_t txn1_ops = 100000;
  int reopens = 5;
  int fresh_opens = 3;
  double mp_seconds = 3;
  bool mp = true;
  std::string command;
  // --open-child: this process is a fresh-open child; it opens the store of
  // engine `child_engine` in `child_dir`, gets key `child_key`, prints the
  // microseconds it took and exits.
  std::string child_engine;
  std::string child_dir;
  uint64_t child_key = 0;
};

struct Factory {
  const char* name;
  std::function<std::unique_ptr<Engine>()> make;
};

std::vector<Factory> AllEngines() {
  std::vector<Factory> f;
  f.push_back({"mapkv", MakeMapkv});
  f.push_back({"mapkv-lp", MakeMapkvLargePages});
#ifdef MAPKV_BENCH_HAVE_ABSL
  f.push_back({"absl", MakeAbsl});
#endif
#ifdef MAPKV_BENCH_HAVE_LMDB
  f.push_back({"LMDB", MakeLmdb});
#endif
#ifdef MAPKV_BENCH_HAVE_ROCKSDB
  f.push_back({"RocksDB", MakeRocksdb});
#endif
#ifdef MAPKV_BENCH_HAVE_LEVELDB
  f.push_back({"LevelDB", MakeLeveldb});
#endif
#ifdef MAPKV_BENCH_HAVE_TKRZW
  f.push_back({"tkrzw", MakeTkrzw});
#endif
#ifdef MAPKV_BENCH_HAVE_KYOTO
  f.push_back({"Kyoto", MakeKyoto});
#endif
#ifdef MAPKV_BENCH_HAVE_SQLITE
  f.push_back({"SQLite", MakeSqlite});
#endif
#ifdef MAPKV_BENCH_HAVE_GDBM
  f.push_back({"GDBM", MakeGdbm});
#endif
  return f;
}

// The engine of that name among `all`, or nullptr.
const Factory* FindEngine(const std::vector<Factory>& all, const std::string& name) {
  auto it = std::find_if(all.begin(), all.end(), [&](const Factory& f) { return name == f.name; });
  return it == all.end() ? nullptr : &*it;
}

// splitmix64's finalizer: a bijection on 64 bits.
inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Keys: the first 8 bytes are Mix(index), unique per index; the rest is
// more mixing. Indexes [0, N) are present, [N, 2N) absent.
class Keys {
 public:
  explicit Keys(size_t len) : len_(len) {}
  size_t len() const { return len_; }
  void Make(uint64_t i, char* out) const {
    for (size_t j = 0; j < len_; j += 8) {
      uint64_t x = Mix(i ^ (j * 0x51AF'D7ED'558C'CD1Dull));
      std::memcpy(out + j, &x, std::min<size_t>(8, len_ - j));
    }
  }
  std::string_view Get(uint64_t i) {
    if (buf_.size() < len_) buf_.resize(len_ + 8);
    Make(i, buf_.data());
    return {buf_.data(), len_};
  }

 private:
  size_t len_;
  std::string buf_;
};

class Values {
 public:
  Values(size_t len, uint64_t seed) : len_(len), block_((size_t{1} << 20) + len, '\0') {
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i + 8 <= block_.size(); i += 8) {
      uint64_t x = rng();
      std::memcpy(block_.data() + i, &x, 8);
    }
  }
  std::string_view Get(uint64_t i, uint64_t version) const {
    return {block_.data() + Mix(i * 8 + version) % (size_t{1} << 20), len_};
  }
  size_t len() const { return len_; }

 private:
  size_t len_;
  std::string block_;
};

double Median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// A moment on two clocks: the wall clock, and this process's CPU time (all
// its threads, user and system), which other processes' load on the shared
// machine does not inflate the way it inflates wall time.
struct Stamp {
  Clock::time_point wall;
  double cpu_ns;
};
Stamp Now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return Stamp{Clock::now(), static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec)};
}
double NsPerOp(const Stamp& a, const Stamp& b, uint64_t ops) {
  return std::chrono::duration<double, std::nano>(b.wall - a.wall).count() / static_cast<double>(ops);
}
double CpuNsPerOp(const Stamp& a, const Stamp& b, uint64_t ops) {
  return (b.cpu_ns - a.cpu_ns) / static_cast<double>(ops);
}
double Micros(const Stamp& a, const Stamp& b) {
  return std::chrono::duration<double, std::micro>(b.wall - a.wall).count();
}

struct DirSize {
  uint64_t apparent = 0;   // sum of file lengths
  uint64_t allocated = 0;  // sum of allocated blocks (what the disk holds)
};

DirSize SizeOf(const std::string& dir) {
  DirSize d;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    struct stat sb;
    if (!e.is_regular_file() || ::stat(e.path().c_str(), &sb) != 0) continue;
    d.apparent += static_cast<uint64_t>(sb.st_size);
    d.allocated += static_cast<uint64_t>(sb.st_blocks) * 512;
  }
  return d;
}

void Check(bool ok, const std::string& engine, const std::string& what) {
  if (!ok) Fail(engine, what, "wrong result (the bench found a key it should not, or missed one)");
}

// Measurements: metric -> engine -> one value per run.
using Results = std::map<std::string, std::map<std::string, std::vector<double>>>;

// The workloads in report order: metric name, label, unit.
struct Metric {
  const char* key;
  const char* label;
};
const Metric kNsMetrics[] = {
    {"fill", "fill, random order"},
    {"get", "get, present keys, random order"},
    {"miss", "get, absent keys"},
    {"overwrite", "overwrite, random order"},
    {"overwrite_txn1", "overwrite, one put per transaction"},
    {"batch100", "puts in atomic batches of 100"},
    {"mixed", "mixed 90% get / 10% put"},
    {"erase_half", "erase half the keys"},
};

class Bench {
 public:
  explicit Bench(Config cfg) : cfg_(std::move(cfg)), keys_(cfg_.key), values_(cfg_.value, 99) {}

  int Main() {
    std::vector<Factory> all = AllEngines();
    if (cfg_.engines.empty()) {
      engines_ = all;
    } else {
      for (const std::string& want : cfg_.engines) {
        const Factory* found = FindEngine(all, want);
        if (found == nullptr) {
          std::fprintf(stderr, "peer_bench: engine '%s' is not built in; built in:", want.c_str());
          for (const Factory& f : all) std::fprintf(stderr, " %s", f.name);
          std::fprintf(stderr, "\n");
          return 2;
        }
        engines_.push_back(*found);
      }
    }
    if (engines_.empty() || std::string(engines_[0].name) != "mapkv") {
      std::fprintf(stderr, "peer_bench: mapkv must be among the engines and listed first (ratios are to it)\n");
      return 2;
    }
    std::error_code ec;
    fs::create_directories(cfg_.dir, ec);
    if (ec) {
      std::fprintf(stderr, "peer_bench: cannot create %s: %s\n", cfg_.dir.c_str(), ec.message().c_str());
      return 1;
    }
    struct statfs sfs;
    if (statfs(cfg_.dir.c_str(), &sfs) == 0 && sfs.f_type == 0x01021994) {
      std::fprintf(stderr, "peer_bench: warning: %s is on tmpfs, not a disk; pass --dir on a real disk\n",
                   cfg_.dir.c_str());
      tmpfs_ = true;
    }
    latency_ = mapkv_bench::MeasureMissLatency();
    std::fprintf(stderr, "one dependent miss: %.0f ns with 4 KiB pages, %s with 2 MiB pages\n", latency_.small_pages_ns,
                 Fmt(latency_.large_pages_ns, "%.0f ns").c_str());
    // In a store several times larger than 256 MiB a miss costs more: the
    // page walk of a TLB miss misses the caches as well. Time one at about
    // the size of mapkv's file too (1.3x the raw bytes), the floor a random
    // get's dependent loads stand on at this N.
    const uint64_t store_bytes = cfg_.n * (cfg_.key + cfg_.value) / 10 * 13;
    if (store_bytes >= (uint64_t{1} << 30)) {
      store_mib_ = store_bytes >> 20;
      store_latency_ = mapkv_bench::MeasureMissLatency(store_bytes);
      std::fprintf(stderr, "one dependent miss in %llu MiB: %.0f ns with 4 KiB pages, %s with 2 MiB pages\n",
                   static_cast<unsigned long long>(store_mib_), store_latency_.small_pages_ns,
                   Fmt(store_latency_.large_pages_ns, "%.0f ns").c_str());
    }
    const auto start = Clock::now();
    try {
      for (int run = 0; run < cfg_.runs; ++run) {
        MakeOrders(run);
        for (size_t e = 0; e < engines_.size(); ++e) {
          const Factory& f = engines_[(e + static_cast<size_t>(run)) % engines_.size()];
          RunOne(f, run);
        }
      }
      if (cfg_.mp) {
        for (int run = 0; run < cfg_.runs; ++run) {
          for (const Factory& f : engines_) {
            std::unique_ptr<Engine> probe = f.make();
            if (probe->MultiProcess()) RunMultiProcess(f, run);
          }
        }
      }
    } catch (const BenchError& e) {
      std::fprintf(stderr, "peer_bench: %s\n", e.what());
      return 1;
    }
    elapsed_s_ = std::chrono::duration<double>(Clock::now() - start).count();
    fs::remove_all(cfg_.dir, ec);
    std::string report = Report();
    std::fputs(report.c_str(), stdout);
    if (!cfg_.out.empty()) return WriteFiles(report);
    return 0;
  }

 private:
  void MakeOrders(int run) {
    std::mt19937_64 rng(static_cast<uint64_t>(run) + 1);
    fill_order_.resize(cfg_.n);
    for (uint64_t i = 0; i < cfg_.n; ++i) fill_order_[i] = i;
    std::shuffle(fill_order_.begin(), fill_order_.end(), rng);
    read_order_ = fill_order_;
    std::shuffle(read_order_.begin(), read_order_.end(), rng);
  }

  std::string RunDir(const char* engine, int run) const { return cfg_.dir + "/" + engine + "-" + std::to_string(run); }

  // --only: run just these workloads (after the fill, which always runs).
  bool Want(const char* workload) const {
    return cfg_.only.empty() || std::find(cfg_.only.begin(), cfg_.only.end(), workload) != cfg_.only.end();
  }

  // Open and first get of the store in `dir` in a new process (fork, then
  // exec of this program with --open-child), in microseconds as the child
  // measured them.
  double FreshOpen(const char* engine, const std::string& dir, uint64_t key) const {
    std::string line;
    const std::string error =
        RunSelf({"--open-child", engine, "--child-dir", dir, "--child-key", std::to_string(key), "--n",
                 std::to_string(cfg_.n), "--key", std::to_string(cfg_.key), "--value", std::to_string(cfg_.value)},
                &line);
    if (!error.empty()) Fail(engine, "fresh open", error);
    double us = -1;
    if (std::sscanf(line.c_str(), "%lf", &us) != 1 || us < 0) {
      Fail(engine, "fresh open", "the child's report could not be read: '" + line + "'");
    }
    return us;
  }

  void Record(const std::string& metric, const char* engine, double v) { results_[metric][engine].push_back(v); }
  // ns/op on the wall clock as `metric`, on process CPU time as cpu_<metric>.
  void RecordOps(const std::string& metric, const char* engine, const Stamp& a, const Stamp& b, uint64_t ops) {
    Record(metric, engine, NsPerOp(a, b, ops));
    Record("cpu_" + metric, engine, CpuNsPerOp(a, b, ops));
  }

  // Writes keys order[0..count) with value version `version`, grouped in
  // transactions of txn_batch for transactional engines.
  void WriteRun(Engine& e, const std::vector<uint64_t>& order, uint64_t count, uint64_t version, bool erase) {
    const bool txn = e.Transactional();
    uint64_t erased = 0;
    for (uint64_t j = 0; j < count; ++j) {
      if (txn && j % cfg_.txn_batch == 0) e.BeginWrites();
      const uint64_t i = order[j];
      if (erase) {
        erased += e.Erase(keys_.Get(i));
      } else {
        e.Put(keys_.Get(i), values_.Get(i, version));
      }
      if (txn && (j % cfg_.txn_batch == cfg_.txn_batch - 1 || j + 1 == count)) e.CommitWrites();
    }
    if (erase) Check(erased == count, e.Name(), "erase");
  }

  void RunOne(const Factory& f, int run) {
    const uint64_t n = cfg_.n;
    const std::string dir = RunDir(f.name, run);
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::unique_ptr<Engine> e = f.make();
    OpenParams params{dir, n, cfg_.key, cfg_.value, true};
    e->Open(params);
    params.create = false;
    std::fprintf(stderr, "run %d %-8s", run + 1, f.name);

    Stamp t0 = Now();
    WriteRun(*e, fill_order_, n, 0, false);
    Stamp t1 = Now();
    RecordOps("fill", f.name, t0, t1, n);
    std::fprintf(stderr, " fill %.0f", NsPerOp(t0, t1, n));

    std::string out;
    if (e->Persistent()) {
      e->Close();
      DirSize size = SizeOf(dir);
      const double raw = static_cast<double>(n * (cfg_.key + cfg_.value));
      Record("file_allocated", f.name, static_cast<double>(size.allocated) / raw);
      Record("file_apparent", f.name, static_cast<double>(size.apparent) / raw);
      std::vector<double> opens;
      for (int k = 0; k <= cfg_.reopens; ++k) {
        if (k > 0) e->Close();
        e = f.make();
        const uint64_t i = read_order_[static_cast<uint64_t>(k) % n];
        t0 = Now();
        e->Open(params);
        bool found = e->Get(keys_.Get(i), &out);
        t1 = Now();
        Check(found, f.name, "get after reopen");
        opens.push_back(Micros(t0, t1));
      }
      Record("reopen_first_us", f.name, opens[0]);
      opens.erase(opens.begin());
      Record("reopen_us", f.name, Median(opens));
      std::fprintf(stderr, " reopen %.0fus", Median(opens));
      if (cfg_.fresh_opens > 0) {
        e->Close();  // some engines lock their files for one process
        std::vector<double> fresh;
        for (int k = 0; k < cfg_.fresh_opens; ++k) {
          fresh.push_back(FreshOpen(f.name, dir, read_order_[static_cast<uint64_t>(k + 7) % n]));
        }
        Record("reopen_fresh_us", f.name, Median(fresh));
        std::fprintf(stderr, " fresh %.0fus", Median(fresh));
        e = f.make();
        e->Open(params);
      }
    }

    uint64_t found = 0;
    if (Want("get")) {
      t0 = Now();
      for (uint64_t i : read_order_) found += e->Get(keys_.Get(i), &out);
      t1 = Now();
      Check(found == n && out.size() == cfg_.value, f.name, "get");
      RecordOps("get", f.name, t0, t1, n);
      std::fprintf(stderr, " get %.0f", NsPerOp(t0, t1, n));
    }

    if (Want("miss")) {
      found = 0;
      t0 = Now();
      for (uint64_t i : read_order_) found += e->Get(keys_.Get(i + n), &out);
      t1 = Now();
      Check(found == 0, f.name, "get of absent keys");
      RecordOps("miss", f.name, t0, t1, n);
    }

    if (Want("overwrite")) {
      t0 = Now();
      WriteRun(*e, read_order_, n, 1, false);
      t1 = Now();
      RecordOps("overwrite", f.name, t0, t1, n);
      std::fprintf(stderr, " overwrite %.0f", NsPerOp(t0, t1, n));
    }

    if (Want("overwrite_txn1")) {
      {
        // LMDB and SQLite: one transaction per put. Every other engine: its
        // plain put on the same keys (already its own unit).
        const uint64_t ops = std::min(cfg_.txn1_ops, n);
        t0 = Now();
        for (uint64_t j = 0; j < ops; ++j) e->Put(keys_.Get(fill_order_[j]), values_.Get(fill_order_[j], 2));
        t1 = Now();
        RecordOps("overwrite_txn1", f.name, t0, t1, ops);
      }
    }

    if (Want("batch100")) {
      if (e->AtomicBatch()) {
        std::vector<KeyValue> batch;
        std::string key_block(100 * cfg_.key, '\0');
        t0 = Now();
        for (uint64_t j = 0; j < n; ++j) {
          const uint64_t i = fill_order_[j];
          char* k = key_block.data() + batch.size() * cfg_.key;
          keys_.Make(i, k);
          batch.emplace_back(std::string_view(k, cfg_.key), values_.Get(i, 3));
          if (batch.size() == 100 || j + 1 == n) {
            e->PutBatch(batch);
            batch.clear();
          }
        }
        t1 = Now();
        RecordOps("batch100", f.name, t0, t1, n);
      }
    }

    if (Want("mixed")) {
      found = 0;
      uint64_t gets = 0;
      t0 = Now();
      for (uint64_t j = 0; j < n; ++j) {
        const uint64_t i = read_order_[j];
        if (Mix(j ^ 0xA5A5) % 10 == 0) {
          e->Put(keys_.Get(i), values_.Get(i, 4));
        } else {
          ++gets;
          found += e->Get(keys_.Get(i), &out);
        }
      }
      t1 = Now();
      Check(found == gets, f.name, "mixed");
      RecordOps("mixed", f.name, t0, t1, n);
    }

    if (Want("erase_half")) {
      t0 = Now();
      WriteRun(*e, fill_order_, n / 2, 0, true);
      t1 = Now();
      RecordOps("erase_half", f.name, t0, t1, n / 2);
      std::fprintf(stderr, " erase %.0f", NsPerOp(t0, t1, n / 2));
    }
    std::fprintf(stderr, "\n");

    e->Close();
    e.reset();
    fs::remove_all(dir);
  }

  // One writer and two reader processes, each opening the store itself.
  void RunMultiProcess(const Factory& f, int run) {
    const uint64_t n = cfg_.n;
    const std::string dir = RunDir(f.name, run) + "-mp";
    fs::remove_all(dir);
    fs::create_directories(dir);
    {
      std::unique_ptr<Engine> e = f.make();
      e->Open(OpenParams{dir, n, cfg_.key, cfg_.value, true});
      std::vector<uint64_t> order(n);
      for (uint64_t i = 0; i < n; ++i) order[i] = i;
      WriteRun(*e, order, n, 0, false);
      e->Close();
    }
    std::fflush(nullptr);
    int ready[2], go[2], result[2];
    if (pipe(ready) != 0 || pipe(go) != 0 || pipe(result) != 0) Fail(f.name, "multi-process", "pipe failed");
    struct Report {
      int role;
      int ok;
      double ops_per_s;
      char error[200];
    };
    std::vector<pid_t> pids;
    for (int role = 0; role < 3; ++role) {
      pid_t pid = fork();
      if (pid < 0) Fail(f.name, "multi-process", "fork failed");
      if (pid == 0) {
        close(ready[0]);
        close(go[1]);
        close(result[0]);
        Report r{role, 1, 0, {}};
        try {
          Keys keys(cfg_.key);
          std::unique_ptr<Engine> e = f.make();
          e->Open(OpenParams{dir, n, cfg_.key, cfg_.value, false});
          char c = 'r';
          if (write(ready[1], &c, 1) != 1) _exit(3);
          while (read(go[0], &c, 1) > 0) {
          }
          const auto t0 = Clock::now();
          const auto deadline = t0 + std::chrono::duration<double>(cfg_.mp_seconds);
          uint64_t ops = 0, missing = 0;
          std::string out;
          auto now = t0;
          for (uint64_t s = static_cast<uint64_t>(role) << 40;; ++s) {
            const uint64_t i = Mix(s) % n;
            if (role == 0) {
              e->Put(keys.Get(i), values_.Get(i, 5));
            } else {
              missing += !e->Get(keys.Get(i), &out);
            }
            if (++ops % 64 == 0 && (now = Clock::now()) >= deadline) break;
          }
          r.ops_per_s = static_cast<double>(ops) / std::chrono::duration<double>(now - t0).count();
          if (missing != 0) Fail(f.name, "multi-process reader", "a present key was not found");
          e->Close();
        } catch (const std::exception& ex) {
          r.ok = 0;
          std::snprintf(r.error, sizeof r.error, "%s", ex.what());
        }
        ssize_t w = write(result[1], &r, sizeof r);
        _exit(w == static_cast<ssize_t>(sizeof r) ? 0 : 3);
      }
      pids.push_back(pid);
    }
    close(ready[1]);
    close(go[0]);
    close(result[1]);
    char c;
    int readies = 0;
    while (readies < 3 && read(ready[0], &c, 1) == 1) ++readies;
    close(go[1]);  // starts every child at once
    std::vector<Report> reports;
    Report r;
    while (read(result[0], &r, sizeof r) == static_cast<ssize_t>(sizeof r)) reports.push_back(r);
    for (pid_t pid : pids) waitpid(pid, nullptr, 0);
    close(ready[0]);
    close(result[0]);
    fs::remove_all(dir);
    if (reports.size() != 3) Fail(f.name, "multi-process", "a child process died without reporting");
    std::sort(reports.begin(), reports.end(), [](const Report& a, const Report& b) { return a.role < b.role; });
    for (const Report& rep : reports) {
      if (!rep.ok) Fail(f.name, "multi-process child", rep.error);
    }
    Record("mp_writer", f.name, reports[0].ops_per_s);
    Record("mp_reader1", f.name, reports[1].ops_per_s);
    Record("mp_reader2", f.name, reports[2].ops_per_s);
    std::fprintf(stderr, "multi-process run %d %-8s writer %.0f/s readers %.0f/s %.0f/s\n", run + 1, f.name,
                 reports[0].ops_per_s, reports[1].ops_per_s, reports[2].ops_per_s);
  }

  // Median of a metric for an engine; negative when not measured.
  double Med(const std::string& metric, const std::string& engine) const {
    auto m = results_.find(metric);
    if (m == results_.end()) return -1;
    auto e = m->second.find(engine);
    return e == m->second.end() ? -1 : Median(e->second);
  }

  // Median over runs of (engine's value / base's value) in the same run.
  double Ratio(const std::string& metric, const std::string& engine, const std::string& base = "mapkv") const {
    auto m = results_.find(metric);
    if (m == results_.end()) return -1;
    auto e = m->second.find(engine), k = m->second.find(base);
    if (e == m->second.end() || k == m->second.end()) return -1;
    std::vector<double> r;
    for (size_t i = 0; i < std::min(e->second.size(), k->second.size()); ++i) {
      r.push_back(e->second[i] / k->second[i]);
    }
    return Median(r);
  }

  static std::string Fmt(double v, const char* fmt) {
    if (v < 0) return "-";
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, v);
    return buf;
  }

  static std::string Grouped(uint64_t v) {
    std::string digits = std::to_string(v), s;
    for (size_t i = 0; i < digits.size(); ++i) {
      if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
      s.push_back(digits[i]);
    }
    return s;
  }

  static std::string Machine() {
    std::ifstream cpu("/proc/cpuinfo");
    std::string line, model = "unknown CPU";
    while (std::getline(cpu, line)) {
      if (line.rfind("model name", 0) == 0) {
        model = line.substr(line.find(':') + 2);
        break;
      }
    }
    struct utsname u;
    uname(&u);
    return model + ", " + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + " cores, Linux " + u.release;
  }

  std::string Report() const {
    std::ostringstream o;
    char date[32];
    std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::localtime(&now));
    o << "# mapkv against embedded peers, N = " << Grouped(cfg_.n) << "\n\n";
    o << "- Command: `" << cfg_.command << "`\n";
    o << "- " << date << ", " << Machine() << "; whole run " << Fmt(elapsed_s_ / 60, "%.1f") << " min\n";
    o << "- Keys " << cfg_.key << " bytes, values " << cfg_.value << " bytes (random), raw bytes N*(key+value) = "
      << Fmt(static_cast<double>(cfg_.n * (cfg_.key + cfg_.value)) / 1e6, "%.0f") << " MB\n";
    o << "- " << cfg_.runs
      << " runs, a fresh store per engine and run, engines interleaved (order rotated each run); "
         "figures are medians over the runs\n";
    o << "- One cache miss on this machine (a chain of dependent random loads in 256 MiB, bench/miss_latency.h): "
      << Fmt(latency_.small_pages_ns, "%.0f") << " ns with 4 KiB pages, "
      << (latency_.large_pages_ns < 0 ? std::string("no 2 MiB pages given")
                                      : Fmt(latency_.large_pages_ns, "%.0f") + " ns with 2 MiB pages")
      << ". A random get in a large store costs one to two (one where the CPU overlaps consecutive gets), a put at "
         "least two in a row\n";
    if (store_mib_ != 0) {
      o << "- The same in " << store_mib_
        << " MiB, about the size of mapkv's file at this N: " << Fmt(store_latency_.small_pages_ns, "%.0f")
        << " ns with 4 KiB pages, "
        << (store_latency_.large_pages_ns < 0 ? std::string("no 2 MiB pages given")
                                              : Fmt(store_latency_.large_pages_ns, "%.0f") + " ns with 2 MiB pages")
        << "\n";
    }
    o << "- Store files in " << cfg_.dir << (tmpfs_ ? " (tmpfs!)" : "") << "; LMDB and SQLite write in transactions of "
      << cfg_.txn_batch << " for fill, overwrite and erase\n\n";

    std::vector<std::string> peers;
    for (const Factory& f : engines_) {
      if (std::string(f.name) != "mapkv") peers.push_back(f.name);
    }
    o << "## Ratio to mapkv: peer ns/op / mapkv ns/op (> 1: mapkv is faster)\n\n";
    o << "Median over the runs of the ratio within each run.\n\n| workload |";
    for (const auto& p : peers) o << " " << p << " |";
    o << "\n|---|";
    for (size_t i = 0; i < peers.size(); ++i) o << "---:|";
    o << "\n";
    for (const Metric& m : kNsMetrics) {
      if (Med(m.key, "mapkv") < 0) continue;
      o << "| " << m.label << " |";
      for (const auto& p : peers) o << " " << Fmt(Ratio(m.key, p), "%.2f") << " |";
      o << "\n";
    }
    o << "| reopen + first get |";
    for (const auto& p : peers) o << " " << Fmt(Ratio("reopen_us", p), "%.2f") << " |";
    o << "\n\n";

    o << "## The same ratio on CPU time\n\nProcess CPU time (every thread of the benchmark process, user and "
         "system) per operation, peer / mapkv, median over runs. Other processes' load on the shared machine "
         "inflates wall time but hardly CPU time; background threads (RocksDB's and LevelDB's compactions) "
         "count here, and the kernel's write-back of dirty pages does not, for any engine.\n\n| workload |";
    for (const auto& p : peers) o << " " << p << " |";
    o << "\n|---|";
    for (size_t i = 0; i < peers.size(); ++i) o << "---:|";
    o << "\n";
    for (const Metric& m : kNsMetrics) {
      if (Med(m.key, "mapkv") < 0) continue;
      o << "| " << m.label << " |";
      for (const auto& p : peers) o << " " << Fmt(Ratio(std::string("cpu_") + m.key, p), "%.2f") << " |";
      o << "\n";
    }
    o << "\n";

    o << "## ns per operation (median)\n\n| workload | mapkv |";
    for (const auto& p : peers) o << " " << p << " |";
    o << "\n|---|---:|";
    for (size_t i = 0; i < peers.size(); ++i) o << "---:|";
    o << "\n";
    for (const Metric& m : kNsMetrics) {
      if (Med(m.key, "mapkv") < 0) continue;
      o << "| " << m.label << " |";
      for (const Factory& f : engines_) o << " " << Fmt(Med(m.key, f.name), "%.0f") << " |";
      o << "\n";
    }
    o << "\n";
    if (Med("overwrite_txn1", "mapkv") >= 0) {
      o << "`overwrite, one put per transaction`: the first " << Grouped(std::min(cfg_.txn1_ops, cfg_.n))
        << " keys of the fill order; LMDB and SQLite commit a transaction per put, the other engines make "
           "their ordinary put (mapkv's is atomic by itself).\n\n";
    }

    o << "## Reopen and file size\n\n| | mapkv |";
    for (const auto& p : peers) o << " " << p << " |";
    o << "\n|---|---:|";
    for (size_t i = 0; i < peers.size(); ++i) o << "---:|";
    o << "\n| reopen + first get, us (median of " << cfg_.reopens << ") |";
    for (const Factory& f : engines_) o << " " << Fmt(Med("reopen_us", f.name), "%.1f") << " |";
    o << "\n| first reopen after the writer closed, us |";
    for (const Factory& f : engines_) o << " " << Fmt(Med("reopen_first_us", f.name), "%.1f") << " |";
    if (cfg_.fresh_opens > 0) {
      o << "\n| the same in a new process, us (median of " << cfg_.fresh_opens << ") |";
      for (const Factory& f : engines_) o << " " << Fmt(Med("reopen_fresh_us", f.name), "%.1f") << " |";
    }
    o << "\n| disk blocks after fill / raw bytes |";
    for (const Factory& f : engines_) o << " " << Fmt(Med("file_allocated", f.name), "%.2f") << " |";
    o << "\n| file length after fill / raw bytes |";
    for (const Factory& f : engines_) o << " " << Fmt(Med("file_apparent", f.name), "%.2f") << " |";
    o << "\n\nSizes are of every file in the store's directory, measured after the fill and a close.\n\n";

    if (cfg_.mp) {
      o << "## Multi-process: 1 writer + 2 readers on one file, " << Fmt(cfg_.mp_seconds, "%.0f")
        << " s (operations per second, median)\n\n";
      o << "The writer overwrites random keys one put (one transaction) at a time; each reader gets random "
           "present keys. Each process opens the store itself.\n\n";
      o << "| engine | writer puts/s | reader 1 gets/s | reader 2 gets/s |\n|---|---:|---:|---:|\n";
      std::string refused;
      for (const Factory& f : engines_) {
        std::unique_ptr<Engine> e = f.make();
        if (!e->MultiProcess()) {
          refused += std::string("- ") + f.name + ": " + e->MultiProcessNote() + "\n";
          continue;
        }
        o << "| " << f.name << " | " << Fmt(Med("mp_writer", f.name), "%.0f") << " | "
          << Fmt(Med("mp_reader1", f.name), "%.0f") << " | " << Fmt(Med("mp_reader2", f.name), "%.0f") << " |\n";
      }
      o << "\nNot run:\n" << refused << "\n";
    }

    o << "## Targets (issue 6)\n\nJudged on wall time; the CPU-time ratio is beside it.\n\n"
         "| target | measured | on CPU time | met |\n|---|---:|---:|---|\n";
    auto target = [&](const std::string& what, double measured, bool met, const char* fmt, double cpu = -1) {
      if (measured < 0) return;
      o << "| " << what << " | " << Fmt(measured, fmt) << " | " << Fmt(cpu, fmt) << " | " << (met ? "yes" : "**no**")
        << " |\n";
    };
    auto faster = [&](const char* metric, const char* peer, double want, const char* base = "mapkv") {
      double r = Ratio(metric, peer, base);
      char what[128];
      std::snprintf(what, sizeof what, "%s: %s >= %.1fx faster than %s", metric, base, want, peer);
      target(what, r, r >= want, "%.2fx", Ratio(std::string("cpu_") + metric, peer, base));
    };
    // The speed targets for mapkv with its defaults, then for mapkv-lp
    // (Options::large_pages) where that engine ran.
    for (const char* base : {"mapkv", "mapkv-lp"}) {
      if (Med("get", base) < 0) continue;
      faster("get", "LMDB", 3.5, base);
      faster("get", "tkrzw", 2, base);
      faster("get", "Kyoto", 2, base);
      faster("get", "RocksDB", 10, base);
      faster("get", "LevelDB", 10, base);
      {
        double r = Ratio("get", "absl", base), c = Ratio("cpu_get", "absl", base);
        target(std::string("get: ") + base + " within 1.2x of absl (" + base + " / absl)", r > 0 ? 1 / r : -1,
               r > 0 && 1 / r <= 1.2, "%.2fx", c > 0 ? 1 / c : -1);
      }
      faster("fill", "LMDB", 3, base);
      faster("overwrite", "LMDB", 3, base);
      faster("fill", "tkrzw", 1.3, base);
      faster("overwrite", "tkrzw", 1.3, base);
    }
    double reopen = Med("reopen_us", "mapkv");
    target("mapkv reopen + first get < 100 us (median)", reopen, reopen < 100, "%.1f us");
    double first = Med("reopen_first_us", "mapkv");
    target("mapkv first reopen after close < 100 us", first, first < 100, "%.1f us");
    double file = Med("file_allocated", "mapkv");
    target("mapkv disk blocks after fill <= 1.3x raw", file, file <= 1.3, "%.2fx");
    o << "\n";
    return o.str();
  }

  int WriteFiles(const std::string& report) const {
    std::error_code ec;
    fs::create_directories(cfg_.out, ec);
    const std::string base = cfg_.out + "/" + cfg_.label;
    std::ofstream md(base + ".md"), csv(base + ".csv"), dat(base + ".dat");
    if (!md || !csv || !dat) {
      std::fprintf(stderr, "peer_bench: cannot write %s.{md,csv,dat}\n", base.c_str());
      return 1;
    }
    md << report;
    csv << "n,engine,metric,run,value\n";
    for (const auto& [metric, per_engine] : results_) {
      for (const auto& [engine, values] : per_engine) {
        for (size_t i = 0; i < values.size(); ++i) {
          csv << cfg_.n << "," << engine << "," << metric << "," << i + 1 << "," << values[i] << "\n";
        }
      }
    }
    // For gnuplot: one row per workload, one column per engine, "-" when not run.
    dat << "workload";
    for (const Factory& f : engines_) dat << "\t" << f.name;
    dat << "\n";
    for (const Metric& m : kNsMetrics) {
      if (std::string(m.key) == "overwrite_txn1") continue;
      dat << m.key;
      for (const Factory& f : engines_) dat << "\t" << Fmt(Med(m.key, f.name), "%.1f");
      dat << "\n";
    }
    std::fprintf(stderr, "peer_bench: wrote %s.md, .csv, .dat\n", base.c_str());
    return 0;
  }

  Config cfg_;
  Keys keys_;
  Values values_;
  std::vector<Factory> engines_;
  std::vector<uint64_t> fill_order_, read_order_;
  Results results_;
  bool tmpfs_ = false;
  double elapsed_s_ = 0;
  mapkv_bench::MissLatency latency_;
  mapkv_bench::MissLatency store_latency_;  // measured only for stores of 1 GiB and more
  uint64_t store_mib_ = 0;                  // 0: not measured
};

}  // namespace

// --open-child: times one open and first get of an existing store in this
// process, which has just started, and prints the microseconds on stdout.
int OpenChild(const Config& cfg) {
  std::vector<Factory> all = AllEngines();
  const Factory* it = FindEngine(all, cfg.child_engine);
  if (it == nullptr) {
    std::fprintf(stderr, "peer_bench: --open-child: engine '%s' is not built in\n", cfg.child_engine.c_str());
    return 2;
  }
  try {
    Keys keys(cfg.key);
    std::string out;
    std::unique_ptr<Engine> e = it->make();
    OpenParams params{cfg.child_dir, cfg.n, cfg.key, cfg.value, false};
    const Stamp t0 = Now();
    e->Open(params);
    const bool found = e->Get(keys.Get(cfg.child_key), &out);
    const Stamp t1 = Now();
    Check(found, it->name, "get after a fresh open");
    Check(out.size() == cfg.value, it->name, "value size after a fresh open");
    e->Close();
    std::printf("%.2f\n", Micros(t0, t1));
  } catch (const BenchError& err) {
    std::fprintf(stderr, "peer_bench: --open-child: %s\n", err.what());
    return 1;
  }
  return 0;
}

}  // namespace bench

int main(int argc, char** argv) {
  bench::Config cfg;
  for (int i = 0; i < argc; ++i) {
    if (i > 0) cfg.command.push_back(' ');
    cfg.command.append(argv[i]);
  }
  CLI::App app("mapkv against embedded peers on the same workloads in one run (see peer_bench.cc's header).",
               "peer_bench");
  app.add_option("--n", cfg.n, "keys per store")
      ->check(CLI::Range(uint64_t{2}, uint64_t{1} << 36))
      ->capture_default_str();
  app.add_option("--runs", cfg.runs, "runs; figures are medians over them")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--dir", cfg.dir, "where the stores go (a real disk, not tmpfs)")->capture_default_str();
  app.add_option("--out", cfg.out, "write <label>.md, .csv and .dat into this directory");
  app.add_option("--label", cfg.label, "base name of the report files (default results-N<n>)");
  app.add_option("--engines", cfg.engines, "engines to run, comma-separated (default: all built in)")->delimiter(',');
  std::vector<std::string> workloads;
  for (const bench::Metric& m : bench::kNsMetrics) workloads.emplace_back(m.key);
  app.add_option("--only", cfg.only, "workloads to run after the fill, comma-separated (default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember(workloads));
  app.add_option("--key", cfg.key, "key size in bytes")
      ->check(CLI::Range(size_t{8}, size_t{4096}))
      ->capture_default_str();
  app.add_option("--value", cfg.value, "value size in bytes")
      ->check(CLI::Range(size_t{0}, size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--txn-batch", cfg.txn_batch, "writes per transaction for LMDB and SQLite")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--txn1-ops", cfg.txn1_ops, "puts in the one-put-per-transaction workload")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--reopens", cfg.reopens, "reopens timed after the first")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--fresh-opens", cfg.fresh_opens, "reopens timed in a new process each (0: none)")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--open-child", cfg.child_engine, "(internal) time one open in this process and exit")->group("");
  app.add_option("--child-dir", cfg.child_dir, "(internal) the store's directory for --open-child")->group("");
  app.add_option("--child-key", cfg.child_key, "(internal) the key index --open-child reads")->group("");
  app.add_option("--mp-seconds", cfg.mp_seconds, "length of the multi-process run")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str();
  bool no_mp = false;
  app.add_flag("--no-mp", no_mp, "leave out the multi-process run");
  CLI11_PARSE(app, argc, argv);
  cfg.mp = !no_mp;
  if (cfg.label.empty()) {
    cfg.label = cfg.n % 1000000 == 0 ? "results-N" + std::to_string(cfg.n / 1000000) + "M"
                                     : "results-N" + std::to_string(cfg.n);
  }
  if (!cfg.child_engine.empty()) return bench::OpenChild(cfg);
  return bench::Bench(std::move(cfg)).Main();
}
