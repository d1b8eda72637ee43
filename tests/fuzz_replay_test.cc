// fuzz_replay_test.cc: the fuzzer's seed corpus and every crash input it ever
// found, replayed through the fuzz body (tests/fuzz/fuzz_store.h) in the
// normal suite, so they run under the sanitizer presets too; and every byte of
// the control page flipped in turn.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "format.h"
#include "fuzz/fuzz_store.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && e.path().filename() != "README.md") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

fuzz::FuzzResult Replay(const std::string& file, const std::string& scratch) {
  const std::string bytes = ReadFileBytes(file);
  return fuzz::RunStoreBytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), scratch);
}

// A store of `keys` keys ("key0", ...) whose last close did not checkpoint:
// its control page is this boot's, the state the damage below starts from.
void MakeUncheckpointed(const std::string& path, int keys, uint64_t initial_capacity = 0) {
  Options o;
  o.checkpoint_on_close = false;
  if (initial_capacity != 0) o.initial_capacity = initial_capacity;
  Store s = MustOpen(path, o);
  for (int i = 0; i < keys; ++i) REQUIRE(s.Put("key" + std::to_string(i), "v").ok());
}

TEST_SUITE("bad_input") {
  TEST_CASE("bad input: the fuzz seed corpus stores are valid and survive the fuzz body") {
    TempDir dir;
    const std::vector<std::string> files = FilesIn(MAPKV_DATA_DIR "/fuzz-corpus");
    REQUIRE_MESSAGE(files.size() >= 7, "seed corpus missing from " MAPKV_DATA_DIR "/fuzz-corpus");
    for (const std::string& f : files) {
      CAPTURE(f);
      const fuzz::FuzzResult r = Replay(f, dir.File("s.mkv"));
      CHECK_MESSAGE(r.violation.empty(), r.violation);
      // Valid stores: both variants (as written, and stamped with this boot)
      // open writable and check sound.
      CHECK(r.opened_writable == 2);
      CHECK(r.checked_sound >= 2);
    }
  }

  TEST_CASE("bad input: every saved fuzz crash input replays without a crash or a broken promise") {
    TempDir dir;
    const std::vector<std::string> files = FilesIn(MAPKV_DATA_DIR "/fuzz-regressions");
    MESSAGE(files.size() << " saved fuzz inputs in " MAPKV_DATA_DIR "/fuzz-regressions");
    REQUIRE(files.size() >= 5);  // as many as the tree holds: a wrong directory must not pass empty
    for (const std::string& f : files) {
      CAPTURE(f);
      const fuzz::FuzzResult r = Replay(f, dir.File("s.mkv"));
      CHECK_MESSAGE(r.violation.empty(), r.violation);
    }
  }

  // A killed writer's undo log restores control-page words. A log (of this
  // boot) that would restore a table size, page map or file size out of range
  // is refused at open, before recovery changes a byte; found by the fuzzer
  // as a table of 2^70 slots (UBSan shift out of bounds in the next Put).
  TEST_CASE("bad input: an undo log that would restore a bad control page is refused and changes nothing") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeUncheckpointed(path, 50);
    const std::string image = ReadFileBytes(path);
    using internal::format::ControlPage;
    using internal::format::UndoEntry;
    constexpr uint64_t kCtl = internal::format::kControlOffset;
    const auto* ctl = reinterpret_cast<const ControlPage*>(image.data() + kCtl);
    REQUIRE(ctl->undo_count.load() == 0);
    auto field = [&](const void* p) {
      return kCtl + static_cast<uint64_t>(static_cast<const char*>(p) - (image.data() + kCtl));
    };
    struct Case {
      const char* what;
      uint64_t target;
      uint64_t value;
      const char* expect;
    };
    const Case cases[] = {
        {"table of 2^70 slots", field(&ctl->table_shift), 70, "bad table size"},
        {"page map past the end", field(&ctl->pagemap_offset), uint64_t{1} << 40, "page map out of the store"},
        {"file of 1 TiB", field(&ctl->file_size), uint64_t{1} << 40, "truncated"},
        {"heap end inside the control page", field(&ctl->heap_end), kCtl, "out of the heap"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.what);
      std::string bytes = image;
      auto* out = reinterpret_cast<ControlPage*>(bytes.data() + kCtl);
      UndoEntry e{(uint64_t{0} << internal::format::kUndoKindShift) | c.target, c.value};
      std::memcpy(bytes.data() + internal::format::kUndoOffset, &e, sizeof(e));
      out->undo_count.store(1);
      WriteFileBytes(path, bytes);
      Store store;
      const Status s = Store::Open(path, Options{}, &store);
      CHECK(s.code() == Code::kCorruption);
      CHECK_MESSAGE(s.ToString().find("undo log would leave it") != std::string::npos, s.ToString());
      CHECK_MESSAGE(s.ToString().find(c.expect) != std::string::npos, s.ToString());
      CHECK_MESSAGE(ReadFileBytes(path) == bytes, "the refused open changed the file");
    }
    // The same log entry restoring a sound value is applied by recovery.
    std::string bytes = image;
    UndoEntry e{field(&ctl->table_shift), ctl->table_shift.load()};
    std::memcpy(bytes.data() + internal::format::kUndoOffset, &e, sizeof(e));
    reinterpret_cast<ControlPage*>(bytes.data() + kCtl)->undo_count.store(1);
    WriteFileBytes(path, bytes);
    Store store = MustOpen(path);
    CHECK(Dump(store).size() == 50);
    CheckClean(store);
  }

  // An undo entry that lists freed table pages is checked page by page; a
  // log of 3,328 such entries, each listing as many pages as the file has
  // words, made an open spin for minutes on a 1 GiB file (and for seconds
  // on this 16 MiB one). A write frees each page once: more freed pages in
  // all than the file has pages is refused at once.
  TEST_CASE("bad input: an undo log that frees more table pages than the file has is refused at once") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeUncheckpointed(path, 1, /*initial_capacity=*/1000000);  // a file of some size
    const std::string image = ReadFileBytes(path);
    using internal::format::ControlPage;
    using internal::format::UndoEntry;
    constexpr uint64_t kCtl = internal::format::kControlOffset;
    const uint64_t fs = reinterpret_cast<const ControlPage*>(image.data() + kCtl)->file_size.load();
    REQUIRE(fs >= (4 << 20));
    const uint64_t target = fs / 2;
    const uint64_t file_pages = fs / internal::format::kPageSize;
    // Entries that each list a page per 4 bytes to the file's end (the first
    // is refused), then entries of which only the first two together list
    // more pages than the file has.
    for (const auto& [pages, refused] : {std::pair<uint64_t, int>{(fs - target) / 4, 0}, {file_pages / 2 + 1, 1}}) {
      std::string bytes = image;
      const UndoEntry e{(uint64_t{3} << internal::format::kUndoKindShift) | target, pages};
      for (uint64_t i = 0; i < internal::format::kUndoCapacity; ++i) {
        std::memcpy(bytes.data() + internal::format::kUndoOffset + i * sizeof(e), &e, sizeof(e));
      }
      reinterpret_cast<ControlPage*>(bytes.data() + kCtl)->undo_count.store(internal::format::kUndoCapacity);
      WriteFileBytes(path, bytes);
      for (const bool read_only : {false, true}) {
        CAPTURE(pages);
        CAPTURE(read_only);
        Options o;
        o.read_only = read_only;
        Store store;
        const Status s = Store::Open(path, o, &store);
        CHECK(s.code() == Code::kCorruption);
        const std::string want = "entry " + std::to_string(refused) + " frees more table pages than the file has";
        CHECK_MESSAGE(s.ToString().find(want) != std::string::npos, s.ToString());
        CHECK_MESSAGE(ReadFileBytes(path) == bytes, "the refused open changed the file");
      }
    }
  }

  // The file may be longer than the store (a cut that failed), but what the
  // control page places must lie in the store, which the allocation map
  // covers. An allocation map placed past it, in the file, made Check and
  // the first write read its marks past the file's end (SIGBUS); a page map
  // or ring there would be freed through marks past the map's end.
  TEST_CASE("bad input: a control page that places a structure past the store's end, in a longer file, is refused") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeUncheckpointed(path, 3);
    std::string image = ReadFileBytes(path);
    using internal::format::ControlPage;
    constexpr uint64_t kCtl = internal::format::kControlOffset;
    const auto* ctl = reinterpret_cast<const ControlPage*>(image.data() + kCtl);
    const uint64_t store_size = ctl->file_size.load();
    REQUIRE(store_size == image.size());
    REQUIRE(ctl->ring_capacity != 0);
    constexpr uint64_t kLonger = 16 << 20;
    REQUIRE(store_size + (1 << 20) < kLonger - (64 << 10));
    image.resize(kLonger, '\0');
    struct Case {
      const char* what;
      void (*damage)(ControlPage*);
      const char* expect;
    };
    const Case cases[] = {
        {"allocation map", [](ControlPage* c) { c->alloc_offset = kLonger - (64 << 10); },
         "allocation map out of the store"},
        {"page map", [](ControlPage* c) { c->pagemap_offset.store(kLonger - (64 << 10)); },
         "page map out of the store"},
        {"change ring", [](ControlPage* c) { c->ring_offset = kLonger - (2 << 20); }, "change ring out of the store"},
    };
    for (const Case& c : cases) {
      for (const bool read_only : {false, true}) {
        CAPTURE(c.what);
        CAPTURE(read_only);
        std::string bytes = image;
        c.damage(reinterpret_cast<ControlPage*>(bytes.data() + kCtl));
        WriteFileBytes(path, bytes);
        Options o;
        o.read_only = read_only;
        Store store;
        const Status s = Store::Open(path, o, &store);
        CHECK(s.code() == Code::kCorruption);
        CHECK_MESSAGE(s.ToString().find(c.expect) != std::string::npos, s.ToString());
        CHECK_MESSAGE(ReadFileBytes(path) == bytes, "the refused open changed the file");
      }
    }
    // The longer file itself is sound.
    WriteFileBytes(path, image);
    Store store = MustOpen(path);
    CHECK(Dump(store).size() == 3);
    CheckClean(store);
  }

  // A control page (of this boot) whose heap_end lay below the heap, with an
  // allocation map that called the pages under it free: a put that found no
  // room past the end allocated from heap_end and wrote its record over the
  // control page (CI's fuzz run of 2026-11-27: UBSan shift out of bounds in
  // TableReader::slots, the table size being key bytes). Open refuses it.
  TEST_CASE("bad input: a control page whose heap end lies below the heap is refused and changes nothing") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    MakeUncheckpointed(path, 1);
    std::string bytes = ReadFileBytes(path);
    using internal::format::ControlPage;
    constexpr uint64_t kCtl = internal::format::kControlOffset;
    reinterpret_cast<ControlPage*>(bytes.data() + kCtl)->heap_end = kCtl;
    WriteFileBytes(path, bytes);
    for (const bool read_only : {false, true}) {
      CAPTURE(read_only);
      Options o;
      o.read_only = read_only;
      Store store;
      const Status s = Store::Open(path, o, &store);
      CHECK(s.code() == Code::kCorruption);
      CHECK_MESSAGE(s.ToString().find("heap end 8192 out of the heap") != std::string::npos, s.ToString());
      CHECK_MESSAGE(ReadFileBytes(path) == bytes, "the refused open changed the file");
    }
  }

  // The control page is trusted (and its undo log applied) when it was
  // written in this boot. Each byte flipped, in a store whose last changes are
  // not checkpointed: open, read, Check and writes may fail with a Status but
  // never crash; a store that opens and that Check calls sound holds exactly
  // the data, or (for a flip the writable open repaired by recovery) the data
  // as of the checkpoint.
  TEST_CASE("bad input: every byte of the control page flipped never crashes and Check is honest") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    Model checkpointed, model;
    {
      Options o;
      o.checkpoint_on_close = false;
      Store s = MustOpen(path, o);
      for (int i = 0; i < 300; ++i) {
        const std::string k = "key" + std::to_string(i);
        REQUIRE(s.Put(k, "v" + std::to_string(i)).ok());
        model[k] = "v" + std::to_string(i);
      }
      REQUIRE(s.Flush().ok());
      checkpointed = model;
      for (int i = 0; i < 300; i += 4) {
        const std::string k = "key" + std::to_string(i);
        REQUIRE(s.Put(k, "w" + std::to_string(i)).ok());
        model[k] = "w" + std::to_string(i);
      }
      for (int i = 1; i < 300; i += 9) {
        REQUIRE(s.Erase("key" + std::to_string(i)).ok());
        model.erase("key" + std::to_string(i));
      }
    }
    const std::string image = ReadFileBytes(path);
    constexpr uint64_t kCtl = internal::format::kControlOffset;
    int refused = 0, reported = 0, sound_exact = 0, sound_checkpoint = 0;
    for (uint64_t i = 0; i < internal::format::kPageSize; ++i) {
      std::string bytes = image;
      bytes[kCtl + i] = static_cast<char>(bytes[kCtl + i] ^ (i % 3 == 0 ? 0xff : 0x10));
      WriteFileBytes(path, bytes);
      Store store;
      Options o;
      o.lock_timeout = std::chrono::milliseconds(100);
      o.checkpoint_on_close = false;
      o.read_only = i % 2 == 1;
      Status s = Store::Open(path, o, &store);
      if (!s.ok()) {
        CHECK_MESSAGE((s.code() == Code::kCorruption || s.code() == Code::kBusy),
                      "control byte " << i << ": " << s.ToString());
        ++refused;
        continue;
      }
      std::string v;
      for (int k = 0; k < 300; k += 13) store.Get("key" + std::to_string(k), &v).IgnoreError();
      CheckReport report;
      s = store.Check(&report);
      if (!s.ok() || !report.ok()) {
        ++reported;
        continue;
      }
      const Model got = Dump(store);
      if (got == model) {
        ++sound_exact;
      } else if (got == checkpointed) {
        ++sound_checkpoint;
      } else {
        FAIL_CHECK("control byte " << i << " flipped: Check calls the store sound but it holds " << got.size()
                                   << " entries, neither the written " << model.size() << " nor the checkpointed "
                                   << checkpointed.size());
      }
      if (!o.read_only) {
        REQUIRE(store.Put("after-flip", "x").ok());
        REQUIRE(store.Get("after-flip", &v).ok());
        CHECK(v == "x");
        CheckClean(store);
      }
    }
    MESSAGE("control page: " << refused << " flips refused at open, " << reported << " reported by Check, "
                             << sound_exact << " sound with every write, " << sound_checkpoint
                             << " sound at the checkpoint");
    CHECK(refused + reported + sound_exact + sound_checkpoint == static_cast<int>(internal::format::kPageSize));
    CHECK(refused > 0);
  }
}

}  // namespace
}  // namespace mapkv::test
