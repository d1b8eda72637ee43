// store_basic_test.cc: the public Store API in one process: reads, writes,
// batches, iteration, read guards, flush, stats, Check, open options,
// read-only handles, a randomized comparison against std::map, Compact, and
// the space-reuse target.
#ifndef _WIN32
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "hash.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

#ifndef _WIN32
// Waits for a forked child for at most `seconds`; kills it when it takes
// longer and returns -2 (a deadlock). Otherwise as WaitChild.
int WaitChildWithTimeout(pid_t pid, int seconds) {
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  while (Clock::now() < deadline) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGKILL);
  WaitChild(pid);
  return -2;
}

#endif

std::string AllBytes() {
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  return s;
}

TEST_SUITE("store") {
  TEST_CASE("status: one pointer wide, copies and moves keep code and message") {
    static_assert(sizeof(Status) == sizeof(void*), "Status stays one pointer wide");
    Status ok;
    CHECK(ok.ok());
    CHECK(ok.code() == Code::kOk);
    CHECK(ok.message().empty());
    CHECK(ok.ToString() == "OK");
    CHECK(Status(Code::kOk, "ignored").ok());

    Status err(Code::kCorruption, "f.mkv: bad magic");
    Status copy = err;
    CHECK(copy.code() == Code::kCorruption);
    CHECK(copy.message() == "f.mkv: bad magic");
    CHECK(&copy.message() != &err.message());  // a copy owns its message
    Status moved = std::move(copy);
    CHECK(moved.ToString() == "Corruption: f.mkv: bad magic");
    CHECK(copy.ok());  // NOLINT(bugprone-use-after-move): a moved-from status is OK

    Status first = Status::Ok();
    first |= Status(Code::kIoError, "first");
    first |= Status(Code::kBusy, "second");
    CHECK(first.code() == Code::kIoError);
    CHECK(first.message() == "first");

    Status nf = Status::KeyNotFound();
    Status nf2 = nf;
    CHECK(nf.IsNotFound());
    CHECK(nf2.IsNotFound());
    CHECK(nf2.message() == "key not found");
    nf2 = err;
    CHECK(nf2.code() == Code::kCorruption);
    CHECK(Status::KeyNotFound().message() == "key not found");  // the shared one is unchanged
  }

  TEST_CASE("store: put get erase contains size") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    CHECK(store.is_open());
    CHECK(store.path() == dir.File("s.mkv"));
    CHECK(store.size() == 0);

    std::string v;
    CHECK(store.Get("a", &v).code() == Code::kNotFound);
    bool found = true;
    REQUIRE(store.Contains("a", &found).ok());
    CHECK_FALSE(found);

    REQUIRE(store.Put("a", "1").ok());
    REQUIRE(store.Put("b", "2").ok());
    CHECK(store.size() == 2);
    REQUIRE(store.Get("a", &v).ok());
    CHECK(v == "1");
    REQUIRE(store.Contains("b", &found).ok());
    CHECK(found);

    REQUIRE(store.Put("a", "one").ok());  // overwrite keeps the count
    CHECK(store.size() == 2);
    REQUIRE(store.Get("a", &v).ok());
    CHECK(v == "one");

    REQUIRE(store.Erase("a").ok());
    CHECK(store.size() == 1);
    CHECK(store.Get("a", &v).code() == Code::kNotFound);
    CHECK(store.Erase("a").code() == Code::kNotFound);
    CHECK(store.size() == 1);
    REQUIRE(store.Get("b", &v).ok());
    CHECK(v == "2");
    CheckClean(store);

    REQUIRE(store.Close().ok());
    CHECK_FALSE(store.is_open());
    CHECK(store.Close().ok());  // idempotent
    // A closed handle refuses everything with InvalidArgument.
    CHECK(store.Get("b", &v).code() == Code::kInvalidArgument);
    CHECK(store.Put("b", "x").code() == Code::kInvalidArgument);
    CHECK(store.Erase("b").code() == Code::kInvalidArgument);
    CHECK(store.Contains("b", &found).code() == Code::kInvalidArgument);
    CHECK(store.Flush().code() == Code::kInvalidArgument);
    CHECK(store.size() == 0);
    CHECK(store.path().empty());
  }

  TEST_CASE("store: binary keys and values with NUL bytes and empty values") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    const std::string all = AllBytes();
    const std::vector<std::pair<std::string, std::string>> pairs = {
        {std::string("\0", 1), "nul key"},
        {std::string("a\0b", 3), std::string("x\0y\0", 4)},
        {std::string("a\0c", 3), "differs after the NUL"},
        {std::string("a", 1), ""},  // prefix of the two above
        {all, all + all},
        {std::string(200, '\xff'), std::string(1000, '\0')},
        {"empty", ""},
    };
    for (const auto& [k, v] : pairs) REQUIRE(store.Put(k, v).ok());
    CHECK(store.size() == pairs.size());
    for (const auto& [k, v] : pairs) {
      std::string got = "garbage";
      REQUIRE(store.Get(k, &got).ok());
      CHECK(got == v);
    }
    // An empty value is present (OK), not absent.
    std::string got = "garbage";
    REQUIRE(store.Get("empty", &got).ok());
    CHECK(got.empty());
    bool found = false;
    REQUIRE(store.Contains("empty", &found).ok());
    CHECK(found);

    Model expected(pairs.begin(), pairs.end());
    CHECK(Dump(store) == expected);
    REQUIRE(store.Close().ok());
    store = MustOpen(dir.File("s.mkv"));
    CHECK(Dump(store) == expected);
    CheckClean(store);
  }

  TEST_CASE("store: key size limits") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    const std::string k1 = "x";
    const std::string kmax(kMaxKeySize, 'k');  // 65536 bytes: the largest key
    const std::string ktoo(kMaxKeySize + 1, 'k');
    REQUIRE(store.Put(k1, "one byte key").ok());
    REQUIRE(store.Put(kmax, "largest key").ok());
    std::string v;
    REQUIRE(store.Get(k1, &v).ok());
    CHECK(v == "one byte key");
    REQUIRE(store.Get(kmax, &v).ok());
    CHECK(v == "largest key");
    std::string kmax_other = kmax;
    kmax_other.back() = 'j';
    CHECK(store.Get(kmax_other, &v).code() == Code::kNotFound);

    CHECK(store.Put(ktoo, "v").code() == Code::kInvalidArgument);
    CHECK(store.Get(ktoo, &v).code() == Code::kInvalidArgument);
    CHECK(store.Erase(ktoo).code() == Code::kInvalidArgument);
    bool found;
    CHECK(store.Contains(ktoo, &found).code() == Code::kInvalidArgument);
    CHECK(store.Put("", "v").code() == Code::kInvalidArgument);
    CHECK(store.Get("", &v).code() == Code::kInvalidArgument);
    CHECK(store.Erase("").code() == Code::kInvalidArgument);
    WriteBatch batch;
    batch.Put("fine", "v");
    batch.Put(ktoo, "v");
    CHECK(store.Write(batch).code() == Code::kInvalidArgument);
    CHECK(store.size() == 2);  // nothing of the refused calls landed
    CHECK(store.Get("fine", &v).code() == Code::kNotFound);

    REQUIRE(store.Erase(kmax).ok());
    CHECK(store.size() == 1);
    CheckClean(store);
  }

  TEST_CASE("store: large values and overwrites with bigger and smaller values") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    Rng rng(7);
    const std::string big = rng.Bytes(8 << 20);  // 8 MiB
    const std::string bigger = rng.Bytes((12 << 20) + 5);
    REQUIRE(store.Put("big", big).ok());
    REQUIRE(store.Put("small", "s").ok());
    std::string v;
    REQUIRE(store.Get("big", &v).ok());
    CHECK(v == big);

    // Grow, shrink, grow again, and to empty.
    for (const std::string* next : {&bigger, static_cast<const std::string*>(nullptr), &big}) {
      const std::string value = next != nullptr ? *next : std::string("tiny");
      REQUIRE(store.Put("big", value).ok());
      REQUIRE(store.Get("big", &v).ok());
      CHECK(v.size() == value.size());
      CHECK(v == value);
      REQUIRE(store.Put("small", value.substr(0, 100)).ok());
      REQUIRE(store.Get("small", &v).ok());
      CHECK(v == value.substr(0, 100));
      CheckClean(store);
    }
    REQUIRE(store.Put("big", "").ok());
    REQUIRE(store.Get("big", &v).ok());
    CHECK(v.empty());
    REQUIRE(store.Put("big", big).ok());
    REQUIRE(store.Close().ok());

    store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Get("big", &v).ok());
    CHECK(v == big);
    REQUIRE(store.Get("small", &v).ok());
    CHECK(v == big.substr(0, 100));
    CheckClean(store);
  }

  TEST_CASE("store: WriteBatch applies all of its operations in order") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Put("keep", "0").ok());
    REQUIRE(store.Put("gone", "0").ok());

    WriteBatch batch;
    CHECK(batch.Count() == 0);
    batch.Put("a", "1");
    batch.Put("b", "2");
    batch.Put("a", "3");  // a later op wins
    batch.Erase("gone");
    batch.Erase("never-there");  // absent: not an error inside a batch
    batch.Put("c", "x");
    batch.Erase("c");  // put then erase: absent afterwards
    batch.Put(std::string("n\0l", 3), std::string("\0", 1));
    CHECK(batch.Count() == 8);
    CHECK(batch.ByteSize() == 2 + 2 + 2 + 4 + 11 + 2 + 1 + 4);
    REQUIRE(store.Write(batch).ok());
    const Model expected = {{"keep", "0"}, {"a", "3"}, {"b", "2"}, {std::string("n\0l", 3), std::string("\0", 1)}};
    CHECK(Dump(store) == expected);
    CHECK(store.size() == expected.size());

    // A batch with an invalid operation anywhere applies nothing.
    batch.Clear();
    CHECK(batch.Count() == 0);
    CHECK(batch.ByteSize() == 0);
    batch.Put("d", "4");
    batch.Erase("keep");
    batch.Put("", "empty key");
    CHECK(store.Write(batch).code() == Code::kInvalidArgument);
    CHECK(Dump(store) == expected);

    // An empty batch is a no-op.
    batch.Clear();
    CHECK(store.Write(batch).ok());
    CHECK(Dump(store) == expected);
    CheckClean(store);
  }

  TEST_CASE("store: a batch past the fixed undo log commits whole and the store stays usable") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    for (int i = 0; i < 3000; ++i) REQUIRE(store.Put(Key16(i), "before").ok());
    const Model before = Dump(store);
    Stats st;
    REQUIRE(store.GetStats(&st).ok());
    const uint64_t file_before = st.file_bytes;
    // 20000 changes overflow the fixed undo log (3328 entries) into chunks in
    // the heap, and the big values grow the file (and move its allocation
    // map) on the way.
    WriteBatch batch;
    Model after = before;
    for (int i = 0; i < 20000; ++i) {
      const std::string v = "after" + std::string(i % 2 == 0 ? 3000 : 10, 'x');
      batch.Put(Key16(i), v);
      after[Key16(i)] = v;
    }
    REQUIRE(store.Write(batch).ok());
    CHECK(store.size() == 20000);
    CHECK(Dump(store) == after);
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.file_bytes > file_before);
    CheckClean(store);
    REQUIRE(store.Close().ok());
    store = MustOpen(dir.File("s.mkv"));
    CHECK(Dump(store) == after);
    CheckClean(store);
    // The store takes writes afterwards.
    REQUIRE(store.Put("after-batch", "ok").ok());
    WriteBatch small;
    for (int i = 0; i < 100; ++i) small.Put(Key16(100000 + i), "small batch");
    REQUIRE(store.Write(small).ok());
    CheckClean(store);
  }

  TEST_CASE("store: ForEach visits every entry and honours prefix and early stop") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    Model expected;
    for (int i = 0; i < 1000; ++i) {
      std::string k = (i % 3 == 0 ? "user:" : i % 3 == 1 ? "item:" : "us") + std::to_string(i);
      std::string v = "v" + std::to_string(i * 7);
      expected[k] = v;
      REQUIRE(store.Put(k, v).ok());
    }
    CHECK(Dump(store) == expected);
    Model users;
    for (const auto& [k, v] : expected) {
      if (k.rfind("user:", 0) == 0) users[k] = v;
    }
    CHECK(users.size() == 334);
    CHECK(Dump(store, "user:") == users);
    CHECK(Dump(store, "none:").empty());
    Model us = Dump(store, "us");
    CHECK(us.size() == 334 + 333);

    int calls = 0;
    REQUIRE(store.ForEach({}, [&](std::string_view, std::string_view) { return ++calls < 10; }).ok());
    CHECK(calls == 10);
  }

  TEST_CASE("store: ReadGuard gives zero-copy views and a consistent ForEach") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Put("k1", "value one").ok());
    REQUIRE(store.Put("k2", std::string(100000, 'z')).ok());
    ReadGuard guard;
    CHECK_FALSE(guard.locked());
    std::string_view view;
    CHECK(guard.Get("k1", &view).code() == Code::kInvalidArgument);  // not locked
    REQUIRE(guard.Lock(store).ok());
    CHECK(guard.locked());
    REQUIRE(guard.Get("k1", &view).ok());
    CHECK(view == "value one");
    std::string_view again;
    REQUIRE(guard.Get("k1", &again).ok());
    CHECK(again.data() == view.data());  // a view into the mapping, not a copy
    REQUIRE(guard.Get("k2", &view).ok());
    CHECK(view == std::string(100000, 'z'));
    CHECK(guard.Get("k3", &view).code() == Code::kNotFound);
    CHECK(guard.Get("", &view).code() == Code::kInvalidArgument);
    // Optimistic reads by the same thread work while the guard is held.
    std::string copy;
    REQUIRE(store.Get("k1", &copy).ok());
    CHECK(copy == "value one");

    Model seen;
    REQUIRE(guard
                .ForEach("k",
                         [&](std::string_view k, std::string_view v) {
                           seen[std::string(k)] = std::string(v);
                           return true;
                         })
                .ok());
    CHECK(seen.size() == 2);
    CHECK(seen["k1"] == "value one");

    // A writer in another thread waits until the guard is released.
    std::atomic<bool> written{false};
    std::thread writer([&] {
      CHECK(store.Put("k1", "changed").ok());
      written = true;
    });
    WaitUntilWriterQueued(store);
    CHECK_FALSE(written.load());
    REQUIRE(guard.Get("k1", &view).ok());
    CHECK(view == "value one");
    guard.Unlock();
    CHECK_FALSE(guard.locked());
    writer.join();
    CHECK(written.load());
    REQUIRE(store.Get("k1", &copy).ok());
    CHECK(copy == "changed");

    Store closed;
    CHECK(guard.Lock(closed).code() == Code::kInvalidArgument);
    CHECK_FALSE(guard.locked());
  }

#ifndef _WIN32  // runs in a fork(2) child (listed in tests/CMakeLists.txt)
  TEST_CASE("store: a write from inside ForEach returns UnsafeUse instead of deadlocking") {
    TempDir dir;
    {
      Store store = MustOpen(dir.File("s.mkv"));
      REQUIRE(store.Put("a", "1").ok());
    }
    // In a child, so that a deadlock is reported (and killed) instead of hanging the suite.
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      Store store;
      if (!Store::Open(dir.File("s.mkv"), {}, &store).ok()) _exit(2);
      Status inner;
      Status outer = store.ForEach({}, [&](std::string_view, std::string_view) {
        inner = store.Put("b", "2");
        return false;
      });
      if (!outer.ok()) _exit(3);
      if (inner.code() != Code::kUnsafeUse) _exit(4);
      // The store is still usable after the walk.
      if (!store.Put("c", "3").ok()) _exit(5);
      _exit(0);
    }
    const int rc = WaitChildWithTimeout(pid, 10);
    CHECK_MESSAGE(rc != -2, "the child deadlocked writing from inside ForEach");
    CHECK(rc == 0);
  }

#endif

  TEST_CASE("store: Flush async and sync") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    Stats st;
    REQUIRE(store.GetStats(&st).ok());
    const uint64_t gen0 = st.checkpoint_generation;
    CHECK(gen0 >= 1);

    REQUIRE(store.Put("a", "1").ok());
    REQUIRE(store.Flush(FlushMode::kAsync).ok());
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.checkpoint_generation == gen0);  // async is no checkpoint

    REQUIRE(store.Flush(FlushMode::kSync).ok());
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.checkpoint_generation == gen0 + 1);
    REQUIRE(store.Flush(FlushMode::kSync).ok());  // nothing changed: no new checkpoint
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.checkpoint_generation == gen0 + 1);
    REQUIRE(store.Put("b", "2").ok());
    REQUIRE(store.Flush().ok());  // default is kSync
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.checkpoint_generation == gen0 + 2);
    CheckClean(store);
  }

  // Erasing a key that is not there changes nothing, so it makes no write:
  // the store stays clean and the close does not checkpoint again.
  TEST_CASE("store: erasing an absent key leaves the store clean (no new checkpoint)") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      REQUIRE(store.Put("k", "v").ok());
    }
    Stats st;
    uint64_t generation;
    {
      Store store = MustOpen(path);
      REQUIRE(store.GetStats(&st).ok());
      generation = st.checkpoint_generation;
      CHECK(store.Erase("absent").IsNotFound());
      REQUIRE(store.Close().ok());
    }
    Store store = MustOpen(path);
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.checkpoint_generation == generation);
    CHECK(store.Erase("k").ok());
    REQUIRE(store.Close().ok());
    REQUIRE(store.Open(path, Options{}, &store).ok());
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.checkpoint_generation > generation);  // a real erase is checkpointed at close
    CHECK(store.size() == 0);
  }

  TEST_CASE("store: GetStats fields are consistent") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    Stats st;
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.format_major == 1);
    CHECK(st.entries == 0);
    CHECK(st.slots >= 512);
    CHECK(st.file_bytes == FileSize(path));

    uint64_t record_bytes = 0;
    for (int i = 0; i < 5000; ++i) {
      const std::string k = Key16(i);
      const std::string v(static_cast<size_t>(i % 97), 'v');
      REQUIRE(store.Put(k, v).ok());
      record_bytes += (12 + k.size() + v.size() + 15) / 16 * 16;
    }
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.entries == 5000);
    CHECK(st.entries == store.size());
    CHECK((st.slots & (st.slots - 1)) == 0);  // a power of two
    CHECK(st.slots * internal::format::kMaxLoadNum / internal::format::kMaxLoadDen >=
          st.entries);  // within the maximum load
    CHECK(st.load_factor == doctest::Approx(static_cast<double>(st.entries) / static_cast<double>(st.slots)));
    CHECK(st.table_bytes == st.slots * 8);
    CHECK(st.live_bytes == record_bytes);
    CHECK(st.file_bytes == FileSize(path));
    CHECK(st.heap_bytes <= st.file_bytes);
    CHECK(st.heap_bytes >= st.live_bytes + st.table_bytes);
    CHECK(st.free_bytes == st.file_bytes - st.heap_bytes);
    CHECK(st.change_seq >= 5000);
    CHECK(st.max_probe >= 1);
    CHECK(st.mean_probe >= 1.0);
    CHECK(st.mean_probe <= static_cast<double>(st.max_probe));

    const uint64_t seq = st.change_seq;
    for (int i = 0; i < 1000; ++i) REQUIRE(store.Erase(Key16(i)).ok());
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.entries == 4000);
    CHECK(st.change_seq == seq + 1000);
    CHECK(st.live_bytes < record_bytes);
    CHECK(st.garbage_bytes > 0);  // freed records the last checkpoint still holds
    REQUIRE(store.Flush().ok());
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.garbage_bytes == 0);
    CHECK(st.file_bytes == FileSize(path));
  }

  TEST_CASE("store: initial_capacity sizes the table so it never rehashes") {
    TempDir dir;
    Options options;
    options.initial_capacity = 20000;
    Store store = MustOpen(dir.File("s.mkv"), options);
    Stats st;
    REQUIRE(store.GetStats(&st).ok());
    const uint64_t slots = st.slots;
    CHECK(slots * 7 / 8 >= 20000);
    for (int i = 0; i < 20000; ++i) REQUIRE(store.Put(Key16(i), "v").ok());
    REQUIRE(store.GetStats(&st).ok());
    CHECK(st.slots == slots);
    REQUIRE(store.Put("one more", "v").ok());  // may rehash now; must still work
    CHECK(store.size() == 20001);
    CheckClean(store);
  }

  TEST_CASE("store: Check on a healthy store reports no problems") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    CheckClean(store);  // empty
    Rng rng(3);
    for (int i = 0; i < 3000; ++i) REQUIRE(store.Put(rng.Bytes(1 + rng.Uniform(30)), rng.Bytes(rng.Uniform(300))).ok());
    CheckClean(store);  // after growth and rehashes
    REQUIRE(store.Flush().ok());
    CheckClean(store);  // after a checkpoint
    CheckReport report;
    REQUIRE(store.Check(&report).ok());
    CHECK(report.entries_checked == store.size());
    CHECK(report.problems.empty());
  }

  TEST_CASE("store: reopen after Close keeps everything") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Model model;
    Rng rng(11);
    for (int round = 0; round < 4; ++round) {
      Store store = MustOpen(path);
      CHECK(Dump(store) == model);
      for (int i = 0; i < 2000; ++i) {
        std::string k = "k" + std::to_string(rng.Uniform(3000));
        if (rng.Uniform(4) == 0) {
          Status s = store.Erase(k);
          CHECK(s.code() == (model.erase(k) ? Code::kOk : Code::kNotFound));
        } else {
          std::string v = rng.Bytes(rng.Uniform(200));
          REQUIRE(store.Put(k, v).ok());
          model[k] = v;
        }
      }
      CHECK(store.size() == model.size());
      // Alternate: plain close, and destruction without an explicit Close.
      if (round % 2 == 0) REQUIRE(store.Close().ok());
    }
    Store store = MustOpen(path);
    CHECK(Dump(store) == model);
    CheckClean(store);

    // Opening into a handle that is open closes the old store first.
    Store other = MustOpen(dir.File("other.mkv"));
    REQUIRE(other.Put("x", "y").ok());
    REQUIRE(Store::Open(path, {}, &other).ok());
    CHECK(other.path() == path);
    CHECK(other.size() == model.size());
    // A failed open leaves the handle closed.
    Options no_create;
    no_create.create_if_missing = false;
    CHECK(Store::Open(dir.File("missing.mkv"), no_create, &other).code() == Code::kNotFound);
    CHECK_FALSE(other.is_open());
    // Moves transfer the handle.
    Store moved(std::move(store));
    CHECK(moved.is_open());
    CHECK(moved.size() == model.size());
    Store assigned;
    assigned = std::move(moved);
    CHECK(assigned.is_open());
    std::string v;
    if (!model.empty()) {
      REQUIRE(assigned.Get(model.begin()->first, &v).ok());
      CHECK(v == model.begin()->second);
    }
  }

  TEST_CASE("store: read-only open refuses writes and never changes the file") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 500; ++i) REQUIRE(store.Put(Key16(i), "v" + std::to_string(i)).ok());
    }
    const std::string before = ReadFileBytes(path);
    {
      Options ro;
      ro.read_only = true;
      Store store = MustOpen(path, ro);
      CHECK(store.size() == 500);
      std::string v;
      REQUIRE(store.Get(Key16(7), &v).ok());
      CHECK(v == "v7");
      CHECK(Dump(store).size() == 500);
      CHECK(store.Put("new", "x").code() == Code::kPermissionDenied);
      CHECK(store.Put(Key16(7), "x").code() == Code::kPermissionDenied);
      CHECK(store.Erase(Key16(7)).code() == Code::kPermissionDenied);
      WriteBatch batch;
      batch.Put("b", "c");
      CHECK(store.Write(batch).code() == Code::kPermissionDenied);
      batch.Clear();
      CHECK(store.Write(batch).code() == Code::kPermissionDenied);
      CHECK(store.Flush(FlushMode::kSync).code() == Code::kPermissionDenied);
      CHECK(store.Compact().code() == Code::kPermissionDenied);
      CHECK(store.Flush(FlushMode::kAsync).ok());
      Stats st;
      REQUIRE(store.GetStats(&st).ok());
      CHECK(st.entries == 500);
      CheckClean(store);
      ReadGuard guard;
      REQUIRE(guard.Lock(store).ok());
      std::string_view view;
      REQUIRE(guard.Get(Key16(9), &view).ok());
      CHECK(view == "v9");
      guard.Unlock();
      // A second read-only handle and a writable one alongside.
      Store ro2 = MustOpen(path, ro);
      CHECK(ro2.size() == 500);
      REQUIRE(ro2.Close().ok());
      REQUIRE(store.Close().ok());
    }
    CHECK(ReadFileBytes(path) == before);

    Options ro;
    ro.read_only = true;
    Store missing;
    CHECK(Store::Open(dir.File("missing.mkv"), ro, &missing).code() == Code::kNotFound);
    CHECK_FALSE(std::filesystem::exists(dir.File("missing.mkv")));
  }

#ifndef _WIN32  // 250-byte names exceed Windows' (and Wine's) MAX_PATH with the directory
  // A new store is made under a temporary name beside the target and renamed
  // over it; a target name of 200 to 255 bytes must not make that name too
  // long for the file system.
  TEST_CASE("store: a store whose file name is 250 bytes long can be created") {
    TempDir dir;
    const std::string path = dir.File(std::string(250, 'y'));
    Store store = MustOpen(path);
    REQUIRE(store.Put("k", "v").ok());
    REQUIRE(store.Close().ok());
    REQUIRE(store.Open(path, Options{}, &store).ok());
    std::string v;
    CHECK(store.Get("k", &v).ok());
    CHECK(v == "v");
  }
#endif

  TEST_CASE("store: open options create_if_missing error_if_exists and bad arguments") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store;
    Options no_create;
    no_create.create_if_missing = false;
    CHECK(Store::Open(path, no_create, &store).code() == Code::kNotFound);
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK_FALSE(store.is_open());

    Options exclusive;
    exclusive.error_if_exists = true;
    REQUIRE(Store::Open(path, exclusive, &store).ok());  // missing: created
    REQUIRE(store.Put("a", "1").ok());
    REQUIRE(store.Close().ok());
    const std::string bytes = ReadFileBytes(path);
    CHECK(Store::Open(path, exclusive, &store).code() == Code::kInvalidArgument);
    CHECK_FALSE(store.is_open());
    CHECK(ReadFileBytes(path) == bytes);

    REQUIRE(Store::Open(path, no_create, &store).ok());  // exists: opens
    std::string v;
    REQUIRE(store.Get("a", &v).ok());
    CHECK(v == "1");
    REQUIRE(store.Close().ok());
    const std::string reopened = ReadFileBytes(path);  // a writable open bumps lock counters

    Options contradictory;
    contradictory.read_only = true;
    contradictory.error_if_exists = true;
    CHECK(Store::Open(path, contradictory, &store).code() == Code::kInvalidArgument);
    Options negative;
    negative.lock_timeout = std::chrono::milliseconds(-1);
    CHECK(Store::Open(path, negative, &store).code() == Code::kInvalidArgument);
    CHECK(Store::Open("", {}, &store).code() == Code::kInvalidArgument);
    CHECK(Store::Open(dir.File("no/such/dir/s.mkv"), {}, &store).code() == Code::kNotFound);
    CHECK(ReadFileBytes(path) == reopened);
    // A table that would pass the format's 4 TiB limit: refused before any
    // byte is reserved, and no file is left behind.
    Options huge;
    huge.initial_capacity = uint64_t{1} << 42;
    const Status too_big = Store::Open(dir.File("huge.mkv"), huge, &store);
    CHECK(too_big.code() == Code::kInvalidArgument);
    CHECK_MESSAGE(too_big.message().find("4 TiB") != std::string::npos, too_big.ToString());
    CHECK_FALSE(std::filesystem::exists(dir.File("huge.mkv")));

#ifndef _WIN32
    // file_mode applies to a new file (before the umask).
    Options mode;
    mode.file_mode = 0640;
    const mode_t old_mask = ::umask(022);
    REQUIRE(Store::Open(dir.File("mode.mkv"), mode, &store).ok());
    ::umask(old_mask);
    REQUIRE(store.Close().ok());
    CHECK((std::filesystem::status(dir.File("mode.mkv")).permissions() & std::filesystem::perms::all) ==
          (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
           std::filesystem::perms::group_read));
#else
    // Windows has no permission bits (file_mode is ignored); a file is made all the same.
    REQUIRE(Store::Open(dir.File("mode.mkv"), {}, &store).ok());
    REQUIRE(store.Close().ok());
#endif
    // No temporary file is left behind by creation.
    int entries = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
      ++entries;
      CHECK(e.path().filename().string().find("mapkv-new") == std::string::npos);
    }
    CHECK(entries == 2);
  }

  // Random operations against std::map, with reopen, checkpoints and
  // compaction mixed in.
  void RunModelTest(uint64_t seed, int ops) {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    Model model;
    Rng rng(seed);
    std::vector<std::string> keys;
    for (int i = 0; i < 400; ++i) {
      std::string k = rng.Bytes(1 + rng.Uniform(i % 10 == 0 ? 300 : 24));
      keys.push_back(k);
    }
    auto random_value = [&] {
      uint64_t r = rng.Uniform(100);
      size_t n = r < 70 ? rng.Uniform(64) : r < 97 ? rng.Uniform(4000) : rng.Uniform(200000);
      return rng.Bytes(n);
    };
    int checks = 0;
    for (int op = 0; op < ops; ++op) {
      CAPTURE(op);
      const std::string& k = keys[rng.Uniform(keys.size())];
      const uint64_t r = rng.Uniform(1000);
      if (r < 400) {
        std::string v = random_value();
        REQUIRE(store.Put(k, v).ok());
        model[k] = v;
      } else if (r < 550) {
        Status s = store.Erase(k);
        CHECK(s.code() == (model.erase(k) ? Code::kOk : Code::kNotFound));
      } else if (r < 750) {
        std::string v;
        Status s = store.Get(k, &v);
        auto it = model.find(k);
        if (it == model.end()) {
          CHECK(s.code() == Code::kNotFound);
        } else {
          REQUIRE(s.ok());
          CHECK(v == it->second);
        }
      } else if (r < 800) {
        bool found = false;
        REQUIRE(store.Contains(k, &found).ok());
        CHECK(found == (model.count(k) == 1));
      } else if (r < 950) {
        WriteBatch batch;
        Model next = model;
        const uint64_t n = 1 + rng.Uniform(20);
        for (uint64_t i = 0; i < n; ++i) {
          const std::string& bk = keys[rng.Uniform(keys.size())];
          if (rng.Uniform(3) == 0) {
            batch.Erase(bk);
            next.erase(bk);
          } else {
            std::string v = random_value();
            batch.Put(bk, v);
            next[bk] = v;
          }
        }
        REQUIRE(store.Write(batch).ok());
        model = std::move(next);
      } else if (r < 970) {
        REQUIRE(store.Flush(rng.Uniform(2) ? FlushMode::kSync : FlushMode::kAsync).ok());
      } else if (r < 980) {
        REQUIRE(store.Close().ok());
        store = MustOpen(path);
      } else if (r < 985) {
        REQUIRE(store.Compact().ok());
      } else {
        CHECK(Dump(store) == model);
        if (++checks % 4 == 0) CheckClean(store);
      }
      REQUIRE(store.size() == model.size());
    }
    CHECK(Dump(store) == model);
    CheckClean(store);
    REQUIRE(store.Close().ok());
    store = MustOpen(path);
    CHECK(Dump(store) == model);
    CheckClean(store);
  }

  TEST_CASE("store: randomized operations match a std::map model") {
    for (uint64_t seed : {1, 2, 3}) {
      CAPTURE(seed);
      RunModelTest(seed, 4000);
    }
  }

  TEST_CASE("store: randomized operations match a std::map model (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    for (uint64_t seed = 100; seed < 120; ++seed) {
      CAPTURE(seed);
      RunModelTest(seed, 20000);
    }
  }

  TEST_CASE("store: Compact shrinks the file and keeps everything readable") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    Model model;
    Rng rng(5);
    for (int round = 0; round < 6; ++round) {
      for (int i = 0; i < 5000; ++i) {
        std::string k = Key16(rng.Uniform(8000));
        std::string v = rng.Bytes(rng.Uniform(400));
        REQUIRE(store.Put(k, v).ok());
        model[k] = v;
      }
      REQUIRE(store.Flush().ok());
    }
    for (int i = 0; i < 8000; i += 2) {
      if (model.erase(Key16(i))) REQUIRE(store.Erase(Key16(i)).ok());
    }
    Stats before;
    REQUIRE(store.GetStats(&before).ok());
    REQUIRE(store.Compact().ok());
    Stats after;
    REQUIRE(store.GetStats(&after).ok());
    MESSAGE("Compact: file " << before.file_bytes << " -> " << after.file_bytes << " bytes, live " << after.live_bytes);
    // Windows shortens a file only once no view maps it: at a close that
    // finds the handle alone (checked after the Close below). Meanwhile the
    // file keeps the length the compaction's first stage grew it to.
#ifndef _WIN32
    CHECK(after.file_bytes < before.file_bytes);
    CHECK(after.file_bytes == FileSize(path));
#endif
    CHECK(after.entries == model.size());
    CHECK(after.live_bytes == before.live_bytes);
    CHECK(Dump(store) == model);
    CheckClean(store);

    // Compacting again changes nothing visible; writes continue normally.
    REQUIRE(store.Compact().ok());
    CHECK(Dump(store) == model);
    for (int i = 0; i < 1000; ++i) {
      REQUIRE(store.Put("post" + std::to_string(i), "x").ok());
      model["post" + std::to_string(i)] = "x";
    }
    CheckClean(store);
    REQUIRE(store.Close().ok());
    CHECK(FileSize(path) < before.file_bytes);
    store = MustOpen(path);
    CHECK(Dump(store) == model);
    CheckClean(store);

    // Compact of an empty store.
    Store empty = MustOpen(dir.File("empty.mkv"));
    REQUIRE(empty.Compact().ok());
    CHECK(empty.size() == 0);
    CheckClean(empty);
  }

  // On Windows a handle that compacts while alone cannot shorten the file
  // its own views map, and put the shortening off to its end. Another handle
  // that opened after the compaction grew the store into the file's old
  // length (no length changed for the first to notice), and the first one's
  // end then cut what it had written.
  TEST_CASE("store: a handle that compacted alone keeps what another handle wrote after it") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store a = MustOpen(path);
    Model model;
    for (int i = 0; i < 4000; ++i) REQUIRE(a.Put("old" + std::to_string(i), std::string(300, 'o')).ok());
    for (int i = 0; i < 4000; ++i) REQUIRE(a.Erase("old" + std::to_string(i)).ok());
    REQUIRE(a.Put("kept", "1").ok());
    model["kept"] = "1";
    REQUIRE(a.Compact().ok());  // alone: the file is cut (or the cut put off)
    {
      Store b = MustOpen(path);
      for (int i = 0; i < 3000; ++i) {
        const std::string k = "new" + std::to_string(i);
        REQUIRE(b.Put(k, std::string(300, 'n')).ok());
        model[k] = std::string(300, 'n');
      }
      CHECK(Dump(a) == model);  // the first handle follows the growth
    }
    a = Store();  // destroyed without a Close of its own first
    Store c = MustOpen(path);
    CHECK(Dump(c) == model);
    CheckClean(c);
  }

  // A put takes the space the last commits freed before anything else (the
  // freed record's lines are likely still cached, and next-fit would search
  // the allocation map for a hole). The handle only remembers where that
  // space was: space another handle or a Compact has taken since is left
  // alone.
  TEST_CASE("store: a record goes where a commit just freed one, unless that space was taken since") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    auto offset_of = [&](const std::string& marker) {
      const std::string image = ReadFileBytes(path);
      const size_t at = image.find(marker);
      REQUIRE_MESSAGE(at != std::string::npos, marker);
      CHECK_MESSAGE(image.find(marker, at + 1) == std::string::npos, "twice: " << marker);
      return at;
    };
    {
      Store s = MustOpen(path);
      const std::string first = "first value 51c7e0 " + std::string(80, 'a');
      REQUIRE(s.Put("k", first).ok());
      const size_t first_at = offset_of(first);
      REQUIRE(s.Put("k", std::string(300, 'b')).ok());  // a larger record, elsewhere; the first is freed
      const std::string third = "third value 9d24f1 " + std::string(80, 'c');
      REQUIRE(s.Put("j", third).ok());
      CHECK(offset_of(third) == first_at);
      std::string v;
      REQUIRE(s.Get("k", &v).ok());
      CHECK(v == std::string(300, 'b'));
      CheckClean(s);
    }
    for (const bool other_handle : {false, true}) {
      CAPTURE(other_handle);
      const std::string p = dir.File(other_handle ? "two.mkv" : "one.mkv");
      Store a = MustOpen(p);
      Model model;
      auto value_of = [](int i) {
        std::string v = "value of key " + std::to_string(i) + " ";
        return v + std::string(100 - v.size(), '.');
      };
      for (int i = 0; i < 600; ++i) {
        REQUIRE(a.Put(Key16(i), value_of(i)).ok());
        model[Key16(i)] = value_of(i);
      }
      const std::string before = ReadFileBytes(p);
      std::set<size_t> freed;             // where the erased values were: the handle's hints
      for (int i = 0; i < 600; i += 6) {  // 500 places freed; the 100 kept, Compact moves low
        for (int j = i + 1; j < i + 6; ++j) {
          REQUIRE(a.Erase(Key16(j)).ok());
          model.erase(Key16(j));
          freed.insert(before.find(value_of(j)));
        }
      }
      if (other_handle) {
        Store b = MustOpen(p);
        REQUIRE(b.Compact().ok());
      } else {
        REQUIRE(a.Compact().ok());
      }
      // Compact moved kept records into places the handle remembers as
      // freed: those hints must be refused.
      const std::string after = ReadFileBytes(p);
      int taken = 0;
      for (int i = 0; i < 600; i += 6) taken += freed.count(after.find(value_of(i))) > 0;
      CHECK(taken > 0);
      for (int i = 0; i < 500; ++i) {
        const std::string k = "new" + std::to_string(i);
        REQUIRE(a.Put(k, std::string(100, 'n')).ok());
        model[k] = std::string(100, 'n');
      }
      CHECK(Dump(a) == model);
      CheckClean(a);
    }
  }

  TEST_CASE("store: Compact with a second handle open keeps both handles working") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store a = MustOpen(path);
    Store b = MustOpen(path);
    Model model;
    for (int i = 0; i < 20000; ++i) {
      std::string k = Key16(i % 5000);
      std::string v = std::to_string(i) + std::string(static_cast<size_t>(i % 50), '.');
      REQUIRE(a.Put(k, v).ok());
      model[k] = v;
    }
    REQUIRE(b.Compact().ok());
    CHECK(Dump(a) == model);
    CHECK(Dump(b) == model);
    REQUIRE(a.Put("from-a", "1").ok());
    REQUIRE(b.Put("from-b", "2").ok());
    std::string v;
    REQUIRE(b.Get("from-a", &v).ok());
    CHECK(v == "1");
    REQUIRE(a.Get("from-b", &v).ok());
    CHECK(v == "2");
    CheckClean(a);
    REQUIRE(a.Close().ok());
    REQUIRE(b.Close().ok());
    Store c = MustOpen(path);
    CHECK(c.size() == model.size() + 2);
    CheckClean(c);
  }

  // Opens `path` read-only as after a restart (another boot id) and returns
  // the value of `key`; a store its last close left unclean fails the open.
  std::string ReadAfterRestart(const std::string& path, const std::string& key, uint8_t boot_salt) {
    BootIdGuard reboot(boot_salt);
    Options ro;
    ro.read_only = true;
    Store store;
    Status s = Store::Open(path, ro, &store);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    std::string v;
    REQUIRE(store.Get(key, &v).ok());
    return v;
  }

  TEST_CASE("store: the last close compacts the tail after any change, even a flushed one, and remembers it") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const std::string value(100, 'v');
    {
      // A table sized up front, so records (which compaction moves) fill the
      // top of the file rather than a table rebuilt there.
      // The bound below is for the small-page layout: with large pages a
      // file past 4 MiB grows in 2 MiB steps, and the map lands elsewhere.
      Options options;
      options.initial_capacity = 40000;
      options.large_pages = false;
      Store store = MustOpen(path, options);
      for (int i = 0; i < 20000; ++i) REQUIRE(store.Put(Key16(i), value).ok());
      REQUIRE(store.Close().ok());
    }
    const uint64_t loaded = FileSize(path);
    // The control page's hint: change_seq + 1 as of the last compacting close.
    auto control_word = [&](size_t offset) {
      const std::string bytes = ReadFileBytes(path);
      REQUIRE(bytes.size() >= internal::format::kControlOffset + sizeof(internal::format::ControlPage));
      uint64_t word;
      std::memcpy(&word, bytes.data() + internal::format::kControlOffset + offset, sizeof word);
      return word;
    };
    const size_t kChecked = offsetof(internal::format::ControlPage, tail_checked_seq);
    const size_t kChangeSeq = offsetof(internal::format::ControlPage, change_seq);
    CHECK(control_word(kChecked) == control_word(kChangeSeq) + 1);
    {
      // Erase the oldest half (the bottom of the heap), checkpoint, close: the
      // flush leaves nothing dirty, yet the close must still move the upper
      // records down and cut the file.
      Options options;
      options.large_pages = false;
      Store store = MustOpen(path, options);
      for (int i = 0; i < 10000; ++i) REQUIRE(store.Erase(Key16(i)).ok());
      REQUIRE(store.Flush(FlushMode::kSync).ok());
      REQUIRE(store.Close().ok());
    }
    const uint64_t compacted = FileSize(path);
    MESSAGE("loaded " << loaded << " bytes, after erasing half and closing " << compacted);
    CHECK(compacted * 5 < loaded * 4);  // 0.92x before records and the map moved down at close
    CHECK(control_word(kChecked) == control_word(kChangeSeq) + 1);
    // Nothing changed: open and close leave the meta pages and the heap as
    // they were (the control page holds live lock counters, which do move).
    auto durable_bytes = [&] {
      std::string bytes = ReadFileBytes(path);
      bytes.erase(internal::format::kControlOffset, internal::format::kHeapOffset - internal::format::kControlOffset);
      return bytes;
    };
    const std::string before = durable_bytes();
    {
      Store store = MustOpen(path);
      std::string v;
      REQUIRE(store.Get(Key16(15000), &v).ok());
      CHECK(v == value);
      REQUIRE(store.Close().ok());
    }
    CHECK(durable_bytes() == before);
    // Every close left the store clean (checkpointed): after a restart a
    // read-only handle may use it as it is.
    CHECK(ReadAfterRestart(path, Key16(19999), 0x31) == value);
    Store store = MustOpen(path);
    CHECK(store.size() == 10000);
    CheckClean(store);
  }

  // checkpoint_on_close = false is for closes that must be fast or must not
  // write (mapkv watch): such a close leaves the moving of records to a
  // later close (here nothing is free at the file's end to cut either).
  TEST_CASE("store: a close with checkpoint_on_close off moves no record and keeps the file's length") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const std::string value(100, 'v');
    Options options;
    options.initial_capacity = 40000;  // records, not a rebuilt table, at the top (as above)
    options.large_pages = false;
    {
      Store store = MustOpen(path, options);
      for (int i = 0; i < 20000; ++i) REQUIRE(store.Put(Key16(i), value).ok());
    }
    auto durable_bytes = [&] {  // all but the control page's live counters
      std::string bytes = ReadFileBytes(path);
      bytes.erase(internal::format::kControlOffset, internal::format::kHeapOffset - internal::format::kControlOffset);
      return bytes;
    };
    options.checkpoint_on_close = false;
    std::string before;
    {
      Store store = MustOpen(path, options);
      for (int i = 0; i < 10000; ++i) REQUIRE(store.Erase(Key16(i)).ok());
      REQUIRE(store.Flush(FlushMode::kSync).ok());
      before = durable_bytes();
      REQUIRE(store.Close().ok());
    }
    CHECK(durable_bytes() == before);
    // The same close with the default option does trim: the case above was
    // one a close would have changed.
    options.checkpoint_on_close = true;
    {
      Store store = MustOpen(path, options);
      std::string v;
      REQUIRE(store.Get(Key16(15000), &v).ok());
      REQUIRE(store.Close().ok());
    }
    CHECK(FileSize(path) * 5 < before.size() * 4);
    Store store = MustOpen(path, options);
    CHECK(store.size() == 10000);
    CheckClean(store);
  }

  TEST_CASE("store: a store closed after one put opens read-only after a restart") {
    // The allocation map of a new store is its highest extent, with no hole
    // below that fits it: the close must not leave the store marked dirty.
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      REQUIRE(store.Put("clé", "valeur").ok());
      REQUIRE(store.Close().ok());
    }
    CHECK(ReadAfterRestart(path, "clé", 0x33) == "valeur");
  }

  // Loads n keys, closes (close trims the file), then overwrites every key ten
  // times with values of varying size: the file must stay within 2.5x.
  void RunSpaceReuse(uint64_t n) {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    auto value = [](uint64_t i, int round) {
      std::string v = std::to_string(i) + "/" + std::to_string(round);
      v.resize(8 + (i * 7 + static_cast<uint64_t>(round) * 13) % 25, '#');
      return v;
    };
    const auto start = Clock::now();
    {
      Store store = MustOpen(path);
      for (uint64_t i = 0; i < n; ++i) REQUIRE(store.Put(Key16(i), value(i, -1)).ok());
      REQUIRE(store.Close().ok());
    }
    const uint64_t loaded = FileSize(path);
    Store store = MustOpen(path);
    for (int round = 0; round < 10; ++round) {
      for (uint64_t i = 0; i < n; ++i) REQUIRE(store.Put(Key16(i), value(i, round)).ok());
    }
    Stats st;
    REQUIRE(store.GetStats(&st).ok());
    MESSAGE("space reuse, " << n << " keys: after load " << loaded << " bytes, after 10 overwrites " << st.file_bytes
                            << " bytes (" << static_cast<double>(st.file_bytes) / static_cast<double>(loaded)
                            << "x) in " << SecondsSince(start) << " s");
    CHECK(st.file_bytes * 2 <= loaded * 5);
    CHECK(st.entries == n);
    std::string v;
    for (uint64_t i = 0; i < n; i += 97) {
      REQUIRE(store.Get(Key16(i), &v).ok());
      CHECK(v == value(i, 9));
    }
    CheckClean(store);
    REQUIRE(store.Close().ok());
    CHECK(FileSize(path) * 2 <= loaded * 5);
  }

  TEST_CASE("store: overwriting every key 10 times keeps the file within 2.5x of the loaded size") {
    RunSpaceReuse(200000);
  }

  TEST_CASE("store: overwriting every key 10 times keeps the file within 2.5x (1M keys)" *
            doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunSpaceReuse(1000000);
  }

}  // TEST_SUITE("store")

}  // namespace
}  // namespace mapkv::test

namespace mapkv::test {
namespace {

TEST_CASE("store: verify_checksums turns a damaged record into Corruption instead of its bytes") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string value = "a value whose bytes are unique in the file: 7f3a9c";
  {
    Store s = MustOpen(path);
    REQUIRE(s.Put("damaged", value).ok());
    REQUIRE(s.Put("intact", "another value").ok());
  }
  FlipByteOf(path, value, 3, 0x20);

  Options verify;
  verify.verify_checksums = true;
  Store s = MustOpen(path, verify);
  std::string got;
  Status st = s.Get("damaged", &got);
  CHECK(st.code() == Code::kCorruption);
  CHECK(st.message().find("checksum") != std::string::npos);
  CHECK(s.Get("intact", &got).ok());
  CHECK(got == "another value");
  ReadGuard guard;
  REQUIRE(guard.Lock(s).ok());
  std::string_view view;
  CHECK(guard.Get("damaged", &view).code() == Code::kCorruption);
  guard.Unlock();
  // A walk stops at the damaged record with the same error (and a prefix
  // that leaves it out does not hide it: a damaged key could match or not).
  for (std::string_view prefix : {"", "d", "i"}) {
    CAPTURE(prefix);
    st = s.ForEach(prefix, [&](std::string_view k, std::string_view v) {
      CHECK(v != value.substr(0, 3) + static_cast<char>(value[3] ^ 0x20) + value.substr(4));
      return k.size() != 0;
    });
    CHECK(st.code() == Code::kCorruption);
    CHECK(st.message().find("checksum") != std::string::npos);
  }
  REQUIRE(s.Close().ok());

  Options plain;
  plain.verify_checksums = false;
  Store fast = MustOpen(path, plain);
  REQUIRE(fast.Get("damaged", &got).ok());  // not verified: the damaged bytes come back
  CHECK(got != value);
  CheckReport report;
  REQUIRE(fast.Check(&report).ok());
  CHECK(report.problems.size() == 1);  // Check always verifies
}

// A record whose key bytes are damaged no longer matches its key, but its
// slot still carries the key's hash tag. Lookups took it for another key and
// went on: the key read as absent, and a put stored it a second time. Now
// key bytes that do not hash to their slot's tag answer for the key: reads
// and writes of it report the damage, whatever verify_checksums says, and
// change nothing.
TEST_CASE("store: a key whose stored key bytes are damaged is reported, never taken for absent") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string key = "a key whose bytes are unique in the file: 3e91d0";
  Model model;
  {
    Store s = MustOpen(path);
    REQUIRE(s.Put(key, "its value").ok());
    for (int i = 0; i < 100; ++i) {
      REQUIRE(s.Put(Key16(i), "v" + std::to_string(i)).ok());
      model[Key16(i)] = "v" + std::to_string(i);
    }
  }
  FlipByteOf(path, key, 5, 0x01);
  auto damaged = [](const Status& st) {
    return st.code() == Code::kCorruption && st.message().find("do not hash to the tag") != std::string::npos;
  };
  {
    Store s = MustOpen(path);
    std::string got;
    CHECK_MESSAGE(damaged(s.Get(key, &got)), s.Get(key, &got).ToString());
    bool found = true;
    CHECK(damaged(s.Contains(key, &found)));
    std::vector<std::optional<std::string>> values;
    const std::string other = Key16(1);
    const std::string_view keys[] = {other, key};
    CHECK(damaged(s.MultiGet(keys, &values)));
    CHECK(damaged(s.Put(key, "new value")));  // a put that writes its record first
    // After a put rewritten in place, the next put looks the key up first.
    REQUIRE(s.Put("scratch", "1").ok());
    REQUIRE(s.Put("scratch", "2").ok());
    model["scratch"] = "2";
    CHECK(damaged(s.Put(key, "its value")));
    CHECK(damaged(s.Erase(key)));
    CHECK(damaged(s.CompareAndSwap(key, std::nullopt, std::string_view("x"))));
    WriteBatch put;
    put.Put(Key16(500), "applied only with the rest");
    put.Put(key, "new value");
    CHECK(damaged(s.Write(put)));
    WriteBatch erase;
    erase.Erase(key);
    CHECK(damaged(s.Write(erase)));
    CHECK(s.Get(Key16(500), &got).IsNotFound());  // the batch is all or nothing
    for (const auto& [k, v] : model) {
      REQUIRE(s.Get(k, &got).ok());
      CHECK(got == v);
    }
    CHECK(s.size() == model.size() + 1);
  }
  Options read_only;
  read_only.read_only = true;
  Store s = MustOpen(path, read_only);
  CheckReport report;
  REQUIRE(s.Check(&report).ok());
  // Every problem is the damaged record's slot's (its checksum, and the tag
  // and order its changed key no longer fit): no second entry of the key.
  std::set<std::string> slots;
  for (const std::string& problem : report.problems) slots.insert(problem.substr(0, problem.find(':')));
  CHECK_MESSAGE(slots.size() == 1, ProblemsText(report));
  CHECK(ProblemsText(report).find("checksum") != std::string::npos);
  CHECK(s.size() == model.size() + 1);
}

// Two keys whose hashes share the tag (the top bits, also the home slot):
// the second must not be taken for the damaged first one, or the first for it.
TEST_CASE("store: keys that share a hash tag are told apart by their bytes, not reported as damaged") {
  // Short keys, and keys past 256 bytes (whose bytes the check hashes in pieces).
  for (const size_t pad : {size_t{0}, size_t{300}}) {
    CAPTURE(pad);
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store s = MustOpen(path);
    const uint64_t seed = ControlView(path)->hash_seed;
    std::map<uint64_t, std::string> by_tag;
    std::string a, b;
    for (int i = 0; a.empty(); ++i) {  // about 10,000 keys for the first pair (26-bit tags)
      REQUIRE(i < 1000000);
      const std::string k = std::string(pad, 'p') + "collide" + std::to_string(i);
      const auto [it, fresh] = by_tag.emplace(internal::format::HashTag(internal::HashKey(k, seed)), k);
      if (!fresh) {
        a = it->second;
        b = k;
      }
    }
    CAPTURE(a);
    CAPTURE(b);
    REQUIRE(s.Put(a, "value of a").ok());
    std::string got;
    CHECK(s.Get(b, &got).IsNotFound());
    bool found = true;
    REQUIRE(s.Contains(b, &found).ok());
    CHECK_FALSE(found);
    CHECK(s.Erase(b).IsNotFound());
    REQUIRE(s.Put(b, "value of b").ok());
    REQUIRE(s.Get(a, &got).ok());
    CHECK(got == "value of a");
    REQUIRE(s.Get(b, &got).ok());
    CHECK(got == "value of b");
    REQUIRE(s.Put(b, "value of b").ok());  // in place: the next put looks b up first
    REQUIRE(s.Put(b, "value of B").ok());
    REQUIRE(s.Erase(a).ok());
    REQUIRE(s.Get(b, &got).ok());
    CHECK(got == "value of B");
    CHECK(s.Get(a, &got).IsNotFound());
    CHECK(s.size() == 1);
    CheckClean(s);
  }
}

// A value computed from a damaged record would be stored with a good
// checksum, and a moved copy of one would lose what shows the damage: the
// read-modify-writes and Compact verify the records they read whatever
// verify_checksums says, and refuse without changing anything.
TEST_CASE("store: read-modify-writes and Compact refuse a damaged record and leave it to Check") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string value = "a value whose bytes are unique in the file: 51c8e2";
  {
    Store s = MustOpen(path);
    REQUIRE(s.Put("damaged", value).ok());
    for (int i = 0; i < 100; ++i) REQUIRE(s.Put(Key16(i), "v" + std::to_string(i)).ok());
  }
  FlipByteOf(path, value, 3, 0x20);
  std::string damaged = value;
  damaged[3] = static_cast<char>(damaged[3] ^ 0x20);

  Store s = MustOpen(path);  // verify_checksums off
  auto refused = [](const Status& st) {
    CHECK(st.code() == Code::kCorruption);
    CHECK(st.message().find("checksum") != std::string::npos);
  };
  refused(s.CompareAndSwap("damaged", damaged, "new"));
  refused(s.Update("damaged", [](std::optional<std::string_view>, std::string* next) {
    *next = "computed";
    return Store::UpdateAction::kPut;
  }));
  refused(s.Increment("damaged", 1, nullptr));
  const std::string before = ReadFileBytes(path);
  refused(s.Compact());
  // Compact refused before it moved anything: only the live control page
  // may differ.
  const std::string after = ReadFileBytes(path);
  REQUIRE(after.size() == before.size());
  CHECK(after.compare(0, 8192, before, 0, 8192) == 0);
  CHECK(after.compare(12288, std::string::npos, before, 12288, std::string::npos) == 0);
  std::string got;
  REQUIRE(s.Get("damaged", &got).ok());
  CHECK(got == damaged);  // still there, still damaged, still found by Check
  CheckReport report;
  REQUIRE(s.Check(&report).ok());
  CHECK(report.problems.size() == 1);
  CHECK(s.size() == 101);
}

// The last close compacts the file's tail. A damaged record there stays
// where it is; the other records move, the close checkpoints and cuts as
// usual, and then says what it found.
TEST_CASE("store: a close that finds a damaged record while it compacts the tail still checkpoints, then reports it") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string marker = "unique marker 4be1d0 ";
  Model model;
  {
    Options keep;
    keep.checkpoint_on_close = false;  // no compaction at this close
    Store s = MustOpen(path, keep);
    for (int i = 0; i < 20000; ++i) {
      REQUIRE(s.Put(Key16(i), std::string(100, 'x')).ok());
      // Below the top: the file can still be cut above it.
      if (i == 17000) REQUIRE(s.Put("damaged", marker + std::string(100, 'd')).ok());
    }
    for (int i = 0; i < 15000; ++i) REQUIRE(s.Erase(Key16(i)).ok());
    for (int i = 15000; i < 20000; ++i) model[Key16(i)] = std::string(100, 'x');
    REQUIRE(s.Flush(FlushMode::kSync).ok());  // the erased records' space is free now
    REQUIRE(s.Close().ok());
  }
  FlipByteOf(path, marker, 30, 0x01);
  const uint64_t size_before = FileSize(path);
  uint64_t generation_before = 0;
  {
    Store s = MustOpen(path);
    Stats stats;
    REQUIRE(s.GetStats(&stats).ok());
    generation_before = stats.checkpoint_generation;
    const Status st = s.Close();
    CHECK(st.code() == Code::kCorruption);
    CHECK(st.message().find("checksum") != std::string::npos);
  }
  CHECK(FileSize(path) < size_before);  // the other records moved down and the file was cut
  Options read_only;
  read_only.read_only = true;
  Store s = MustOpen(path, read_only);
  Stats stats;
  REQUIRE(s.GetStats(&stats).ok());
  CHECK(stats.checkpoint_generation > generation_before);  // the close checkpointed all the same
  CheckReport report;
  REQUIRE(s.Check(&report).ok());
  CHECK(report.problems.size() == 1);
  std::string got;
  for (const auto& [k, v] : model) {
    REQUIRE(s.Get(k, &got).ok());
    CHECK(got == v);
  }
  CHECK(s.size() == model.size() + 1);
}

// A record whose size field was damaged claims the records after it. A put
// over it (not in place) and an erase freed that claim, and the next
// checkpoint handed those records' space out again: a review lost 21 of 200
// neighbours this way with the CLI. A put in place of a value of the
// damaged size wrote past the record into its neighbours. Each now refuses
// the damaged record (and its write is rolled back).
TEST_CASE("store: a put or erase over a record with a damaged size refuses it and frees nothing") {
  using namespace internal::format;  // NOLINT
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string victim = "victim";
  const std::string marker = "vict-b3";  // the victim's value: 7 bytes, unique in the file
  Model model;
  {
    Options keep;
    keep.checkpoint_on_close = false;  // the victim stays a record of this checkpoint epoch (in place)
    Store s = MustOpen(path, keep);
    REQUIRE(s.Put(victim, marker).ok());
    for (int i = 0; i < 200; ++i) {
      model["n" + std::to_string(i)] = std::string(120, static_cast<char>('a' + i % 26));
      REQUIRE(s.Put("n" + std::to_string(i), model["n" + std::to_string(i)]).ok());
    }
  }
  const std::string image = ReadFileBytes(path);
  const size_t at = image.find(marker);
  REQUIRE(at != std::string::npos);
  REQUIRE(image.find(marker, at + 1) == std::string::npos);
  const size_t header = at - victim.size() - kRecordHeaderSize;
  struct Case {
    const char* what;
    uint32_t damaged_size;
    bool erase;
    size_t value_size;
  };
  for (const Case& c : {Case{"erase", 3000, true, 0}, Case{"put of a new size", 3000, false, 10},
                        Case{"put in place, of the damaged size", 200, false, 200}}) {
    const std::string what = c.what;
    CAPTURE(what);
    std::string bytes = image;
    std::memcpy(bytes.data() + header, &c.damaged_size, 4);
    WriteFileBytes(path, bytes);
    Options keep;
    keep.checkpoint_on_close = false;
    {
      Store s = MustOpen(path, keep);
      if (c.value_size == c.damaged_size) {
        // An in-place rewrite of another key first: the handle then looks
        // up before it writes, and rewrites the victim where it is.
        REQUIRE(s.Put("n0", model["n0"]).ok());
      }
      const Status st = c.erase ? s.Erase(victim) : s.Put(victim, std::string(c.value_size, 'w'));
      CHECK(st.code() == Code::kCorruption);
      CHECK_MESSAGE(st.message().find("fails its checksum") != std::string::npos, st.ToString());
      REQUIRE(s.Flush(FlushMode::kSync).ok());  // a checkpoint: what was freed could be reused now
      for (int i = 0; i < 60; ++i) REQUIRE(s.Put("new" + std::to_string(i), std::string(100, 'z')).ok());
      std::string v;
      for (const auto& [k, want] : model) {
        REQUIRE(s.Get(k, &v).ok());
        CHECK(v == want);
      }
    }
    Options read_only;
    read_only.read_only = true;
    Store s = MustOpen(path, read_only);
    CheckReport report;
    REQUIRE(s.Check(&report).ok());
    for (const std::string& p : report.problems) {
      // The victim's damage (its claim over its neighbours, and its size in
      // the sum of record sizes), and nothing else.
      CHECK_MESSAGE((p.find("checksum") != std::string::npos || p.find("overlaps") != std::string::npos ||
                     p.find("records take") != std::string::npos),
                    p);
    }
  }
}

// Copies the table slot of `key` (whose value contains the unique string
// `marker`) into the next slot, which must be empty: two slots then point at
// one record (in Robin Hood order, one further from home). Returns false
// when the next slot is taken.
bool ShareRecordWithNextSlot(const std::string& path, const std::string& key, const std::string& marker) {
  using namespace internal::format;  // NOLINT
  std::string image = ReadFileBytes(path);
  const auto* ctl = reinterpret_cast<const ControlPage*>(image.data() + kControlOffset);
  const uint64_t slots = uint64_t{1} << ctl->table_shift.load();
  const uint64_t pagemap = ctl->pagemap_offset.load();
  const size_t at = image.find(marker);
  REQUIRE(at != std::string::npos);
  const uint64_t granule = (at - key.size() - kRecordHeaderSize) / kGranule;
  auto slot_offset = [&](uint64_t i) {
    uint32_t phys = 0;
    std::memcpy(&phys, image.data() + pagemap + (i >> kSlotsPerPageShift) * 4, 4);
    return phys * kPageSize + (i & (kSlotsPerPage - 1)) * 8;
  };
  for (uint64_t i = 0; i < slots; ++i) {
    uint64_t slot = 0, next = 0;
    std::memcpy(&slot, image.data() + slot_offset(i), 8);
    if (slot == 0 || SlotGranule(slot) != granule) continue;
    std::memcpy(&next, image.data() + slot_offset((i + 1) & (slots - 1)), 8);
    if (next != 0) return false;
    std::memcpy(image.data() + slot_offset((i + 1) & (slots - 1)), &slot, 8);
    WriteFileBytes(path, image);
    return true;
  }
  FAIL("no slot points at the record of " << key);
  return false;
}

// Two slots pointing at one record is damage Check reports. Compact and the
// close's tail compaction copied the record once for each, so the key was
// stored twice, a del took one and the other came back, and Check no
// longer saw the overlap.
TEST_CASE("store: Compact and the close's tail compaction refuse two slots that point at one record") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Model model;
  std::string shared_key;
  const std::string marker = "unique marker 7c20ab ";
  Options keep;
  keep.checkpoint_on_close = false;  // no compaction at these closes
  {
    Store s = MustOpen(path, keep);
    for (int i = 0; i < 20000; ++i) REQUIRE(s.Put(Key16(i), std::string(100, 'x')).ok());
    for (int i = 0; i < 15000; ++i) REQUIRE(s.Erase(Key16(i)).ok());
    for (int i = 15000; i < 20000; ++i) model[Key16(i)] = std::string(100, 'x');
    REQUIRE(s.Flush(FlushMode::kSync).ok());  // the erased records' space is free now
    REQUIRE(s.Close().ok());
  }
  {
    // In a handle of their own, so that they go to the top of the heap (the
    // first handle would put them in the space its table's growth freed),
    // among the records the tail compaction moves.
    Store s = MustOpen(path, keep);
    for (int i = 15500; i < 20000; i += 1000) {
      REQUIRE(s.Put("shared" + std::to_string(i), marker + std::to_string(i) + "|").ok());
    }
    REQUIRE(s.Close().ok());
  }
  // One of the "shared" keys whose next slot is empty.
  for (int i = 15500; i < 20000 && shared_key.empty(); i += 1000) {
    const std::string key = "shared" + std::to_string(i);
    if (ShareRecordWithNextSlot(path, key, marker + std::to_string(i) + "|")) shared_key = key;
  }
  REQUIRE_MESSAGE(!shared_key.empty(), "every shared key's next slot was taken");
  {
    Store s = MustOpen(path);
    const Status st = s.Compact();
    CHECK(st.code() == Code::kCorruption);
    CHECK_MESSAGE(st.message().find("overlaps another slot's record") != std::string::npos, st.ToString());
    const Status closed = s.Close();  // the tail compaction
    CHECK(closed.code() == Code::kCorruption);
    CHECK_MESSAGE(closed.message().find("and another point at the record") != std::string::npos, closed.ToString());
  }
  Options read_only;
  read_only.read_only = true;
  Store s = MustOpen(path, read_only);
  std::string got;
  for (const auto& [k, v] : model) {
    REQUIRE(s.Get(k, &got).ok());
    CHECK(got == v);
  }
  // The record was not copied: the key is still in one place only.
  CHECK(ReadFileBytes(path).find(marker + shared_key.substr(6) + "|") ==
        ReadFileBytes(path).rfind(marker + shared_key.substr(6) + "|"));
  CheckReport report;
  REQUIRE(s.Check(&report).ok());
  CHECK_MESSAGE(ProblemsText(report).find("overlaps another structure") != std::string::npos, ProblemsText(report));
}

// A slot whose offset bits were damaged so that it points at another key's
// record: a walk would give that key twice and the slot's own never (a dump
// made as a backup would be silently incomplete). ForEach checks each
// record's key against the slot's tag.
TEST_CASE("store: a walk refuses a table slot that points at another key's record") {
  using namespace internal::format;  // NOLINT
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  const std::string va = "the value of a, unique: 60b1f7";
  const std::string vb = "the value of b, unique: 93e2c4";
  {
    Store s = MustOpen(path);
    REQUIRE(s.Put("a", va).ok());
    REQUIRE(s.Put("b", vb).ok());
    REQUIRE(s.Put("c", "c").ok());
  }
  std::string image = ReadFileBytes(path);
  MetaPage m0, m1;
  std::memcpy(&m0, image.data() + kMetaOffset[0], sizeof m0);
  std::memcpy(&m1, image.data() + kMetaOffset[1], sizeof m1);
  const uint64_t seed = (m0.magic == kMetaMagic && m0.generation > m1.generation) ? m0.hash_seed : m1.hash_seed;
  // A record starts kRecordHeaderSize + key bytes before its value.
  const size_t at_a = image.find(va), at_b = image.find(vb);
  REQUIRE(at_a != std::string::npos);
  REQUIRE(at_b != std::string::npos);
  const uint64_t granule_a = (at_a - kRecordHeaderSize - 1) / kGranule;
  const uint64_t granule_b = (at_b - kRecordHeaderSize - 1) / kGranule;
  const uint64_t tag_a = HashTag(XXH3_64bits_withSeed("a", 1, seed));
  const uint64_t slot_a = tag_a << kOffsetBits | granule_a;
  size_t slot_at = std::string::npos;
  for (size_t off = kHeapOffset; off + 8 <= image.size(); off += 8) {
    uint64_t w;
    std::memcpy(&w, image.data() + off, 8);
    if (w == slot_a) {
      REQUIRE(slot_at == std::string::npos);  // one slot holds it
      slot_at = off;
    }
  }
  REQUIRE(slot_at != std::string::npos);
  const uint64_t damaged = tag_a << kOffsetBits | granule_b;
  std::memcpy(image.data() + slot_at, &damaged, 8);
  WriteFileBytes(path, image);

  Options read_only;
  read_only.read_only = true;
  Store s = MustOpen(path, read_only);
  Model seen;
  const Status st = s.ForEach("", [&](std::string_view k, std::string_view v) {
    seen[std::string(k)] = std::string(v);
    return true;
  });
  CHECK(st.code() == Code::kCorruption);
  CHECK(st.message().find("table slot") != std::string::npos);
  CheckReport report;
  REQUIRE(s.Check(&report).ok());
  CHECK_FALSE(report.ok());
}

// Slot 0's predecessor is the last slot: an entry there whose home is near
// the end, after an empty last slot, is out of order, and no lookup reaches
// it. Check skipped slot 0 and said ok.
TEST_CASE("store: Check finds an entry in slot 0 that no lookup reaches (its home is the last slot)") {
  using namespace internal::format;  // NOLINT
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  { Store created = MustOpen(path); }  // empty: the key below is its only entry
  uint64_t shift = 0, seed = 0, pagemap = 0;
  {
    const ControlView ctl(path);
    shift = ctl->table_shift.load();
    seed = ctl->hash_seed;
  }
  const uint64_t last = (uint64_t{1} << shift) - 1;
  std::string key;
  for (int j = 0; key.empty(); ++j) {
    const std::string k = "k" + std::to_string(j);
    if (XXH3_64bits_withSeed(k.data(), k.size(), seed) >> (64 - shift) == last) key = k;
  }
  {
    Store store = MustOpen(path);
    REQUIRE(store.Put(key, "v").ok());
    REQUIRE(store.Close().ok());
  }
  std::string bytes = ReadFileBytes(path);
  {
    const ControlView ctl(path);
    REQUIRE(ctl->table_shift.load() == shift);
    pagemap = ctl->pagemap_offset.load();
  }
  auto slot_offset = [&](uint64_t i) {
    uint32_t phys = 0;
    std::memcpy(&phys, bytes.data() + pagemap + (i >> kSlotsPerPageShift) * 4, 4);
    return phys * kPageSize + (i & (kSlotsPerPage - 1)) * 8;
  };
  uint64_t at_last = 0, at_zero = 0;
  std::memcpy(&at_last, bytes.data() + slot_offset(last), 8);
  std::memcpy(&at_zero, bytes.data() + slot_offset(0), 8);
  REQUIRE(at_last != 0);  // the key, at its home
  REQUIRE(at_zero == 0);
  std::memcpy(bytes.data() + slot_offset(0), &at_last, 8);
  std::memcpy(bytes.data() + slot_offset(last), &at_zero, 8);
  WriteFileBytes(path, bytes);
  Options read_only;
  read_only.read_only = true;
  Store store = MustOpen(path, read_only);
  std::string v;
  CHECK(store.Get(key, &v).IsNotFound());  // what the damage does
  CheckReport report;
  REQUIRE(store.Check(&report).ok());
  CHECK_FALSE(report.ok());
  CHECK_MESSAGE(ProblemsText(report).find("slot 0: entry out of Robin Hood order") != std::string::npos,
                ProblemsText(report));
}

// A get probes the home slot's table page on its fast path and leaves a
// probe that runs on into the next page to the full lookup. This finds,
// in the file, entries stored past the end of their home page and absent
// keys whose probe must go on into the next page, and reads both.
TEST_CASE("store: a probe that runs past its home slot's table page finds present keys and not absent ones") {
  using namespace internal::format;  // NOLINT
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  constexpr int kKeys = 100000;
  {
    Store store = MustOpen(path);
    for (int i = 0; i < kKeys; ++i) REQUIRE(store.Put("k" + std::to_string(i), "v" + std::to_string(i)).ok());
    REQUIRE(store.Close().ok());
  }
  const std::string bytes = ReadFileBytes(path);
  REQUIRE(bytes.size() >= kControlOffset + sizeof(ControlPage));
  alignas(ControlPage) unsigned char ctl_bytes[sizeof(ControlPage)];
  std::memcpy(ctl_bytes, bytes.data() + kControlOffset, sizeof ctl_bytes);
  const ControlPage* ctl = reinterpret_cast<const ControlPage*>(ctl_bytes);
  const uint64_t shift = ctl->table_shift.load();
  const uint64_t pagemap = ctl->pagemap_offset.load();
  const uint64_t seed = ctl->hash_seed;
  REQUIRE(shift >= kMinTableShift + 1);  // more than one page
  REQUIRE(shift <= kTagBits);            // the tag gives an entry's home
  auto load = [&](uint64_t off, auto zero) {
    REQUIRE(off + sizeof zero <= bytes.size());
    std::memcpy(&zero, bytes.data() + off, sizeof zero);
    return zero;
  };
  auto slot_at = [&](uint64_t i) {
    const uint64_t phys = load(pagemap + (i >> kSlotsPerPageShift) * 4, uint32_t{0});
    return load(phys * kPageSize + (i & (kSlotsPerPage - 1)) * 8, uint64_t{0});
  };

  std::vector<std::string> crossing;  // keys stored in a page after their home slot's
  for (uint64_t i = 0; i < (uint64_t{1} << shift); ++i) {
    const uint64_t slot = slot_at(i);
    if (slot == 0) continue;
    const uint64_t home = SlotTag(slot) >> (kTagBits - shift);
    if ((home >> kSlotsPerPageShift) == (i >> kSlotsPerPageShift)) continue;
    const uint64_t rec = SlotGranule(slot) << kGranuleShift;
    const uint64_t key_size = uint64_t{load(rec + 4, uint16_t{0})} + 1;
    REQUIRE(rec + kRecordHeaderSize + key_size <= bytes.size());
    crossing.emplace_back(bytes.data() + rec + kRecordHeaderSize, key_size);
  }
  INFO("table of 2^", shift, " slots");
  REQUIRE_MESSAGE(crossing.size() >= 10, "too few entries past their home page to test the fallback");

  std::vector<std::string> absent;  // absent keys whose probe must leave the home page
  for (int j = 0; absent.size() < 50 && j < 10000000; ++j) {
    const std::string key = "absent" + std::to_string(j);
    const uint64_t home = XXH3_64bits_withSeed(key.data(), key.size(), seed) >> (64 - shift);
    if ((home & (kSlotsPerPage - 1)) == kSlotsPerPage - 1 && slot_at(home) != 0) absent.push_back(key);
  }
  REQUIRE(absent.size() == 50);

  Store store = MustOpen(path);
  std::string v;
  bool found = false;
  for (const std::string& key : crossing) {
    CAPTURE(key);
    REQUIRE(store.Get(key, &v).ok());
    CHECK(v == "v" + key.substr(1));
    REQUIRE(store.Contains(key, &found).ok());
    CHECK(found);
  }
  for (const std::string& key : absent) {
    CAPTURE(key);
    CHECK(store.Get(key, &v).IsNotFound());
    REQUIRE(store.Contains(key, &found).ok());
    CHECK_FALSE(found);
  }
}

// Put writes a new record before it looks the key up unless the put before
// it found a record it could rewrite in place; then it looks up first and
// rewrites in place. Watched through the file: the value's bytes stay at
// one offset once the overwrites of one key run in place.
TEST_CASE("store: repeated same-size puts of one key are rewritten in place after the first") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store store = MustOpen(path);
  auto value = [](char c) { return std::string(40, c); };
  auto offset_of = [&](char c) {
    const std::string bytes = ReadFileBytes(path);  // the mapping's pages, through the page cache
    const size_t at = bytes.find(value(c));
    REQUIRE(at != std::string::npos);
    CHECK(bytes.find(value(c), at + 1) == std::string::npos);
    return at;
  };
  REQUIRE(store.Put("other", "x").ok());  // a new key: the next put writes first
  REQUIRE(store.Put("k", value('A')).ok());
  REQUIRE(store.Put("k", value('B')).ok());  // a new record; it finds A could have been rewritten
  const size_t b = offset_of('B');
  REQUIRE(store.Put("k", value('C')).ok());  // looks up first: in place
  CHECK(offset_of('C') == b);
  REQUIRE(store.Put("k", value('D')).ok());
  CHECK(offset_of('D') == b);
  std::string v;
  REQUIRE(store.Get("k", &v).ok());
  CHECK(v == value('D'));
  REQUIRE(store.Put("k", value('E') + "longer").ok());  // another size: a new record
  REQUIRE(store.Get("k", &v).ok());
  CHECK(v == value('E') + "longer");
  CheckClean(store);
}

}  // namespace
}  // namespace mapkv::test
