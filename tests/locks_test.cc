// locks_test.cc: lock holders and waiters that die, and a writer under a
// continuous stream of readers.
//
// Bounds asserted (on a loaded 2-core machine):
//  - after a process dies holding the read lock, the write lock (inside a
//    write), or while waiting for a lock, another process's write and read
//    guard proceed within 100 ms of the kill;
//  - a dead waiter does not slow later read guards (median under 20 ms, each
//    under 100 ms; a stale "writer waiting" count would hold every new guard
//    back 50 ms);
//  - a writer under three processes taking read guards back to back gets the
//    lock within 200 ms every time (the design: new guards hold back up to
//    50 ms while a writer waits, and a guard here lasts well under a
//    millisecond; measured here: median under 0.1 ms, max 10 to 70 ms with
//    other builds loading the machine);
//  - a read-only handle's read guards under a process putting without pause
//    get the lock with a median under 50 ms and each within 1 s (they
//    cannot count themselves as waiters; before, they waited for as long
//    as the writes went on).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

using internal::format::ControlPage;
using internal::format::kControlOffset;

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void Touch(const std::string& path) { WriteFileBytes(path, "x"); }

// Waits up to 20 s for `path` to exist.
bool WaitForFile(const std::string& path) {
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (!Exists(path)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

Options Patient() {
  Options o;
  o.lock_timeout = std::chrono::milliseconds(30000);
  return o;
}

// Gives up on a held lock after 50 ms (kBusy).
Options Quick() {
  Options o;
  o.lock_timeout = std::chrono::milliseconds(50);
  return o;
}

// ---- children ---------------------------------------------------------------

// args: path, marker. Holds a read guard, says so, and sleeps until killed.
int GuardHolderChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Patient(), &s).ok()) return 3;
  ReadGuard guard;
  if (!guard.Lock(s).ok()) return 4;
  Touch(args[1]);
  ::sleep(60);
  return 5;
}

// args: path, marker, go file. Opens, says so, waits for the go file, then
// writes (waiting for the lock the parent holds) and sleeps until killed.
int WaiterChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Patient(), &s).ok()) return 3;
  Touch(args[1]);
  if (!WaitForFile(args[2])) return 4;
  if (!s.Put("waiter", "wrote").ok()) return 5;
  ::sleep(60);
  return 6;
}

// args: path, marker. Writes large batches without end.
int BusyWriterChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Patient(), &s).ok()) return 3;
  Touch(args[1]);
  for (uint64_t round = 0;; ++round) {
    WriteBatch b;
    for (int i = 0; i < 180; ++i) {
      b.Put("busy" + std::to_string(i), std::string(static_cast<size_t>(500 + (round + i) % 700), 'b'));
    }
    if (!s.Write(b).ok()) return 4;
  }
}

// args: path, marker, stop file, result file. Takes read guards back to back
// (each walks the store) until the stop file appears; writes the count.
int GuardStreamChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Patient(), &s).ok()) return 3;
  Touch(args[1]);
  uint64_t guards = 0, bytes = 0;
  while (!Exists(args[2])) {
    for (int k = 0; k < 20; ++k) {
      ReadGuard g;
      if (!g.Lock(s).ok()) return 4;
      if (!g.ForEach("r", [&](std::string_view, std::string_view v) { return (bytes += v.size()) != 0; }).ok()) {
        return 5;
      }
      ++guards;
    }
  }
  WriteFileBytes(args[3], std::to_string(guards));
  return bytes > 0 ? 0 : 6;
}

// args: path, marker, stop file, result file. Puts without pause until the
// stop file appears; writes the count.
int PutStreamChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Patient(), &s).ok()) return 3;
  Touch(args[1]);
  uint64_t puts = 0;
  const std::string value(100, 'p');
  while (puts % 256 != 0 || !Exists(args[2])) {
    if (!s.Put("p" + std::to_string(puts % 5000), value).ok()) return 4;
    ++puts;
  }
  WriteFileBytes(args[3], std::to_string(puts));
  return 0;
}

// args: path, marker. Holds the write lock inside an Update callback, says
// so, and sleeps until killed.
int UpdateHolderChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Patient(), &s).ok()) return 3;
  Status updated = s.Update("k", [&](std::optional<std::string_view>, std::string*) {
    Touch(args[1]);
    ::sleep(60);
    return Store::UpdateAction::kKeep;
  });
  return updated.ok() ? 4 : 5;
}

[[maybe_unused]] const bool kRegistered =
    RegisterChild("locks.guard", GuardHolderChild) && RegisterChild("locks.waiter", WaiterChild) &&
    RegisterChild("locks.busy", BusyWriterChild) && RegisterChild("locks.stream", GuardStreamChild) &&
    RegisterChild("locks.puts", PutStreamChild) && RegisterChild("locks.update", UpdateHolderChild);

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Kills `pid`, then times a write and a read guard through `store`.
void KillThenProceed(int pid, Store& store, const std::string& what) {
  const auto killed_at = Clock::now();
  ::kill(pid, SIGKILL);
  Status put = store.Put("after-" + what, "1");
  const double put_ms = Ms(Clock::now() - killed_at);
  ReadGuard g;
  const auto guard_at = Clock::now();
  Status locked = g.Lock(store);
  const double guard_ms = Ms(Clock::now() - guard_at);
  g.Unlock();
  CHECK(WaitChild(pid) == 128 + SIGKILL);
  REQUIRE_MESSAGE(put.ok(), what << ": " << put.ToString());
  REQUIRE_MESSAGE(locked.ok(), what << ": " << locked.ToString());
  MESSAGE(what << ": the write finished " << put_ms << " ms after the kill; then a read guard took " << guard_ms
               << " ms");
  CHECK(put_ms < 100);
  CHECK(guard_ms < 100);
}

TEST_SUITE("locks") {
  TEST_CASE("locks: a process killed holding a read guard blocks nobody") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path, Patient());
    REQUIRE(store.Put("k", "v").ok());
    Store other = MustOpen(path, Quick());
    const int pid = SpawnChild("locks.guard", {path, dir.File("ready")});
    REQUIRE(pid > 0);
    REQUIRE(WaitForFile(dir.File("ready")));
    // The guard really blocks writers while its holder lives.
    CHECK(other.Put("blocked", "1").code() == Code::kBusy);
    KillThenProceed(pid, store, "dead read guard holder");
  }

  TEST_CASE("locks: a process killed inside a write blocks nobody and its write is undone") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path, Patient());
    REQUIRE(store.Put("k", "v").ok());
    ControlView ctl(path);
    int caught = 0;
    for (int attempt = 0; attempt < 20 && caught < 3; ++attempt) {
      std::remove(dir.File("ready").c_str());
      const int pid = SpawnChild("locks.busy", {path, dir.File("ready")});
      REQUIRE(pid > 0);
      REQUIRE(WaitForFile(dir.File("ready")));
      // Stop it until it is stopped inside a write (undo entries present).
      bool inside = false;
      for (int tries = 0; tries < 200 && !inside; ++tries) {
        std::this_thread::sleep_for(std::chrono::microseconds(300 + tries * 37 % 900));
        ::kill(pid, SIGSTOP);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        inside = ctl->undo_count.load() > 0 && ctl->writer_pid.load() == static_cast<uint64_t>(pid);
        if (!inside) ::kill(pid, SIGCONT);
      }
      if (!inside) {
        ::kill(pid, SIGKILL);
        WaitChild(pid);
        continue;
      }
      ++caught;
      KillThenProceed(pid, store, "killed inside a write (attempt " + std::to_string(attempt) + ")");
      // The half-done batch was rolled back: every busy value is whole and from one round.
      const Model busy = Dump(store, "busy");
      std::set<size_t> sizes;
      for (int i = 0; i < 180; ++i) {
        auto it = busy.find("busy" + std::to_string(i));
        if (it != busy.end()) sizes.insert((it->second.size() - 500 - static_cast<size_t>(i) + 700) % 700);
      }
      CHECK_MESSAGE(sizes.size() <= 1, "values from more than one batch survived the kill");
      CheckClean(store);
    }
    CHECK_MESSAGE(caught >= 1, "never caught the writer inside a write");
  }

  TEST_CASE("locks: a write that times out names a live writer's process, and readers after that writer was killed") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store reader = MustOpen(path, Patient());
    REQUIRE(reader.Put("k", "v").ok());
    Store other = MustOpen(path, Quick());
    ControlView ctl(path);
    const int pid = SpawnChild("locks.update", {path, dir.File("ready")});
    REQUIRE(pid > 0);
    REQUIRE(WaitForFile(dir.File("ready")));
    const std::string named = "by process " + std::to_string(pid) + " (writer)";
    Status live = other.Put("blocked", "1");
    CHECK(live.code() == Code::kBusy);
    CHECK_MESSAGE(live.message().find(named) != std::string::npos, live.ToString());

    ::kill(pid, SIGKILL);
    CHECK(WaitChild(pid) == 128 + SIGKILL);
    // The killed writer's pid stays in the control page ...
    REQUIRE(ctl->writer_pid.load() == static_cast<uint64_t>(pid));
    // ... but only readers hold the lock now (before: "by process <pid> (writer)").
    ReadGuard guard;
    REQUIRE(guard.Lock(reader).ok());
    Status behind_readers = other.Put("blocked", "2");
    guard.Unlock();
    CHECK(behind_readers.code() == Code::kBusy);
    CHECK_MESSAGE(behind_readers.message().find("by readers") != std::string::npos, behind_readers.ToString());
    CHECK_MESSAGE(behind_readers.message().find(std::to_string(pid)) == std::string::npos, behind_readers.ToString());
    // The lock is free again: the write goes through.
    CHECK(other.Put("blocked", "3").ok());
    std::string v;
    CHECK(reader.Get("blocked", &v).ok());
    CHECK(v == "3");
  }

  TEST_CASE("locks: a process killed while waiting for the lock slows nobody") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path, Patient());
    REQUIRE(store.Put("k", "v").ok());
    ControlView ctl(path);
    for (int round = 0; round < 3; ++round) {
      std::remove(dir.File("ready").c_str());
      std::remove(dir.File("go").c_str());
      const int pid = SpawnChild("locks.waiter", {path, dir.File("ready"), dir.File("go")});
      REQUIRE(pid > 0);
      REQUIRE(WaitForFile(dir.File("ready")));
      {
        ReadGuard held;  // the waiter's write waits for this
        REQUIRE(held.Lock(store).ok());
        Touch(dir.File("go"));
        const auto deadline = Clock::now() + std::chrono::seconds(10);
        while (ctl->writers_waiting.load() == 0 && Clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        REQUIRE_MESSAGE(ctl->writers_waiting.load() > 0, "the waiter never started waiting");
        ::kill(pid, SIGKILL);
        CHECK(WaitChild(pid) == 128 + SIGKILL);
      }
      {
        // A read-only handle cannot repair the dead waiter's count; it tells
        // the count is stale (nobody holds the waiter byte) and does not
        // hold back for it. Before, each first guard waited 50 ms until a
        // writable handle came along.
        Options read_only = Patient();
        read_only.read_only = true;
        Store reader = MustOpen(path, read_only);
        std::vector<double> took;
        for (int i = 0; i < 11; ++i) {
          const auto t0 = Clock::now();
          ReadGuard g;
          REQUIRE(g.Lock(reader).ok());
          g.Unlock();
          took.push_back(Ms(Clock::now() - t0));
        }
        REQUIRE_MESSAGE(ctl->writers_waiting.load() > 0, "the stale count was repaired before the read-only guards");
        std::sort(took.begin(), took.end());
        MESSAGE("round " << round << ": a read-only guard after a waiter died took " << took[5] << " ms (median)");
        CHECK(took[5] < 20);
      }
      // Nobody waits any more: writes and guards, in this handle and a new one, go at once.
      Store fresh = MustOpen(path, Patient());
      std::vector<double> took;
      for (int i = 0; i < 21; ++i) {
        const auto t0 = Clock::now();
        ReadGuard g;
        REQUIRE(g.Lock(i % 2 ? fresh : store).ok());
        g.Unlock();
        REQUIRE((i % 2 ? store : fresh).Put("after-dead-waiter", std::to_string(i)).ok());
        took.push_back(Ms(Clock::now() - t0));
      }
      std::sort(took.begin(), took.end());
      MESSAGE("round " << round << ": after a waiter died, a read guard plus a write took " << took[10]
                       << " ms (median), " << took.back() << " ms (max)");
      // A stale waiter count makes every guard hold back 50 ms; scheduling
      // noise on a loaded machine delays only some.
      CHECK(took[10] < 20);
      CHECK(took.back() < 100);
      std::string v;
      CHECK(store.Get("waiter", &v).code() == Code::kNotFound);
    }
  }

  TEST_CASE("locks: a writer under a continuous stream of read guards gets the lock within 200 ms") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path, Patient());
    for (int i = 0; i < 200; ++i) REQUIRE(store.Put("r" + std::to_string(i), std::string(300, 'r')).ok());
    constexpr int kReaders = 3;
    std::vector<int> pids;
    for (int r = 0; r < kReaders; ++r) {
      const std::string n = std::to_string(r);
      pids.push_back(
          SpawnChild("locks.stream", {path, dir.File("ready" + n), dir.File("stop"), dir.File("count" + n)}));
      REQUIRE(pids.back() > 0);
    }
    for (int r = 0; r < kReaders; ++r) REQUIRE(WaitForFile(dir.File("ready" + std::to_string(r))));
    std::vector<double> waits;
    for (int i = 0; i < 300; ++i) {
      const auto t0 = Clock::now();
      REQUIRE(store.Put("w" + std::to_string(i % 10), std::to_string(i)).ok());
      waits.push_back(Ms(Clock::now() - t0));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the sticky lock goes back to the readers
    }
    Touch(dir.File("stop"));
    uint64_t guards = 0;
    for (int r = 0; r < kReaders; ++r) {
      CHECK(WaitChild(pids[r]) == 0);
      guards += std::stoull(ReadFileBytes(dir.File("count" + std::to_string(r))));
    }
    std::sort(waits.begin(), waits.end());
    MESSAGE("writer under " << kReaders << " processes taking read guards (" << guards
                            << " guards in all): 300 writes, median " << waits[150] << " ms, p99 " << waits[297]
                            << " ms, max " << waits.back() << " ms");
    CHECK(guards > 300);  // the readers really ran alongside
    CHECK(waits.back() < 200);
  }

  TEST_CASE("locks: a read-only handle's guard under a process putting without pause gets the lock within 1 s") {
    // A read-only handle cannot count itself as a waiter in the control page;
    // the writer's keeper sees it through its own lock byte (before, it waited
    // until the writes stopped, or failed with kBusy after the 30 s timeout).
    // Measured: median 0.02 ms and max under 1 ms alone; median ~1 ms and max
    // 25 to 220 ms under ThreadSanitizer with other tests loading both cores.
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store writable = MustOpen(path);
      REQUIRE(writable.Put("r", "1").ok());
    }
    Options ro = Patient();
    ro.read_only = true;
    Store store = MustOpen(path, ro);
    const int pid = SpawnChild("locks.puts", {path, dir.File("ready"), dir.File("stop"), dir.File("count")});
    REQUIRE(pid > 0);
    REQUIRE(WaitForFile(dir.File("ready")));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the writer is in its stride
    std::vector<double> waits;
    for (int i = 0; i < 300; ++i) {
      ReadGuard g;
      const auto t0 = Clock::now();
      const Status locked = g.Lock(store);
      waits.push_back(Ms(Clock::now() - t0));
      if (!locked.ok()) {
        FAIL_CHECK("read guard " << i << ": " << locked.ToString());
        break;  // the child is still to be stopped
      }
      std::string_view v;
      CHECK(g.Get("r", &v).ok());
      g.Unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Touch(dir.File("stop"));
    CHECK(WaitChild(pid) == 0);
    const uint64_t puts = std::stoull(ReadFileBytes(dir.File("count")));
    REQUIRE(waits.size() == 300);
    std::sort(waits.begin(), waits.end());
    MESSAGE("300 read guards under a process putting without pause (" << puts << " puts in all): median " << waits[150]
                                                                      << " ms, p99 " << waits[297] << " ms, max "
                                                                      << waits.back() << " ms");
    // The writer really ran alongside: many puts per open. (A fixed 3000
    // failed under TSan, where the child made 2816 in the whole run.)
    CHECK(puts > 40 * 10);
    CHECK(waits[150] < 50);
    CHECK(waits.back() < 1000);
  }

  TEST_CASE("locks: opening a store while another process puts without pause succeeds within 1 s") {
    // An opening handle has no control page to count itself in; it holds the
    // read-only waiters' byte, which the writer's keeper probes (before, the
    // open failed with kBusy after the lock timeout: the keeper kept the lock
    // while the writes went on).
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store writable = MustOpen(path);
      REQUIRE(writable.Put("r", "1").ok());
    }
    const int pid = SpawnChild("locks.puts", {path, dir.File("ready"), dir.File("stop"), dir.File("count")});
    REQUIRE(pid > 0);
    REQUIRE(WaitForFile(dir.File("ready")));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the writer is in its stride
    std::vector<double> waits;
    for (int i = 0; i < 40; ++i) {
      Options options;
      options.lock_timeout = std::chrono::milliseconds(5000);
      options.read_only = i % 2 == 1;
      options.checkpoint_on_close = false;
      Store store;
      const auto t0 = Clock::now();
      const Status opened = Store::Open(path, options, &store);
      waits.push_back(Ms(Clock::now() - t0));
      if (!opened.ok()) {
        FAIL_CHECK("open " << i << std::string(options.read_only ? " (read-only)" : "") << ": " << opened.ToString());
        break;  // the child is still to be stopped
      }
      std::string v;
      CHECK(store.Get("r", &v).ok());
    }
    Touch(dir.File("stop"));
    CHECK(WaitChild(pid) == 0);
    const uint64_t puts = std::stoull(ReadFileBytes(dir.File("count")));
    REQUIRE(waits.size() == 40);
    std::sort(waits.begin(), waits.end());
    MESSAGE("40 opens under a process putting without pause (" << puts << " puts in all): median " << waits[20]
                                                               << " ms, max " << waits.back() << " ms");
    // The writer really ran alongside: many puts per open. (A fixed 3000
    // failed under TSan, where the child made 2816 in the whole run.)
    CHECK(puts > 40 * 10);
    CHECK(waits.back() < 1000);
  }

  TEST_CASE("locks: a writer that stops after a long run of writes lets go of the file lock within 100 ms") {
    // The lock stays with the writer between its writes (sticky) and its
    // keeper thread gives it back after 1 ms without one. A run of writes
    // spans many of those periods, in most of which the keeper looks while a
    // write holds the lock: it must keep watching, not wait to be woken.
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path, Patient());
    ControlView ctl(path);
    // At least 50 ms and more than 1,000 puts (a sanitizer build may need
    // longer for them).
    const auto run_start = Clock::now();
    uint64_t puts = 0;
    uint64_t kept = 0;  // puts after which this process still held the lock
    while (Clock::now() - run_start < std::chrono::milliseconds(50) || puts <= 1000) {
      REQUIRE(store.Put("k" + std::to_string(puts % 1000), std::string(100, 'v')).ok());
      ++puts;
      kept += ctl->writer_pid.load() == static_cast<uint64_t>(::getpid()) ? 1 : 0;
    }
    const double run_ms = Ms(Clock::now() - run_start);
    // Kept between the writes. Not after every one: a thread descheduled for
    // over a millisecond between two puts (a loaded machine) rightly finds
    // the lock given back.
    CHECK_MESSAGE(kept * 2 > puts, "the lock was held after " << kept << " of " << puts << " puts");
    // Another open file description asks whether byte 0 (the writer/reader
    // lock) could be locked exclusively now.
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    auto file_lock_free = [&] {
      const int lockable = ByteLockableNow(fd, 0);
      REQUIRE(lockable >= 0);
      return lockable == 1;
    };
    const auto stopped = Clock::now();
    while ((!file_lock_free() || ctl->writer_pid.load() != 0) && Clock::now() - stopped < std::chrono::seconds(2)) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    const double released_ms = Ms(Clock::now() - stopped);
    ::close(fd);
    MESSAGE(puts << " puts in " << run_ms << " ms; the file lock was free " << released_ms << " ms after the last");
    CHECK(ctl->writer_pid.load() == 0);
    CHECK(released_ms < 100);
  }
}

}  // namespace
}  // namespace mapkv::test
