// engine_bench: point reads and writes of mapkv beside an in-memory
// absl::flat_hash_map<std::string, std::string>, measured in the same run.
//
//   engine_bench [--n N] [--runs R] [--dir DIR] [--key 16] [--value 100] [--help]
//
// Workloads (keys in random order, fresh store per run, engines interleaved):
//   fill       N puts of new keys
//   get        N gets of present keys (random order)
//   multiget32 the same N gets, 32 keys per MultiGet call
//   miss       N gets of absent keys
//   overwrite  N puts over present keys
//   batch100   N puts in atomic batches of 100
//   reopen     close, then open the store and serve one get (microseconds;
//              the first open after close, and the median of 20 more; then
//              the close of that unchanged store)
// It prints the median ns/op of R runs for each engine, the ratio mapkv/absl,
// the file size against the raw bytes (keys + values), and this machine's
// latency of one dependent random load (the floor a get's two loads sit on).
#include <absl/container/flat_hash_map.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mapkv/store.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  size_t n = 1000000;
  int runs = 3;
  std::string dir = "/tmp";
  size_t key = 16;
  size_t value = 100;
};

std::string MakeKey(uint64_t i, size_t len) {
  std::string k(len, '\0');
  uint64_t x = i * 0x9E3779B97F4A7C15ull;
  for (size_t j = 0; j < len; ++j) {
    k[j] = "0123456789abcdefghijklmnopqrstuvwxyz"[x % 36];
    x = x / 36 + (i + j) * 0x2545F4914F6CDD1Dull;
  }
  std::memcpy(k.data(), &i, std::min<size_t>(len, 8));  // unique
  return k;
}

double Ns(Clock::time_point a, Clock::time_point b, size_t ops) {
  return std::chrono::duration<double, std::nano>(b - a).count() / static_cast<double>(ops);
}

void Die(const mapkv::Status& s, const char* what) {
  std::fprintf(stderr, "engine_bench: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

// The latency of one random memory load on this machine: a chase through a
// random cycle over 256 MB, each load's address the previous load's value.
// A get makes two such dependent loads (slot, then record), so this bounds
// what layout tuning can reach.
double DependentLoadNs() {
  const size_t lines = (size_t{256} << 20) / 64;
  std::vector<size_t> perm(lines);
  for (size_t i = 0; i < lines; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(7));
  std::vector<uint64_t> next(lines * 8);
  for (size_t i = 0; i < lines; ++i) next[perm[i] * 8] = perm[(i + 1) % lines] * 8;
  const size_t hops = 2000000;
  uint64_t p = 0;
  const auto t0 = Clock::now();
  for (size_t i = 0; i < hops; ++i) p = next[p];
  const auto t1 = Clock::now();
  if (p == ~uint64_t{0}) std::printf("unreachable\n");  // keeps the chain
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(hops);
}

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app("mapkv's point reads and writes beside an in-memory absl::flat_hash_map, in one run.", "engine_bench");
  app.add_option("--n", cfg.n, "keys per store")->check(CLI::Range(size_t{1}, size_t{1} << 32))->capture_default_str();
  app.add_option("--runs", cfg.runs, "runs; figures are medians over them")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--dir", cfg.dir, "directory for the store file")->capture_default_str();
  app.add_option("--key", cfg.key, "key size in bytes")
      ->check(CLI::Range(size_t{8}, size_t{4096}))
      ->capture_default_str();
  app.add_option("--value", cfg.value, "value size in bytes")
      ->check(CLI::Range(size_t{0}, size_t{1} << 20))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const size_t n = cfg.n;
  std::vector<std::string> keys(n), absent(n);
  for (size_t i = 0; i < n; ++i) {
    keys[i] = MakeKey(i, cfg.key);
    absent[i] = MakeKey(i + n, cfg.key);
  }
  std::string value(cfg.value, 'v');
  std::string value2(cfg.value, 'w');
  std::mt19937_64 rng(7);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;

  std::map<std::string, std::vector<double>> mk, ab;
  std::vector<double> reopen_us, reopen_first_us, close_us, file_ratio;
  const std::string path = cfg.dir + "/engine_bench.mkv";
  for (int run = 0; run < cfg.runs; ++run) {
    // ---- absl
    {
      absl::flat_hash_map<std::string, std::string> m;
      std::shuffle(order.begin(), order.end(), rng);
      auto t0 = Clock::now();
      for (size_t i : order) m[keys[i]] = value;
      auto t1 = Clock::now();
      ab["fill"].push_back(Ns(t0, t1, n));
      std::shuffle(order.begin(), order.end(), rng);
      std::string out;
      size_t found = 0;
      t0 = Clock::now();
      for (size_t i : order) {
        auto it = m.find(keys[i]);
        if (it != m.end()) {
          out = it->second;
          ++found;
        }
      }
      t1 = Clock::now();
      if (found != n) return 1;
      ab["get"].push_back(Ns(t0, t1, n));
      t0 = Clock::now();
      for (size_t i : order) found += m.find(absent[i]) != m.end();
      t1 = Clock::now();
      ab["miss"].push_back(Ns(t0, t1, n));
      t0 = Clock::now();
      for (size_t i : order) m[keys[i]] = value2;
      t1 = Clock::now();
      ab["overwrite"].push_back(Ns(t0, t1, n));
    }
    // ---- mapkv
    {
      std::remove(path.c_str());
      mapkv::Store s;
      mapkv::Status st = mapkv::Store::Open(path, {}, &s);
      if (!st.ok()) Die(st, "open");
      std::shuffle(order.begin(), order.end(), rng);
      auto t0 = Clock::now();
      for (size_t i : order) {
        st = s.Put(keys[i], value);
        if (!st.ok()) Die(st, "put");
      }
      auto t1 = Clock::now();
      mk["fill"].push_back(Ns(t0, t1, n));
      std::shuffle(order.begin(), order.end(), rng);
      std::string out;
      t0 = Clock::now();
      for (size_t i : order) {
        st = s.Get(keys[i], &out);
        if (!st.ok()) Die(st, "get");
      }
      t1 = Clock::now();
      mk["get"].push_back(Ns(t0, t1, n));
      // The same gets, 32 keys per MultiGet call (one consistent state each).
      {
        std::vector<std::string_view> batch_keys;
        std::vector<std::optional<std::string>> values;
        size_t found = 0;
        t0 = Clock::now();
        for (size_t j = 0; j < n; ++j) {
          batch_keys.push_back(keys[order[j]]);
          if (batch_keys.size() == 32 || j + 1 == n) {
            st = s.MultiGet(batch_keys, &values);
            if (!st.ok()) Die(st, "multiget");
            for (const auto& v : values) found += v.has_value();
            batch_keys.clear();
          }
        }
        t1 = Clock::now();
        if (found != n) return 1;
        mk["multiget32"].push_back(Ns(t0, t1, n));
      }
      bool present = false;
      size_t hits = 0;
      t0 = Clock::now();
      for (size_t i : order) {
        st = s.Contains(absent[i], &present);
        hits += present;
      }
      t1 = Clock::now();
      if (hits != 0) return 1;
      mk["miss"].push_back(Ns(t0, t1, n));
      t0 = Clock::now();
      for (size_t i : order) {
        st = s.Put(keys[i], value2);
        if (!st.ok()) Die(st, "overwrite");
      }
      t1 = Clock::now();
      mk["overwrite"].push_back(Ns(t0, t1, n));
      t0 = Clock::now();
      mapkv::WriteBatch batch;
      for (size_t j = 0; j < n; ++j) {
        batch.Put(keys[order[j]], value);
        if (batch.Count() == 100 || j + 1 == n) {
          st = s.Write(batch);
          if (!st.ok()) Die(st, "batch");
          batch.Clear();
        }
      }
      t1 = Clock::now();
      mk["batch100"].push_back(Ns(t0, t1, n));
      st = s.Close();
      if (!st.ok()) Die(st, "close");
      struct stat sb;
      stat(path.c_str(), &sb);
      file_ratio.push_back(static_cast<double>(sb.st_size) / static_cast<double>(n * (cfg.key + cfg.value)));
      // Reopen: the first open after the writer closed, then 20 more.
      mapkv::Options reopen_options;
      reopen_options.checkpoint_on_close = false;
      std::vector<double> opens, closes;
      for (int k = 0; k < 21; ++k) {
        t0 = Clock::now();
        mapkv::Store s2;
        st = mapkv::Store::Open(path, reopen_options, &s2);
        if (!st.ok()) Die(st, "reopen");
        st = s2.Get(keys[order[static_cast<size_t>(k) % n]], &out);
        t1 = Clock::now();
        if (!st.ok()) Die(st, "get after reopen");
        opens.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        st = s2.Close();  // nothing changed: no compaction pass, no checkpoint
        if (!st.ok()) Die(st, "close after reopen");
        closes.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t1).count());
      }
      reopen_first_us.push_back(opens[0]);
      opens.erase(opens.begin());
      reopen_us.push_back(Median(opens));
      close_us.push_back(Median(closes));
    }
  }
  std::remove(path.c_str());
  std::printf("n=%zu key=%zu value=%zu runs=%d (median ns/op)\n", n, cfg.key, cfg.value, cfg.runs);
  std::printf("one dependent random load over 256 MB: %.0f ns\n", DependentLoadNs());
  std::printf("%-10s %10s %10s %8s\n", "workload", "mapkv", "absl", "ratio");
  for (const char* w : {"fill", "get", "multiget32", "miss", "overwrite", "batch100"}) {
    double a = ab.count(w) ? Median(ab[w]) : 0, m = Median(mk[w]);
    if (a > 0) {
      std::printf("%-10s %10.1f %10.1f %8.2f\n", w, m, a, m / a);
    } else {
      std::printf("%-10s %10.1f %10s %8s\n", w, m, "-", "-");
    }
  }
  std::printf("reopen+get %.1f us (median of 20 reopens), %.1f us for the first open after close\n", Median(reopen_us),
              Median(reopen_first_us));
  std::printf("close      %.1f us (median of 21 closes of an unchanged store)\n", Median(close_us));
  std::printf("file/raw   %.3f (after fill, overwrite and batches, closed)\n", Median(file_ratio));
  return 0;
}
