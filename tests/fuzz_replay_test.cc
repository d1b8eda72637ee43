// fuzz_replay_test.cc: the fuzzer's seed corpus and every crash input it ever
// found, replayed through the fuzz body (tests/fuzz/fuzz_store.h) in the
// normal suite, so they run under the sanitizer presets too; and every byte of
// the control page flipped in turn.
#include <algorithm>
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
    for (const std::string& f : files) {
      CAPTURE(f);
      const fuzz::FuzzResult r = Replay(f, dir.File("s.mkv"));
      CHECK_MESSAGE(r.violation.empty(), r.violation);
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
