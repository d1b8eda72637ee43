// checkpoint_job: a long-running job that survives being killed.
//
//   checkpoint_job generate RECORDS INPUT      write a test input of RECORDS lines
//   checkpoint_job run INPUT STATE OUTPUT [--every N]
//
// `run` streams INPUT, lines of "KEY<TAB>NUMBER", and aggregates them: for
// each key, how many records and the sum of their numbers. Every N records
// (default 10000) it commits, in one atomic batch, the byte offset of the
// next unread line and the aggregates that changed since the last commit.
// Killed at any moment and started again with the same arguments, it loads
// the aggregates and the offset of its last commit and reads on from there,
// so its OUTPUT (keys in order, "KEY COUNT SUM" per line, written to a
// temporary file and renamed into place) is byte for byte what an
// uninterrupted run writes. tests/checkpoint_job_test.cc kills it 50 times.
//
// The state in the store:
//   "job/offset"   uint64  byte offset in INPUT of the first record not yet committed
//   "agg/KEY"      Totals  {count, sum} of KEY over the records before that offset
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "mapkv/store.h"

namespace {

struct Totals {
  int64_t count;
  int64_t sum;
};

constexpr std::string_view kOffsetKey = "job/offset";
constexpr std::string_view kAggPrefix = "agg/";

int Fail(const std::string& what) {
  std::fprintf(stderr, "checkpoint_job: %s\n", what.c_str());
  return 3;
}

// Deterministic input: 5,000 keys with a skewed popularity, numbers -999..999.
int Generate(uint64_t records, const std::string& path) {
  FILE* out = std::fopen(path.c_str(), "w");
  if (out == nullptr) return Fail(path + ": " + std::strerror(errno));
  uint64_t x = 88172645463325252ull;  // xorshift64
  for (uint64_t i = 0; i < records; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const uint64_t key = (x % 5000) * (x % 5000) / 5000;  // small keys more often
    const int64_t number = static_cast<int64_t>((x >> 20) % 1999) - 999;
    std::fprintf(out, "sensor-%04llu\t%lld\n", static_cast<unsigned long long>(key), static_cast<long long>(number));
  }
  if (std::fclose(out) != 0) return Fail(path + ": " + std::strerror(errno));
  return 0;
}

class Job {
 public:
  Job(std::string input, std::string state, std::string output, uint64_t every)
      : input_(std::move(input)), state_(std::move(state)), output_(std::move(output)), every_(every) {}

  int Run() {
    mapkv::Status s = mapkv::Store::Open(state_, mapkv::Options{}, &store_);
    if (!s.ok()) return Fail(s.ToString());
    s = Resume();
    if (!s.ok()) return Fail(s.ToString());
    FILE* in = std::fopen(input_.c_str(), "r");
    if (in == nullptr) return Fail(input_ + ": " + std::strerror(errno));
    if (std::fseek(in, static_cast<long>(offset_), SEEK_SET) != 0) return Fail(input_ + ": seek failed");
    char line[256];
    uint64_t since_commit = 0;
    while (std::fgets(line, sizeof line, in) != nullptr) {
      const size_t n = std::strlen(line);
      if (!Consume(std::string_view(line, n))) return Fail(input_ + ": bad line at byte " + std::to_string(offset_));
      offset_ += n;
      if (++since_commit == every_) {
        s = Commit();
        if (!s.ok()) return Fail(s.ToString());
        since_commit = 0;
      }
    }
    const bool read_error = std::ferror(in) != 0;
    std::fclose(in);
    if (read_error) return Fail(input_ + ": read error");
    s = Commit();
    if (!s.ok()) return Fail(s.ToString());
    return WriteOutput();
  }

 private:
  // Loads the last committed offset and aggregates (none on the first run).
  mapkv::Status Resume() {
    mapkv::Status s = store_.GetValue(kOffsetKey, &offset_);
    if (s.IsNotFound()) {
      offset_ = 0;
    } else if (!s.ok()) {
      return s;
    }
    return store_.ForEach(kAggPrefix, [&](std::string_view key, std::string_view value) {
      Totals t{};
      if (value.size() == sizeof t) std::memcpy(&t, value.data(), sizeof t);
      totals_[std::string(key.substr(kAggPrefix.size()))] = t;
      return true;
    });
  }

  bool Consume(std::string_view line) {
    const size_t tab = line.find('\t');
    if (tab == std::string_view::npos || tab == 0 || line.back() != '\n') return false;
    int64_t number = 0;
    const char* end = line.data() + line.size() - 1;
    auto [p, ec] = std::from_chars(line.data() + tab + 1, end, number);
    if (ec != std::errc() || p != end) return false;
    auto [it, inserted] = totals_.try_emplace(std::string(line.substr(0, tab)), Totals{0, 0});
    it->second.count += 1;
    it->second.sum += number;
    dirty_.insert(&*it);
    return true;
  }

  // The offset and every changed aggregate, all or nothing.
  mapkv::Status Commit() {
    mapkv::WriteBatch batch;
    for (const auto* entry : dirty_) batch.PutValue(std::string(kAggPrefix) + entry->first, entry->second);
    batch.PutValue(kOffsetKey, offset_);
    dirty_.clear();
    return store_.Write(batch);
  }

  int WriteOutput() {
    const std::string tmp = output_ + ".tmp";
    FILE* out = std::fopen(tmp.c_str(), "w");
    if (out == nullptr) return Fail(tmp + ": " + std::strerror(errno));
    for (const auto& [key, t] : totals_) {
      std::fprintf(out, "%s %lld %lld\n", key.c_str(), static_cast<long long>(t.count), static_cast<long long>(t.sum));
    }
    if (std::fclose(out) != 0) return Fail(tmp + ": " + std::strerror(errno));
    if (std::rename(tmp.c_str(), output_.c_str()) != 0) return Fail(output_ + ": " + std::strerror(errno));
    return 0;
  }

  const std::string input_, state_, output_;
  const uint64_t every_;
  mapkv::Store store_;
  uint64_t offset_ = 0;
  std::map<std::string, Totals> totals_;  // ordered: the output is sorted by key
  std::unordered_set<const std::pair<const std::string, Totals>*> dirty_;
};

int Usage() {
  std::fprintf(stderr,
               "usage: checkpoint_job generate RECORDS INPUT\n"
               "       checkpoint_job run INPUT STATE OUTPUT [--every N]\n");
  return 2;
}

bool ParseCount(const char* text, uint64_t* out) {
  const char* end = text + std::strlen(text);
  auto [p, ec] = std::from_chars(text, end, *out);
  return ec == std::errc() && p == end && *out > 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  uint64_t n = 0;
  if (args.size() == 3 && args[0] == "generate") {
    if (!ParseCount(args[1].c_str(), &n)) return Usage();
    return Generate(n, args[2]);
  }
  if (args.size() >= 4 && args[0] == "run") {
    uint64_t every = 10000;
    if (args.size() == 6 && args[4] == "--every") {
      if (!ParseCount(args[5].c_str(), &every)) return Usage();
    } else if (args.size() != 4) {
      return Usage();
    }
    return Job(args[1], args[2], args[3], every).Run();
  }
  return Usage();
}
