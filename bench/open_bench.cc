// open_bench: how long a process that has just started takes to open an
// existing store and serve its first get (a program resuming its state after
// a restart), beside a reopen in a process that has opened a store before
// (what peer_bench's reopen row times).
//
//   open_bench [--n N] [--procs P] [--dir DIR] [--help]
//
// Fills a store of N keys (16-byte keys, 100-byte values) once and closes
// it. Then starts P processes one after another (fork, then exec of this
// program with --child, so each is a new program image with nothing warm).
// Each child times, with CLOCK_MONOTONIC and the minor page faults of
// getrusage around each step:
//   first:  Store::Open, then the first Get of a present key;
//   again:  after a Close, a second Open and Get of another present key.
// It prints its figures on one line to a pipe; the parent reports medians
// and ranges over the children.
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "mapkv/store.h"
#include "run_self.h"

namespace {

constexpr size_t kKeyBytes = 16;
constexpr size_t kValueBytes = 100;

std::string Key(uint64_t i) {
  char k[32];
  std::snprintf(k, sizeof(k), "k%015llu", static_cast<unsigned long long>(i));
  return std::string(k, kKeyBytes);
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "open_bench: %s\n", what.c_str());
  std::exit(1);
}

long MinorFaults() {
  rusage r{};
  ::getrusage(RUSAGE_SELF, &r);
  return r.ru_minflt;
}

// One step's cost: open and first get, each in microseconds and faults.
struct Step {
  double open_us = 0, get_us = 0;
  long open_faults = 0, get_faults = 0;
};

Step OpenAndGet(const std::string& path, uint64_t key, mapkv::Store* store) {
  using Clock = std::chrono::steady_clock;
  Step s;
  const long f0 = MinorFaults();
  const auto t0 = Clock::now();
  mapkv::Status st = mapkv::Store::Open(path, mapkv::Options{}, store);
  const auto t1 = Clock::now();
  const long f1 = MinorFaults();
  if (!st.ok()) Die("open " + path + ": " + st.ToString());
  std::string value;
  st = store->Get(Key(key), &value);
  const auto t2 = Clock::now();
  s.get_faults = MinorFaults() - f1;
  s.open_faults = f1 - f0;
  if (!st.ok() || value.size() != kValueBytes) Die("get of a present key after the open: " + st.ToString());
  s.open_us = std::chrono::duration<double, std::micro>(t1 - t0).count();
  s.get_us = std::chrono::duration<double, std::micro>(t2 - t1).count();
  return s;
}

int Child(const std::string& path, uint64_t n, uint64_t seed) {
  mapkv::Store store;
  const Step first = OpenAndGet(path, seed % n, &store);
  if (!store.Close().ok()) Die("close");
  const Step again = OpenAndGet(path, (seed * 7919 + 13) % n, &store);
  std::printf("%.2f %.2f %ld %ld %.2f %.2f %ld %ld\n", first.open_us, first.get_us, first.open_faults, first.get_faults,
              again.open_us, again.get_us, again.open_faults, again.get_faults);
  return 0;
}

// Runs one child and parses its line into `first` and `again`.
void RunChild(const std::string& path, uint64_t n, uint64_t seed, Step* first, Step* again) {
  std::string line;
  const std::string error =
      bench::RunSelf({"--child", path, "--n", std::to_string(n), "--seed", std::to_string(seed)}, &line);
  if (!error.empty()) Die(error);
  if (std::sscanf(line.c_str(), "%lf %lf %ld %ld %lf %lf %ld %ld", &first->open_us, &first->get_us, &first->open_faults,
                  &first->get_faults, &again->open_us, &again->get_us, &again->open_faults, &again->get_faults) != 8) {
    Die("a child's report could not be read: '" + line + "'");
  }
}

template <typename T>
T Median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Report(const char* what, const std::vector<Step>& steps) {
  std::vector<double> open, get, total;
  std::vector<long> open_faults, get_faults;
  for (const Step& s : steps) {
    open.push_back(s.open_us);
    get.push_back(s.get_us);
    total.push_back(s.open_us + s.get_us);
    open_faults.push_back(s.open_faults);
    get_faults.push_back(s.get_faults);
  }
  std::sort(total.begin(), total.end());
  std::printf("| %s | %.1f | %.1f - %.1f | %.1f | %.1f | %ld | %ld |\n", what, Median(total), total.front(),
              total.back(), Median(open), Median(get), Median(open_faults), Median(get_faults));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Open and first get of an existing store in a process that has just started (see open_bench.cc)."};
  uint64_t n = 1000000;
  int procs = 21;
  std::string dir = "/var/tmp";
  std::string child_path;
  uint64_t seed = 0;
  app.add_option("--n", n, "keys in the store")->check(CLI::Range(uint64_t{1}, uint64_t{1} << 36));
  app.add_option("--procs", procs, "fresh processes to time")->check(CLI::Range(1, 10000));
  app.add_option("--dir", dir, "where the store goes (a real disk, not tmpfs)");
  app.add_option("--child", child_path, "(internal) time one open of this store and report")->group("");
  app.add_option("--seed", seed, "(internal) which key the child reads")->group("");
  CLI11_PARSE(app, argc, argv);
  if (!child_path.empty()) return Child(child_path, n, seed);

  const std::string path = dir + "/open_bench-" + std::to_string(::getpid()) + ".mkv";
  {
    mapkv::Store store;
    mapkv::Status st = mapkv::Store::Open(path, mapkv::Options{}, &store);
    if (!st.ok()) Die("create " + path + ": " + st.ToString());
    const std::string value(kValueBytes, 'v');
    for (uint64_t i = 0; i < n; ++i) {
      st = store.Put(Key(i), value);
      if (!st.ok()) Die("fill: " + st.ToString());
    }
    st = store.Close();
    if (!st.ok()) Die("close after the fill: " + st.ToString());
  }
  std::vector<Step> first, again;
  for (int p = 0; p < procs; ++p) {
    Step f, a;
    RunChild(path, n, static_cast<uint64_t>(p) * 104729 + 1, &f, &a);
    first.push_back(f);
    again.push_back(a);
  }
  std::error_code ec;
  std::filesystem::remove(path, ec);
  std::printf("open_bench: a store of %llu keys (16-byte keys, 100-byte values), %d fresh processes\n\n",
              static_cast<unsigned long long>(n), procs);
  std::printf("| in the child | open + first get, us (median) | range | open | get | page faults, open | get |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  Report("first open of the process", first);
  Report("second open, after a close", again);
  return 0;
}
