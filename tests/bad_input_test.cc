// bad_input_test.cc: files that are not (intact) stores. Each failing open
// must return the documented code and leave the file's bytes as they were;
// damaged data must never crash a reader, Check, or recovery.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

using internal::format::kMetaOffset;
using internal::format::kPageSize;
using internal::format::MetaPage;

constexpr size_t kMetaChecked =
    offsetof(MetaPage, checksum) + sizeof(uint64_t);  // bytes the checksum covers, and itself

Options ReadOnly() {
  Options o;
  o.read_only = true;
  return o;
}

// Opens `path` with `options`, expecting `code`, and checks that the file's
// bytes did not change and that the handle stayed closed.
void ExpectOpenFails(const std::string& path, const Options& options, Code code) {
  const std::string before = ReadFileBytes(path);
  Store store;
  Status s = Store::Open(path, options, &store);
  CHECK_MESSAGE(s.code() == code, s.ToString());
  CHECK_FALSE(store.is_open());
  CHECK_MESSAGE(ReadFileBytes(path) == before, "a failed open changed the file");
}

void ExpectOpenFailsBoth(const std::string& path, Code code) {
  ExpectOpenFails(path, Options{}, code);
  ExpectOpenFails(path, ReadOnly(), code);
}

// A closed store with `n` entries "key<i>" -> "value<i>".
Model MakeStore(const std::string& path, int n) {
  Store store = MustOpen(path);
  Model model;
  for (int i = 0; i < n; ++i) {
    model["key" + std::to_string(i)] = "value" + std::to_string(i) + std::string(static_cast<size_t>(i % 40), '.');
    REQUIRE(store.Put("key" + std::to_string(i), model["key" + std::to_string(i)]).ok());
  }
  for (int i = 0; i < n; i += 5) {
    REQUIRE(store.Erase("key" + std::to_string(i)).ok());
    model.erase("key" + std::to_string(i));
  }
  REQUIRE(store.Close().ok());
  return model;
}

MetaPage ReadMeta(const std::string& bytes, int slot) {
  MetaPage m;
  REQUIRE(bytes.size() >= kMetaOffset[slot] + sizeof m);
  std::memcpy(&m, bytes.data() + kMetaOffset[slot], sizeof m);
  return m;
}

uint64_t MetaChecksum(const MetaPage& m) { return XXH3_64bits(&m, offsetof(MetaPage, checksum)); }

bool MetaLooksValid(const MetaPage& m) {
  return m.magic == internal::format::kMetaMagic && m.major == internal::format::kMajor &&
         m.checksum == MetaChecksum(m);
}

void PokeByte(const std::string& path, uint64_t offset, uint8_t value) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  const ssize_t n = ::pwrite(fd, &value, 1, static_cast<off_t>(offset));
  ::close(fd);
  REQUIRE(n == 1);
}

int WaitForChild(pid_t pid, int seconds) {
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  WaitChild(pid);
  return -2;  // hung
}

TEST_SUITE("bad_input") {
  TEST_CASE("bad input: an empty file is Corruption") {
    TempDir dir;
    const std::string path = dir.File("empty.mkv");
    WriteFileBytes(path, "");
    ExpectOpenFailsBoth(path, Code::kCorruption);
    Options no_create;
    no_create.create_if_missing = false;
    ExpectOpenFails(path, no_create, Code::kCorruption);
    CHECK(FileSize(path) == 0);
  }

  TEST_CASE("bad input: files of random bytes are Corruption") {
    TempDir dir;
    Rng rng(99);
    for (size_t size : {size_t{1}, size_t{4096}, size_t{65535}, size_t{65536}, size_t{100000}, size_t{1} << 20}) {
      CAPTURE(size);
      const std::string path = dir.File("random" + std::to_string(size));
      WriteFileBytes(path, rng.Bytes(size));
      ExpectOpenFailsBoth(path, Code::kCorruption);
    }
    // A file of zeros, and text.
    WriteFileBytes(dir.File("zeros"), std::string(1 << 20, '\0'));
    ExpectOpenFailsBoth(dir.File("zeros"), Code::kCorruption);
    std::string text;
    while (text.size() < 200000) text += "this is not a mapkv store, just some text\n";
    WriteFileBytes(dir.File("text"), text);
    ExpectOpenFailsBoth(dir.File("text"), Code::kCorruption);
  }

  TEST_CASE("bad input: truncated stores are Corruption") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeStore(path, 5000);
    const std::string full = ReadFileBytes(path);
    REQUIRE(full.size() > 140000);
    for (size_t keep : {size_t{100}, size_t{4096}, size_t{8192}, size_t{65535}, size_t{65536}, size_t{70000},
                        full.size() / 2, full.size() - 65536}) {
      CAPTURE(keep);
      const std::string cut = dir.File("cut" + std::to_string(keep));
      WriteFileBytes(cut, full.substr(0, keep));
      ExpectOpenFailsBoth(cut, Code::kCorruption);
    }
  }

  TEST_CASE("bad input: a directory is InvalidArgument") {
    TempDir dir;
    ExpectOpenFails(dir.path(), Options{}, Code::kInvalidArgument);
    Store store;
    CHECK(Store::Open(dir.path(), ReadOnly(), &store).code() == Code::kInvalidArgument);
    Options no_create;
    no_create.create_if_missing = false;
    CHECK(Store::Open(dir.path(), no_create, &store).code() == Code::kInvalidArgument);
    CHECK_FALSE(store.is_open());
  }

  // Every byte of the newest meta page, flipped, while the other meta page is
  // damaged too: bytes the checksum covers make the store unopenable (the
  // major-version bytes read as a newer version), the rest of the page is
  // unused and the store opens.
  TEST_CASE("bad input: the newest meta page flipped byte by byte while the other one is damaged") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const Model model = MakeStore(path, 200);
    const std::string image = ReadFileBytes(path);
    const MetaPage m0 = ReadMeta(image, 0), m1 = ReadMeta(image, 1);
    REQUIRE(MetaLooksValid(m0));
    REQUIRE(MetaLooksValid(m1));
    const int newest = m0.generation > m1.generation ? 0 : 1;
    const int other = 1 - newest;
    // Damage the other page: one byte of its generation (the checksum no longer matches).
    PokeByte(path, kMetaOffset[other] + offsetof(MetaPage, generation),
             static_cast<uint8_t>(image[kMetaOffset[other] + offsetof(MetaPage, generation)] ^ 0x40));
    const std::string damaged = ReadFileBytes(path);
    {
      Store store = MustOpen(path, ReadOnly());  // the newest page alone still opens the store
      CHECK(Dump(store) == model);
    }
    CHECK(ReadFileBytes(path) == damaged);

    int failed = 0, opened = 0;
    for (uint8_t flip : {uint8_t{0xff}, uint8_t{0x01}}) {
      for (uint64_t i = 0; i < kPageSize; ++i) {
        if (flip == 0x01 && i >= kMetaChecked) break;  // single-bit flips only where they matter
        const uint64_t at = kMetaOffset[newest] + i;
        const auto original = static_cast<uint8_t>(damaged[at]);
        PokeByte(path, at, static_cast<uint8_t>(original ^ flip));
        std::string flipped = damaged;
        flipped[at] = static_cast<char>(original ^ flip);
        Store store;
        if (i < kMetaChecked) {
          const Options options = (i % 2 == 0) ? Options{} : ReadOnly();
          Status s = Store::Open(path, options, &store);
          const MetaPage m = ReadMeta(flipped, newest);
          const Code expected = m.magic == internal::format::kMetaMagic && m.major > internal::format::kMajor
                                    ? Code::kVersionTooNew
                                    : Code::kCorruption;
          if (s.code() == expected && !store.is_open()) {
            ++failed;  // refused as it must be
          } else {
            CHECK_MESSAGE(s.code() == expected, "byte " << i << " ^ " << int{flip} << ": " << s.ToString());
            CHECK_FALSE(store.is_open());
          }
        } else {
          Status s = Store::Open(path, ReadOnly(), &store);
          if (!s.ok()) {
            CHECK_MESSAGE(s.ok(), "unused meta byte " << i << " flipped: " << s.ToString());
          } else {
            ++opened;
            if (i % 256 == 0) CHECK(Dump(store) == model);
          }
          REQUIRE(store.Close().ok());
        }
        if (ReadFileBytes(path) != flipped) {
          FAIL("open with meta byte " << i << " flipped changed the file");
        }
        PokeByte(path, at, original);
      }
    }
    CHECK(failed == 2 * static_cast<int>(kMetaChecked));
    CHECK(opened == static_cast<int>(kPageSize - kMetaChecked));
  }

  // Every byte of the newest meta page flipped alone, the other page intact:
  // the store opens every time (from the other page when the flip invalidates
  // the newest), with all its data, and Check finds nothing.
  TEST_CASE("bad input: the newest meta page flipped byte by byte with the other one intact") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const Model model = MakeStore(path, 200);
    const std::string image = ReadFileBytes(path);
    const MetaPage m0 = ReadMeta(image, 0), m1 = ReadMeta(image, 1);
    REQUIRE(MetaLooksValid(m0));
    REQUIRE(MetaLooksValid(m1));
    const int newest = m0.generation > m1.generation ? 0 : 1;
    int opened = 0;
    for (uint64_t i = 0; i < kPageSize; ++i) {
      const uint64_t at = kMetaOffset[newest] + i;
      const auto original = static_cast<uint8_t>(image[at]);
      PokeByte(path, at, static_cast<uint8_t>(original ^ 0xff));
      std::string flipped = image;
      flipped[at] = static_cast<char>(original ^ 0xff);
      const MetaPage m = ReadMeta(flipped, newest);
      if (m.magic == internal::format::kMetaMagic && m.major > internal::format::kMajor) {
        // Looks written by a newer library: refused rather than silently rolled
        // back to the older page (which would undo that library's writes).
        for (const Options& options : {ReadOnly(), Options{}}) {
          Store store;
          Status s = Store::Open(path, options, &store);
          CHECK_MESSAGE(s.code() == Code::kVersionTooNew, "meta byte " << i << " flipped: " << s.ToString());
        }
        CHECK(ReadFileBytes(path) == flipped);
        ++opened;  // handled
        PokeByte(path, at, original);
        continue;
      }
      const bool deep = i % 97 == 0 || i < 16;
      {
        Store store;
        Status s = Store::Open(path, ReadOnly(), &store);
        if (!s.ok()) {
          CHECK_MESSAGE(s.ok(), "meta byte " << i << " flipped: " << s.ToString());
        } else {
          ++opened;
          std::string v;
          if (!store.Get("key1", &v).ok() || v != model.at("key1")) CHECK_MESSAGE(false, "byte " << i << ": key1 lost");
          if (deep) {
            CHECK(Dump(store) == model);
            if (i < kMetaChecked) {
              // The live state is intact, but Check must say the newest meta page is damaged.
              CheckReport report;
              REQUIRE(store.Check(&report).ok());
              REQUIRE(report.problems.size() == 1);
              CHECK(report.problems[0].find("newest meta page") != std::string::npos);
              CHECK(report.entries_checked == model.size());
            } else {
              CheckClean(store);
            }
          }
        }
      }
      if (deep) {
        // Writable too (the open rewrites the newest meta page): open, check, write, close; then put the image back.
        Store store;
        Status s = Store::Open(path, Options{}, &store);
        CHECK_MESSAGE(s.ok(), "writable, meta byte " << i << " flipped: " << s.ToString());
        if (s.ok()) {
          CHECK(Dump(store) == model);
          REQUIRE(store.Put("extra", "x").ok());
          CheckClean(store);
          REQUIRE(store.Close().ok());
          store = MustOpen(path, ReadOnly());
          CHECK(store.size() == model.size() + 1);
          CheckClean(store);
        }
        REQUIRE(store.Close().ok());
        WriteFileBytes(path, image);
      } else {
        PokeByte(path, at, original);
      }
    }
    CHECK(opened == static_cast<int>(kPageSize));
  }

  // Recovery after a reboot rebuilds the allocation map from the checkpoint
  // when the map's checksum does not match: two table pages at one place
  // (or records, or any two structures) are damage. Before, the rebuild marked the page twice and took it; with a
  // table of 2^30 slots all at one page it walked them all (minutes).
  TEST_CASE("bad input: a checkpoint whose page map names one table page twice is Corruption after a reboot") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeStore(path, 1000);
    std::string bytes = ReadFileBytes(path);
    const MetaPage m0 = ReadMeta(bytes, 0), m1 = ReadMeta(bytes, 1);
    const int newest = m0.generation > m1.generation ? 0 : 1;
    MetaPage m = newest == 0 ? m0 : m1;
    REQUIRE(MetaLooksValid(m));
    const uint64_t pages = (uint64_t{1} << m.table_shift) / (kPageSize / 8);
    REQUIRE(pages >= 2);
    auto* pm = reinterpret_cast<uint32_t*>(bytes.data() + m.snapshot_offset);
    pm[1] = pm[0];
    m.snapshot_checksum = XXH3_64bits(pm, internal::format::PagemapBytes(m.table_shift));
    m.alloc_checksum ^= 1;  // the map is rebuilt
    m.checksum = MetaChecksum(m);
    std::memcpy(bytes.data() + kMetaOffset[newest], &m, sizeof m);
    WriteFileBytes(path, bytes);
    BootIdGuard reboot(7);
    Store store;
    const Status s = Store::Open(path, Options{}, &store);
    CHECK(s.code() == Code::kCorruption);
    CHECK_MESSAGE(s.ToString().find("table page at offset " + std::to_string(uint64_t{pm[0]} * kPageSize) +
                                    " overlaps another structure") != std::string::npos,
                  s.ToString());
  }

  TEST_CASE("bad input: a newer major version is VersionTooNew and a newer minor opens") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const Model model = MakeStore(path, 100);
    const std::string image = ReadFileBytes(path);
    auto rewrite = [&](uint16_t major, uint16_t minor) {
      std::string bytes = image;
      for (int slot = 0; slot < 2; ++slot) {
        MetaPage m = ReadMeta(bytes, slot);
        REQUIRE(MetaLooksValid(m));
        m.major = major;
        m.minor = minor;
        m.checksum = MetaChecksum(m);  // only the version is "wrong"
        std::memcpy(bytes.data() + kMetaOffset[slot], &m, sizeof m);
      }
      WriteFileBytes(path, bytes);
    };
    rewrite(2, 0);
    ExpectOpenFailsBoth(path, Code::kVersionTooNew);
    rewrite(0xffff, 0xffff);
    ExpectOpenFailsBoth(path, Code::kVersionTooNew);
    rewrite(0, 0);
    ExpectOpenFailsBoth(path, Code::kCorruption);
    rewrite(1, 7);  // a newer minor: additions this library may ignore
    {
      Store store = MustOpen(path, ReadOnly());
      CHECK(Dump(store) == model);
      Stats st;
      REQUIRE(store.GetStats(&st).ok());
      CHECK(st.format_major == 1);
      CHECK(st.format_minor == 7);
    }
    Store store = MustOpen(path);
    CHECK(Dump(store) == model);
    CheckClean(store);
  }

  // Creation syncs the directory; a directory the process may write but not
  // read (a drop box, mode 0733 or 0333) cannot be opened for that. The
  // create failed after making the store (d52a690); now it succeeds.
  TEST_CASE("bad input: a store is created in a directory that can be written but not read") {
    TempDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    const std::string box = dir.File("box");
    REQUIRE(::mkdir(box.c_str(), 0700) == 0);
    const bool root = ::geteuid() == 0;
    REQUIRE(::chmod(box.c_str(), root ? 0733 : 0333) == 0);  // root: others may write, not read
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      if (root && (::setgid(65534) != 0 || ::setuid(65534) != 0)) _exit(10);
      if (::opendir(box.c_str()) != nullptr) _exit(11);  // the directory must not be readable
      Store store;
      const Status s = Store::Open(box + "/s.mkv", Options{}, &store);
      if (!s.ok()) _exit(1);
      if (!store.Put("k", "v").ok()) _exit(2);
      _exit(store.Close().ok() ? 0 : 3);
    }
    const int rc = WaitForChild(pid, 30);
    if (rc == 10 || rc == 11) {
      MESSAGE("SKIPPED: cannot make an unreadable directory here (exit " << rc << ")");
      return;
    }
    CHECK_MESSAGE(rc == 0, "exit " << rc << " (1: the create failed)");
    REQUIRE(::chmod(box.c_str(), 0700) == 0);
  }

  TEST_CASE("bad input: a file without read permission is PermissionDenied") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeStore(path, 10);
    const std::string before = ReadFileBytes(path);
    if (::geteuid() != 0) {
      REQUIRE(::chmod(path.c_str(), 0) == 0);
      ExpectOpenFailsBoth(path, Code::kPermissionDenied);
      REQUIRE(::chmod(path.c_str(), 0444) == 0);
      ExpectOpenFails(path, Options{}, Code::kPermissionDenied);
      Store store = MustOpen(path, ReadOnly());
      CHECK(store.size() == 8);
      return;
    }
    // Root ignores permission bits: test in a child that drops to nobody (65534).
    MESSAGE("running as root, where permissions do not apply: testing in a child that switches to uid/gid 65534");
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    REQUIRE(::chmod(path.c_str(), 0) == 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(10);
      if (::geteuid() != 65534) _exit(11);
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) _exit(12);  // the directories must be searchable
      Store store;
      if (Store::Open(path, Options{}, &store).code() != Code::kPermissionDenied) _exit(2);
      if (Store::Open(path, ReadOnly(), &store).code() != Code::kPermissionDenied) _exit(3);
      Options no_create;
      no_create.create_if_missing = false;
      if (Store::Open(path, no_create, &store).code() != Code::kPermissionDenied) _exit(4);
      if (store.is_open()) _exit(5);
      _exit(0);
    }
    int rc = WaitForChild(pid, 30);
    if (rc == 10 || rc == 11 || rc == 12) {
      MESSAGE("SKIPPED: cannot test permissions here: the child could not become uid 65534 or reach "
              << path << " (exit code " << rc << ")");
      return;
    }
    CHECK(rc == 0);
    // Readable but not writable: the read-only open works, the writable one is refused.
    REQUIRE(::chmod(path.c_str(), 0444) == 0);
    std::fflush(nullptr);
    const pid_t pid2 = ::fork();
    REQUIRE(pid2 >= 0);
    if (pid2 == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(10);
      Store store;
      if (Store::Open(path, Options{}, &store).code() != Code::kPermissionDenied) _exit(2);
      if (!Store::Open(path, ReadOnly(), &store).ok()) _exit(3);
      if (store.size() != 8) _exit(4);
      std::string v;
      if (!store.Get("key1", &v).ok()) _exit(5);
      _exit(0);
    }
    rc = WaitForChild(pid2, 30);
    if (rc == 10) {
      MESSAGE("SKIPPED: cannot test read-only permissions here: the child could not become uid 65534");
      return;
    }
    CHECK(rc == 0);
    REQUIRE(::chmod(path.c_str(), 0600) == 0);
    CHECK(ReadFileBytes(path) == before);
  }

  // Damages random bytes or pages of the heap (table, records, page map,
  // allocation map), then in a child: open (same boot, or after a simulated
  // reboot), Get, ForEach, Check. Each may fail with a Status but must not crash
  // or hang. When Check finds nothing wrong, the store must also take writes.
  enum ChildResult { kChildOk = 0, kChildWriteFailed = 20, kChildCheckDirtyAfterWrites = 21, kChildLostWrite = 22 };

  int CorruptionChild(const std::string& path, bool reboot, std::string* note) {
    std::unique_ptr<BootIdGuard> guard;
    if (reboot) guard = std::make_unique<BootIdGuard>(0x21);
    Store store;
    Status s = Store::Open(path, Options{}, &store);
    if (!s.ok()) {
      *note = "open: " + s.ToString();
      return kChildOk;
    }
    std::string v;
    for (int i = 0; i < 400; ++i) store.Get("key" + std::to_string(i), &v).IgnoreError();
    uint64_t seen = 0;
    store.ForEach({}, [&](std::string_view, std::string_view) { return ++seen < 1000000; }).IgnoreError();
    store.ForEach("key1", [&](std::string_view, std::string_view) { return true; }).IgnoreError();
    Stats st;
    store.GetStats(&st).IgnoreError();
    CheckReport report;
    s = store.Check(&report);
    if (!s.ok() || !report.ok()) {
      *note = s.ok() ? "check: " + report.problems[0] : "check: " + s.ToString();
      return kChildOk;
    }
    *note = "clean";
    for (int i = 0; i < 300; ++i) {
      if (!store.Put("new" + std::to_string(i), std::string(static_cast<size_t>(i), 'n')).ok())
        return kChildWriteFailed;
    }
    for (int i = 1; i < 400; i += 7) store.Erase("key" + std::to_string(i)).IgnoreError();
    if (!store.Flush().ok()) return kChildWriteFailed;
    s = store.Check(&report);
    if (!s.ok() || !report.ok()) {
      *note = s.ok() ? report.problems[0] : s.ToString();
      return kChildCheckDirtyAfterWrites;
    }
    for (int i = 0; i < 300; ++i) {
      if (!store.Get("new" + std::to_string(i), &v).ok() || v != std::string(static_cast<size_t>(i), 'n')) {
        return kChildLostWrite;
      }
    }
    return kChildOk;
  }

  void RunCorruption(int iterations, uint64_t seed) {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeStore(path, 400);
    {
      // Some history: overwrites and a checkpoint, so both meta pages, both
      // snapshots and pending space exist.
      Store store = MustOpen(path);
      for (int i = 0; i < 400; i += 3) REQUIRE(store.Put("key" + std::to_string(i), std::string(50, 'o')).ok());
      REQUIRE(store.Flush().ok());
      for (int i = 1; i < 400; i += 3) REQUIRE(store.Put("key" + std::to_string(i), std::string(90, 'p')).ok());
      REQUIRE(store.Close().ok());
    }
    const std::string image = ReadFileBytes(path);
    const uint64_t heap = internal::format::kHeapOffset;
    REQUIRE(image.size() > heap + kPageSize);
    Rng rng(seed);
    int clean = 0, crashed = 0;
    for (int it = 0; it < iterations; ++it) {
      std::string bytes = image;
      const uint64_t mode = rng.Uniform(4);
      const uint64_t pages = (bytes.size() - heap) / kPageSize;
      std::string what;
      if (mode == 0) {  // a few random bytes
        const uint64_t n = 1 + rng.Uniform(8);
        for (uint64_t k = 0; k < n; ++k) bytes[heap + rng.Uniform(bytes.size() - heap)] = static_cast<char>(rng.Next());
        what = std::to_string(n) + " random bytes";
      } else if (mode == 1) {  // a page of random bytes
        const uint64_t p = rng.Uniform(pages);
        const std::string junk = rng.Bytes(kPageSize);
        bytes.replace(heap + p * kPageSize, kPageSize, junk);
        what = "page " + std::to_string(p) + " random";
      } else if (mode == 2) {  // a zeroed page
        const uint64_t p = rng.Uniform(pages);
        bytes.replace(heap + p * kPageSize, kPageSize, std::string(kPageSize, '\0'));
        what = "page " + std::to_string(p) + " zeroed";
      } else {  // many scattered single-bit flips
        for (int k = 0; k < 64; ++k) {
          const uint64_t at = heap + rng.Uniform(bytes.size() - heap);
          bytes[at] = static_cast<char>(bytes[at] ^ (1 << rng.Uniform(8)));
        }
        what = "64 bit flips";
      }
      WriteFileBytes(path, bytes);
      const bool reboot = rng.Uniform(2) == 0;
      int pipefd[2];
      REQUIRE(::pipe(pipefd) == 0);
      std::fflush(nullptr);
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(pipefd[0]);
        std::string note;
        const int rc = CorruptionChild(path, reboot, &note);
        note = note.substr(0, 200);
        [[maybe_unused]] ssize_t w = ::write(pipefd[1], note.data(), note.size());
        _exit(rc);
      }
      ::close(pipefd[1]);
      const int rc = WaitForChild(pid, 60);
      char buf[256];
      const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
      ::close(pipefd[0]);
      const std::string note = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
      if (note == "clean") ++clean;
      if (rc != 0) {
        ++crashed;
        const std::string how =
            std::string(reboot ? ", after a reboot" : ", same boot") + (rc == -2   ? " (hung)"
                                                                        : rc > 128 ? " (killed by a signal)"
                                                                                   : "");
        CHECK_MESSAGE(rc == 0, "iteration " << it << " (" << what << how << "): child exit " << rc << ", " << note);
      }
    }
    MESSAGE(iterations << " corruptions: " << clean << " left Check clean, " << crashed << " failed");
    CHECK(crashed == 0);
    CHECK(clean > 0);  // some damage left the store usable: the promise about writes after it was tested
  }

  TEST_CASE("bad input: random damage to the heap never crashes open Get ForEach or Check") {
    RunCorruption(500, 1234);
  }

  TEST_CASE("bad input: random damage to the heap never crashes (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunCorruption(5000, 98765);
  }

  // A control page (of this boot, so trusted as it is) whose alloc_offset
  // was damaged but still lies in the file, aligned: the bytes it names are
  // not an allocation map, and a write that allocated by them would
  // overwrite live records. Open refuses it and changes nothing.
  TEST_CASE("bad input: a damaged alloc_offset in the control page is Corruption at the first write, file unchanged") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 3000; ++i) REQUIRE(store.Put("key" + std::to_string(i), std::string(40, 'v')).ok());
    }
    const std::string good = ReadFileBytes(path);
    const size_t at = internal::format::kControlOffset + offsetof(internal::format::ControlPage, alloc_offset);
    uint64_t alloc_offset;
    std::memcpy(&alloc_offset, good.data() + at, 8);
    for (uint64_t damaged : {alloc_offset ^ 0x80, alloc_offset + 4096, uint64_t{internal::format::kHeapOffset}}) {
      if (damaged == alloc_offset) continue;
      CAPTURE(damaged);
      std::string image = good;
      std::memcpy(image.data() + at, &damaged, 8);
      WriteFileBytes(path, image);
      {
        // Reads never use the map; the open does not look at it (that would
        // cost every open three pages). The first write does, before it
        // allocates; so does Check.
        Store store = MustOpen(path);
        std::string v;
        CHECK(store.Get("key7", &v).ok());
        const Status s = store.Put("new", "value");
        CHECK(s.code() == Code::kCorruption);
        CHECK_MESSAGE(s.message().find("allocation map at offset " + std::to_string(damaged)) != std::string::npos,
                      s.ToString());
        CheckReport report;
        REQUIRE(store.Check(&report).ok());
        CHECK(!report.ok());
      }
      // Unchanged but for the control page's lock line (cache line 1: the
      // release counter every lock holder bumps, in any store).
      std::string after = ReadFileBytes(path);
      REQUIRE(after.size() == image.size());
      const size_t lock_line = internal::format::kControlOffset + 64;
      std::copy_n(image.begin() + static_cast<std::ptrdiff_t>(lock_line), 64,
                  after.begin() + static_cast<std::ptrdiff_t>(lock_line));
      CHECK(after == image);
    }
    WriteFileBytes(path, good);
    Store store = MustOpen(path);
    CheckClean(store);
  }

  // The control page's file_size and snapshot slots need not be multiples of
  // 16. Check marked a slot's granules in a table sized for the whole
  // granules of file_size only, and one that ends in the last, partial
  // granule wrote past that table.
  TEST_CASE("bad input: Check names a snapshot slot in the last partial granule of an odd file size") {
    namespace format = internal::format;
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 3000; ++i) REQUIRE(store.Put("key" + std::to_string(i), std::string(40, 'v')).ok());
    }
    std::string image = ReadFileBytes(path);
    const uint64_t size = image.size();
    image.append(8, '\0');  // the file, 8 bytes longer
    auto* ctl = reinterpret_cast<format::ControlPage*>(image.data() + format::kControlOffset);
    REQUIRE(ctl->alloc_words * format::kGranulesPerAllocWord * format::kGranule >= size + 8);
    ctl->file_size.store(size + 8);
    ctl->snapshot_slot_offset[1] = size;
    ctl->snapshot_slot_bytes[1] = 8;
    WriteFileBytes(path, image);
    Store store = MustOpen(path);
    CheckReport report;
    REQUIRE(store.Check(&report).ok());
    CHECK(!report.ok());
    CHECK_MESSAGE(ProblemsText(report).find("at offset " + std::to_string(size) + " (8 bytes) is outside the file") !=
                      std::string::npos,
                  ProblemsText(report));
  }

  // Damage that every read path tolerates but Check must name: a record
  // whose flags are not 0 (its checksum does not cover the header). And what
  // is not damage: a free granule with its fresh and freed bits set, which a
  // writer killed while releasing space leaves (docs/FORMAT.md); Check must
  // stay quiet and the store must allocate over it and stay sound.
  TEST_CASE(
      "bad input: Check reports record flags that are not 0, and not the fresh and freed bits of a free "
      "granule") {
    namespace format = internal::format;
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const std::string key = "the-only-key-with-this-name";
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 100; ++i) REQUIRE(store.Put("key" + std::to_string(i), "v").ok());
      REQUIRE(store.Put(key, "value").ok());
    }
    const std::string good = ReadFileBytes(path);
    auto check_problems = [&](const std::string& image) {
      WriteFileBytes(path, image);
      Store store = MustOpen(path, ReadOnly());
      CheckReport report;
      REQUIRE(store.Check(&report).ok());
      return ProblemsText(report);
    };
    {
      std::string image = good;
      const size_t at = image.find(key);
      REQUIRE(at != std::string::npos);
      const uint16_t flags = 4;
      std::memcpy(image.data() + at - format::kRecordHeaderSize + offsetof(format::RecordHeader, flags), &flags, 2);
      const std::string problems = check_problems(image);
      CHECK_MESSAGE(problems.find("record flags are 4") != std::string::npos, problems);
    }
    {
      std::string image = good;
      format::ControlPage ctl;
      std::memcpy(static_cast<void*>(&ctl), image.data() + format::kControlOffset, sizeof ctl);
      // A word past the header with a granule that is not used.
      bool done = false;
      for (uint64_t w = format::kHeapOffset / 1024; w < ctl.alloc_words && !done; ++w) {
        format::AllocWord word;
        const size_t at = ctl.alloc_offset + w * sizeof word;
        std::memcpy(&word, image.data() + at, sizeof word);
        if (word.used == ~uint64_t{0}) continue;
        const uint64_t bit = uint64_t{1} << std::countr_one(word.used);
        word.fresh |= bit;
        word.freed |= bit;
        std::memcpy(image.data() + at, &word, sizeof word);
        done = true;
      }
      REQUIRE(done);
      const std::string problems = check_problems(image);
      CHECK_MESSAGE(problems.empty(), problems);
      // Writes that fill the hole, then a checkpoint; both leave a clean store.
      Store store = MustOpen(path);
      for (int i = 0; i < 2000; ++i) REQUIRE(store.Put("more" + std::to_string(i), std::string(i % 40, 'x')).ok());
      CheckClean(store);
      REQUIRE(store.Flush(FlushMode::kSync).ok());
      CheckClean(store);
      for (int i = 0; i < 2000; i += 2) REQUIRE(store.Erase("more" + std::to_string(i)).ok());
      CheckClean(store);
    }
    const std::string problems = check_problems(good);
    CHECK_MESSAGE(problems.empty(), problems);
  }

  // A control page whose entry count was damaged to 0 (in this boot, so it
  // is trusted as it is): erasing a key must not wrap the count to 2^64 - 1,
  // which every later open would refuse. The erase fails and changes nothing.
  TEST_CASE("bad input: an erase with the entry count damaged to 0 is Corruption and changes nothing") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 50; ++i) REQUIRE(store.Put("key" + std::to_string(i), "v").ok());
    }
    std::string image = ReadFileBytes(path);
    const size_t at = internal::format::kControlOffset + offsetof(internal::format::ControlPage, entries);
    uint64_t entries;
    std::memcpy(&entries, image.data() + at, 8);
    REQUIRE(entries == 50);
    std::memset(image.data() + at, 0, 8);
    WriteFileBytes(path, image);
    Options options;
    options.checkpoint_on_close = false;  // the close must not write either
    {
      Store store = MustOpen(path, options);
      const Status s = store.Erase("key7");
      CHECK(s.code() == Code::kCorruption);
      CHECK_MESSAGE(s.message().find("counts no entries") != std::string::npos, s.ToString());
      std::string v;
      CHECK(store.Get("key7", &v).ok());
    }
    std::memcpy(&entries, ReadFileBytes(path).data() + at, 8);
    CHECK(entries == 0);
    Store store = MustOpen(path, options);  // still opens
    std::string v;
    CHECK(store.Get("key7", &v).ok());
  }

  // A killed writer's undo log whose entry rewrites an entry still to be
  // applied (entry 1 retargets entry 0 at the control page's file_size): each
  // entry passes its own check, and the rollback would leave the store
  // claiming 1 GiB past the file's end, which a get then faults on. Refused
  // before anything is applied, and by the rollback itself.
  TEST_CASE("bad input: an undo log entry that rewrites the log is Corruption and changes nothing") {
    using namespace internal::format;  // NOLINT
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      for (int i = 0; i < 10; ++i) REQUIRE(store.Put(Key16(i), "v").ok());
    }
    std::string image = ReadFileBytes(path);
    ControlPage ctl;
    std::memcpy(static_cast<void*>(&ctl), image.data() + kControlOffset, sizeof ctl);
    const UndoEntry log[2] = {
        {uint64_t{kHeapOffset}, ctl.file_size.load() + (uint64_t{1} << 30)},         // word at 64 KiB, for now
        {uint64_t{kUndoOffset}, kControlOffset + offsetof(ControlPage, file_size)},  // entry 0's target
    };
    std::memcpy(image.data() + kUndoOffset, log, sizeof log);
    const uint64_t count = 2;
    std::memcpy(image.data() + kControlOffset + offsetof(ControlPage, undo_count), &count, 8);
    WriteFileBytes(path, image);
    Store store;
    const Status s = Store::Open(path, Options{}, &store);
    CHECK(s.code() == Code::kCorruption);
    CHECK(s.message().find("log itself") != std::string::npos);
    CHECK(ReadFileBytes(path) == image);
  }

  // A symbolic link to a missing file: the store cannot be made under the
  // name, and the error says why instead of blaming create_if_missing.
  TEST_CASE("bad input: a dangling symbolic link at the path is NotFound with a message that names it") {
    TempDir dir;
    const std::string path = dir.File("link.mkv");
    REQUIRE(::symlink(dir.File("missing.mkv").c_str(), path.c_str()) == 0);
    Store store;
    const Status s = Store::Open(path, Options{}, &store);
    CHECK(s.code() == Code::kNotFound);
    CHECK(s.message().find("symbolic link") != std::string::npos);
    CHECK(s.message().find("create_if_missing is off") == std::string::npos);
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) files += e.path().filename() != "link.mkv";
    CHECK(files == 0);  // no temporary file left
  }

  // A FIFO at the path: an open(2) for reading waits for a writer, so an
  // open that did not ask for O_NONBLOCK hung there (the CLI's read-only
  // commands did) before it could say what is wrong.
  TEST_CASE("bad input: a FIFO at the path is refused at once, read-only or writable") {
    TempDir dir;
    const std::string path = dir.File("fifo");
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    for (const bool read_only : {true, false}) {
      CAPTURE(read_only);
      Options options;
      options.read_only = read_only;
      std::atomic<bool> done{false};
      Status s;
      std::thread opener([&] {
        Store store;
        s = Store::Open(path, options, &store);
        done = true;
      });
      const auto until = Clock::now() + std::chrono::seconds(10);
      while (!done && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      if (!done) {
        // Hung in open(2): a writer lets it go on, and the test fails.
        const int w = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
        opener.join();
        if (w >= 0) ::close(w);
        FAIL("the open of a FIFO waited for a peer for 10 s");
      }
      opener.join();
      CHECK(s.code() == Code::kInvalidArgument);
      CHECK(s.message().find("is not a regular file") != std::string::npos);
    }
  }
}  // TEST_SUITE("bad_input")

}  // namespace
}  // namespace mapkv::test
