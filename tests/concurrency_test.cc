// concurrency_test.cc: many threads on one handle, several handles in one
// process, several processes on one file, and a handle carried into a fork
// child.
#ifndef _WIN32
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "racy.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

// A value that says which key and version it belongs to, padded to a length
// that depends on both, and ends with a marker: a torn or misplaced value
// does not parse back.
std::string MakeValue(const std::string& key, uint64_t version) {
  std::string v = key + "#" + std::to_string(version) + "#";
  v.append(static_cast<size_t>((version * 13 + key.size() * 7) % 300), static_cast<char>('a' + version % 26));
  v += "$";
  return v;
}

// True when `value` is MakeValue(key, some version); sets *version.
bool ParseValue(const std::string& key, std::string_view value, uint64_t* version) {
  if (value.size() < key.size() + 3 || value.substr(0, key.size()) != key || value[key.size()] != '#') return false;
  const size_t end = value.find('#', key.size() + 1);
  if (end == std::string_view::npos) return false;
  uint64_t ver = 0;
  for (size_t i = key.size() + 1; i < end; ++i) {
    if (value[i] < '0' || value[i] > '9') return false;
    ver = ver * 10 + static_cast<uint64_t>(value[i] - '0');
  }
  if (value != MakeValue(key, ver)) return false;
  *version = ver;
  return true;
}

#ifndef _WIN32
// Lines of /proc/self/maps: the process's mapped areas.
size_t MappedAreas() {
  std::ifstream maps("/proc/self/maps");
  size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}
#endif

std::string ThreadKey(int owner, uint64_t i) { return "t" + std::to_string(owner) + ":" + std::to_string(i); }

// ---- children ---------------------------------------------------------------

// args: path, id, count. Writes keys p<id>:<i> (some through batches),
// overwrites every 7th, erases every 10th, reads its own keys back and other
// writers' keys (which must parse when present). Child 0 also checkpoints,
// child 1 also compacts. Exit 0 when every read matched.
int WriterChild(const std::vector<std::string>& args) {
  if (args.size() != 3) return 2;
  const std::string& path = args[0];
  const int id = std::stoi(args[1]);
  const uint64_t count = std::stoull(args[2]);
  Store store;
  if (!Store::Open(path, {}, &store).ok()) return 3;
  auto key = [](int who, uint64_t i) { return "p" + std::to_string(who) + ":" + std::to_string(i); };
  Rng rng(static_cast<uint64_t>(id) + 1000);
  std::string v;
  WriteBatch batch;
  for (uint64_t i = 0; i < count; ++i) {
    if (i % 3 == 0) {
      batch.Put(key(id, i), MakeValue(key(id, i), 1));
      if (batch.Count() == 20) {
        if (!store.Write(batch).ok()) return 4;
        batch.Clear();
      }
    } else {
      if (!store.Put(key(id, i), MakeValue(key(id, i), 1)).ok()) return 5;
    }
    if (i % 7 == 0 && i % 3 != 0) {
      if (!store.Put(key(id, i), MakeValue(key(id, i), 2)).ok()) return 6;
    }
    if (i % 50 == 49) {
      // Own keys written by plain puts are visible at once.
      const uint64_t j = rng.Uniform(i + 1);
      if (j % 3 != 0) {
        uint64_t ver = 0;
        if (!store.Get(key(id, j), &v).ok() || !ParseValue(key(id, j), v, &ver)) return 7;
        if (ver != ((j % 7 == 0) ? 2u : 1u)) return 8;
      }
      // Another writer's key: absent, or a well-formed value of that key.
      const int other = static_cast<int>(rng.Uniform(4));
      const std::string ok = key(other, rng.Uniform(count));
      Status s = store.Get(ok, &v);
      uint64_t ver = 0;
      if (s.ok() && !ParseValue(ok, v, &ver)) return 9;
      if (!s.ok() && !s.IsNotFound()) return 10;
    }
    if (id == 0 && i % 1500 == 1499 && !store.Flush(FlushMode::kSync).ok()) return 11;
    if (id == 1 && i == count / 2 && !store.Compact().ok()) return 12;
  }
  if (batch.Count() > 0 && !store.Write(batch).ok()) return 13;
  for (uint64_t i = 0; i < count; i += 10) {
    if (!store.Erase(key(id, i)).ok()) return 14;
  }
  return store.Close().ok() ? 0 : 15;
}

[[maybe_unused]] const bool kRegistered = RegisterChild("concurrency.writer", WriterChild);

TEST_SUITE("concurrency") {
  TEST_CASE("concurrency: threads on one handle write disjoint keys and read everything") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    constexpr int kThreads = 4;
    constexpr uint64_t kKeys = 20000;
    std::atomic<uint64_t> bad_reads{0}, failed_writes{0}, others_found{0};
    std::atomic<int> running{kThreads};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Rng rng(static_cast<uint64_t>(t) + 1);
        std::string v;
        for (uint64_t i = 0; i < kKeys; ++i) {
          const std::string k = ThreadKey(t, i);
          Status s;
          if (i % 5 == 0) {
            WriteBatch batch;
            batch.Put(k, MakeValue(k, 1));
            batch.Put(k, MakeValue(k, 2));  // the batch's last op wins
            s = store.Write(batch);
          } else {
            s = store.Put(k, MakeValue(k, 2));
          }
          if (!s.ok()) failed_writes.fetch_add(1);
          // Own write: visible at once, exact.
          uint64_t ver = 0;
          if (!store.Get(k, &v).ok() || !ParseValue(k, v, &ver) || ver != 2) bad_reads.fetch_add(1);
          // Any thread's key: absent or well formed.
          const std::string other = ThreadKey(static_cast<int>(rng.Uniform(kThreads)), rng.Uniform(kKeys));
          Status g = store.Get(other, &v);
          if ((g.ok() && !ParseValue(other, v, &ver)) || (!g.ok() && !g.IsNotFound())) bad_reads.fetch_add(1);
          if (g.ok()) others_found.fetch_add(1);
          if (i % 1000 == 999) {
            // A walk sees only well-formed values.
            Status w = store.ForEach("t", [&](std::string_view key, std::string_view value) {
              uint64_t x;
              if (!ParseValue(std::string(key), value, &x)) bad_reads.fetch_add(1);
              return true;
            });
            if (!w.ok()) bad_reads.fetch_add(1);
          }
        }
        running.fetch_sub(1);
      });
    }
    // A ReadGuard holder alongside: its views stay valid and well formed.
    std::thread guard_thread([&] {
      while (running.load() > 0) {
        ReadGuard guard;
        if (!guard.Lock(store).ok()) {
          bad_reads.fetch_add(1);
          continue;
        }
        std::string_view view;
        const std::string k = ThreadKey(0, 10);
        if (guard.Get(k, &view).ok()) {
          uint64_t ver;
          if (!ParseValue(k, view, &ver)) bad_reads.fetch_add(1);
        }
        guard.Unlock();
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
    for (auto& th : threads) th.join();
    guard_thread.join();
    CHECK(failed_writes.load() == 0);
    CHECK(bad_reads.load() == 0);
    // The random reads found keys, so their check saw values (the thread
    // draws itself a quarter of the time, whatever the scheduling, and about
    // half of any thread's keys exist when it draws: some 10,000 of 80,000).
    CHECK(others_found.load() > kThreads * kKeys / 20);
    CHECK(store.size() == kThreads * kKeys);
    const Model all = Dump(store);
    REQUIRE(all.size() == kThreads * kKeys);
    for (int t = 0; t < kThreads; ++t) {
      for (uint64_t i = 0; i < kKeys; ++i) {
        const std::string k = ThreadKey(t, i);
        auto it = all.find(k);
        if (it == all.end() || it->second != MakeValue(k, 2)) {
          FAIL_CHECK("key " << k << " missing or wrong after the threads finished");
          break;
        }
      }
    }
    CheckClean(store);
  }

  TEST_CASE("concurrency: readers never see a torn value or part of a batch") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Put("a", MakeValue("a", 0)).ok());
    REQUIRE(store.Put("b", MakeValue("b", 0)).ok());
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> torn{0}, mismatched{0}, guarded{0};
    std::thread writer([&] {
      for (uint64_t n = 1; n <= 100000; ++n) {
        WriteBatch batch;
        batch.Put("a", MakeValue("a", n));
        batch.Put("b", MakeValue("b", n));
        batch.Put("filler" + std::to_string(n % 500), std::string(static_cast<size_t>(n % 3000), 'f'));
        if (!store.Write(batch).ok()) torn.fetch_add(1000000);
      }
      stop = true;
    });
    std::vector<std::thread> readers;
    for (int r = 0; r < 2; ++r) {
      readers.emplace_back([&, r] {
        std::string va, vb;
        uint64_t last_a = 0;
        while (!stop.load()) {
          if (r == 0) {
            // Optimistic reads: each value whole, versions never go back.
            uint64_t ver_a = 0, ver_b = 0;
            if (!store.Get("a", &va).ok() || !ParseValue("a", va, &ver_a)) torn.fetch_add(1);
            if (!store.Get("b", &vb).ok() || !ParseValue("b", vb, &ver_b)) torn.fetch_add(1);
            if (ver_a < last_a || ver_b < ver_a) mismatched.fetch_add(1);  // b is read after a
            last_a = ver_a;
          } else {
            // Under a guard: a and b always from the same batch.
            ReadGuard guard;
            if (!guard.Lock(store).ok()) continue;
            std::string_view a, b;
            uint64_t ver_a = 0, ver_b = 0;
            if (!guard.Get("a", &a).ok() || !ParseValue("a", a, &ver_a)) torn.fetch_add(1);
            if (!guard.Get("b", &b).ok() || !ParseValue("b", b, &ver_b)) torn.fetch_add(1);
            if (ver_a != ver_b) mismatched.fetch_add(1);
            guarded.fetch_add(1);
          }
        }
      });
    }
    writer.join();
    for (auto& th : readers) th.join();
    CHECK(torn.load() == 0);
    CHECK(mismatched.load() == 0);
    CHECK(guarded.load() > 0);
    std::string v;
    REQUIRE(store.Get("a", &v).ok());
    CHECK(v == MakeValue("a", 100000));
    CheckClean(store);
  }

  // Each round puts the read keys' records at the top of a grown file and
  // compacts them down, so Compact shortens the file right under records
  // that readers may have found a moment before. A reader that read a moved
  // record's old place after the cut would take SIGBUS.
  void CompactUnderReaders(int rounds, bool large_pages = false) {
    TempDir dir;
    Options options;
    options.large_pages = large_pages;
    Store store = MustOpen(dir.File("s.mkv"), options);
    constexpr uint64_t kKeys = 2000;
    for (uint64_t i = 0; i < kKeys; ++i) REQUIRE(store.Put(ThreadKey(0, i), MakeValue(ThreadKey(0, i), 0)).ok());
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> bad{0}, reads{0};
    std::vector<std::thread> readers;
    for (int r = 0; r < 4; ++r) {
      readers.emplace_back([&, r] {
        Rng rng(static_cast<uint64_t>(r) + 1);
        std::string v;
        while (!stop.load(std::memory_order_relaxed)) {
          const std::string key = ThreadKey(0, rng.Uniform(kKeys));
          uint64_t ver = 0;
          if (!store.Get(key, &v).ok() || !ParseValue(key, v, &ver)) bad.fetch_add(1);
          reads.fetch_add(1, std::memory_order_relaxed);
        }
      });
    }
    uint64_t cuts = 0;
    [[maybe_unused]] size_t areas_early = 0;
    const std::string filler(2000, 'f');
    for (int round = 1; round <= rounds; ++round) {
#ifndef _WIN32
      if (round == 5) areas_early = MappedAreas();
#endif
      Stats grown;
      for (uint64_t i = 0; i < 3000; ++i) REQUIRE(store.Put("filler" + std::to_string(i), filler).ok());
      for (uint64_t i = 0; i < kKeys; ++i) {
        REQUIRE(store.Put(ThreadKey(0, i), MakeValue(ThreadKey(0, i), static_cast<uint64_t>(round))).ok());
      }
      for (uint64_t i = 0; i < 3000; ++i) REQUIRE(store.Erase("filler" + std::to_string(i)).ok());
      REQUIRE(store.GetStats(&grown).ok());
      REQUIRE(store.Compact().ok());
      Stats cut;
      REQUIRE(store.GetStats(&cut).ok());
      if (cut.file_bytes < grown.file_bytes) ++cuts;
    }
    stop = true;
    for (auto& th : readers) th.join();
    MESSAGE(reads.load() << " gets during " << cuts << " compactions that shortened the file");
    CHECK(bad.load() == 0);
    CHECK(reads.load() > 0);
#ifndef _WIN32
    CHECK(cuts == static_cast<uint64_t>(rounds));  // Windows shortens the file only at the last close
    // Each cut and regrowth reuses the same mapping: the process's mapped
    // areas do not grow with the rounds.
    CAPTURE(areas_early);
    CHECK(MappedAreas() <= areas_early + 16);
#endif
    CheckClean(store);
  }

  // Before the fix, 4 readers faulted within 3 to 65 s of rounds here.
  TEST_CASE("concurrency: gets on other threads never fault while Compact cuts the file under them") {
    CompactUnderReaders(80);
  }
  TEST_CASE("concurrency: gets never fault while Compact cuts a store mapped with large pages") {
    CompactUnderReaders(30, /*large_pages=*/true);
  }
  TEST_CASE("concurrency: gets never fault while Compact cuts the file (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    CompactUnderReaders(1500);
  }

  TEST_CASE("concurrency: an open that times out waiting for a writer names the writer's process") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store writer = MustOpen(path);
    REQUIRE(writer.Put("k", "v").ok());
    Status opened;
    REQUIRE(writer
                .Update("k",
                        [&](std::optional<std::string_view>, std::string*) {
                          // The write lock is held here: an open waits for it.
                          Options quick;
                          quick.lock_timeout = std::chrono::milliseconds(50);
                          Store other;
                          opened = Store::Open(path, quick, &other);
                          return Store::UpdateAction::kKeep;
                        })
                .ok());
    CHECK(opened.code() == Code::kBusy);
    CHECK_MESSAGE(
        opened.message().find("by process " + std::to_string(internal::ProcessId()) + " (writer)") != std::string::npos,
        opened.ToString());
  }

  TEST_CASE("concurrency: two handles on one file in one process") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store a = MustOpen(path);
    Store b = MustOpen(path);
    // Sequential: a write through one handle is seen by the other at once.
    std::string v;
    for (uint64_t i = 0; i < 3000; ++i) {
      Store& w = (i % 2) ? a : b;
      Store& r = (i % 2) ? b : a;
      const std::string k = "seq" + std::to_string(i);
      REQUIRE(w.Put(k, MakeValue(k, i)).ok());
      REQUIRE(r.Get(k, &v).ok());
      CHECK(v == MakeValue(k, i));
      if (i % 3 == 0) {
        REQUIRE(r.Erase(k).ok());
        CHECK(w.Get(k, &v).code() == Code::kNotFound);
      }
    }
    // Concurrent: two threads, one handle each, with file growth in between.
    std::atomic<uint64_t> failures{0};
    auto work = [&](Store& h, int owner) {
      std::string val;
      for (uint64_t i = 0; i < 5000; ++i) {
        const std::string k = ThreadKey(owner, i);
        const std::string value = MakeValue(k, i) + std::string(static_cast<size_t>(i % 7 == 0 ? 20000 : 10), 'g');
        if (!h.Put(k, value).ok()) failures.fetch_add(1);
        if (!h.Get(k, &val).ok() || val != value) failures.fetch_add(1);
        if (i % 997 == 0 && !h.Flush(FlushMode::kSync).ok()) failures.fetch_add(1);
      }
    };
    std::thread ta([&] { work(a, 1); });
    std::thread tb([&] { work(b, 2); });
    ta.join();
    tb.join();
    CHECK(failures.load() == 0);
    const Model from_a = Dump(a);
    CHECK(from_a == Dump(b));
    CHECK(from_a.size() == 2000 + 10000);
    for (int owner : {1, 2}) {
      for (uint64_t i = 0; i < 5000; i += 1) {
        const std::string k = ThreadKey(owner, i);
        auto it = from_a.find(k);
        if (it == from_a.end() ||
            it->second != MakeValue(k, i) + std::string(static_cast<size_t>(i % 7 == 0 ? 20000 : 10), 'g')) {
          FAIL_CHECK("key " << k << " missing or wrong");
          break;
        }
      }
    }
    CheckClean(a);
    CheckClean(b);
    REQUIRE(a.Close().ok());
    CHECK(b.size() == 12000);
    REQUIRE(b.Put("after", "close of a").ok());
    REQUIRE(b.Close().ok());
    Store c = MustOpen(path);
    CHECK(c.size() == 12001);
    CheckClean(c);
  }

  void RunProcesses(uint64_t count) {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store reader = MustOpen(path);  // also creates the store before the writers race to
    constexpr int kWriters = 4;
    std::vector<int> pids;
    for (int id = 0; id < kWriters; ++id) {
      const int pid = SpawnChild("concurrency.writer", {path, std::to_string(id), std::to_string(count)});
      REQUIRE(pid > 0);
      pids.push_back(pid);
    }
    // Read alongside the writers: every present value is well formed.
    uint64_t reads = 0, bad = 0;
    std::atomic<int> alive{kWriters};
    // The exit codes are checked on the main thread: a doctest assertion on
    // another thread creates its thread_local stream there, whose destructor
    // corrupts the heap at thread exit with mingw-w64's winpthreads.
    std::vector<int> codes(pids.size(), -1);
    std::thread waiter([&] {
      for (size_t i = 0; i < pids.size(); ++i) {
        codes[i] = WaitChild(pids[i]);
        alive.fetch_sub(1);
      }
    });
    Rng rng(77);
    std::string v;
    while (alive.load() > 0) {
      const std::string k = "p" + std::to_string(rng.Uniform(kWriters)) + ":" + std::to_string(rng.Uniform(count));
      Status s = reader.Get(k, &v);
      uint64_t ver;
      if ((s.ok() && !ParseValue(k, v, &ver)) || (!s.ok() && !s.IsNotFound())) ++bad;
      ++reads;
    }
    waiter.join();
    for (size_t i = 0; i < pids.size(); ++i) {
      CHECK_MESSAGE(codes[i] == 0, "writer process " << pids[i] << " exited with " << codes[i]);
    }
    CHECK(bad == 0);
    MESSAGE(kWriters << " writer processes, " << count << " keys each; " << reads << " reads alongside");
    // The exact final state.
    Model expected;
    for (int id = 0; id < kWriters; ++id) {
      for (uint64_t i = 0; i < count; ++i) {
        if (i % 10 == 0) continue;
        const std::string k = "p" + std::to_string(id) + ":" + std::to_string(i);
        expected[k] = MakeValue(k, (i % 7 == 0 && i % 3 != 0) ? 2 : 1);
      }
    }
    CHECK(reader.size() == expected.size());
    CHECK(Dump(reader) == expected);
    CheckClean(reader);
    REQUIRE(reader.Close().ok());
    Store after = MustOpen(path);
    CHECK(Dump(after) == expected);
    CheckClean(after);
  }

  TEST_CASE("concurrency: read guards get the lock while another handle writes without pause") {
    // The writer keeps the file lock between its writes while nobody waits.
    // A waiting guard of a writable handle counts itself in the control
    // page; one of a read-only handle cannot, and is seen only through the
    // waiter byte. Either way it must get the lock soon, not when the writes
    // stop (Wine showed a reader waiting through 300,000 puts; a read-only
    // handle's guard failed with kBusy after 10 s). Measured here: medians
    // 0.005 and 0.02 ms, max under 10 ms (Wine: medians 0.03-0.4 ms, max
    // 0.6-13 ms); the bounds leave room for a loaded machine.
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store writer = MustOpen(path);
    REQUIRE(writer.Put("r", "1").ok());
    Options ro;
    ro.read_only = true;
    Store readers[2] = {MustOpen(path), MustOpen(path, ro)};
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> puts{0}, failures{0};
    std::thread writing([&] {
      const std::string value(100, 'w');
      for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        if (!writer.Put("w" + std::to_string(i % 20000), value).ok()) failures.fetch_add(1);
        puts.store(i + 1, std::memory_order_relaxed);
      }
    });
    while (puts.load() < 1000) std::this_thread::yield();
    std::vector<double> waits[2];
    for (int i = 0; i < 200; ++i) {
      const int which = i % 2;
      ReadGuard g;
      const auto t0 = Clock::now();
      const Status locked = g.Lock(readers[which]);
      waits[which].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      if (!locked.ok()) {
        FAIL_CHECK("read guard " << i << ": " << locked.ToString());
        break;  // the writer thread is still to be joined
      }
      std::string_view v;
      CHECK(g.Get("r", &v).ok());
      g.Unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const uint64_t puts_during = puts.load();
    stop = true;
    writing.join();
    CHECK(failures.load() == 0);
    for (int which : {0, 1}) {
      REQUIRE(waits[which].size() == 100);
      std::sort(waits[which].begin(), waits[which].end());
      MESSAGE(std::string(which == 0 ? "writable" : "read-only")
              << " handle: 100 read guards, median " << waits[which][50] << " ms, max " << waits[which].back()
              << " ms (" << puts_during << " puts meanwhile)");
      CHECK(waits[which][50] < 50);
      CHECK(waits[which].back() < 1000);
    }
    // The writer really ran alongside (it is not a speed test: under ASan on
    // a slow host 8,640 puts were counted here, against a bound of 10,000).
    CHECK(puts_during > 1000);
  }

  // A thread that holds a read lock of a handle and asks for another (GetStats
  // under a ReadGuard) while a writer of the same handle waits: the writer
  // waits for the guard, so the second read must not queue behind it.
  TEST_CASE("concurrency: a read nested in a held read guard does not wait for a queued writer") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Put("k", "v0").ok());
    ReadGuard guard;
    REQUIRE(guard.Lock(store).ok());
    std::atomic<bool> wrote{false};
    std::thread writer([&] {
      CHECK(store.Put("k", "v1").ok());
      wrote = true;
    });
    WaitUntilWriterQueued(store);  // new reads of the handle now hold back for it
    CHECK_FALSE(wrote.load());
    Stats st;
    CHECK(store.GetStats(&st).ok());  // nested under `guard`, on this thread (it hung here)
    std::string v;
    CHECK(store
              .ForEach("",
                       [&](std::string_view, std::string_view value) {
                         v = std::string(value);
                         return true;
                       })
              .ok());
    CHECK(v == "v0");  // still under the guard: the writer has not run
    guard.Unlock();
    writer.join();
    CHECK(wrote.load());
    CHECK(store.Get("k", &v).ok());
    CHECK(v == "v1");
  }

  // A write keeps the file lock exclusively (sticky), and its handle's keeper
  // thread lets it go within a millisecond. A read guard taken meanwhile
  // used to lean on that exclusive lock, and the keeper queued for the
  // handle's in-process lock behind the guard: readers of other handles
  // waited for the whole guard (kBusy here), and the handle's other threads
  // too, so a thread that held the guard and waited for another thread's
  // read of the handle waited for ever.
  TEST_CASE("concurrency: a read guard taken right after a write keeps out no other reader") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    Options quick;
    quick.lock_timeout = std::chrono::milliseconds(2000);
    Store other = MustOpen(path, quick);
    // The guard must come while the write's lock is still sticky (the
    // keeper lets it go after 1 ms): tried until it does.
    ReadGuard guard;
    bool converted = false;
    for (int attempt = 0; attempt < 100 && !converted; ++attempt) {
      guard.Unlock();
      const uint64_t before = internal::StoreImpl::StickyConversionsForTesting(store);
      REQUIRE(store.Put("k", "v").ok());
      REQUIRE(guard.Lock(store).ok());
      converted = internal::StoreImpl::StickyConversionsForTesting(store) > before;
    }
    REQUIRE_MESSAGE(converted, "no read guard came before the keeper let the write's lock go, in 100 tries");
    // Another handle's guard: the lock is shared.
    ReadGuard other_guard;
    CHECK(other_guard.Lock(other).ok());
    other_guard.Unlock();
    // Once the keeper has looked (it sleeps, or it waits for the handle's
    // lock as it did before), another thread of the process reads.
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!internal::StoreImpl::KeeperWaitingForTesting(store) &&
           internal::StoreImpl::WritersWaitingForTesting(store) == 0) {
      REQUIRE_MESSAGE(Clock::now() < until, "the keeper neither slept nor queued within 10 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::atomic<bool> read{false};
    Status stats_status;  // checked after the join (one thread asserts at a time)
    std::thread reader([&] {
      Stats st;
      stats_status = store.GetStats(&st);
      read = true;
    });
    const auto waited = Clock::now() + std::chrono::seconds(5);
    while (!read && Clock::now() < waited) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK_MESSAGE(read.load(), "another thread's read of the handle waited 5 s behind the guard");
    guard.Unlock();  // lets the reader go if it waits
    reader.join();
    CHECK(stats_status.ok());
    // The guard gave the lock back: the other handle writes.
    CHECK(other.Put("k", "w").ok());
    std::string v;
    CHECK(store.Get("k", &v).ok());
    CHECK(v == "w");
  }

  // A Close from inside a callback (or an Open into the same handle) tore
  // the handle down under the call that held its lock, which then ran on
  // freed memory. It is kUnsafeUse, and closes nothing.
  TEST_CASE("concurrency: Close or Open of a handle from its own callback or guard is UnsafeUse and closes nothing") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    REQUIRE(store.Put("k", "1").ok());
    Status closed, reopened;
    REQUIRE(store
                .Update("k",
                        [&](std::optional<std::string_view>, std::string* next) {
                          closed = store.Close();
                          reopened = Store::Open(path, Options{}, &store);
                          *next = "2";
                          return Store::UpdateAction::kPut;
                        })
                .ok());
    CHECK(closed.code() == Code::kUnsafeUse);
    CHECK(reopened.code() == Code::kUnsafeUse);
    std::string v;
    REQUIRE(store.Get("k", &v).ok());
    CHECK(v == "2");
    REQUIRE(store
                .ForEach("",
                         [&](std::string_view, std::string_view) {
                           closed = store.Close();
                           return true;
                         })
                .ok());
    CHECK(closed.code() == Code::kUnsafeUse);
    {
      ReadGuard guard;
      REQUIRE(guard.Lock(store).ok());
      CHECK(store.Close().code() == Code::kUnsafeUse);
    }
    CHECK(store.is_open());
    CHECK(store.Put("k", "3").ok());
    CHECK(store.Close().ok());
    CHECK_FALSE(store.is_open());
  }

  // A thread asking for the write lock of a handle whose lock it holds, or
  // for a read lock while it holds the write lock, would wait for itself: it
  // gets kUnsafeUse (the ReadGuard's contract forbids the first; an Update
  // callback may try the second).
  TEST_CASE("concurrency: a write under a held read guard, or a read from an Update callback, is UnsafeUse") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Put("k", "v0").ok());
    {
      ReadGuard guard;
      REQUIRE(guard.Lock(store).ok());
      const Status s = store.Put("k", "v1");
      CHECK(s.code() == Code::kUnsafeUse);
      CHECK(s.message().find("would wait for itself") != std::string::npos);
    }
    Status in_callback[3];
    const Status s = store.Update("k", [&](std::optional<std::string_view>, std::string* next) {
      Stats st;
      in_callback[0] = store.GetStats(&st);
      ReadGuard inner;
      in_callback[1] = inner.Lock(store);
      in_callback[2] = store.ForEach("", [](std::string_view, std::string_view) { return true; });
      *next = "v2";
      return Store::UpdateAction::kPut;
    });
    CHECK(s.ok());
    for (const Status& r : in_callback) {
      CHECK(r.code() == Code::kUnsafeUse);
      CHECK(r.message().find("would wait for itself") != std::string::npos);
    }
    std::string v;
    CHECK(store.Get("k", &v).ok());
    CHECK(v == "v2");
    CHECK(store.Put("k", "v3").ok());  // nothing left held
    ReadGuard guard;
    CHECK(guard.Lock(store).ok());
  }

  TEST_CASE("concurrency: several processes write and read one file at once") { RunProcesses(30000); }

  TEST_CASE("concurrency: several processes write and read one file at once (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunProcesses(100000);
  }

#ifndef _WIN32  // fork(2) (listed in tests/CMakeLists.txt)
  TEST_CASE("concurrency: a handle used in a fork child returns UnsafeUse") {
#if defined(MAPKV_TSAN)
    // The child opens a fresh handle, which starts a thread; ThreadSanitizer
    // cannot follow thread creation after a multi-threaded fork ("dup thread").
    MESSAGE("SKIPPED: under ThreadSanitizer: thread creation after a multi-threaded fork is not supported by TSan");
    return;
#endif
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    REQUIRE(store.Put("k", "parent").ok());
    // Idle long enough that the lock keeper lets the lock go and waits on its
    // condition variable: the child's copy of it then counts a waiter that
    // the child does not have. (A child once hung for 900 s under ASan; this
    // state is the suspected cause, not a reproduced one.)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int step = 1;
      auto unsafe = [&](const Status& s) {
        if (s.code() != Code::kUnsafeUse) _exit(step);
        ++step;
      };
      std::string v;
      bool found = false;
      unsafe(store.Get("k", &v));
      unsafe(store.Contains("k", &found));
      unsafe(store.Put("k", "child"));
      unsafe(store.Erase("k"));
      WriteBatch batch;
      batch.Put("b", "c");
      unsafe(store.Write(batch));
      unsafe(store.ForEach({}, [](std::string_view, std::string_view) { return true; }));
      unsafe(store.Flush(FlushMode::kSync));
      unsafe(store.Flush(FlushMode::kAsync));
      Stats st;
      unsafe(store.GetStats(&st));
      CheckReport report;
      unsafe(store.Check(&report));
      unsafe(store.Compact());
      ReadGuard guard;
      unsafe(guard.Lock(store));
      if (guard.locked()) _exit(50);
      // Closing the inherited handle must not disturb the parent.
      if (!store.Close().ok()) _exit(51);
      // A fresh handle in the child works.
      Store mine;
      if (!Store::Open(path, {}, &mine).ok()) _exit(52);
      if (!mine.Get("k", &v).ok() || v != "parent") _exit(53);
      if (!mine.Put("from-child", "yes").ok()) _exit(54);
      if (!mine.Close().ok()) _exit(55);
      _exit(0);
    }
    const int rc = WaitChild(pid);
    CHECK_MESSAGE(rc == 0, "child failed at step " << rc);
    // The parent's handle is intact: it reads, writes and sees the child's write.
    std::string v;
    REQUIRE(store.Get("k", &v).ok());
    CHECK(v == "parent");
    REQUIRE(store.Get("from-child", &v).ok());
    CHECK(v == "yes");
    REQUIRE(store.Put("k", "parent again").ok());
    CheckClean(store);
    // The parent still holds its locks: a second handle's writes and the parent's interleave correctly.
    Store other = MustOpen(path);
    REQUIRE(other.Put("other", "1").ok());
    REQUIRE(store.Get("other", &v).ok());
    CHECK(v == "1");
    CheckClean(other);
  }

#endif

}  // TEST_SUITE("concurrency")

}  // namespace
}  // namespace mapkv::test
