// Helpers shared by the tests: temporary directories, file bytes, Status
// printing, and child processes (the test binary relaunches itself).
#ifndef MAPKV_TESTS_TEST_UTIL_H_
#define MAPKV_TESTS_TEST_UTIL_H_

#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mapkv/status.h"

namespace doctest {
template <>
struct StringMaker<mapkv::Status> {
  static String convert(const mapkv::Status& s) { return s.ToString().c_str(); }
};
template <>
struct StringMaker<mapkv::Code> {
  static String convert(mapkv::Code c) { return std::string(mapkv::CodeName(c)).c_str(); }
};
}  // namespace doctest

namespace mapkv::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFileBytes(const std::string& path);
void WriteFileBytes(const std::string& path, const std::string& bytes);

// Cross-process tests: a child is this same binary started with
// `--mapkv-child NAME ARGS...`; NAME selects a function registered with
// RegisterChild. SpawnChild starts it (fork+exec on POSIX, CreateProcess on
// Windows) and returns its pid; WaitChild returns its exit code (or
// 128+signal). KillChild kills it at once, leaving it no chance to clean up
// (SIGKILL; TerminateProcess with exit code kKilledExitCode on Windows), so
// WaitChild then returns kKilledExitCode on both systems.
using ChildMain = std::function<int(const std::vector<std::string>& args)>;
inline constexpr int kKilledExitCode = 128 + 9;  // 128 + SIGKILL
bool RegisterChild(const std::string& name, ChildMain fn);
int SpawnChild(const std::string& name, const std::vector<std::string>& args);
int WaitChild(int pid);
void KillChild(int pid);
bool MaybeRunChild(int argc, char** argv, int* exit_code);

// CPU time (user + system) this process has used so far, in microseconds
// (getrusage / GetProcessTimes).
int64_t ProcessCpuMicros();

#ifndef _WIN32
// Whether byte `byte` of the file open as `fd` could be locked exclusively
// through that descriptor now (F_OFD_GETLK): 1 yes, 0 no (another open file
// description holds a lock on it), -1 the call failed. Fork-safe.
int ByteLockableNow(int fd, uint64_t byte);
#endif

// Deterministic pseudo-random generator for tests (splitmix64).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Uniform(uint64_t n) { return Next() % n; }
  std::string Bytes(size_t n);

 private:
  uint64_t state_;
};

}  // namespace mapkv::test

#endif  // MAPKV_TESTS_TEST_UTIL_H_
