// platform_test.cc: conformance tests of the platform interface
// (engine/src/platform/platform.h), run against the compiled backend.
#include "platform/platform.h"

#include "prefaulter.h"

#ifndef _WIN32
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace mapkv::internal {
namespace {

using mapkv::test::RegisterChild;
using mapkv::test::SpawnChild;
using mapkv::test::TempDir;
using mapkv::test::WaitChild;
using Clock = std::chrono::steady_clock;

constexpr FileSpec kCreate{.create = true};
constexpr FileSpec kOpenExisting{};

std::unique_ptr<File> MustOpen(const std::string& path, const FileSpec& spec) {
  std::unique_ptr<File> file;
  Status s = File::Open(path, spec, &file);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return file;
}

uint64_t SizeOf(File& file) {
  uint64_t size = 0;
  Status s = file.Size(&size);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return size;
}

std::string UniqueShmName(const char* tag) {
  static std::atomic<int> counter{0};
  return std::string("test-") + tag + "-" + std::to_string(ProcessId()) + "-" + std::to_string(counter.fetch_add(1));
}

// ---- Child processes ------------------------------------------------------
// Exit codes: 0 on success, a distinct small number per failed step.

#ifndef _WIN32  // RLIMIT_FSIZE and SIGXFSZ are POSIX
// args: path. Lowers the RLIMIT_FSIZE soft limit to 1 MiB, then grows past it.
// SIGXFSZ keeps its default action (terminate), so a missing limit check
// shows up as exit code 128+SIGXFSZ.
int FsizeChild(const std::vector<std::string>& args) {
  if (args.size() != 1) return 2;
  ::signal(SIGXFSZ, SIG_DFL);
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_FSIZE, &limit) != 0) return 3;
  limit.rlim_cur = 1 << 20;
  if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 4;
  std::unique_ptr<File> file;
  if (!File::Open(args[0], kCreate, &file).ok()) return 5;
  if (!file->Reserve(4096).ok()) return 6;
  Status s = file->Reserve(2 << 20);
  if (s.code() != Code::kNoSpace) return 7;
  if (s.message().find("RLIMIT_FSIZE") == std::string::npos) return 8;
  uint64_t size = 0;
  if (!file->Size(&size).ok() || size != 4096) return 9;
  if (file->Truncate(3 << 20).code() != Code::kNoSpace) return 10;
  if (!file->Reserve(1 << 20).ok()) return 11;  // exactly the limit is allowed
  return 0;
}

#endif

// args: path, offset, length. Holds an exclusive lock until killed.
int HoldLockChild(const std::vector<std::string>& args) {
  if (args.size() != 3) return 2;
  std::unique_ptr<File> file;
  if (!File::Open(args[0], kOpenExisting, &file).ok()) return 3;
  if (!file->Lock(std::stoull(args[1]), std::stoull(args[2]), LockMode::kExclusive).ok()) return 4;
  std::this_thread::sleep_for(std::chrono::seconds(30));  // the parent kills us long before
  return 5;
}

// args: path. The file holds two words: [0] the futex word, [1] a stop flag.
// Wakes word 0 every 5 ms, without changing it, until word 1 is set.
int WakerChild(const std::vector<std::string>& args) {
  if (args.size() != 1) return 2;
  std::unique_ptr<File> file;
  if (!File::Open(args[0], kOpenExisting, &file).ok()) return 3;
  std::unique_ptr<Mapping> map;
  if (!file->Map(4096, true, &map).ok()) return 4;
  auto* words = reinterpret_cast<std::atomic<uint32_t>*>(map->data());
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (words[1].load() == 0) {
    if (Clock::now() > deadline) return 5;
    file->WakeWord(&words[0], 0, 0);  // no change: wakes waiters of the current value
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return 0;
}

[[maybe_unused]] const bool kChildrenRegistered = [] {
  bool ok = true;
#ifndef _WIN32
  ok &= RegisterChild("platform.fsize", FsizeChild);
#endif
  ok &= RegisterChild("platform.hold_lock", HoldLockChild);
  ok &= RegisterChild("platform.waker", WakerChild);
  // args: path. Sets word 0 of the file to 1 after 100 ms and wakes it.
  ok &= RegisterChild("platform.changer", [](const std::vector<std::string>& args) {
    std::unique_ptr<File> file;
    if (args.size() != 1 || !File::Open(args[0], kOpenExisting, &file).ok()) return 2;
    std::unique_ptr<Mapping> map;
    if (!file->Map(4096, true, &map).ok()) return 3;
    auto* words = reinterpret_cast<std::atomic<uint32_t>*>(map->data());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const uint32_t before = words[0].exchange(1);
    file->WakeWord(&words[0], 0, before);
    return 0;
  });
  // args: the parent's ProcessId(). Exits 0 when this process's differs.
  ok &= RegisterChild("platform.pid_differs", [](const std::vector<std::string>& args) {
    return args.size() == 1 && std::to_string(ProcessId()) != args[0] ? 0 : 1;
  });
  return ok;
}();

#ifdef _WIN32
// RemoveShared of a store that is still open is Busy on Windows.
bool RemoveShared_Busy(const std::string& name) {
  Status s = File::RemoveShared(name);
  return s.code() == Code::kBusy && s.message().find("still open") != std::string::npos;
}
#endif

// ---- Open -----------------------------------------------------------------

TEST_SUITE("platform") {
  TEST_CASE("open of a missing file without create is NotFound") {
    TempDir dir;
    std::unique_ptr<File> file;
    Status s = File::Open(dir.File("missing"), kOpenExisting, &file);
    CHECK(s.code() == Code::kNotFound);
    CHECK(s.message().find(dir.File("missing")) != std::string::npos);
    CHECK(file == nullptr);
  }

  TEST_CASE("create+exclusive on an existing file is InvalidArgument") {
    TempDir dir;
    const FileSpec spec{.create = true, .exclusive = true};
    std::unique_ptr<File> first;
    REQUIRE(File::Open(dir.File("f"), spec, &first).ok());
    CHECK(first->path() == dir.File("f"));
    CHECK_FALSE(first->read_only());
    std::unique_ptr<File> second;
    Status s = File::Open(dir.File("f"), spec, &second);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find("already exists") != std::string::npos);
    // Without exclusive the same file opens.
    CHECK(File::Open(dir.File("f"), kCreate, &second).ok());
  }

  // A store's creation syncs its directory (the new name must survive a
  // power cut); a missing directory is an error that names it.
  TEST_CASE("SyncDirectoryOf syncs the directory of a path, and names a missing one") {
    TempDir dir;
    CHECK(SyncDirectoryOf(dir.File("any")).ok());
#ifndef _WIN32
    const Status s = SyncDirectoryOf(dir.File("missing/any"));
    CHECK(s.code() == Code::kNotFound);
    CHECK_MESSAGE(s.message().find(dir.File("missing")) != std::string::npos, s.ToString());
#endif
  }

  TEST_CASE("a directory is InvalidArgument") {
    TempDir dir;
    std::unique_ptr<File> file;
    const FileSpec read_only{.read_only = true};
    Status s = File::Open(dir.path(), read_only, &file);
    CHECK(s.code() == Code::kInvalidArgument);
    s = File::Open(dir.path(), kOpenExisting, &file);  // O_RDWR on a directory: EISDIR
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(file == nullptr);
  }

  // A read-only handle tells a dead waiter's count from a live one's by
  // whether anybody holds the waiter byte (LockManager::WaiterCountsStale).
  TEST_CASE("LockedByOthers sees another handle's lock and takes none, also on a read-only handle") {
    TempDir dir;
    std::unique_ptr<File> a = MustOpen(dir.File("f"), kCreate);
    REQUIRE(a->Reserve(4096).ok());
    for (const bool read_only : {true, false}) {
      CAPTURE(read_only);
      std::unique_ptr<File> b = MustOpen(dir.File("f"), FileSpec{.read_only = read_only});
      bool held = true;
      REQUIRE(b->LockedByOthers(2, 1, &held).ok());
      CHECK_FALSE(held);
      for (const LockMode mode : {LockMode::kShared, LockMode::kExclusive}) {
        REQUIRE(a->Lock(2, 1, mode).ok());
        held = false;
        REQUIRE(b->LockedByOthers(2, 1, &held).ok());
        CHECK(held);
        REQUIRE(b->LockedByOthers(3, 1, &held).ok());
        CHECK_FALSE(held);  // the next byte
        REQUIRE(a->Unlock(2, 1).ok());
      }
      REQUIRE(b->LockedByOthers(2, 1, &held).ok());
      CHECK_FALSE(held);
      bool got = false;  // the probes took nothing
      REQUIRE(a->TryLock(2, 1, LockMode::kExclusive, &got).ok());
      CHECK(got);
      REQUIRE(a->Unlock(2, 1).ok());
    }
  }

  TEST_CASE("a read-only handle refuses writes and exclusive locks") {
    TempDir dir;
    MustOpen(dir.File("f"), kCreate);
    std::unique_ptr<File> file = MustOpen(dir.File("f"), FileSpec{.read_only = true});
    CHECK(file->read_only());
    CHECK(file->Reserve(4096).code() == Code::kPermissionDenied);
    CHECK(file->Truncate(4096).code() == Code::kPermissionDenied);
    std::unique_ptr<Mapping> map;
    CHECK(file->Map(4096, true, &map).code() == Code::kPermissionDenied);
    bool acquired = true;
    Status s = file->TryLock(0, 1, LockMode::kExclusive, &acquired);
    CHECK(s.code() == Code::kPermissionDenied);
    CHECK_FALSE(acquired);
    CHECK(file->Lock(0, 1, LockMode::kExclusive).code() == Code::kPermissionDenied);
    CHECK(file->TryLock(0, 1, LockMode::kShared, &acquired).ok());
    CHECK(acquired);
  }

  // ---- Size -----------------------------------------------------------------

  TEST_CASE("Reserve grows the file with zero bytes and never shrinks it") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    CHECK(SizeOf(*file) == 0);
    const uint64_t size = (1 << 20) + 123;
    REQUIRE(file->Reserve(size).ok());
    CHECK(SizeOf(*file) == size);
    const std::string bytes = mapkv::test::ReadFileBytes(dir.File("f"));
    REQUIRE(bytes.size() == size);
    CHECK(bytes.find_first_not_of('\0') == std::string::npos);
    REQUIRE(file->Reserve(4096).ok());
    CHECK(SizeOf(*file) == size);
    REQUIRE(file->Truncate(100).ok());
    CHECK(SizeOf(*file) == 100);
    CHECK(file->Sync().ok());
  }

#ifndef _WIN32  // RLIMIT_FSIZE is POSIX (listed in tests/CMakeLists.txt)
  TEST_CASE("Reserve past RLIMIT_FSIZE is NoSpace without SIGXFSZ") {
    TempDir dir;
    const int pid = SpawnChild("platform.fsize", {dir.File("f")});
    REQUIRE(pid > 0);
    CHECK(WaitChild(pid) == 0);  // 128+SIGXFSZ (153) if the signal was raised
  }

#endif

  // ---- Mappings -------------------------------------------------------------

#ifndef _WIN32  // POSIX maps past the end of a file; Windows cannot
  TEST_CASE("a mapping longer than the file becomes usable after Reserve") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    const uint64_t map_length = 1 << 20;
    std::unique_ptr<Mapping> map;
    REQUIRE(file->Map(map_length, true, &map).ok());
    CHECK(map->length() == map_length);
    REQUIRE(file->Reserve(64 << 10).ok());
    std::memcpy(map->data() + 5000, "hello", 5);
    map->data()[(64 << 10) - 1] = 0x5a;
    CHECK(map->Flush(5000, 5, /*sync=*/false).ok());  // unaligned offset
    CHECK(map->Flush(0, 64 << 10, /*sync=*/true).ok());
    CHECK(map->Flush(map_length + 1, 1, false).code() == Code::kInvalidArgument);

    const std::string bytes = mapkv::test::ReadFileBytes(dir.File("f"));
    REQUIRE(bytes.size() == (64 << 10));
    CHECK(bytes.substr(5000, 5) == "hello");
    CHECK(static_cast<uint8_t>(bytes.back()) == 0x5a);

    // A second, read-only mapping of another handle sees the same bytes.
    std::unique_ptr<File> reader = MustOpen(dir.File("f"), FileSpec{.read_only = true});
    std::unique_ptr<Mapping> view;
    REQUIRE(reader->Map(64 << 10, false, &view).ok());
    CHECK(std::memcmp(view->data() + 5000, "hello", 5) == 0);
    map->data()[10] = 7;
    CHECK(view->data()[10] == 7);
  }

#endif

#ifdef __linux__  // MADV_POPULATE_WRITE; elsewhere Prefault is a no-op
  // How many of the pages of [p, p + length) are mapped in this process: bit
  // 63 of each /proc/self/pagemap entry.
  uint64_t MappedPages(const uint8_t* p, uint64_t length) {
    const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    REQUIRE_MESSAGE(fd >= 0, "cannot read /proc/self/pagemap");
    std::vector<uint64_t> e(length / page);
    const uint64_t first = reinterpret_cast<uintptr_t>(p) / page;
    const auto want = static_cast<ssize_t>(e.size() * sizeof(uint64_t));
    const ssize_t got = ::pread(fd, e.data(), static_cast<size_t>(want), static_cast<off_t>(first * 8));
    ::close(fd);
    REQUIRE(got == want);
    uint64_t n = 0;
    for (uint64_t x : e) n += x >> 63;
    return n;
  }

  // MADV_POPULATE_WRITE came with Linux 5.14.
  bool KernelPopulates() {
    struct utsname u {};
    REQUIRE(::uname(&u) == 0);
    int major = 0, minor = 0;
    std::sscanf(u.release, "%d.%d", &major, &minor);
    return major > 5 || (major == 5 && minor >= 14);
  }

  // Heap::Allocate prefaults the stretch of the file after an allocation.
  TEST_CASE("Prefault maps a range for writing and changes no byte, and not the file's size") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    constexpr uint64_t kSize = 1 << 20, kFrom = 256 << 10, kLength = 256 << 10;
    REQUIRE(file->Reserve(kSize).ok());
    std::unique_ptr<Mapping> map;
    REQUIRE(file->Map(4 * kSize, true, &map).ok());
    std::memcpy(map->data() + kFrom + 5000, "hello", 5);
    const uint64_t pages = kLength / static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t before = MappedPages(map->data() + kFrom, kLength);
    map->Prefault(kFrom, kLength);
    map->Prefault(kSize - 4096, 8192);  // runs past the end of the file
    map->Prefault(8 * kSize, 4096);     // past the end of the mapping
    map->Prefault(kSize + 4096, 4096);  // inside the mapping, past the file
    const uint64_t after = MappedPages(map->data() + kFrom, kLength);
    if (KernelPopulates()) {
      CHECK(map->CanPrefault());
      CHECK_MESSAGE(before < pages, "mapped before Prefault: " << before << " of " << pages);
      CHECK_MESSAGE(after == pages, "mapped before " << before << ", after " << after << " of " << pages);
    } else {
      MESSAGE(
          "NOT CHECKED: this kernel has no MADV_POPULATE_WRITE (5.14) and Prefault does nothing; checked only "
          "that the mapping says so and that no byte changes");
      CHECK_FALSE(map->CanPrefault());
    }
    CHECK(SizeOf(*file) == kSize);
    const std::string bytes = mapkv::test::ReadFileBytes(dir.File("f"));
    REQUIRE(bytes.size() == kSize);
    CHECK(bytes.substr(kFrom + 5000, 5) == "hello");
    CHECK(std::count(bytes.begin(), bytes.end(), '\0') == static_cast<std::ptrdiff_t>(kSize - 5));
  }

  // The prefault thread (MapSet::Prefault runs Mapping::Prefault on it).
  TEST_CASE("Prefaulter maps a requested range on its own thread, and a forked child's copy does not hang") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    constexpr uint64_t kSize = 4 << 20, kLength = 256 << 10;
    REQUIRE(file->Reserve(kSize).ok());
    std::unique_ptr<Mapping> map;
    REQUIRE(file->Map(kSize, true, &map).ok());
    if (!KernelPopulates()) {
      // A Prefaulter takes only mappings that can prefault.
      CHECK_FALSE(map->CanPrefault());
      MESSAGE("SKIPPED: this kernel has no MADV_POPULATE_WRITE (5.14), so nothing uses the prefault thread");
      return;
    }
    REQUIRE(map->CanPrefault());
    const uint64_t pages = kLength / static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    // Asynchronous: wait for it (a few milliseconds; 10 s on a loaded machine).
    auto wait_mapped = [&](uint64_t offset) {
      const auto until = Clock::now() + std::chrono::seconds(10);
      while (MappedPages(map->data() + offset, kLength) < pages && Clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return MappedPages(map->data() + offset, kLength);
    };
    auto prefaulter = std::make_unique<Prefaulter>();
    CHECK(MappedPages(map->data(), kLength) < pages);
    prefaulter->Request(map.get(), 0, kLength);
    CHECK(wait_mapped(0) == pages);
    // Requests faster than the thread takes them: each replaces the one not
    // yet started, and destruction waits for the one running.
    for (uint64_t k = 1; k < 12; ++k) prefaulter->Request(map.get(), k * kLength, kLength);
    prefaulter.reset();
    // A child forked while the thread waits for work has the object but not
    // the thread, and a copy of the condition variable with the thread
    // counted as its waiter: asking that copy for work and destroying it
    // must not hang (destroying such a variable waits for the waiter).
    prefaulter = std::make_unique<Prefaulter>();
    prefaulter->Request(map.get(), 12 * kLength, kLength);
    CHECK(wait_mapped(12 * kLength) == pages);
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!prefaulter->WaitingForTesting()) {  // back in its wait
      REQUIRE_MESSAGE(Clock::now() < until, "the prefault thread did not go back to its wait within 10 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(10);  // a hang ends the child with SIGALRM
      prefaulter->Request(map.get(), 13 * kLength, kLength);
      prefaulter.reset();
      _exit(0);
    }
    CHECK(WaitChild(pid) == 0);
    prefaulter.reset();
    // Nothing in the file changed.
    CHECK(SizeOf(*file) == kSize);
    const std::string bytes = mapkv::test::ReadFileBytes(dir.File("f"));
    CHECK(std::count(bytes.begin(), bytes.end(), '\0') == static_cast<std::ptrdiff_t>(kSize));
  }
#endif

#ifdef _WIN32
  TEST_CASE("Windows: a mapping covers at most the file, and a new one covers it after Reserve") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    std::unique_ptr<Mapping> map;
    CHECK(file->Map(1 << 20, true, &map).code() == Code::kInvalidArgument);  // an empty file
    REQUIRE(file->Reserve(64 << 10).ok());
    REQUIRE(file->Map(1 << 20, true, &map).ok());
    CHECK(map->length() == (64 << 10));  // min(length, size)
    std::memcpy(map->data() + 5000, "hello", 5);
    CHECK(map->Flush(5000, 5, /*sync=*/false).ok());
    REQUIRE(file->Reserve(128 << 10).ok());
    std::unique_ptr<Mapping> bigger;
    REQUIRE(file->Map(1 << 20, true, &bigger).ok());
    CHECK(bigger->length() == (128 << 10));
    bigger->data()[(128 << 10) - 1] = 0x5a;
    CHECK(std::memcmp(bigger->data() + 5000, "hello", 5) == 0);  // both views show the same pages
    bigger->data()[100] = 42;
    CHECK(map->data()[100] == 42);  // at once, without a flush
    map->data()[200] = 43;
    CHECK(bigger->data()[200] == 43);
    CHECK(bigger->Flush(0, 128 << 10, /*sync=*/true).ok());
    CHECK(map->Flush((1 << 20) + 1, 1, false).code() == Code::kInvalidArgument);

    const std::string bytes = mapkv::test::ReadFileBytes(dir.File("f"));
    REQUIRE(bytes.size() == (128 << 10));
    CHECK(bytes.substr(5000, 5) == "hello");
    CHECK(static_cast<uint8_t>(bytes.back()) == 0x5a);
  }

  TEST_CASE("Windows: shortening a mapped file is applied when the handle closes") {
    TempDir dir;
    {
      std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
      REQUIRE(file->Reserve(128 << 10).ok());
      std::unique_ptr<Mapping> map;
      REQUIRE(file->Map(128 << 10, true, &map).ok());
      CHECK(file->Truncate(64 << 10).ok());  // deferred: a view exists
      map.reset();
    }
    CHECK(mapkv::test::ReadFileBytes(dir.File("f")).size() == (64 << 10));
  }

  // A compaction's deferred shortening waits for the handle's close, and
  // meanwhile another handle may have grown the file and written past that
  // length: the close must not cut it.
  TEST_CASE("Windows: a deferred shortening is dropped when another handle grew the file meanwhile") {
    TempDir dir;
    {
      std::unique_ptr<File> a = MustOpen(dir.File("f"), kCreate);
      REQUIRE(a->Reserve(128 << 10).ok());
      std::unique_ptr<Mapping> map;
      REQUIRE(a->Map(128 << 10, true, &map).ok());
      CHECK(a->Truncate(64 << 10).ok());  // deferred: a view exists
      {
        std::unique_ptr<File> b = MustOpen(dir.File("f"), FileSpec{});
        REQUIRE(b->Reserve(256 << 10).ok());
        std::unique_ptr<Mapping> bmap;
        REQUIRE(b->Map(256 << 10, true, &bmap).ok());
        bmap->data()[(200 << 10)] = 0x77;
        REQUIRE(bmap->Flush(200 << 10, 1, /*sync=*/true).ok());
      }
      map.reset();
    }
    const std::string bytes = mapkv::test::ReadFileBytes(dir.File("f"));
    REQUIRE(bytes.size() == (256 << 10));
    CHECK(static_cast<uint8_t>(bytes[200 << 10]) == 0x77);
  }

  TEST_CASE("Windows: paths with non-ASCII characters") {
    TempDir dir;
    const std::string path = dir.File("stor\xc3\xa9-\xe6\x97\xa5\xe6\x9c\xac.mkv");  // "storé-日本"
    std::unique_ptr<File> file = MustOpen(path, kCreate);
    REQUIRE(file->Reserve(4096).ok());
    CHECK(file->path() == path);
    std::array<uint64_t, 2> a{}, b{};
    REQUIRE(file->Identity(&a).ok());
    REQUIRE(FileIdentity(path, &b).ok());
    CHECK(a == b);
    Status s = File::Open(dir.File("\xc3\xa9-missing"), kOpenExisting, &file);
    CHECK(s.code() == Code::kNotFound);
    CHECK(s.message().find(dir.File("\xc3\xa9-missing")) != std::string::npos);
    CHECK(s.message().find("CreateFileW") != std::string::npos);
  }
#endif

  // ---- Locks ----------------------------------------------------------------

  TEST_CASE("locks of two handles in one process conflict") {
    TempDir dir;
    std::unique_ptr<File> a = MustOpen(dir.File("f"), kCreate);
    std::unique_ptr<File> b = MustOpen(dir.File("f"), kOpenExisting);
    bool acquired = false;

    REQUIRE(a->TryLock(0, 8, LockMode::kExclusive, &acquired).ok());
    REQUIRE(acquired);
    CHECK(b->TryLock(4, 1, LockMode::kShared, &acquired).ok());
    CHECK_FALSE(acquired);
    CHECK(b->TryLock(0, 8, LockMode::kExclusive, &acquired).ok());
    CHECK_FALSE(acquired);
    // A disjoint range is free.
    CHECK(b->TryLock(8, 8, LockMode::kExclusive, &acquired).ok());
    CHECK(acquired);

    // Convert a's lock to shared: b can share it but still not take it.
    REQUIRE(a->TryLock(0, 8, LockMode::kShared, &acquired).ok());
    REQUIRE(acquired);
    CHECK(b->TryLock(0, 8, LockMode::kShared, &acquired).ok());
    CHECK(acquired);
    CHECK(a->TryLock(0, 8, LockMode::kExclusive, &acquired).ok());
    CHECK_FALSE(acquired);

    // Closing a handle releases its locks (and only its own).
    REQUIRE(b->Unlock(0, 16).ok());
    a.reset();
    CHECK(b->TryLock(0, 8, LockMode::kExclusive, &acquired).ok());
    CHECK(acquired);
  }

  TEST_CASE("Lock blocks until the other handle unlocks") {
    TempDir dir;
    std::unique_ptr<File> a = MustOpen(dir.File("f"), kCreate);
    std::unique_ptr<File> b = MustOpen(dir.File("f"), kOpenExisting);
    REQUIRE(a->Lock(0, 1, LockMode::kExclusive).ok());
    std::atomic<bool> granted{false};
    Status waiter_status;
    std::thread waiter([&] {
      waiter_status = b->Lock(0, 1, LockMode::kShared);
      granted = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_FALSE(granted.load());
    REQUIRE(a->Unlock(0, 1).ok());
    waiter.join();
    CHECK(granted.load());
    CHECK(waiter_status.ok());
    bool acquired = true;
    CHECK(a->TryLock(0, 1, LockMode::kExclusive, &acquired).ok());
    CHECK_FALSE(acquired);  // b holds it shared now
  }

  TEST_CASE("the lock of a killed process is released") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    const int pid = SpawnChild("platform.hold_lock", {dir.File("f"), "0", "4096"});
    REQUIRE(pid > 0);

    // Wait until the child holds the lock.
    bool acquired = true;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      REQUIRE(file->TryLock(100, 1, LockMode::kShared, &acquired).ok());
      if (!acquired) break;
      REQUIRE(file->Unlock(100, 1).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE_FALSE(acquired);

    mapkv::test::KillChild(pid);  // SIGKILL; TerminateProcess on Windows
    CHECK(WaitChild(pid) == mapkv::test::kKilledExitCode);
    const auto killed = Clock::now();
    while (Clock::now() - killed < std::chrono::milliseconds(100)) {
      REQUIRE(file->TryLock(0, 4096, LockMode::kExclusive, &acquired).ok());
      if (acquired) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    CHECK(acquired);
  }

  TEST_CASE("bad lock ranges are InvalidArgument") {
    TempDir dir;
    std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
    bool acquired = true;
    CHECK(file->TryLock(0, 0, LockMode::kShared, &acquired).code() == Code::kInvalidArgument);
    CHECK_FALSE(acquired);
    CHECK(file->Lock(~uint64_t{0}, 2, LockMode::kShared).code() == Code::kInvalidArgument);
  }

  // ---- Wait / wake ----------------------------------------------------------

  // A file of one page, mapped; its first words are the wait words.
  struct WordFile {
    TempDir dir;
    std::unique_ptr<File> file;
    std::unique_ptr<Mapping> map;
    WordFile() {
      file = MustOpen(dir.File("f"), kCreate);
      REQUIRE(file->Reserve(4096).ok());
      REQUIRE(file->Map(4096, true, &map).ok());
    }
    std::atomic<uint32_t>* words() const { return reinterpret_cast<std::atomic<uint32_t>*>(map->data()); }
  };

  TEST_CASE("WaitWord times out on an unchanged word") {
    WordFile f;
    f.words()[0].store(7);
    const auto start = Clock::now();
    CHECK_FALSE(f.file->WaitWord(&f.words()[0], 0, 7, std::chrono::milliseconds(200)));
    const auto elapsed = Clock::now() - start;
    CHECK(elapsed >= std::chrono::milliseconds(150));
    CHECK(elapsed < std::chrono::seconds(5));
  }

  TEST_CASE("WaitWord returns at once when the word differs") {
    WordFile f;
    f.words()[0].store(8);
    const auto start = Clock::now();
    CHECK(f.file->WaitWord(&f.words()[0], 0, 7, std::chrono::seconds(10)));
    CHECK(Clock::now() - start < std::chrono::seconds(5));
  }

  TEST_CASE("WakeWord from another process wakes WaitWord") {
    WordFile f;
    auto* words = f.words();
    const int pid = SpawnChild("platform.waker", {f.dir.File("f")});
    REQUIRE(pid > 0);
    // The child never changes word 0, so only a cross-process wake (not a
    // value change) can end this wait before the 10 s timeout.
    const auto start = Clock::now();
    const bool woken = f.file->WaitWord(&words[0], 0, 0, std::chrono::seconds(10));
    const auto elapsed = Clock::now() - start;
    words[1].store(1);
    CHECK(woken);
    CHECK(elapsed < std::chrono::seconds(5));
    CHECK(WaitChild(pid) == 0);
  }

  TEST_CASE("WaitWord ends when another process changes the word and wakes it") {
    WordFile f;
    auto* words = f.words();
    const int pid = SpawnChild("platform.changer", {f.dir.File("f")});
    REQUIRE(pid > 0);
    const auto start = Clock::now();
    int waits = 0;
    bool woken = false;
    while (words[0].load() == 0 && Clock::now() - start < std::chrono::seconds(10)) {
      woken = f.file->WaitWord(&words[0], 0, 0, std::chrono::seconds(10));
      ++waits;
    }
    const auto elapsed = Clock::now() - start;
    CHECK(woken);
    CHECK(words[0].load() == 1);
    CHECK(elapsed < std::chrono::seconds(5));  // woken, not timed out
    CHECK(waits < 50);                         // slept, did not poll
    CHECK(WaitChild(pid) == 0);
  }

  TEST_CASE("WaitWord: a thread's wake of the same file ends another thread's wait") {
    WordFile f;
    auto* words = f.words();
    std::thread waker([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const uint32_t before = words[0].fetch_add(1);
      f.file->WakeWord(&words[0], 0, before);
    });
    const auto start = Clock::now();
    while (words[0].load() == 0 && Clock::now() - start < std::chrono::seconds(10)) {
      f.file->WaitWord(&words[0], 0, 0, std::chrono::seconds(10));
    }
    waker.join();
    CHECK(words[0].load() == 1);
    CHECK(Clock::now() - start < std::chrono::seconds(5));
  }

  // ---- Boot id, fork generation ---------------------------------------------

  TEST_CASE("BootId is stable and matches the kernel boot_id and can be overridden") {
    const std::array<uint8_t, 16> id = BootId();
    CHECK(BootId() == id);
    CHECK(id != std::array<uint8_t, 16>{});

#if defined(__linux__)  // (under Wine the Linux file is readable too, but means nothing to Windows)
    std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r");
    REQUIRE_MESSAGE(f != nullptr, "cannot read /proc/sys/kernel/random/boot_id");
    {
      char text[64] = {};
      const bool read = std::fgets(text, sizeof(text), f) != nullptr;
      std::fclose(f);
      REQUIRE(read);
      std::string expected;
      for (const char* p = text; *p != '\0' && *p != '\n'; ++p) {
        if (*p != '-') expected += *p;
      }
      std::string actual;
      for (uint8_t b : id) {
        char hex[3];
        std::snprintf(hex, sizeof(hex), "%02x", b);
        actual += hex;
      }
      CHECK(actual == expected);
    }
#endif

    std::array<uint8_t, 16> other = id;
    other[0] ^= 0xff;
    SetBootIdForTesting(other);
    CHECK(BootId() == other);
    ResetBootIdForTesting();
    CHECK(BootId() == id);
  }

#ifndef _WIN32  // no fork on Windows (listed in tests/CMakeLists.txt)
  TEST_CASE("ForkGeneration differs in a forked child") {
    const uint64_t parent = ForkGeneration();
    CHECK(ForkGeneration() == parent);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(ForkGeneration() != parent ? 0 : 1);
    CHECK(WaitChild(pid) == 0);
    CHECK(ForkGeneration() == parent);
    CHECK(ProcessId() == static_cast<uint64_t>(::getpid()));
  }

#else
  TEST_CASE("ForkGeneration is constant on Windows and ProcessId is this process") {
    CHECK(ForkGeneration() == 0);
    const int pid = SpawnChild("platform.pid_differs", {std::to_string(ProcessId())});
    REQUIRE(pid > 0);
    CHECK(static_cast<uint64_t>(pid) != ProcessId());
    CHECK(WaitChild(pid) == 0);
  }
#endif

  // ---- Shared memory --------------------------------------------------------

#ifndef _WIN32  // shm_unlink semantics; Windows has its own case below
  TEST_CASE("OpenShared / RemoveShared round trip") {
    const std::string name = UniqueShmName("shm");
    std::unique_ptr<File> owner;
    REQUIRE(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &owner).ok());
    CHECK(owner->path() == "shm:" + name);
    CHECK_FALSE(owner->OnNetworkFileSystem());
    REQUIRE(owner->Reserve(8192).ok());
    std::unique_ptr<Mapping> map;
    REQUIRE(owner->Map(8192, true, &map).ok());
    std::memcpy(map->data() + 4096, "shared", 6);

    std::unique_ptr<File> again;
    CHECK(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &again).code() == Code::kInvalidArgument);
    REQUIRE(File::OpenShared(name, kOpenExisting, &again).ok());
    CHECK(SizeOf(*again) == 8192);
    std::unique_ptr<Mapping> view;
    REQUIRE(again->Map(8192, false, &view).ok());
    CHECK(std::memcmp(view->data() + 4096, "shared", 6) == 0);

    REQUIRE(File::RemoveShared(name).ok());
    CHECK(File::RemoveShared(name).code() == Code::kNotFound);
    std::unique_ptr<File> gone;
    CHECK(File::OpenShared(name, kOpenExisting, &gone).code() == Code::kNotFound);
    // Existing handles and mappings stay valid after removal.
    CHECK(std::memcmp(view->data() + 4096, "shared", 6) == 0);
  }

#else
  TEST_CASE("Windows: OpenShared grows, is shared by handles, and lives while one is open") {
    const std::string name = UniqueShmName("shm");
    std::unique_ptr<File> owner;
    REQUIRE(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &owner).ok());
    CHECK(owner->path() == "shm:" + name);
    CHECK(SizeOf(*owner) == 0);
    REQUIRE(owner->Reserve(8192).ok());
    std::unique_ptr<Mapping> map;
    REQUIRE(owner->Map(1 << 20, true, &map).ok());
    CHECK(map->length() == 8192);
    std::memcpy(map->data() + 4096, "shared", 6);

    std::unique_ptr<File> again;
    CHECK(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &again).code() == Code::kInvalidArgument);
    REQUIRE(File::OpenShared(name, kOpenExisting, &again).ok());
    CHECK(SizeOf(*again) == 8192);
    REQUIRE(again->Reserve(1 << 20).ok());
    CHECK(SizeOf(*owner) == (1 << 20));
    std::unique_ptr<Mapping> view;
    REQUIRE(again->Map(1 << 20, true, &view).ok());
    CHECK(std::memcmp(view->data() + 4096, "shared", 6) == 0);
    view->data()[(1 << 20) - 1] = 9;  // a page committed by the growth
    CHECK(RemoveShared_Busy(name));
    // Locks of two handles conflict, as for files.
    bool acquired = false;
    REQUIRE(owner->TryLock(0, 1, LockMode::kExclusive, &acquired).ok());
    CHECK(acquired);
    REQUIRE(again->TryLock(0, 1, LockMode::kShared, &acquired).ok());
    CHECK_FALSE(acquired);
    map.reset();
    view.reset();
    owner.reset();
    again.reset();
    // The last handle closed: the section is gone; only its lock file is left.
    std::unique_ptr<File> gone;
    CHECK(File::OpenShared(name, kOpenExisting, &gone).code() == Code::kNotFound);
    CHECK(File::RemoveShared(name).ok());
    CHECK(File::RemoveShared(name).code() == Code::kNotFound);
  }
#endif

#ifdef _WIN32
  // Section names are case-sensitive, NTFS file names are not: two stores
  // whose names differ only in case must not share a lock file.
  TEST_CASE("Windows: named stores whose names differ only in case lock apart") {
    const std::string name = UniqueShmName("Case");
    std::string lower = name;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    REQUIRE(lower != name);
    std::unique_ptr<File> upper_file, lower_file;
    REQUIRE(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &upper_file).ok());
    REQUIRE(File::OpenShared(lower, FileSpec{.create = true, .exclusive = true}, &lower_file).ok());
    bool acquired = false;
    REQUIRE(upper_file->TryLock(0, 1, LockMode::kExclusive, &acquired).ok());
    CHECK(acquired);
    REQUIRE(lower_file->TryLock(0, 1, LockMode::kExclusive, &acquired).ok());
    CHECK(acquired);
    upper_file.reset();
    lower_file.reset();
    CHECK(File::RemoveShared(name).ok());
    CHECK(File::RemoveShared(lower).ok());
  }

  // A process between creating the section and opening the lock file, or
  // one whose section another process cannot see, holds the lock file
  // open: RemoveShared must not take it from under it (with another lock
  // file in its place, two processes would each hold "the" write lock).
  TEST_CASE("Windows: RemoveShared leaves a lock file that a handle holds open") {
    const std::string name = UniqueShmName("held");
    std::string lock_path;
    REQUIRE(File::SharedLockPath(name, &lock_path).ok());
    CHECK(lock_path.rfind("\\\\?\\", 0) == 0);  // long-path form: not cut at MAX_PATH
    {
      std::unique_ptr<File> created;  // also creates <LocalAppData>\mapkv
      REQUIRE(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &created).ok());
    }
    std::unique_ptr<File> holder = MustOpen(lock_path, kOpenExisting);  // no section now
    CHECK(RemoveShared_Busy(name));
    std::unique_ptr<File> still;
    CHECK(File::Open(lock_path, kOpenExisting, &still).ok());
    still.reset();
    holder.reset();
    CHECK(File::RemoveShared(name).ok());
    CHECK(File::Open(lock_path, kOpenExisting, &still).code() == Code::kNotFound);
    CHECK(File::RemoveShared(name).code() == Code::kNotFound);
  }
#endif

  // A store shrinks (compaction) and may grow again; what the growth adds
  // must read as zeros, as a new file's bytes do, whether the backend could
  // really shorten (POSIX, a named store on Linux) or only lowered the
  // length (a named store on Windows, a mapped file on Windows).
  TEST_CASE("a shortened then regrown file or named store reads zeros past the short length") {
    constexpr uint64_t kLong = 256 << 10, kShort = 64 << 10, kAgain = 192 << 10;
    auto check_regrowth = [&](File& file) {
      REQUIRE(file.Reserve(kLong).ok());
      std::unique_ptr<Mapping> map;
      REQUIRE(file.Map(kLong, true, &map).ok());
      std::memset(map->data(), 0x5a, kLong);
      REQUIRE(file.Truncate(kShort).ok());  // on Windows the view makes a file's shortening wait
      CHECK(SizeOf(file) == kShort);
      REQUIRE(file.Reserve(kAgain).ok());
      CHECK(SizeOf(file) == kAgain);
      std::unique_ptr<Mapping> again;
      REQUIRE(file.Map(kAgain, false, &again).ok());
      REQUIRE(again->length() >= kAgain);
      const uint8_t* p = again->data();
      CHECK(std::count(p, p + kShort, 0x5a) == static_cast<std::ptrdiff_t>(kShort));
      CHECK(std::count(p + kShort, p + kAgain, 0) == static_cast<std::ptrdiff_t>(kAgain - kShort));
    };
    SUBCASE("a file") {
      TempDir dir;
      std::unique_ptr<File> file = MustOpen(dir.File("f"), kCreate);
      check_regrowth(*file);
    }
    SUBCASE("a named store") {
      const std::string name = UniqueShmName("regrow");
      std::unique_ptr<File> file;
      REQUIRE(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &file).ok());
      check_regrowth(*file);
      file.reset();
      CHECK(File::RemoveShared(name).ok());
    }
  }

  TEST_CASE("bad shared-memory names are InvalidArgument") {
    std::unique_ptr<File> file;
    for (const std::string& bad :
         {std::string(), std::string("a/b"), std::string(201, 'x'), std::string("nul\0byte", 8)}) {
      CAPTURE(bad);
      CHECK(File::OpenShared(bad, kCreate, &file).code() == Code::kInvalidArgument);
      CHECK(File::RemoveShared(bad).code() == Code::kInvalidArgument);
    }
    CHECK(file == nullptr);
    // 200 characters is the longest accepted name.
    const std::string longest = UniqueShmName("long") + std::string(200, 'y');
    const std::string name = longest.substr(0, 200);
    REQUIRE(File::OpenShared(name, FileSpec{.create = true, .exclusive = true}, &file).ok());
    file.reset();  // on Windows the store lives while a handle is open
    CHECK(File::RemoveShared(name).ok());
  }

  // ---- Identity -------------------------------------------------------------

#ifndef _WIN32  // Wine refuses MoveFileExW over an open file (listed in tests/CMakeLists.txt)
  TEST_CASE("Identity changes when another file is renamed over the path") {
    TempDir dir;
    const std::string path = dir.File("store");
    std::unique_ptr<File> file = MustOpen(path, kCreate);
    std::array<uint64_t, 2> handle_id{};
    std::array<uint64_t, 2> path_id{};
    REQUIRE(file->Identity(&handle_id).ok());
    REQUIRE(FileIdentity(path, &path_id).ok());
    CHECK(handle_id == path_id);

    mapkv::test::WriteFileBytes(dir.File("store.new"), "new");
    std::array<uint64_t, 2> new_id{};
    REQUIRE(FileIdentity(dir.File("store.new"), &new_id).ok());
    CHECK(new_id != handle_id);
    REQUIRE(RenameFile(dir.File("store.new"), path).ok());
    REQUIRE(FileIdentity(path, &path_id).ok());
    CHECK(path_id == new_id);
    CHECK(path_id != handle_id);
    std::array<uint64_t, 2> still{};
    REQUIRE(file->Identity(&still).ok());
    CHECK(still == handle_id);

    CHECK(FileIdentity(dir.File("store.new"), &path_id).code() == Code::kNotFound);
    CHECK(RenameFile(dir.File("store.new"), path).code() == Code::kNotFound);
    REQUIRE(RemoveFile(path).ok());
    CHECK(RemoveFile(path).code() == Code::kNotFound);
    CHECK(FileIdentity(path, &path_id).code() == Code::kNotFound);
  }
#endif

}  // TEST_SUITE("platform")

}  // namespace
}  // namespace mapkv::internal
