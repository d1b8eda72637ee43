// Helpers shared by the engine (Store) tests: opening, dumping, checking,
// the MAPKV_LONG switch for slow variants, and a boot-id override guard.
#ifndef MAPKV_TESTS_STORE_TEST_HELPERS_H_
#define MAPKV_TESTS_STORE_TEST_HELPERS_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <thread>

#include "format.h"
#include "mapkv/store.h"
#include "platform/platform.h"
#include "store_impl.h"
#include "test_util.h"

namespace mapkv::test {

using Model = std::map<std::string, std::string>;

// Slow variants (doctest test-suite "slow") run only with MAPKV_LONG=1.
inline bool LongRunsEnabled() {
  const char* e = std::getenv("MAPKV_LONG");
  return e != nullptr && std::string_view(e) == "1";
}

// First statement of every "slow" test case: without MAPKV_LONG=1 it says
// loudly that the case is skipped, and returns.
#define MAPKV_SLOW_TEST_GATE()                                                               \
  do {                                                                                       \
    if (!::mapkv::test::LongRunsEnabled()) {                                                 \
      MESSAGE("SKIPPED: slow variant, runs only with MAPKV_LONG=1 (MAPKV_LONG is not set)"); \
      return;                                                                                \
    }                                                                                        \
  } while (0)

// The control page of `path`, mapped shared through the platform layer: the
// live values other processes see.
class ControlView {
 public:
  explicit ControlView(const std::string& path) {
    REQUIRE(internal::File::Open(path, internal::FileSpec{.read_only = true}, &file_).ok());
    REQUIRE(file_->Map(internal::format::kControlOffset + 4096, false, &map_).ok());
  }
  const internal::format::ControlPage* operator->() const {
    return reinterpret_cast<const internal::format::ControlPage*>(map_->data() + internal::format::kControlOffset);
  }

 private:
  std::unique_ptr<internal::File> file_;
  std::unique_ptr<internal::Mapping> map_;
};

inline Store MustOpen(const std::string& path, const Options& options = {}) {
  Store store;
  Status s = Store::Open(path, options, &store);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return store;
}

// Every entry of the store (under `prefix`), through ForEach.
inline Model Dump(const Store& store, std::string_view prefix = {}) {
  Model out;
  bool duplicate = false;
  Status s = store.ForEach(prefix, [&](std::string_view k, std::string_view v) {
    duplicate |= !out.emplace(std::string(k), std::string(v)).second;
    return true;
  });
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  CHECK_FALSE(duplicate);
  return out;
}

inline std::string ProblemsText(const CheckReport& report) {
  std::string text;
  for (size_t i = 0; i < report.problems.size() && i < 8; ++i) text += "\n  " + report.problems[i];
  if (report.problems.size() > 8) text += "\n  ... " + std::to_string(report.problems.size() - 8) + " more";
  return text;
}

// Runs Check and asserts it completed with no problem.
inline void CheckClean(const Store& store) {
  CheckReport report;
  Status s = store.Check(&report);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  CHECK_MESSAGE(report.ok(), "Check found problems:" << ProblemsText(report));
  CHECK(report.entries_checked == store.size());
}

inline uint64_t FileSize(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  REQUIRE_MESSAGE(!ec, path << ": " << ec.message());
  return static_cast<uint64_t>(size);
}

// A fixed-width key of `i` (16 bytes).
inline std::string Key16(uint64_t i) {
  std::string digits = std::to_string(i % 1000000000000000ull);
  return "k" + std::string(15 - digits.size(), '0') + digits;
}

// Damage for a test: flips `mask` in the byte `offset` bytes into the copy of
// `unique` in the file at `path` (bytes found in it once).
inline void FlipByteOf(const std::string& path, std::string_view unique, size_t offset, uint8_t mask) {
  std::string image = ReadFileBytes(path);
  const size_t at = image.find(unique);
  REQUIRE(at != std::string::npos);
  image[at + offset] = static_cast<char>(image[at + offset] ^ mask);
  WriteFileBytes(path, image);
}

// Makes BootId() return another id (a simulated reboot) while alive.
class BootIdGuard {
 public:
  explicit BootIdGuard(uint8_t salt) {
    std::array<uint8_t, 16> id = internal::BootId();
    id[15] ^= static_cast<uint8_t>(salt | 1);
    id[0] ^= 0x5a;
    internal::SetBootIdForTesting(id);
  }
  ~BootIdGuard() { internal::ResetBootIdForTesting(); }
  BootIdGuard(const BootIdGuard&) = delete;
  BootIdGuard& operator=(const BootIdGuard&) = delete;
};

using Clock = std::chrono::steady_clock;

// Returns once a thread of this process waits for `store`'s write lock
// (behind a read guard or callback of the same handle that the caller
// holds); fails the test after 10 s.
inline void WaitUntilWriterQueued(const Store& store) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (internal::StoreImpl::WritersWaitingForTesting(store) == 0) {
    REQUIRE_MESSAGE(Clock::now() < until, "no writer queued for the handle's lock within 10 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Returns once the lock keeper and the prefault thread of `store` both wait
// on their condition variables; fails the test after 10 s.
inline void WaitUntilThreadsWait(const Store& store) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (!internal::StoreImpl::ThreadsWaitingForTesting(store)) {
    REQUIRE_MESSAGE(Clock::now() < until, "the handle's keeper and prefault threads did not both wait within 10 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace mapkv::test

#endif  // MAPKV_TESTS_STORE_TEST_HELPERS_H_
