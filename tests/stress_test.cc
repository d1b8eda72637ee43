// stress_test.cc: several processes, several threads each, one file, for a
// fixed time. Every thread owns keys and writes them with increasing sequence
// numbers (plain puts and batches); every thread also reads the other
// writers' keys. Values carry writer, key, sequence number and a checksum, so
// a torn, misplaced or invented value is detected. Checked during the run: no
// such value, and no thread sees a key's sequence number go backwards; after
// it: the store holds the last acknowledged value of every key.
#include <atomic>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

constexpr int kThreads = 3;
constexpr int kKeysPerWriter = 40;

uint64_t Fnv(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

std::string StressKey(int writer, int key) { return "w" + std::to_string(writer) + ":k" + std::to_string(key); }

std::string StressValue(int writer, int key, uint64_t seq) {
  std::string v = "W" + std::to_string(writer) + "K" + std::to_string(key) + "S" + std::to_string(seq) + "|";
  const uint64_t len = (seq * 7919 + static_cast<uint64_t>(writer) * 31 + static_cast<uint64_t>(key)) % 3000;
  for (uint64_t i = 0; i < len; ++i) v.push_back(static_cast<char>('a' + (seq + i) % 26));
  char sum[20];
  std::snprintf(sum, sizeof sum, "|%016llx", static_cast<unsigned long long>(Fnv(v)));
  return v + sum;
}

// The sequence number of a value written by `writer` for `key`, or -1 when
// the value is not exactly one StressValue would write.
int64_t ParseStress(int writer, int key, std::string_view v) {
  const std::string head = "W" + std::to_string(writer) + "K" + std::to_string(key) + "S";
  if (v.substr(0, head.size()) != head) return -1;
  uint64_t seq = 0;
  size_t i = head.size();
  for (; i < v.size() && v[i] >= '0' && v[i] <= '9'; ++i) seq = seq * 10 + static_cast<uint64_t>(v[i] - '0');
  if (i == head.size() || i >= v.size() || v[i] != '|') return -1;
  return v == StressValue(writer, key, seq) ? static_cast<int64_t>(seq) : -1;
}

struct Counts {
  std::atomic<uint64_t> writes{0}, reads{0}, found{0}, torn{0}, backwards{0}, failed{0}, walks{0};
};

// One thread: writer number `w` of `writers`. Writes its keys, reads others'.
void StressThread(Store& store, int w, int writers, double seconds, Counts* c, std::vector<uint64_t>* last) {
  Rng rng(static_cast<uint64_t>(w) * 7 + 3);
  std::map<std::pair<int, int>, int64_t> seen;  // (writer, key) -> highest sequence number read
  std::string v;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  for (uint64_t n = 0; Clock::now() < end; ++n) {
    if (n % 4 == 0) {
      WriteBatch b;
      const int count = 2 + static_cast<int>(rng.Uniform(20));
      for (int j = 0; j < count; ++j) {
        const int k = static_cast<int>(rng.Uniform(kKeysPerWriter));
        const uint64_t seq = ++(*last)[static_cast<size_t>(k)];
        b.Put(StressKey(w, k), StressValue(w, k, seq));
      }
      if (!store.Write(b).ok()) c->failed.fetch_add(1);
    } else {
      const int k = static_cast<int>(rng.Uniform(kKeysPerWriter));
      const uint64_t seq = ++(*last)[static_cast<size_t>(k)];
      if (!store.Put(StressKey(w, k), StressValue(w, k, seq)).ok()) c->failed.fetch_add(1);
    }
    c->writes.fetch_add(1);
    for (int r = 0; r < 3; ++r) {
      const int ow = static_cast<int>(rng.Uniform(static_cast<uint64_t>(writers)));
      const int ok = static_cast<int>(rng.Uniform(kKeysPerWriter));
      Status s = store.Get(StressKey(ow, ok), &v);
      c->reads.fetch_add(1);
      if (s.IsNotFound()) {
        if (seen.count({ow, ok}) != 0) c->backwards.fetch_add(1);  // was there, now gone: nothing erases
        continue;
      }
      if (!s.ok()) {
        c->failed.fetch_add(1);
        continue;
      }
      c->found.fetch_add(1);
      const int64_t seq = ParseStress(ow, ok, v);
      if (seq < 0) {
        c->torn.fetch_add(1);
        continue;
      }
      auto [it, fresh] = seen.emplace(std::make_pair(ow, ok), seq);
      if (!fresh) {
        if (seq < it->second) c->backwards.fetch_add(1);
        it->second = std::max(it->second, seq);
      }
    }
    if (n % 500 == 499) {
      // A consistent walk: every value whole.
      Status s = store.ForEach("w", [&](std::string_view key, std::string_view val) {
        int ow = -1, ok = -1;
        if (std::sscanf(std::string(key).c_str(), "w%d:k%d", &ow, &ok) != 2 || ParseStress(ow, ok, val) < 0) {
          c->torn.fetch_add(1);
        }
        return true;
      });
      if (!s.ok()) c->failed.fetch_add(1);
      c->walks.fetch_add(1);
    }
    if (w % kThreads == 0 && n % 2000 == 1999 && !store.Flush(FlushMode::kSync).ok()) c->failed.fetch_add(1);
    if (w == 1 && n % 5000 == 4999 && !store.Compact().ok()) c->failed.fetch_add(1);
  }
}

// args: path, process index, processes, seconds, result file. Writes
// "writes reads found torn backwards failed walks" and then each key's last
// acknowledged sequence number, one line per writer.
int StressChild(const std::vector<std::string>& args) {
  if (args.size() != 5) return 2;
  const int proc = std::stoi(args[1]);
  const int procs = std::stoi(args[2]);
  const double seconds = std::stod(args[3]);
  Store store;
  if (!Store::Open(args[0], {}, &store).ok()) return 3;
  Counts c;
  std::vector<std::vector<uint64_t>> last(kThreads, std::vector<uint64_t>(kKeysPerWriter, 0));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(StressThread, std::ref(store), proc * kThreads + t, procs * kThreads, seconds, &c,
                         &last[static_cast<size_t>(t)]);
  }
  for (auto& th : threads) th.join();
  std::string out = std::to_string(c.writes) + " " + std::to_string(c.reads) + " " + std::to_string(c.found) + " " +
                    std::to_string(c.torn) + " " + std::to_string(c.backwards) + " " + std::to_string(c.failed) + " " +
                    std::to_string(c.walks) + "\n";
  for (int t = 0; t < kThreads; ++t) {
    for (uint64_t s : last[static_cast<size_t>(t)]) out += std::to_string(s) + " ";
    out += "\n";
  }
  WriteFileBytes(args[4], out);
  return store.Close().ok() ? 0 : 4;
}

[[maybe_unused]] const bool kRegistered = RegisterChild("stress.process", StressChild);

void RunStress(int procs, double seconds) {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store observer = MustOpen(path);  // creates the store, and reads alongside
  std::vector<int> pids;
  for (int p = 0; p < procs; ++p) {
    pids.push_back(SpawnChild("stress.process", {path, std::to_string(p), std::to_string(procs),
                                                 std::to_string(seconds), dir.File("result" + std::to_string(p))}));
    REQUIRE(pids.back() > 0);
  }
  // The parent reads every key over and over while the children run.
  const int writers = procs * kThreads;
  std::vector<int64_t> seen(static_cast<size_t>(writers * kKeysPerWriter), -1);
  uint64_t parent_reads = 0, parent_bad = 0;
  std::string v;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    for (int w = 0; w < writers; ++w) {
      for (int k = 0; k < kKeysPerWriter; ++k) {
        Status s = observer.Get(StressKey(w, k), &v);
        ++parent_reads;
        int64_t& last = seen[static_cast<size_t>(w * kKeysPerWriter + k)];
        if (s.IsNotFound()) {
          parent_bad += last >= 0;
          continue;
        }
        // A failed call, a value torn or invented (-1), or one older than
        // what was seen: each a violation, the first time too.
        const int64_t seq = s.ok() ? ParseStress(w, k, v) : -1;
        if (seq < 0 || seq < last) ++parent_bad;
        last = std::max(last, seq);
      }
    }
  }
  uint64_t totals[7] = {};
  std::vector<std::vector<uint64_t>> final_seq;
  for (int p = 0; p < procs; ++p) {
    const int rc = WaitChild(pids[static_cast<size_t>(p)]);
    REQUIRE_MESSAGE(rc == 0, "stress process " << p << " exited with " << rc);
    std::istringstream in(ReadFileBytes(dir.File("result" + std::to_string(p))));
    for (uint64_t& t : totals) {
      uint64_t x = 0;
      in >> x;
      t += x;
    }
    for (int t = 0; t < kThreads; ++t) {
      std::vector<uint64_t> seqs(kKeysPerWriter);
      for (uint64_t& s : seqs) in >> s;
      final_seq.push_back(seqs);
    }
  }
  MESSAGE(procs << " processes x " << kThreads << " threads x " << seconds << " s: " << totals[0] << " writes, "
                << totals[1] << " reads (" << totals[2] << " found), " << totals[6] << " walks; violations: "
                << totals[3] << " torn or invented, " << totals[4] << " backwards, " << totals[5]
                << " failed calls; the parent read " << parent_reads << " times, " << parent_bad << " violations");
  CHECK(totals[3] == 0);
  CHECK(totals[4] == 0);
  CHECK(totals[5] == 0);
  CHECK(parent_bad == 0);
  CHECK(totals[0] > 1000);  // the run did real work
  CHECK(totals[2] > totals[1] / 2);
  // The final state: every key holds exactly its last acknowledged value.
  Model want;
  for (int w = 0; w < writers; ++w) {
    for (int k = 0; k < kKeysPerWriter; ++k) {
      const uint64_t seq = final_seq[static_cast<size_t>(w)][static_cast<size_t>(k)];
      if (seq > 0) want[StressKey(w, k)] = StressValue(w, k, seq);
    }
  }
  CHECK(Dump(observer) == want);
  CheckClean(observer);
  REQUIRE(observer.Close().ok());
  Store again = MustOpen(path);
  CHECK(Dump(again) == want);
}

TEST_SUITE("stress") {
  TEST_CASE("stress: 4 processes x 3 threads write own keys and read others for 3 s") { RunStress(4, 3); }
  TEST_CASE("stress: 6 processes x 3 threads for 60 s (long)" * doctest::test_suite("slow")) {
    MAPKV_SLOW_TEST_GATE();
    RunStress(6, 60);
  }
}

}  // namespace
}  // namespace mapkv::test
