// store_growth_test.cc: a store growing from an empty file to millions of
// entries (table rehashes, allocation-map relocations, file growth and
// remapping), verified key by key.
#include <sys/stat.h>
#include <sys/types.h>
#ifndef _WIN32
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "heap.h"
#include "racy.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

std::string SmallValue(uint64_t i) { return "v" + std::to_string(i * 31 % 100003); }

// Writes keys [0, n): batches of 100 for the first half, plain puts for the
// second (one WriteBatch cannot hold 1000 puts: see the batch-limit test in
// store_basic_test.cc).
void Load(Store& store, uint64_t n) {
  const uint64_t half = n / 2;
  WriteBatch batch;
  for (uint64_t i = 0; i < half; ++i) {
    batch.Put(Key16(i), SmallValue(i));
    if (batch.Count() == 100 || i + 1 == half) {
      Status s = store.Write(batch);
      REQUIRE_MESSAGE(s.ok(), "batch ending at key " << i << ": " << s.ToString());
      batch.Clear();
    }
  }
  for (uint64_t i = half; i < n; ++i) {
    Status s = store.Put(Key16(i), SmallValue(i));
    REQUIRE_MESSAGE(s.ok(), "key " << i << ": " << s.ToString());
  }
}

void VerifyAll(const Store& store, uint64_t n, uint64_t step = 1) {
  std::string v;
  uint64_t bad = 0, first_bad = 0;
  for (uint64_t i = 0; i < n; i += step) {
    if (!store.Get(Key16(i), &v).ok() || v != SmallValue(i)) {
      if (bad++ == 0) first_bad = i;
    }
  }
  CHECK_MESSAGE(bad == 0, bad << " keys missing or wrong, the first is " << first_bad);
  CHECK(store.Get(Key16(n), &v).code() == Code::kNotFound);
}

void RunGrowth(uint64_t n) {
  TempDir dir;
  const std::string path = dir.File("g.mkv");
  const auto start = Clock::now();
  Store store = MustOpen(path);
  Stats st;
  REQUIRE(store.GetStats(&st).ok());
  const uint64_t initial_bytes = st.file_bytes;
  const uint64_t initial_slots = st.slots;
  Load(store, n);
  const double load_s = SecondsSince(start);
  REQUIRE(store.GetStats(&st).ok());
  CHECK(st.entries == n);
  CHECK(store.size() == n);
  CHECK(st.slots > initial_slots);
  CHECK(st.slots * internal::format::kMaxLoadNum / internal::format::kMaxLoadDen >= n);
  CHECK(st.file_bytes > initial_bytes);
  CHECK(st.file_bytes == FileSize(path));
  CHECK(st.load_factor <= static_cast<double>(internal::format::kMaxLoadNum) / internal::format::kMaxLoadDen);
  VerifyAll(store, n);
  CheckClean(store);
  MESSAGE("growth to " << n << " entries: load " << load_s << " s, total " << SecondsSince(start) << " s, file "
                       << st.file_bytes << " bytes, " << st.slots << " slots, mean probe " << st.mean_probe);
  REQUIRE(store.Close().ok());

  store = MustOpen(path);
  CHECK(store.size() == n);
  VerifyAll(store, n, 7);
  // Erasing half and re-adding keeps everything consistent.
  for (uint64_t i = 0; i < n; i += 2) REQUIRE(store.Erase(Key16(i)).ok());
  CHECK(store.size() == n - (n + 1) / 2);
  std::string v;
  CHECK(store.Get(Key16(0), &v).code() == Code::kNotFound);
  REQUIRE(store.Get(Key16(1), &v).ok());
  CHECK(v == SmallValue(1));
  CheckClean(store);
}

TEST_SUITE("growth") {
  // The control page pointer is taken in the first mapping and kept; undo
  // entries for its words must hold file offsets after the file has been
  // mapped again (once it outgrows the first mapping: on Windows at every
  // growth), or a rolled-back or killed write corrupts the store.
  TEST_CASE("growth: MapSet::OffsetOf gives the file offset of a pointer into an older mapping") {
    TempDir dir;
    std::unique_ptr<internal::File> file;
    REQUIRE(internal::File::Open(dir.File("m"), internal::FileSpec{.create = true}, &file).ok());
    REQUIRE(file->Reserve(64 << 10).ok());
    internal::MapSet maps(file.get(), true, false);
    REQUIRE(maps.Cover(4096).ok());
    uint8_t* const first = maps.Current()->base;
    const uint64_t next = (256ull << 20) + 1;  // past the first mapping's headroom
    REQUIRE(file->Reserve(next).ok());
    REQUIRE(maps.Cover(next).ok());
    REQUIRE(maps.Current()->base != first);
    CHECK(maps.OffsetOf(first + 1000) == 1000);
    CHECK(maps.OffsetOf(first) == 0);
    CHECK(maps.OffsetOf(maps.Current()->base + 2000) == 2000);
  }

#ifndef _WIN32
  // Reads at stale offsets (another thread's, from before a cut) must find
  // zeros, never SIGBUS: after a cut no mapping shows the file past its end.
  TEST_CASE("growth: MapSet shows zeros, not the file, past a cut; Cover maps it again up to its end") {
    TempDir dir;
    std::unique_ptr<internal::File> file;
    REQUIRE(internal::File::Open(dir.File("m"), internal::FileSpec{.create = true}, &file).ok());
    REQUIRE(file->Reserve(1 << 20).ok());
    internal::MapSet maps(file.get(), true, false);
    REQUIRE(maps.Cover(1 << 20).ok());
    uint8_t* const base = maps.Current()->base;
    CHECK(maps.Current()->length() >= (1 << 20));  // with headroom
    std::memset(base + (900 << 10), 0xAB, 4096);

    // Withdrawn past 512 KiB, file not cut yet: zeros there; mapped again,
    // the same mapping shows the file's bytes.
    REQUIRE(maps.Cut(512 << 10).ok());
    CHECK(maps.Current()->length() == (512 << 10));
    CHECK(internal::RacyLoad(reinterpret_cast<const uint64_t*>(base + (900 << 10))) == 0);
    REQUIRE(maps.Cover(1 << 20).ok());
    CHECK(maps.Current()->base == base);
    CHECK(maps.Current()->length() == (1 << 20));
    CHECK(base[900 << 10] == 0xAB);

    // Cut for real: no fault past the new end, and the file grown back reads
    // its new (zero) bytes.
    REQUIRE(maps.Cut(512 << 10).ok());
    REQUIRE(file->Truncate(512 << 10).ok());
    CHECK(internal::RacyLoad(reinterpret_cast<const uint64_t*>(base + (900 << 10))) == 0);
    REQUIRE(file->Reserve(1 << 20).ok());
    REQUIRE(maps.Cover(1 << 20).ok());
    CHECK(maps.Current()->base == base);
    CHECK(maps.Current()->length() == (1 << 20));
    CHECK(base[900 << 10] == 0);
    // Past the new end (where a reader's size from before the cut may still
    // point): zeros, not the file.
    CHECK(internal::RacyLoad(reinterpret_cast<const uint64_t*>(base + (3 << 20))) == 0);
    base[900 << 10] = 7;  // writable again
    CHECK(base[900 << 10] == 7);
  }
#endif

  TEST_CASE("growth: an empty store grows to 2000000 entries and every key reads back") { RunGrowth(2000000); }

  TEST_CASE("growth: an empty store grows to 8000000 entries (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunGrowth(8000000);
  }

  TEST_CASE("growth: large values grow the file many times") {
    TempDir dir;
    const std::string path = dir.File("g.mkv");
    Store store = MustOpen(path);
    Rng rng(21);
    Model model;
    uint64_t grew = 0, last = FileSize(path);
    for (int i = 0; i < 3000; ++i) {
      std::string k = "big" + std::to_string(i);
      std::string v = rng.Bytes(1000 + rng.Uniform(60000));
      REQUIRE(store.Put(k, v).ok());
      model[k] = std::move(v);
      const uint64_t now = FileSize(path);
      if (now > last) ++grew;
      last = now;
    }
    CHECK(grew >= 10);
    CHECK(Dump(store) == model);
    CheckClean(store);
    REQUIRE(store.Close().ok());
    store = MustOpen(path);
    CHECK(Dump(store) == model);
    CheckClean(store);
  }

  // With large_pages a grown file is rounded up to whole 2 MiB pages from
  // 4 MiB on. A map moved into the new tail was sized for the size before
  // that rounding, so a growth landing between 4 and 8 MiB could leave a file
  // larger than its allocation map covers: the map's tail read records as
  // allocation bits, and every other handle refused the store as corrupt.
  TEST_CASE("growth: with large_pages the allocation map covers the file after every growth") {
    TempDir dir;
    const std::string path = dir.File("g.mkv");
    Options options;
    options.large_pages = true;
    Store store = MustOpen(path, options);
    const ControlView ctl(path);
    Rng rng(33);
    Model model;
    for (int i = 0; i < 400 && FileSize(path) < (96u << 20); ++i) {
      const std::string k = "v" + std::to_string(i);
      std::string v = rng.Bytes(1024 + rng.Uniform(1600 * 1024));
      REQUIRE(store.Put(k, v).ok());
      model[k] = std::move(v);
      const uint64_t covered = ctl->alloc_words * internal::format::kGranulesPerAllocWord * internal::format::kGranule;
      const uint64_t file_size = ctl->file_size.load();
      REQUIRE_MESSAGE(covered >= file_size, "after put " << i << ": the allocation map covers " << covered
                                                         << " bytes of a file of " << file_size);
    }
    REQUIRE(FileSize(path) >= (16u << 20));
    Store other = MustOpen(path, options);  // validates the control page
    CHECK(Dump(other) == model);
    CheckClean(other);
  }

  TEST_CASE("growth: other handles follow a file that another handle grows") {
    TempDir dir;
    const std::string path = dir.File("g.mkv");
    Store writer = MustOpen(path);
    Store reader = MustOpen(path);  // mapped while the file is small
    Options ro;
    ro.read_only = true;
    Store ro_reader = MustOpen(path, ro);
    const uint64_t n = 300000;
    // Read while the writer grows the file: every key the writer reports
    // written is readable through the other handles at once.
    std::atomic<uint64_t> written{0};
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> misses{0}, reads{0};
    std::thread checker([&] {
      Rng rng(1);
      std::string v;
      while (!stop.load()) {
        const uint64_t w = written.load();
        if (w == 0) continue;
        const uint64_t i = rng.Uniform(w);
        const Store& h = (i & 1) ? reader : ro_reader;
        if (!h.Get(Key16(i), &v).ok() || v != SmallValue(i)) misses.fetch_add(1);
        reads.fetch_add(1);
      }
    });
    for (uint64_t i = 0; i < n; ++i) {
      REQUIRE(writer.Put(Key16(i), SmallValue(i)).ok());
      written.store(i + 1);
    }
    stop = true;
    checker.join();
    CHECK(reads.load() > 1000);
    CHECK(misses.load() == 0);
    VerifyAll(reader, n);
    VerifyAll(ro_reader, n, 3);
    CHECK(Dump(ro_reader).size() == n);
    CheckClean(reader);
    CheckClean(ro_reader);
  }

#ifndef _WIN32  // RLIMIT_FSIZE in a fork(2) child (listed in tests/CMakeLists.txt)
  TEST_CASE("growth: a file-size limit gives NoSpace and leaves the store as it was") {
    TempDir dir;
    const std::string path = dir.File("g.mkv");
    // In a child: RLIMIT_FSIZE is per process. Exit codes name the failed step.
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::signal(SIGXFSZ, SIG_DFL);  // a growth past the limit must be refused, not signalled
      struct rlimit limit {};
      if (::getrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(2);
      limit.rlim_cur = 8 << 20;
      if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(3);
      Store store;
      if (!Store::Open(path, {}, &store).ok()) _exit(4);
      Model model;
      Status s;
      uint64_t i = 0;
      for (; i < 100000; ++i) {
        const std::string v(static_cast<size_t>(1000 + i % 3000), static_cast<char>('a' + i % 26));
        s = store.Put(Key16(i), v);
        if (!s.ok()) break;
        model[Key16(i)] = v;
      }
      if (s.code() != Code::kNoSpace) _exit(5);
      std::string v;
      if (store.Get(Key16(i), &v).code() != Code::kNotFound) _exit(6);  // the refused put left nothing
      if (store.size() != model.size()) _exit(7);
      // Small writes that fit still work, and so does a batch that does not fit (refused whole).
      WriteBatch big;
      for (int k = 0; k < 50; ++k) big.Put("big" + std::to_string(k), std::string(200000, 'b'));
      if (store.Write(big).code() != Code::kNoSpace) _exit(8);
      if (store.Get("big0", &v).code() != Code::kNotFound) _exit(9);
      if (!store.Erase(Key16(0)).ok()) _exit(10);
      model.erase(Key16(0));
      if (!store.Put("small", "fits").ok()) _exit(11);
      model["small"] = "fits";
      CheckReport report;
      if (!store.Check(&report).ok() || !report.ok()) _exit(12);
      uint64_t same = 0;
      if (!store
               .ForEach({},
                        [&](std::string_view k, std::string_view val) {
                          auto it = model.find(std::string(k));
                          same += it != model.end() && it->second == val;
                          return true;
                        })
               .ok()) {
        _exit(13);
      }
      if (same != model.size() || store.size() != model.size()) _exit(14);
      if (!store.Close().ok()) _exit(15);
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) > (8u << 20)) _exit(16);
      _exit(0);
    }
    const int rc = WaitChild(pid);
    CHECK_MESSAGE(
        rc == 0, "the child failed at step " << rc << (rc == 128 + SIGXFSZ ? " (SIGXFSZ: the limit was crossed)" : ""));
    // And the parent, without the limit, finds a sound store.
    Store store = MustOpen(path);
    CHECK(store.size() > 1000);
    std::string v;
    REQUIRE(store.Get("small", &v).ok());
    CHECK(v == "fits");
    CheckClean(store);
  }

#endif
#ifdef __linux__  // madvise and /proc/self/smaps (listed in tests/CMakeLists.txt)
  // One mapped area of a file, from /proc/self/smaps.
  struct MappedArea {
    uint64_t offset = 0;  // file offset of its first byte
    uint64_t length = 0;
    uint64_t pmd_kb = 0;  // FilePmdMapped: mapped with 2 MiB pages
    std::string flags;    // VmFlags ("hg": asked for huge pages, "nh": refused them)
  };

  std::vector<MappedArea> MappedAreas(const std::string& path) {
    std::ifstream smaps("/proc/self/smaps");
    REQUIRE_MESSAGE(smaps.good(), "cannot read /proc/self/smaps");
    std::vector<MappedArea> areas;
    bool ours = false;
    std::string line;
    while (std::getline(smaps, line)) {
      unsigned long long start = 0, end = 0, offset = 0;
      char perms[8] = {0};
      int name_at = 0;
      if (std::sscanf(line.c_str(), "%llx-%llx %7s %llx %*s %*s %n", &start, &end, perms, &offset, &name_at) >= 4 &&
          name_at > 0) {
        ours = line.compare(static_cast<size_t>(name_at), std::string::npos, path) == 0;
        if (ours) areas.push_back(MappedArea{offset, end - start, 0, ""});
      } else if (ours && line.rfind("FilePmdMapped:", 0) == 0) {
        areas.back().pmd_kb = std::stoull(line.substr(14));
      } else if (ours && line.rfind("VmFlags:", 0) == 0) {
        areas.back().flags = line.substr(8) + " ";
      }
    }
    return areas;
  }

  // Whether this kernel and file system map a file with 2 MiB pages when
  // asked (transparent huge pages for the page cache: ext4 and XFS with large
  // folios, Linux 6.x).
  bool FileLargePagesWork(const std::string& path) {
    constexpr size_t kFile = 8u << 20, kMap = 64u << 20;
    FILE* f = std::fopen(path.c_str(), "w+");
    REQUIRE(f != nullptr);
    REQUIRE(::posix_fallocate(::fileno(f), 0, kFile) == 0);  // as the engine grows its files
    void* p = ::mmap(nullptr, kMap, PROT_READ | PROT_WRITE, MAP_SHARED, ::fileno(f), 0);
    REQUIRE(p != MAP_FAILED);
    bool works = false;
    // Touched from 2 MiB on: faults below would start a sequential read-ahead
    // that fills the advised range with small pages first.
    if (::madvise(static_cast<char*>(p) + (2u << 20), kMap - (2u << 20), MADV_HUGEPAGE) == 0) {
      for (size_t i = 2u << 20; i < kFile; i += 4096) static_cast<char*>(p)[i] = 1;
      for (const MappedArea& a : MappedAreas(path)) works = works || a.pmd_kb > 0;
    }
    ::munmap(p, kMap);
    std::fclose(f);
    return works;
  }

  TEST_CASE("growth: large_pages maps a big store with 2 MiB pages, its allocation map with small ones") {
    TempDir dir;
    if (!FileLargePagesWork(dir.File("probe"))) {
      MESSAGE(
          "SKIPPED: this kernel or file system maps no file with 2 MiB pages (FilePmdMapped stays 0 after "
          "MADV_HUGEPAGE), so Options::large_pages changes nothing here and is not checked");
      return;
    }
    for (const bool large : {true, false}) {
      CAPTURE(large);
      const std::string path = dir.File(large ? "large.mkv" : "small.mkv");
      Options options;
      options.large_pages = large;
      Store store = MustOpen(path, options);
      const std::string value(100, 'v');
      for (uint64_t i = 0; i < 200000; ++i) REQUIRE(store.Put(Key16(i), value).ok());
      // Reopened, as a store is read in the end: lookups fault the file in anew.
      REQUIRE(store.Close().ok());
      store = MustOpen(path, options);
      std::string out;
      for (uint64_t i = 0; i < 200000; ++i) REQUIRE(store.Get(Key16(i), &out).ok());
      const uint64_t size = FileSize(path);
      REQUIRE(size > (16u << 20));
      uint64_t alloc_offset = 0;
      const std::string bytes = ReadFileBytes(path);
      std::memcpy(
          &alloc_offset,
          bytes.data() + internal::format::kControlOffset + offsetof(internal::format::ControlPage, alloc_offset), 8);
      uint64_t pmd_kb = 0;
      const MappedArea* map_area = nullptr;
      const std::vector<MappedArea> areas = MappedAreas(path);
      for (const MappedArea& a : areas) {
        pmd_kb += a.pmd_kb;
        if (a.offset <= alloc_offset && alloc_offset < a.offset + a.length) map_area = &a;
      }
      MESSAGE("large_pages " << large << ": file " << size << " bytes, " << pmd_kb << " KiB mapped with 2 MiB pages");
      if (large) {
        CHECK(pmd_kb > 0);
        CHECK(size % (2u << 20) == 0);  // grown in whole 2 MiB steps
        REQUIRE(map_area != nullptr);
        CAPTURE(alloc_offset);
        CAPTURE(map_area->offset);
        CAPTURE(map_area->length);
        CAPTURE(map_area->flags);
        CHECK(map_area->flags.find(" nh ") != std::string::npos);
        CHECK(map_area->pmd_kb == 0);
      } else {
        CHECK(pmd_kb == 0);
      }
    }
  }
#endif
}  // TEST_SUITE("growth")

}  // namespace
}  // namespace mapkv::test
