// state_example: save and resume a small piece of process state with mapkv.
//
//   mapkv_example_state [STORE]     (default: data/example.mkv)
//
// Each run reads the run counter and the last run's time from the store,
// prints them, and writes the new ones in one atomic batch, then checkpoints.
// Run it twice: the second run resumes from the first.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "mapkv/store.h"

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "data/example.mkv";
  mapkv::Store store;
  mapkv::Status s = mapkv::Store::Open(path, mapkv::Options{}, &store);
  if (!s.ok()) {
    std::fprintf(stderr, "state_example: %s\n", s.ToString().c_str());
    return 3;
  }
  uint64_t runs = 0;
  std::string value;
  s = store.Get("runs", &value);
  if (s.ok() && value.size() == sizeof runs) {
    std::memcpy(&runs, value.data(), sizeof runs);
  } else if (!s.IsNotFound() && !s.ok()) {
    std::fprintf(stderr, "state_example: %s\n", s.ToString().c_str());
    return 3;
  }
  std::string last;
  if (store.Get("last_run", &last).ok()) {
    std::printf("resumed: %llu earlier run(s), the last at %s\n", static_cast<unsigned long long>(runs), last.c_str());
  } else {
    std::printf("fresh store %s: first run\n", path.c_str());
  }
  ++runs;
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  mapkv::WriteBatch batch;
  batch.Put("runs", std::string_view(reinterpret_cast<const char*>(&runs), sizeof runs));
  batch.Put("last_run", stamp);
  s = store.Write(batch);
  if (s.ok()) s = store.Flush(mapkv::FlushMode::kSync);
  if (!s.ok()) {
    std::fprintf(stderr, "state_example: %s\n", s.ToString().c_str());
    return 3;
  }
  std::printf("saved: run %llu at %s (%llu entries in %s)\n", static_cast<unsigned long long>(runs), stamp,
              static_cast<unsigned long long>(store.size()), path.c_str());
  return 0;
}
