// fuzz_store.h: one fuzz input (the bytes of a store file) run through the
// engine. Shared by the libFuzzer target (store_fuzzer.cc) and by the ctest
// test that replays the seed corpus and every saved crash input
// (fuzz_replay_test.cc), so a crash found by fuzzing stays a regression test.
#ifndef MAPKV_TESTS_FUZZ_FUZZ_STORE_H_
#define MAPKV_TESTS_FUZZ_FUZZ_STORE_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace mapkv::fuzz {

struct FuzzResult {
  // Empty unless the engine broke a promise that holds for any file: a store
  // that opened writable and that Check called sound lost a write made
  // through it, or Check reported problems after only the library wrote.
  std::string violation;
  // What happened, for the replay test's assertions: how many of the two
  // variants (as written; with the control page stamped as written in this
  // boot) opened read-only and writable, and how many of those Check found
  // sound.
  int opened_read_only = 0;
  int opened_writable = 0;
  int checked_sound = 0;
};

// Writes `data` as a store file at `path` (twice: as given, then with the
// control page's boot id replaced by this boot's, which makes the engine
// trust the control page and its undo log), and on each: opens it read-only
// (Check, Get, ForEach, GetStats) and writable (the same, then puts, erases,
// a batch, Compact, a checkpoint, Check again). Never throws.
FuzzResult RunStoreBytes(const uint8_t* data, size_t size, const std::string& path);

}  // namespace mapkv::fuzz

#endif  // MAPKV_TESTS_FUZZ_FUZZ_STORE_H_
