// crash_test.cc: a writer killed with SIGKILL at random moments (plain
// writes, file growth, checkpoints, compaction), and power cuts simulated by
// mixing the pages of a checkpointed file image with those of a later one.
//
// Kill test: a child runs a deterministic sequence of operations and, after
// each one returns OK, appends the operation's index to a log with write(2).
// The parent kills it, reopens the store (recovering the dead writer's
// half-done write), runs Check, and compares the contents with a model that
// replays the sequence up to the last acknowledged operation: the store must
// hold exactly that state, or that state plus the one operation after it
// (acknowledged by the store but killed before it reached the log).
#include <sys/stat.h>
#include <sys/types.h>
#ifndef _WIN32
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "heap.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

// ---- the deterministic operation sequence ---------------------------------

// kBatch: large batches (50 to 200 operations, one in 16 of 3000 to 5000)
// over a growing key space, so kills land inside long batches, in page-level
// undo, and inside the table rebuilds they cause.
enum class Mode { kPlain, kGrowth, kCompact, kBatch };

Mode ParseMode(const std::string& s) {
  return s == "growth" ? Mode::kGrowth : s == "compact" ? Mode::kCompact : s == "batch" ? Mode::kBatch : Mode::kPlain;
}
const char* ModeName(Mode m) {
  return m == Mode::kGrowth ? "growth" : m == Mode::kCompact ? "compact" : m == Mode::kBatch ? "batch" : "plain";
}

struct Op {
  enum Kind { kPut, kErase, kBatch, kFlushSync, kFlushAsync, kCompact } kind = kPut;
  std::vector<std::pair<std::string, std::optional<std::string>>> changes;  // value: put; nullopt: erase
};

// Operation i of run `seed` depends only on (seed, mode, i), never on the
// store's state, so the parent can replay what the child did.
class OpGen {
 public:
  OpGen(uint64_t seed, Mode mode)
      : rng_(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(mode)), seed_(seed), mode_(mode) {}

  Op Next() {
    const uint64_t i = index_++;
    Op op;
    const uint64_t r = rng_.Uniform(100);
    if (mode_ == Mode::kCompact && i % 4 == 3) {
      op.kind = Op::kCompact;
    } else if (mode_ == Mode::kPlain && r < 2) {
      op.kind = Op::kFlushSync;
    } else if (r < 5) {
      op.kind = Op::kFlushAsync;
    } else if (mode_ == Mode::kBatch && r < 60) {
      op.kind = Op::kBatch;
      // One batch in 16 is long enough to log more entries than its table
      // has bytes, and switches to page-level undo (Heap::bulk).
      const uint64_t n = rng_.Uniform(16) == 0 ? 3000 + rng_.Uniform(2000) : 50 + rng_.Uniform(151);
      for (uint64_t k = 0; k < n; ++k) {
        if (rng_.Uniform(5) == 0) {
          op.changes.emplace_back(Key(), std::nullopt);
        } else {
          op.changes.emplace_back(Key(), Value(i, k));
        }
      }
    } else if (r < 20) {
      op.kind = Op::kErase;
      op.changes.emplace_back(Key(), std::nullopt);
    } else if (r < 35) {
      op.kind = Op::kBatch;
      const uint64_t n = 2 + rng_.Uniform(9);
      for (uint64_t k = 0; k < n; ++k) {
        if (rng_.Uniform(4) == 0) {
          op.changes.emplace_back(Key(), std::nullopt);
        } else {
          op.changes.emplace_back(Key(), Value(i, k));
        }
      }
    } else {
      op.kind = Op::kPut;
      op.changes.emplace_back(Key(), Value(i, 0));
    }
    return op;
  }

 private:
  std::string Key() {
    const uint64_t space = mode_ == Mode::kGrowth    ? 3000
                           : mode_ == Mode::kCompact ? 400
                           : mode_ == Mode::kBatch   ? 600 + 40 * index_
                                                     : 600;
    return "key" + std::to_string(rng_.Uniform(space));
  }
  std::string Value(uint64_t i, uint64_t sub) {
    std::string v = "s" + std::to_string(seed_) + "o" + std::to_string(i) + "." + std::to_string(sub) + ":";
    uint64_t len;
    if (mode_ == Mode::kGrowth) {
      len = rng_.Uniform(10) == 0 ? 20000 + rng_.Uniform(60000) : rng_.Uniform(1500);
    } else {
      len = rng_.Uniform(20) == 0 ? rng_.Uniform(20000) : rng_.Uniform(300);
    }
    v.append(static_cast<size_t>(len), static_cast<char>('a' + (i + sub) % 26));
    return v;
  }

  Rng rng_;
  uint64_t seed_;
  Mode mode_;
  uint64_t index_ = 0;
};

void ApplyToModel(const Op& op, Model* model) {
  for (const auto& [k, v] : op.changes) {
    if (v) {
      (*model)[k] = *v;
    } else {
      model->erase(k);
    }
  }
}

// ---- the writer child ---------------------------------------------------------

constexpr uint64_t kReadyMarker = ~uint64_t{0};
constexpr uint64_t kMaxOps = 200000;

#ifdef _WIN32
// Unbuffered: each index reaches the OS (which keeps it past a
// TerminateProcess) before the next operation starts.
using LogHandle = std::FILE*;
LogHandle OpenLog(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f != nullptr) std::setvbuf(f, nullptr, _IONBF, 0);
  return f;
}
bool LogOk(LogHandle f) { return f != nullptr; }
bool LogIndex(LogHandle f, uint64_t value) { return std::fwrite(&value, sizeof value, 1, f) == 1; }
#else
using LogHandle = int;
LogHandle OpenLog(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  return fd < 0 ? -1 : fd;
}
bool LogOk(LogHandle fd) { return fd >= 0; }
bool LogIndex(LogHandle fd, uint64_t value) {
  return ::write(fd, &value, sizeof value) == static_cast<ssize_t>(sizeof value);
}
#endif

// args: store path, log path, seed, mode. Exit 0 after kMaxOps operations;
// any failure exits with a code naming the step.
int CrashWriterChild(const std::vector<std::string>& args) {
  if (args.size() != 4) return 2;
  const LogHandle log = OpenLog(args[1]);
  if (!LogOk(log)) return 3;
  Store store;
  Status s = Store::Open(args[0], {}, &store);
  if (!s.ok()) {
    std::fprintf(stderr, "crash writer: open: %s\n", s.ToString().c_str());
    return 4;
  }
  if (!LogIndex(log, kReadyMarker)) return 5;
  OpGen gen(std::stoull(args[2]), ParseMode(args[3]));
  for (uint64_t i = 0; i < kMaxOps; ++i) {
    const Op op = gen.Next();
    switch (op.kind) {
      case Op::kPut:
        s = store.Put(op.changes[0].first, *op.changes[0].second);
        break;
      case Op::kErase:
        s = store.Erase(op.changes[0].first);
        if (s.IsNotFound()) s = Status();
        break;
      case Op::kBatch: {
        WriteBatch batch;
        for (const auto& [k, v] : op.changes) {
          if (v) {
            batch.Put(k, *v);
          } else {
            batch.Erase(k);
          }
        }
        s = store.Write(batch);
        break;
      }
      case Op::kFlushSync:
        s = store.Flush(FlushMode::kSync);
        break;
      case Op::kFlushAsync:
        s = store.Flush(FlushMode::kAsync);
        break;
      case Op::kCompact:
        s = store.Compact();
        break;
    }
    if (!s.ok()) {
      std::fprintf(stderr, "crash writer: op %llu: %s\n", static_cast<unsigned long long>(i), s.ToString().c_str());
      return 6;
    }
    if (!LogIndex(log, i)) return 7;
  }
  return 0;
}

[[maybe_unused]] const bool kRegistered = RegisterChild("crash.writer", CrashWriterChild);

// ---- the parent ---------------------------------------------------------------

std::string DescribeDiff(const Model& want, const Model& got) {
  std::string out;
  int shown = 0;
  for (const auto& [k, v] : want) {
    auto it = got.find(k);
    if (it == got.end()) {
      out += "\n  missing " + k;
    } else if (it->second != v) {
      out += "\n  " + k + ": want " + v.substr(0, 24) + "... got " + it->second.substr(0, 24) + "...";
    } else {
      continue;
    }
    if (++shown == 5) return out;
  }
  for (const auto& [k, v] : got) {
    if (want.count(k) == 0) {
      out += "\n  unexpected " + k + " = " + v.substr(0, 24);
      if (++shown == 5) return out;
    }
  }
  return out;
}

struct KillStats {
  int runs = 0, killed = 0, finished = 0, with_ops = 0, next_applied = 0, grew = 0, in_compact = 0;
  int in_write = 0;  // killed with a write under way (its undo log live)
  int in_batch = 0;  // ... and the interrupted operation a batch
  uint64_t acked_ops = 0;
  // The kill comes at a random moment up to this long after the writer is
  // ready (or spawned). It starts at 50 ms and adapts to the build's speed:
  // x1.5 after a run that acknowledged nothing, x0.9 (not below 50 ms) after
  // one that did, which settles where about one run in five acknowledges
  // nothing. Under ThreadSanitizer a batch of 200 takes tens of ms, and a
  // fixed 50 ms left more than half the runs without an acknowledged op.
  uint64_t window_us = 50'000;
};

// One run: start a writer, kill it, verify. Updates *base to the state found.
void KillOnce(const std::string& path, const std::string& log_path, uint64_t seed, Mode mode, Rng& rng, Model* base,
              KillStats* stats) {
  CAPTURE(seed);
  const bool from_spawn = rng.Uniform(4) == 0;  // else: from the moment the store is open
  std::remove(log_path.c_str());                // a writer killed before it opened its log leaves none
  struct stat before {};
  const uint64_t size_before = ::stat(path.c_str(), &before) == 0 ? static_cast<uint64_t>(before.st_size) : 0;
  const int pid = SpawnChild("crash.writer", {path, log_path, std::to_string(seed), ModeName(mode)});
  REQUIRE(pid > 0);
  if (!from_spawn) {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    struct stat st {};
    while (Clock::now() < deadline && (::stat(log_path.c_str(), &st) != 0 || st.st_size < 8)) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  std::this_thread::sleep_for(std::chrono::microseconds(rng.Uniform(stats->window_us + 1)));
  KillChild(pid);
  const int rc = WaitChild(pid);
  ++stats->runs;
  struct stat after {};
  if (::stat(path.c_str(), &after) == 0 && static_cast<uint64_t>(after.st_size) > size_before) ++stats->grew;
  // Killed inside a write: the dead writer's undo log is still there.
  bool in_write = false;
  if (rc == kKilledExitCode && after.st_size >= static_cast<off_t>(internal::format::kControlOffset + 4096)) {
    const ControlView ctl(path);
    in_write = ctl->undo_count.load() != 0;
  }
  stats->in_write += in_write;
  if (rc == kKilledExitCode) {
    ++stats->killed;
  } else {
    REQUIRE_MESSAGE(rc == 0, "the writer failed on its own with exit code " << rc);
    ++stats->finished;
  }

  // The acknowledged operations: the ready marker, then 0, 1, 2, ...
  std::string log;
  struct stat st {};
  if (::stat(log_path.c_str(), &st) == 0) log = ReadFileBytes(log_path);
  int64_t last = -1;
  bool ready = false;
  for (size_t at = 0; at + 8 <= log.size(); at += 8) {
    uint64_t v;
    std::memcpy(&v, log.data() + at, 8);
    if (at == 0) {
      REQUIRE(v == kReadyMarker);
      ready = true;
      continue;
    }
    REQUIRE(v == static_cast<uint64_t>(last + 1));
    last = static_cast<int64_t>(v);
  }
  if (!from_spawn) REQUIRE_MESSAGE(ready, "the writer never opened the store");
  if (last >= 0) ++stats->with_ops;
  stats->window_us = last >= 0 ? std::max<uint64_t>(50'000, stats->window_us * 9 / 10)
                               : std::min<uint64_t>(2'000'000, stats->window_us * 3 / 2);
  stats->acked_ops += static_cast<uint64_t>(last + 1);

  // Recovery, Check, and the contents. The close at the end checkpoints or
  // not, so the next writer starts from both kinds of state.
  Options options;
  options.checkpoint_on_close = rng.Uniform(3) != 0;
  Store store;
  Status s = Store::Open(path, options, &store);
  REQUIRE_MESSAGE(s.ok(), "reopen after the kill: " << s.ToString());
  CheckReport report;
  REQUIRE(store.Check(&report).ok());
  CHECK_MESSAGE(report.ok(), "Check after a kill (" << std::string(ModeName(mode)) << ", last acknowledged op " << last
                                                    << "):" << ProblemsText(report));
  const Model got = Dump(store);
  OpGen gen(seed, mode);
  Model want = *base;
  for (int64_t i = 0; i <= last; ++i) ApplyToModel(gen.Next(), &want);
  const Op next_op = gen.Next();  // the operation the kill may have interrupted
  if (ready && rc != 0 && next_op.kind == Op::kCompact) ++stats->in_compact;
  if (in_write && next_op.kind == Op::kBatch) ++stats->in_batch;
  if (got == want) {
    *base = std::move(want);
  } else {
    Model next = want;
    if (ready) ApplyToModel(next_op, &next);
    if (got == next) {
      ++stats->next_applied;
      *base = std::move(next);
    } else {
      FAIL_CHECK("after a kill (" << std::string(ModeName(mode)) << ", last acknowledged op " << last
                                  << ") the store holds neither the acknowledged state nor the one after:"
                                  << DescribeDiff(want, got));
      *base = got;
    }
  }
  CHECK(store.size() == got.size());
  REQUIRE(store.Close().ok());
}

void RunKills(Mode mode, int runs, uint64_t seed0) {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string log_path = dir.File("ack.log");
  Rng rng(seed0);
  Model base;
  KillStats stats;
  for (int run = 0; run < runs; ++run) {
    if ((mode == Mode::kGrowth || mode == Mode::kBatch) && run % 4 == 0) {
      // Start over from an empty file now and then, so runs grow the file
      // (and the table, and the allocation map) from the smallest size.
      std::remove(path.c_str());
      base.clear();
    }
    KillOnce(path, log_path, seed0 * 1000 + static_cast<uint64_t>(run), mode, rng, &base, &stats);
  }
  MESSAGE(std::string(ModeName(mode)) << ": " << stats.runs << " runs, " << stats.killed << " killed, "
                                      << stats.finished << " finished before the kill, " << stats.with_ops
                                      << " with acknowledged ops (" << stats.acked_ops << " in all), "
                                      << stats.next_applied << " where the unacknowledged next op had landed, "
                                      << stats.grew << " where the file grew, " << stats.in_compact
                                      << " killed in or right after a Compact, " << stats.in_write
                                      << " killed inside a write (" << stats.in_batch
                                      << " of them a batch); final store " << base.size() << " keys, " << FileSize(path)
                                      << " bytes; kill window at the end " << stats.window_us / 1000 << " ms");
  // Most kills must land after some work was done, or the test proves little.
  CHECK(stats.with_ops * 2 >= stats.runs);
  if (mode == Mode::kGrowth) CHECK(stats.grew * 4 >= stats.runs);
  if (mode == Mode::kCompact) CHECK(stats.in_compact * 4 >= stats.runs);
  if (mode == Mode::kBatch) CHECK(stats.in_batch * 6 >= stats.runs);  // 26 of 60 in a run here
  Store store = MustOpen(path);
  CHECK(Dump(store) == base);
  CheckClean(store);
}

TEST_SUITE("crash") {
  TEST_CASE("crash: a writer killed at random moments loses nothing acknowledged") { RunKills(Mode::kPlain, 100, 1); }
  TEST_CASE("crash: a writer killed while the file grows loses nothing acknowledged") {
    RunKills(Mode::kGrowth, 60, 2);
  }
  TEST_CASE("crash: a writer killed during Compact loses nothing acknowledged") { RunKills(Mode::kCompact, 60, 3); }

  TEST_CASE("crash: a writer killed inside atomic batches (2 to 5,000 operations) loses nothing acknowledged") {
    RunKills(Mode::kBatch, 60, 4);
  }

  TEST_CASE("crash: a writer killed inside large batches (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunKills(Mode::kBatch, 300, 14);
  }

  TEST_CASE("crash: a writer killed at random moments (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunKills(Mode::kPlain, 500, 11);
  }
  TEST_CASE("crash: a writer killed while the file grows (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunKills(Mode::kGrowth, 300, 12);
  }
  TEST_CASE("crash: a writer killed during Compact (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunKills(Mode::kCompact, 300, 13);
  }

  // ---- power cut ----------------------------------------------------------------

  constexpr uint64_t kPage = 4096;

  // The store after the cut must hold exactly the flushed contents: recovery
  // after a reboot goes back to the newest checkpoint. The writes made after
  // the flush are kept to tell, when it does not, what went wrong: a value
  // written later (a checkpointed record changed in place, or a later
  // change taken for durable) or one never written at all (torn data).
  struct PowerCutModel {
    Model flushed;
    std::map<std::string, std::set<std::string>> later_values;
    std::set<std::string> later_erased;

    void Put(Store& store, const std::string& k, const std::string& v) {
      REQUIRE(store.Put(k, v).ok());
      later_values[k].insert(v);
    }
    void Erase(Store& store, const std::string& k) {
      Status s = store.Erase(k);
      REQUIRE((s.ok() || s.IsNotFound()));
      later_erased.insert(k);
    }

    // Empty when `got` holds nothing but flushed or later values; else what
    // is wrong.
    std::string Violation(const Model& got) const {
      for (const auto& [k, v] : flushed) {
        auto it = got.find(k);
        if (it == got.end()) {
          if (later_erased.count(k) == 0) return "lost " + k + " (flushed, never erased later)";
          continue;
        }
        if (it->second == v) continue;
        auto later = later_values.find(k);
        if (later == later_values.end() || later->second.count(it->second) == 0) {
          return k + " holds a value never written for it (" + it->second.substr(0, 30) + ")";
        }
      }
      for (const auto& [k, v] : got) {
        if (flushed.count(k) != 0) continue;
        auto later = later_values.find(k);
        if (later == later_values.end() || later->second.count(v) == 0) {
          return "unexpected " + k + " = " + v.substr(0, 30);
        }
      }
      return "";
    }
  };

  struct Images {
    std::string flushed;
    std::string later;
    PowerCutModel model;
  };

  // Builds a store, checkpoints it, then changes it further without a
  // checkpoint; returns both file images. `scenario` picks the later changes.
  Images MakeImages(const std::string& path, int scenario) {
    Images out;
    Options options;
    options.checkpoint_on_close = false;
    Store store = MustOpen(path, options);
    Rng rng(static_cast<uint64_t>(scenario) + 500);
    Model model;
    for (int i = 0; i < 3000; ++i) {
      const std::string k = "key" + std::to_string(i);
      const std::string v = "v0:" + std::to_string(i) + ":" + rng.Bytes(rng.Uniform(200));
      REQUIRE(store.Put(k, v).ok());
      model[k] = v;
    }
    for (int i = 0; i < 3000; i += 7) {
      REQUIRE(store.Erase("key" + std::to_string(i)).ok());
      model.erase("key" + std::to_string(i));
    }
    if (scenario == 3) {
      REQUIRE(store.Compact().ok());  // the checkpoint follows a compaction
    }
    if (scenario == 4) {
      // The checkpoint is a synchronous batch of 20000 changes (past the fixed
      // undo log): once Write returns, all of it must survive the cut.
      WriteBatch batch;
      for (int i = 0; i < 20000; ++i) {
        const std::string k = "sb" + std::to_string(i);
        const std::string v = "s:" + std::to_string(i) + ":" + rng.Bytes(rng.Uniform(100));
        batch.Put(k, v);
        model[k] = v;
      }
      for (int i = 5; i < 3000; i += 13) {
        batch.Erase("key" + std::to_string(i));
        model.erase("key" + std::to_string(i));
      }
      REQUIRE(store.Write(batch, WriteOptions{.sync = true}).ok());
    } else {
      REQUIRE(store.Flush(FlushMode::kSync).ok());
    }
    out.flushed = ReadFileBytes(path);
    out.model.flushed = model;

    PowerCutModel& pm = out.model;
    // Overwrites and erases of checkpointed keys, in every scenario.
    for (int i = 1; i < 3000; i += 3)
      pm.Put(store, "key" + std::to_string(i), "v1:" + std::to_string(i) + rng.Bytes(rng.Uniform(300)));
    for (int i = 2; i < 3000; i += 11) pm.Erase(store, "key" + std::to_string(i));
    // Values of the same size over checkpointed records: the one kind of put
    // the engine may make in place, which it must not do over a record the
    // checkpoint holds (the cut would then keep the new value).
    for (int i = 5; i < 3000; i += 9) {  // i % 3 == 2: not overwritten above
      const std::string k = "key" + std::to_string(i);
      const auto it = pm.flushed.find(k);
      if (it == pm.flushed.end() || pm.later_values.count(k) != 0 || pm.later_erased.count(k) != 0) continue;
      pm.Put(store, k, std::string(it->second.size(), 'w'));
    }
    if (scenario == 1 || scenario == 3) {
      // Growth: big values make the file (and its allocation map) grow.
      for (int i = 0; i < 150; ++i) pm.Put(store, "big" + std::to_string(i), rng.Bytes(20000 + rng.Uniform(40000)));
    }
    if (scenario == 2) {
      // Many new keys: the table is rebuilt at twice the size.
      for (int i = 0; i < 8000; ++i) pm.Put(store, "new" + std::to_string(i), "n" + std::to_string(i));
    }
    if (scenario == 4) {
      // A large batch after the checkpoint: its pages may reach the disk in
      // any subset, and none of it was made durable. It starts by replacing
      // every key of the synchronous batch, so that it logs more entries than
      // the table has bytes while the table keeps its size, and switches to
      // page-level undo (Heap::bulk) over pages the writes since the
      // checkpoint already changed.
      WriteBatch batch;
      for (int i = 0; i < 20000; ++i) {
        const std::string k = "sb" + std::to_string(i);
        const std::string v = "r:" + std::to_string(i) + rng.Bytes(rng.Uniform(60));
        batch.Put(k, v);
        pm.later_values[k].insert(v);
      }
      for (int i = 0; i < 30000; ++i) {
        const std::string k = (i % 3 == 0 ? "sb" : "lb") + std::to_string(i);
        const std::string v = "l:" + std::to_string(i) + rng.Bytes(rng.Uniform(80));
        batch.Put(k, v);
        pm.later_values[k].insert(v);
      }
      for (int i = 1; i < 20000; i += 7) {
        batch.Erase("sb" + std::to_string(i));
        pm.later_erased.insert("sb" + std::to_string(i));
      }
      REQUIRE(store.Write(batch).ok());
    }
    for (int i = 1; i < 3000; i += 5) pm.Put(store, "key" + std::to_string(i), "v2:" + std::to_string(i));
    out.later = ReadFileBytes(path);
    REQUIRE(store.Close().ok());
    return out;
  }

  struct CutStats {
    int images = 0, exact = 0, torn = 0, longer = 0;
  };

  // Writes one mixed image, "reboots", opens it and checks what it holds.
  void CheckImage(const std::string& path, const std::string& image, const PowerCutModel& model, uint8_t boot_salt,
                  const std::string& what, CutStats* stats) {
    WriteFileBytes(path, image);
    BootIdGuard reboot(boot_salt);
    Store store;
    Status s = Store::Open(path, Options{}, &store);
    REQUIRE_MESSAGE(s.ok(), what << ": open after the power cut: " << s.ToString());
    CheckReport report;
    REQUIRE(store.Check(&report).ok());
    CHECK_MESSAGE(report.ok(), what << ": Check after the power cut:" << ProblemsText(report));
    const Model got = Dump(store);
    const std::string violation = model.Violation(got);
    CHECK_MESSAGE(violation.empty(), what << ": " << violation);
    const bool exact = got == model.flushed;
    CHECK_MESSAGE(exact, what << ": the recovered store is not the checkpoint: " << got.size() << " keys, "
                              << model.flushed.size() << " flushed"
                              << (violation.empty() ? " (it holds values written after the flush)" : ""));
    if (exact) ++stats->exact;
    // The recovered store takes writes and checkpoints, and stays sound.
    Model after = got;
    for (int i = 0; i < 200; ++i) {
      const std::string k = "post" + std::to_string(i);
      REQUIRE(store.Put(k, std::string(static_cast<size_t>(i * 37 % 3000), 'p')).ok());
      after[k] = std::string(static_cast<size_t>(i * 37 % 3000), 'p');
    }
    for (int i = 3; i < 3000; i += 50) {
      if (after.erase("key" + std::to_string(i))) REQUIRE(store.Erase("key" + std::to_string(i)).ok());
    }
    REQUIRE(store.Flush(FlushMode::kSync).ok());
    CheckReport report2;
    REQUIRE(store.Check(&report2).ok());
    CHECK_MESSAGE(report2.ok(), what << ": Check after writing to the recovered store:" << ProblemsText(report2));
    REQUIRE(store.Close().ok());
    store = MustOpen(path);
    CHECK_MESSAGE(Dump(store) == after, what << ": the recovered store lost writes made after the recovery");
    ++stats->images;
  }

  void RunPowerCuts(int scenario, int subsets, uint64_t seed) {
    CAPTURE(scenario);
    TempDir dir;
    const Images im = MakeImages(dir.File("source.mkv"), scenario);
    const std::string& F = im.flushed;
    const std::string& N = im.later;
    REQUIRE(F.size() % kPage == 0);
    // The pages that differ (and those past the old end).
    std::vector<uint64_t> changed, tail;
    const uint64_t common = std::min(F.size(), N.size()) / kPage;
    for (uint64_t p = 0; p < common; ++p) {
      if (std::memcmp(F.data() + p * kPage, N.data() + p * kPage, kPage) != 0) changed.push_back(p);
    }
    for (uint64_t p = common; p * kPage < N.size(); ++p) tail.push_back(p);
    REQUIRE(!changed.empty());
    MESSAGE("scenario " << scenario << ": flushed image " << F.size() << " bytes, later image " << N.size()
                        << " bytes, " << changed.size() << " pages differ, " << tail.size()
                        << " pages past the old end");
    // The meta pages are written only by checkpoints, and there was none after the flush.
    CHECK(std::memcmp(F.data(), N.data(), 2 * kPage) == 0);

    const std::string path = dir.File("cut.mkv");
    Rng rng(seed);
    CutStats stats;
    // The extremes first: nothing of the later image, and all of it.
    CheckImage(path, F, im.model, 1, "flushed image", &stats);
    CheckImage(path, N, im.model, 2, "later image", &stats);
    for (int it = 0; it < subsets; ++it) {
      const uint64_t percent = rng.Uniform(101);
      std::string image = F;
      const bool longer = !tail.empty() && rng.Uniform(2) == 0;
      if (longer) image.resize(N.size(), '\0');
      std::vector<uint64_t> chosen;
      for (uint64_t p : changed) {
        if (rng.Uniform(100) < percent) chosen.push_back(p);
      }
      if (longer) {
        for (uint64_t p : tail) {
          if (rng.Uniform(100) < percent) chosen.push_back(p);
        }
      }
      for (uint64_t p : chosen) image.replace(p * kPage, kPage, N, p * kPage, kPage);
      std::string what = "subset " + std::to_string(it) + " (" + std::to_string(chosen.size()) +
                         " pages from the later image" + (longer ? ", new length" : ", old length");
      const uint64_t tear = chosen.empty() ? 0 : rng.Uniform(3);
      if (tear != 0) {
        // One page written was torn: half of it is new, the other half is what
        // the disk held before: the old bytes, or zeros past the old end of the
        // file (space the file grew into). A page inside the old file never
        // reads back as zeros, since writing a sector never changes another.
        const uint64_t p = chosen[rng.Uniform(chosen.size())];
        const uint64_t half = p * kPage + (tear == 1 ? kPage / 2 : 0);
        const bool past_old_end = p * kPage >= F.size();
        if (past_old_end) {
          image.replace(half, kPage / 2, std::string(kPage / 2, '\0'));
        } else {
          image.replace(half, kPage / 2, F, half, kPage / 2);
        }
        what += ", page " + std::to_string(p) + " torn (" + (tear == 1 ? "second" : "first") + " half " +
                (past_old_end ? "zero" : "old") + ")";
        ++stats.torn;
      }
      what += ")";
      if (longer) ++stats.longer;
      CheckImage(path, image, im.model, static_cast<uint8_t>(3 + it % 200), what, &stats);
    }
    MESSAGE("scenario " << scenario << ": " << stats.images << " images recovered (" << stats.torn
                        << " with a torn page, " << stats.longer << " at the new length); " << stats.exact
                        << " held exactly the flushed contents");
    CHECK(stats.exact == subsets + 2);
  }

  TEST_CASE("crash: power cut after a checkpoint keeps the checkpointed data (overwrites and erases)") {
    RunPowerCuts(0, 150, 100);
  }
  TEST_CASE("crash: power cut after a checkpoint keeps the checkpointed data (file growth)") {
    RunPowerCuts(1, 150, 101);
  }
  TEST_CASE("crash: power cut after a checkpoint keeps the checkpointed data (table rebuild)") {
    RunPowerCuts(2, 150, 102);
  }
  TEST_CASE("crash: power cut after a synchronous batch keeps the whole batch (large batches)") {
    RunPowerCuts(4, 60, 104);
  }
  TEST_CASE("crash: power cut after a checkpoint keeps the checkpointed data (after Compact)") {
    RunPowerCuts(3, 150, 103);
  }

  // A checkpoint by one handle dies right after its meta page is durable,
  // before it releases the space the previous checkpoint held; another handle
  // of the store goes on writing; then the power fails. The newest meta page
  // is the dead checkpoint's, so nothing it references may have been reused
  // or changed in place by the later writes.
#ifndef _WIN32  // tampers with the file through mmap(2) (listed in tests/CMakeLists.txt)
  void PutKeys(Store & a, int n, Model* model) {
    for (int i = 0; i < n; ++i) {
      const std::string k = "key" + std::to_string(i), v = "v0." + std::to_string(i);
      REQUIRE(a.Put(k, v).ok());
      (*model)[k] = v;
    }
  }

  // Kills a child process in the middle of `batch` on `path` once the batch's
  // undo log holds at least `entries` entries. Returns the log's length the
  // child left behind.
  uint64_t KillChildInBatch(const std::string& path, const WriteBatch& batch, uint64_t entries) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      Store b;
      if (!Store::Open(path, Options{}, &b).ok()) ::_exit(2);
      (void)b.Write(batch);
      ::_exit(3);  // the batch ended before the parent saw it running
    }
    const ControlView ctl(path);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (ctl->undo_count.load() < entries && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    const bool in_batch = ctl->undo_count.load() >= entries;
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE_MESSAGE(in_batch, "the child's batch was not seen logging " << entries << " entries within 60 s");
    REQUIRE_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL), "the child ended before the kill");
    const uint64_t left = ctl->undo_count.load();
    REQUIRE(left >= entries);  // the dead writer's log is still there
    return left;
  }

  // A close that finds itself alone takes the write lock to compact the tail
  // and checkpoint. When another process was killed in the middle of a
  // write, that write must be rolled back first, as every write does, and
  // not committed with the close's own changes.
  TEST_CASE("crash: a handle closing alone after another process was killed in a batch rolls the batch back") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store a = MustOpen(path);
    Model model;
    PutKeys(a, 2000, &model);
    WriteBatch batch;
    for (int i = 0; i < 400000; ++i) batch.Put("batch" + std::to_string(i), std::string(100, 'b'));
    for (int i = 0; i < 2000; ++i) batch.Erase("key" + std::to_string(i));
    KillChildInBatch(path, batch, 1000);
    REQUIRE(a.Close().ok());  // alone now: compacts the tail and checkpoints
    Store c = MustOpen(path);
    CheckClean(c);
    CHECK(Dump(c) == model);
  }

  // 10,000 keys written and closed, then a child killed in a batch that
  // overwrites each of them 40 times, once its undo log holds `entries`
  // entries. Overwrites of present keys are each logged (new records go in
  // new table pages, which need no undo), so the log runs into its chain of
  // chunks and through growths of the file. Returns the log's length.
  uint64_t KilledOverwriteBatch(const std::string& path, uint64_t entries, Model* model) {
    {
      Store a = MustOpen(path);
      PutKeys(a, 10000, model);
    }
    WriteBatch batch;
    for (int round = 0; round < 40; ++round) {
      for (int i = 0; i < 10000; ++i) batch.Put("key" + std::to_string(i), "b" + std::to_string(round));
    }
    return KillChildInBatch(path, batch, entries);
  }

  // A child opens `path` writable and its recovery is stopped by the testing
  // hook once it has applied `entries` undo entries, as a kill there would
  // leave it; the child must have been stopped so.
  void StopRecoveryAfter(const std::string& path, uint64_t entries) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      internal::SetRollbackStopForTesting(entries);
      Store b;
      const Status s = Store::Open(path, Options{}, &b);
      if (!s.ok()) std::fprintf(stderr, "open in the recovering child: %s\n", s.ToString().c_str());
      ::_exit(s.ok() ? 0 : 1);  // the hook ends the process first when the recovery runs
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == internal::kRollbackStopExit),
                    "the recovery was not stopped after " << entries << " entries (status " << status << ")");
  }

  // The recovery of a killed writer can itself be killed. Its rollback
  // restores words it depends on (the chain of undo chunks' head, the file's
  // and the allocation map's sizes): killed past them, a rollback that
  // started over from the first entry found a chain of length 0 and refused
  // the store as corrupt for the rest of the boot. Each recovery here is
  // stopped by the testing hook after a number of entries, as a kill there
  // would leave it, and the next one finishes the work.
  TEST_CASE("crash: a recovery killed in the middle of its rollback is finished by the next writer") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Model model;
    uint64_t left = KilledOverwriteBatch(path, internal::format::kUndoCapacity + 2000, &model);
    const ControlView ctl(path);
    // Past the chain's head (logged in the fixed part, just before it filled),
    // then a few entries more, then the rest.
    for (const uint64_t keep : {uint64_t{100}, uint64_t{40}}) {
      REQUIRE(left > keep);
      StopRecoveryAfter(path, left - keep);
      CHECK(ctl->undo_count.load() == keep);  // the entries applied are uncounted
      CHECK(ctl->undo_chain == 0);            // restored: the chain is no longer needed
      left = keep;
    }
    Store c = MustOpen(path);  // finishes the rollback
    CHECK(ctl->undo_count.load() == 0);
    CheckClean(c);
    CHECK(Dump(c) == model);
  }

  // The entries of `path`'s undo log, in order (the fixed part, then the chain).
  std::vector<internal::format::UndoEntry> ReadUndoLog(const std::string& image) {
    namespace format = internal::format;
    const auto* ctl = reinterpret_cast<const format::ControlPage*>(image.data() + format::kControlOffset);
    const uint64_t n = ctl->undo_count.load();
    std::vector<format::UndoEntry> log(n);
    const uint64_t fixed = std::min(n, format::kUndoCapacity);
    std::memcpy(log.data(), image.data() + format::kUndoOffset, fixed * sizeof(format::UndoEntry));
    uint64_t have = fixed;
    for (uint64_t off = ctl->undo_chain; have < n;) {
      REQUIRE(off + sizeof(format::UndoChunk) <= image.size());
      format::UndoChunk chunk;
      std::memcpy(&chunk, image.data() + off, sizeof chunk);
      const uint64_t take = std::min(n - have, chunk.capacity);
      REQUIRE(off + sizeof chunk + take * sizeof(format::UndoEntry) <= image.size());
      std::memcpy(log.data() + have, image.data() + off + sizeof chunk, take * sizeof(format::UndoEntry));
      have += take;
      off = chunk.next;
    }
    return log;
  }

  // A write that grows the file past what the allocation map covers moves
  // the map into the new tail and then raises file_size; its rollback
  // restores the size first. Open checks, before it recovers, that the map
  // marks itself used, and the new map used to mark itself only after the
  // switch, under an undo entry of its own: a recovery killed between
  // undoing that entry and restoring the map's offset left a map that did not
  // mark itself, and the store was refused as corrupt. The recovery is
  // stopped here at each entry around the first map move in the log.
  TEST_CASE("crash: a recovery killed around an allocation-map move in its log is finished by the next writer") {
    namespace format = internal::format;
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Model model;
    const uint64_t n = KilledOverwriteBatch(path, 40000, &model);
    const std::string image = ReadFileBytes(path);
    const std::vector<format::UndoEntry> log = ReadUndoLog(image);
    const uint64_t alloc_offset_word = format::kControlOffset + offsetof(format::ControlPage, alloc_offset);
    uint64_t move = 0;
    while (move < n && !(format::KindOf(log[move]) == format::UndoKind::kWord &&
                         format::TargetOf(log[move]) == alloc_offset_word)) {
      ++move;
    }
    REQUIRE_MESSAGE(move < n, "the killed batch's " << n << " entries hold no move of the allocation map");
    // Applied down to entry j: the rollback stopped after n - j entries.
    for (uint64_t j = move + 5; j >= move && j <= move + 5; --j) {
      CAPTURE(j);
      WriteFileBytes(path, image);
      StopRecoveryAfter(path, n - j);
      Store c;
      const Status s = Store::Open(path, Options{}, &c);
      REQUIRE_MESSAGE(s.ok(), "open after a recovery stopped at entry " << j << " (the map's move is entry " << move
                                                                        << "): " << s.ToString());
      CheckClean(c);
      CHECK(Dump(c) == model);
      if (j == 0) break;
    }
  }

  TEST_CASE("crash: writes after a checkpoint that died past its meta page keep that checkpoint intact") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Options options;
    options.checkpoint_on_close = false;
    Store a = MustOpen(path, options);
    Rng rng(4242);
    Model model;
    auto put = [&](Store& store, const std::string& k, const std::string& v) {
      REQUIRE(store.Put(k, v).ok());
      model[k] = v;
    };
    // Two checkpoints, so both page-map snapshot slots exist at this table size
    // (the keys stay below the size that rebuilds the table).
    for (int i = 0; i < 1500; ++i) put(a, "key" + std::to_string(i), "v0." + rng.Bytes(rng.Uniform(100)));
    REQUIRE(a.Flush().ok());
    for (int i = 0; i < 1500; i += 2) put(a, "key" + std::to_string(i), "v1." + rng.Bytes(rng.Uniform(100)));
    REQUIRE(a.Flush().ok());
    // Changes after that checkpoint: fresh records and copied table pages.
    for (int i = 0; i < 1500; i += 3) put(a, "key" + std::to_string(i), "v2." + rng.Bytes(rng.Uniform(300)));
    for (int i = 1; i < 1500; i += 10) {
      REQUIRE(a.Erase("key" + std::to_string(i)).ok());
      model.erase("key" + std::to_string(i));
    }
    Stats st;
    REQUIRE(a.GetStats(&st).ok());
    const uint64_t gen_before = st.checkpoint_generation;

    // The writer state of the control page and the allocation map, before the checkpoint.
    const int fd = ::open(path.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    const uint64_t size = FileSize(path);
    void* mem = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(mem != MAP_FAILED);
    auto* base = static_cast<uint8_t*>(mem);
    auto* ctl = reinterpret_cast<internal::format::ControlPage*>(base + internal::format::kControlOffset);
    const size_t writer_from =
        static_cast<size_t>(reinterpret_cast<uint8_t*>(&ctl->magic) - reinterpret_cast<uint8_t*>(ctl));
    const std::string ctl_before(reinterpret_cast<const char*>(ctl) + writer_from, kPage - writer_from);
    const uint64_t map_offset = ctl->alloc_offset;
    const uint64_t map_bytes = ctl->alloc_words * sizeof(internal::format::AllocWord);
    REQUIRE(map_offset + map_bytes <= size);
    const std::string map_before(reinterpret_cast<const char*>(base) + map_offset, map_bytes);
    const uint64_t snap_off[2] = {ctl->snapshot_slot_offset[0], ctl->snapshot_slot_offset[1]};

    // Another handle checkpoints; then the control page and the map are put
    // back as they were when its meta page had just become durable.
    {
      Store b = MustOpen(path, options);
      REQUIRE(b.Flush().ok());
      REQUIRE(b.GetStats(&st).ok());
      REQUIRE(st.checkpoint_generation == gen_before + 1);
    }
    REQUIRE_MESSAGE((ctl->snapshot_slot_offset[0] == snap_off[0] && ctl->snapshot_slot_offset[1] == snap_off[1] &&
                     ctl->alloc_offset == map_offset),
                    "the checkpoint allocated: the simulated kill point would not be faithful");
    const Model at_checkpoint = model;
    std::memcpy(reinterpret_cast<uint8_t*>(ctl) + writer_from, ctl_before.data(), ctl_before.size());
    std::memcpy(base + map_offset, map_before.data(), map_bytes);
    ::munmap(mem, size);

    // The surviving handle writes on (no checkpoint).
    PowerCutModel pm;
    pm.flushed = at_checkpoint;
    for (int round = 0; round < 4; ++round) {
      for (int i = round; i < 1500; i += 2) pm.Put(a, "key" + std::to_string(i), "v3." + rng.Bytes(rng.Uniform(400)));
      for (int i = 3 + round; i < 1500; i += 17) pm.Erase(a, "key" + std::to_string(i));
    }
    CheckClean(a);
    // Power cut now: the file as it is.
    const std::string image = ReadFileBytes(path);
    const std::string cut = dir.File("cut.mkv");
    WriteFileBytes(cut, image);
    {
      BootIdGuard reboot(0x77);
      Store store = MustOpen(cut);
      REQUIRE(store.GetStats(&st).ok());
      // Back to checkpoint gen_before + 1, which the recovery then
      // checkpoints again (with its restarted change sequence).
      CHECK(st.checkpoint_generation == gen_before + 2);
      CheckReport report;
      REQUIRE(store.Check(&report).ok());
      CHECK_MESSAGE(report.ok(), "Check after the power cut:" << ProblemsText(report));
      const Model got = Dump(store);
      const std::string violation = pm.Violation(got);
      CHECK_MESSAGE(violation.empty(), violation);
      CHECK(got == at_checkpoint);  // recovery goes back to the newest checkpoint
    }
    REQUIRE(a.Close().ok());
  }

#endif

  // A cut while a checkpoint writes its meta page: everything the new meta
  // page references is on disk already (the checkpoint synced it first), and
  // the meta page itself is new, old, or torn. The store must come back as
  // the new checkpoint or, failing its checksum, exactly as the previous one.
  TEST_CASE("crash: power cut while a checkpoint writes its meta page gives that checkpoint or the one before") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Options options;
    options.checkpoint_on_close = false;
    Store store = MustOpen(path, options);
    Rng rng(77);
    for (int i = 0; i < 4000; ++i) REQUIRE(store.Put("key" + std::to_string(i), rng.Bytes(rng.Uniform(300))).ok());
    REQUIRE(store.Flush(FlushMode::kSync).ok());
    const Model before = Dump(store);
    const std::string before_image = ReadFileBytes(path);
    // Overwrites, erases, growth and a table rebuild, then the next checkpoint.
    for (int i = 0; i < 4000; i += 2) REQUIRE(store.Put("key" + std::to_string(i), rng.Bytes(400)).ok());
    for (int i = 1; i < 4000; i += 6) REQUIRE(store.Erase("key" + std::to_string(i)).ok());
    for (int i = 0; i < 9000; ++i) REQUIRE(store.Put("new" + std::to_string(i), "n").ok());
    REQUIRE(store.Flush(FlushMode::kSync).ok());
    Stats st;
    REQUIRE(store.GetStats(&st).ok());
    const Model after = Dump(store);
    const std::string after_image = ReadFileBytes(path);
    REQUIRE(store.Close().ok());
    const uint64_t slot = (st.checkpoint_generation % 2) * kPage;  // where the new meta page went

    struct Variant {
      std::string what;
      std::string page;  // the meta slot's bytes on disk after the cut
    };
    const std::string fresh = after_image.substr(slot, kPage), stale = before_image.substr(slot, kPage);
    std::vector<Variant> variants = {{"meta page written", fresh}, {"meta page not written", stale}};
    // Torn at a sector boundary inside the meta page's fields (the page holds
    // under 512 bytes of fields, the rest is zero) and at half the page.
    for (size_t at : {size_t{256}, size_t{kPage / 2}}) {
      const std::string where = " at byte " + std::to_string(at);
      variants.push_back({"torn new-then-old" + where, fresh.substr(0, at) + stale.substr(at)});
      variants.push_back({"torn old-then-new" + where, stale.substr(0, at) + fresh.substr(at)});
      variants.push_back({"torn new-then-zero" + where, fresh.substr(0, at) + std::string(kPage - at, '\0')});
    }
    // On the disk at the cut, the control page is the one the checkpoint
    // synced before its meta page: it still names the previous generation
    // and says the state changed since (the new generation is stored in it
    // only after the meta page is durable).
    std::string synced_control = after_image.substr(internal::format::kControlOffset, kPage);
    {
      const uint64_t previous = st.checkpoint_generation - 1, dirty = 1;
      std::memcpy(synced_control.data() + offsetof(internal::format::ControlPage, generation), &previous, 8);
      std::memcpy(synced_control.data() + offsetof(internal::format::ControlPage, dirty), &dirty, 8);
    }
    uint8_t salt = 40;
    for (const Variant& v : variants) {
      CAPTURE(v.what);
      // The new checkpoint counts only when all of its fields reached the disk.
      const bool newest = v.page.substr(0, 512) == fresh.substr(0, 512);
      std::string image = after_image;
      image.replace(internal::format::kControlOffset, kPage, synced_control);
      image.replace(slot, kPage, v.page);
      WriteFileBytes(path, image);
      BootIdGuard reboot(salt++);
      Store s = MustOpen(path);
      CheckClean(s);
      CHECK_MESSAGE(Dump(s) == (newest ? after : before),
                    v.what << (newest ? ": expected the new checkpoint" : ": expected the previous checkpoint"));
      // And it takes writes again.
      REQUIRE(s.Put("post", "cut").ok());
      REQUIRE(s.Flush(FlushMode::kSync).ok());
      CheckClean(s);
    }
  }

  // After a restart, recovery makes the checkpoint's page map snapshot the
  // live page map. A snapshot that does not match its checksum (here: two
  // table pages swapped, which every other check accepts) would hide the
  // entries of those pages; the open refuses it and leaves the file as it was.
  TEST_CASE("crash: a damaged page map snapshot is refused after a restart, and the file is left unchanged") {
    namespace format = internal::format;
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 3000; ++i) REQUIRE(store.Put("key" + std::to_string(i), "value").ok());
      REQUIRE(store.Close().ok());  // checkpoints
    }
    std::string image = ReadFileBytes(path);
    format::MetaPage meta[2];
    std::memcpy(&meta[0], image.data(), sizeof meta[0]);
    std::memcpy(&meta[1], image.data() + kPage, sizeof meta[1]);
    const format::MetaPage& m = meta[0].generation > meta[1].generation ? meta[0] : meta[1];
    REQUIRE(m.magic == format::kMetaMagic);
    REQUIRE(format::PagemapBytes(m.table_shift) >= 8);  // at least two table pages
    uint32_t first, second;
    std::memcpy(&first, image.data() + m.snapshot_offset, 4);
    std::memcpy(&second, image.data() + m.snapshot_offset + 4, 4);
    REQUIRE(first != second);
    std::memcpy(image.data() + m.snapshot_offset, &second, 4);
    std::memcpy(image.data() + m.snapshot_offset + 4, &first, 4);
    WriteFileBytes(path, image);

    BootIdGuard reboot(0x31);
    Store store;
    const Status s = Store::Open(path, Options{}, &store);
    CHECK(s.code() == Code::kCorruption);
    CHECK_MESSAGE(
        s.message().find("page map snapshot of checkpoint " + std::to_string(m.generation)) != std::string::npos,
        s.ToString());
    CHECK(ReadFileBytes(path) == image);
  }

  TEST_CASE("crash: power cut after a checkpoint (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    for (int scenario = 0; scenario < 5; ++scenario)
      RunPowerCuts(scenario, 1000, 200 + static_cast<uint64_t>(scenario));
  }

}  // TEST_SUITE("crash")

}  // namespace
}  // namespace mapkv::test
