// miss_latency.cc: a dependent-load chase over anonymous memory (miss_latency.h).
#include "miss_latency.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace mapkv_bench {
namespace {

constexpr uint64_t kLine = 64;

// Bytes of the calling process's anonymous memory the kernel backs with huge
// pages (AnonHugePages in /proc/self/smaps_rollup), or 0 when it cannot tell.
uint64_t AnonHugeBytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("AnonHugePages:", 0) == 0) return std::strtoull(line.c_str() + 14, nullptr, 10) * 1024;
  }
  return 0;
}

// One region, one chase pattern; returns ns per load, or -1 when the region
// could not be had (or, for large pages, the kernel gave none).
double Chase(uint64_t bytes, uint64_t steps, bool large) {
  const uint64_t huge_before = AnonHugeBytes();
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return -1;
  auto* base = static_cast<unsigned char*>(mem);
#if defined(MADV_HUGEPAGE)
  (void)madvise(base, bytes, large ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
  // A single random cycle through every line: each load's address is the
  // value the previous load returned, so no two loads overlap.
  const uint64_t lines = bytes / kLine;
  std::vector<uint32_t> order(lines);
  std::iota(order.begin(), order.end(), 0u);
  std::mt19937_64 rng(42);
  std::shuffle(order.begin(), order.end(), rng);
  for (uint64_t i = 0; i < lines; ++i) {
    const uint64_t next = uint64_t{order[(i + 1) % lines]} * kLine;
    std::memcpy(base + uint64_t{order[i]} * kLine, &next, sizeof next);
  }
  const bool got_large = AnonHugeBytes() > huge_before + bytes / 2;
  std::vector<double> ns;
  uint64_t at = uint64_t{order[0]} * kLine;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < steps; ++i) std::memcpy(&at, base + at, sizeof at);
    const auto t1 = std::chrono::steady_clock::now();
    ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(steps));
  }
  // `at` depends on every load; using it keeps the chase from being dropped.
  if (at >= bytes) std::fprintf(stderr, "miss_latency: chase left the region\n");
  munmap(mem, bytes);
  if (large && !got_large) return -1;
  std::sort(ns.begin(), ns.end());
  return ns[1];
}

}  // namespace

MissLatency MeasureMissLatency(uint64_t bytes, uint64_t steps) {
  MissLatency m;
  m.small_pages_ns = Chase(bytes, steps, false);
  m.large_pages_ns = Chase(bytes, steps, true);
  return m;
}

}  // namespace mapkv_bench
