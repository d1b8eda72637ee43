// oom_test.cc: memory running out in the middle of a write.
//
// The engine returns a Status for everything it can foresee, but a container
// that grows or a message it builds can throw std::bad_alloc. Such a write
// must be undone like a failed one, the exception must reach the caller, and
// the handle's write lock must be given back.
//
// This file replaces the global operator new of the test binary: with
// g_allocations_left at -1 (always, outside these tests) it is malloc; set
// to n >= 0, the calling thread's (n+1)th allocation from then on throws
// std::bad_alloc.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "store_test_helpers.h"

namespace {
// Per thread: only the test's own calls fail, never an allocation of a
// thread the engine runs (which would end the process, as nothing there
// catches).
thread_local long g_allocations_left = -1;
}  // namespace

void* operator new(std::size_t n) {
  if (g_allocations_left >= 0 && g_allocations_left-- == 0) throw std::bad_alloc();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// GCC inlines these into the allocators of this file and then takes the
// free() for one of a pointer from new, which here is malloc's.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace mapkv::test {
namespace {

// Runs `open` with the nth allocation failing, for n = 0, 1, 2, ... until
// an open goes through; after each one that threw, runs `after_throw(n)`.
// Returns how many threw.
template <typename Open, typename AfterThrow>
int CountDownOpens(Open&& open, AfterThrow&& after_throw) {
  int thrown = 0;
  for (long n = 0; n < 100000; ++n) {
    CAPTURE(n);
    bool threw = false;
    Status s;
    Store store;
    g_allocations_left = n;
    try {
      s = open(&store);
    } catch (const std::bad_alloc&) {
      threw = true;
    }
    g_allocations_left = -1;
    if (!threw) {
      REQUIRE_MESSAGE(s.ok(), s.ToString());
      REQUIRE(store.Close().ok());
      return thrown;
    }
    ++thrown;
    after_throw(n);
  }
  FAIL("no open went through in 100000 tries");
  return thrown;
}

// The names in `dir` other than `keep`, sorted, each followed by a space.
std::string OtherFiles(const std::string& dir, const std::string& keep) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string() != keep) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  std::string text;
  for (const std::string& name : names) text += name + " ";
  return text;
}

TEST_SUITE("oom") {
  // A batch is tried with the nth allocation inside it failing, for growing
  // n, until one goes through whole. Each failed try must leave the store as
  // it was, and the next write of the same thread must work.
  TEST_CASE("oom: a write that runs out of memory is undone, throws, and gives the write lock back") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Options options;
    options.initial_capacity = 1000;  // the batch rebuilds the table (a resize inside the write)
    Store store = MustOpen(path, options);
    Model model;
    for (int i = 0; i < 2000; ++i) {
      const std::string k = Key16(static_cast<uint64_t>(i));
      REQUIRE(store.Put(k, "v0-" + std::to_string(i)).ok());
      model[k] = "v0-" + std::to_string(i);
    }
    // Checkpointed: the batch copies table pages before it changes them and
    // defers the frees of the records it replaces (both kept in containers).
    REQUIRE(store.Flush(FlushMode::kSync).ok());

    WriteBatch batch;
    Model after = model;
    for (int i = 0; i < 6000; ++i) {
      const std::string k = Key16(static_cast<uint64_t>(i));
      if (i % 10 == 3) {
        batch.Erase(k);
        after.erase(k);
      } else {
        batch.Put(k, "v1-" + std::to_string(i) + std::string(static_cast<size_t>(i % 50), 'x'));
        after[k] = "v1-" + std::to_string(i) + std::string(static_cast<size_t>(i % 50), 'x');
      }
    }

    int thrown = 0;
    bool applied = false;
    for (long n = 0; n < 100000 && !applied; n = n < 16 ? n + 1 : n * 2) {
      CAPTURE(n);
      Status s;
      bool threw = false;
      g_allocations_left = n;
      try {
        s = store.Write(batch);
      } catch (const std::bad_alloc&) {
        threw = true;
      }
      g_allocations_left = -1;
      if (!threw) {
        REQUIRE_MESSAGE(s.ok(), s.ToString());
        applied = true;
        break;
      }
      ++thrown;
      {
        // Undone at once, not left for the next writer to recover: no undo
        // log, no write in progress for readers.
        ControlView ctl(path);
        CHECK(ctl->undo_count.load() == 0);
        CHECK((ctl->seq.load() & 1) == 0);
      }
      // The store is as before the batch, and sound.
      REQUIRE(Dump(store) == model);
      CheckClean(store);
      // The lock came back: a second handle writes, and so does this thread
      // (kUnsafeUse if the thrown write had kept the lock). This put, right
      // before the next try, leaves the lock kept by this handle (sticky),
      // so that the try's allocations are the write's own, not those of
      // taking the lock over.
      Store other = MustOpen(path);
      REQUIRE(other.Put("probe2", std::to_string(n)).ok());
      model["probe2"] = std::to_string(n);
      after["probe2"] = std::to_string(n);
      REQUIRE(other.Close().ok());
      REQUIRE(store.Put("probe", std::to_string(n)).ok());
      model["probe"] = std::to_string(n);
      after["probe"] = std::to_string(n);
    }
    MESSAGE(thrown << " tries ran out of memory inside the batch before one went through");
    CHECK(thrown > 0);
    REQUIRE(applied);
    CHECK(Dump(store) == after);
    CheckClean(store);
    REQUIRE(store.Close().ok());
    Store again = MustOpen(path);
    CHECK(Dump(again) == after);
  }

  TEST_CASE("oom: single puts and erases that run out of memory leave the store and its lock usable") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Store store = MustOpen(path);
    Model model;
    for (int i = 0; i < 500; ++i) {
      REQUIRE(store.Put(Key16(static_cast<uint64_t>(i)), "v").ok());
      model[Key16(static_cast<uint64_t>(i))] = "v";
    }
    REQUIRE(store.Flush(FlushMode::kSync).ok());
    int thrown = 0;
    for (int i = 0; i < 3000; ++i) {
      const std::string k = Key16(static_cast<uint64_t>(i % 700));
      const bool erase = i % 4 == 1;
      const std::string v = "w" + std::to_string(i);
      Status s;
      bool threw = false;
      g_allocations_left = i % 3;
      try {
        s = erase ? store.Erase(k) : store.Put(k, v);
      } catch (const std::bad_alloc&) {
        threw = true;
      }
      g_allocations_left = -1;
      if (threw) {
        ++thrown;
        ControlView ctl(path);  // undone at once (as in the batch case above)
        CHECK(ctl->undo_count.load() == 0);
        CHECK((ctl->seq.load() & 1) == 0);
      } else if (erase) {
        REQUIRE((s.ok() || s.IsNotFound()));
        model.erase(k);
      } else {
        REQUIRE_MESSAGE(s.ok(), s.ToString());
        model[k] = v;
      }
      if (i % 100 == 0) REQUIRE(Dump(store) == model);
    }
    MESSAGE(thrown << " of 3000 writes ran out of memory");
    CHECK(thrown > 0);
    CHECK(Dump(store) == model);
    CheckClean(store);
    REQUIRE(store.Close().ok());
    Store again = MustOpen(path);
    CHECK(Dump(again) == model);
  }

  TEST_CASE("oom: a WriteBatch that runs out of memory while it copies an op is left as it was") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Put("gone", "x").ok());
    WriteBatch batch;
    batch.Put("a", "1");
    batch.Erase("gone");
    Model expect{{"a", "1"}};
    int thrown = 0;
    // Values long enough that appending them reallocates the batch's bytes.
    for (int i = 0; i < 40; ++i) {
      const std::string key = "b" + std::to_string(i);
      const std::string value(size_t{1000} << (i % 12), static_cast<char>('a' + i % 26));
      const size_t count = batch.Count();
      const size_t bytes = batch.ByteSize();
      bool threw = false;
      g_allocations_left = i % 2;
      try {
        if (i % 3 == 2) {
          batch.Erase(std::string(value.size() % 60000 + 1, 'e'));  // a key that is not there
        } else {
          batch.Put(key, value);
        }
      } catch (const std::bad_alloc&) {
        threw = true;
      }
      g_allocations_left = -1;
      if (threw) {
        ++thrown;
        CHECK(batch.Count() == count);
        CHECK(batch.ByteSize() == bytes);
      } else if (i % 3 != 2) {
        expect[key] = value;
      }
    }
    MESSAGE(thrown << " of 40 ops ran out of memory");
    CHECK(thrown > 0);
    // The ops that went in are whole, and Write applies exactly them. (Before
    // the fix an op that pointed past the batch's bytes made Write read out
    // of bounds, which AddressSanitizer reports, or store another op's bytes.)
    REQUIRE(store.Write(batch).ok());
    CHECK(Dump(store) == expect);
  }

  // An open allocates (names, messages, the handle's parts) before, while and
  // after it builds, maps and recovers a store. Out of memory at any of those
  // points must leave no half-made file and nothing that the next open
  // takes for damage.
  TEST_CASE("oom: creating a store that runs out of memory leaves no file behind or a whole store") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const int thrown = CountDownOpens([&](Store* store) { return Store::Open(path, Options{}, store); },
                                      [&](long) {
                                        // No temporary file left over; the
                                        // store either does not exist or
                                        // opens and is sound.
                                        CHECK(OtherFiles(dir.path(), "s.mkv") == "");
                                        if (std::filesystem::exists(path)) {
                                          Store again = MustOpen(path);
                                          CheckClean(again);
                                          REQUIRE(again.Close().ok());
                                          std::filesystem::remove(path);
                                        }
                                      });
    MESSAGE(thrown << " creations ran out of memory before one went through");
    CHECK(thrown > 0);
  }

  TEST_CASE("oom: creating a named store that runs out of memory leaves it empty or whole") {
    static std::atomic<int> counter{0};
    const std::string name =
        "shm:mapkv-oom-" + std::to_string(internal::ProcessId()) + "-" + std::to_string(counter.fetch_add(1));
    Store::RemoveShared(name).IgnoreError();
    Options options;
    options.initial_capacity = 5000;
    const int thrown = CountDownOpens([&](Store* store) { return Store::Open(name, options, store); },
                                      [&](long) {
                                        // The next open finds the store new
                                        // (empty, initialized by it) or
                                        // whole, never half built.
                                        Store again;
                                        Status s = Store::Open(name, options, &again);
                                        REQUIRE_MESSAGE(s.ok(), s.ToString());
                                        CheckClean(again);
                                        REQUIRE(again.Put("k", "v").ok());
                                        REQUIRE(again.Close().ok());
                                        REQUIRE(Store::RemoveShared(name).ok());
                                      });
    REQUIRE(Store::RemoveShared(name).ok());
    MESSAGE(thrown << " creations ran out of memory before one went through");
    CHECK(thrown > 0);
  }

  TEST_CASE("oom: opening a store after a reboot that runs out of memory leaves it to the next open") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const std::string cut = dir.File("cut.mkv");
    Model model;
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 300; ++i) {
        REQUIRE(store.Put(Key16(static_cast<uint64_t>(i)), "v" + std::to_string(i)).ok());
        model[Key16(static_cast<uint64_t>(i))] = "v" + std::to_string(i);
      }
      REQUIRE(store.Flush(FlushMode::kSync).ok());
      // Changes after the checkpoint, which the "reboot" loses: the open
      // rebuilds the live state from the meta page, the allocation map
      // included (its checksum no longer matches).
      for (int i = 200; i < 300; ++i) REQUIRE(store.Erase(Key16(static_cast<uint64_t>(i))).ok());
      for (int i = 0; i < 50; ++i) REQUIRE(store.Put(Key16(static_cast<uint64_t>(i)), "lost").ok());
      // The file as a power cut would leave it, after the OS wrote it all.
      WriteFileBytes(cut, ReadFileBytes(path));
      REQUIRE(store.Close().ok());
    }
    BootIdGuard reboot(7);
    const int thrown = CountDownOpens([&](Store* store) { return Store::Open(cut, Options{}, store); },
                                      [&](long) {
                                        // What the open left opens (a
                                        // copy, so that the next try
                                        // starts from the same file) and
                                        // holds the checkpoint.
                                        const std::string copy = dir.File("copy.mkv");
                                        WriteFileBytes(copy, ReadFileBytes(cut));
                                        {
                                          Store again = MustOpen(copy);
                                          CHECK(Dump(again) == model);
                                        }
                                        std::filesystem::remove(copy);
                                        CHECK(OtherFiles(dir.path(), "s.mkv") == "cut.mkv ");
                                      });
    MESSAGE(thrown << " opens ran out of memory before one went through");
    CHECK(thrown > 0);
    Store again = MustOpen(cut);
    CHECK(Dump(again) == model);
    CheckClean(again);
  }
}

}  // namespace
}  // namespace mapkv::test
