// state_test.cc: saving and resuming process state: atomic batches of any
// size, compare-and-swap, counters, Update, MultiGet and typed values, in one
// process, across processes, and across a killed writer.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

std::string Bytes8(int64_t v) { return std::string(reinterpret_cast<const char*>(&v), sizeof v); }

int64_t Counter(const Store& store, const std::string& key) {
  int64_t v = 0;
  Status s = store.GetValue(key, &v);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return v;
}

// The last number a child appended to its log of acknowledged operations (0
// when it wrote none, or was killed before it created the log).
uint64_t LastLogged(const std::string& log) {
  const std::string text = ::access(log.c_str(), F_OK) == 0 ? ReadFileBytes(log) : std::string();
  const size_t end = text.rfind('\n');
  if (end == std::string::npos) return 0;
  const size_t begin = end == 0 ? std::string::npos : text.rfind('\n', end - 1);
  const size_t from = begin == std::string::npos ? 0 : begin + 1;
  return std::stoull(text.substr(from, end - from));
}

// Waits (up to 20 s) until the child's log names a value past `after`: the
// child has opened the store and is writing, so a kill from now on lands in
// its writes. False when it never got there.
bool WaitLogged(const std::string& log, uint64_t after) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (LastLogged(log) <= after) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    ::usleep(1000);
  }
  return true;
}

// One round of a kill test: starts child `name` (args: path, log), waits
// until it acknowledged a write past `before`, lets it go on for a random
// time below `max_delay_us`, kills it (also when it never got going: no
// child is left behind) and checks that it died of the kill, not of an
// error of its own. Returns the last value the log acknowledges.
uint64_t KillWhileWriting(const std::string& name, const std::string& path, const std::string& log, uint64_t before,
                          uint64_t max_delay_us, Rng* rng) {
  const int pid = SpawnChild(name, {path, log});
  REQUIRE(pid > 0);
  const bool writing = WaitLogged(log, before);
  if (writing) ::usleep(static_cast<useconds_t>(rng->Uniform(max_delay_us)));
  ::kill(pid, SIGKILL);
  REQUIRE_MESSAGE(writing, "child " << name << " acknowledged no write in 20 s");
  CHECK(WaitChild(pid) == 128 + SIGKILL);
  return LastLogged(log);
}

// ---- children ---------------------------------------------------------------

// args: path, threads, increments per thread. Every thread of the process
// increments the counter "hits" `count` times.
int IncrementChild(const std::vector<std::string>& args) {
  if (args.size() != 3) return 2;
  Store store;
  if (!Store::Open(args[0], {}, &store).ok()) return 3;
  const int threads = std::stoi(args[1]);
  const int64_t count = std::stoll(args[2]);
  std::atomic<int> failures{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      int64_t last = 0;
      for (int64_t i = 0; i < count; ++i) {
        int64_t now = 0;
        if (!store.Increment("hits", 1, &now).ok() || now <= last) failures.fetch_add(1);
        last = now;
      }
    });
  }
  for (auto& t : pool) t.join();
  return failures.load() == 0 ? 0 : 4;
}

// args: path, rounds. Adds 1 to the decimal counter "cas" `rounds` times with
// a read / compare-and-swap retry loop.
int CasChild(const std::vector<std::string>& args) {
  if (args.size() != 2) return 2;
  Store store;
  if (!Store::Open(args[0], {}, &store).ok()) return 3;
  const int rounds = std::stoi(args[1]);
  for (int i = 0; i < rounds; ++i) {
    for (;;) {
      std::string cur;
      Status s = store.Get("cas", &cur);
      if (!s.ok()) return 4;
      Status c = store.CompareAndSwap("cas", cur, std::to_string(std::stoll(cur) + 1));
      if (c.ok()) break;
      if (c.code() != Code::kAborted) return 5;
    }
  }
  return 0;
}

// The batch of version `v`: every key g<i> of the group set to "v<v>:<i>...".
constexpr int kGroupKeys = 30000;  // far past the fixed undo log
WriteBatch GroupBatch(uint64_t v) {
  WriteBatch b;
  for (int i = 0; i < kGroupKeys; ++i) {
    b.Put("g" + std::to_string(i), "v" + std::to_string(v) + ":" + std::to_string(i) + std::string(i % 97, 'x'));
  }
  return b;
}

// args: path, log path. Writes GroupBatch(n+1), GroupBatch(n+2), ... (n: the
// version in the store) and after each returns appends its version to the log.
int BatchWriterChild(const std::vector<std::string>& args) {
  if (args.size() != 2) return 2;
  Options o;
  o.checkpoint_on_close = false;
  Store store;
  if (!Store::Open(args[0], o, &store).ok()) return 3;
  FILE* log = std::fopen(args[1].c_str(), "a");
  if (log == nullptr) return 4;
  // Carry on from the version the store holds (a restart after a kill).
  uint64_t first = 1;
  std::string g0;
  if (store.Get("g0", &g0).ok()) first = std::stoull(g0.substr(1, g0.find(':') - 1)) + 1;
  for (uint64_t v = first;; ++v) {
    if (!store.Write(GroupBatch(v)).ok()) return 5;
    std::fprintf(log, "%llu\n", static_cast<unsigned long long>(v));
    std::fflush(log);
  }
}

// args: path, bytes. Lowers RLIMIT_FSIZE to the file's size plus a little,
// tries a batch of `bytes`, and checks it failed with kNoSpace and changed
// nothing. Exit 0 when so.
int BatchPastLimitChild(const std::vector<std::string>& args) {
  if (args.size() != 2) return 2;
  Store store;
  if (!Store::Open(args[0], {}, &store).ok()) return 3;
  Model before;
  if (!store
           .ForEach("",
                    [&](std::string_view k, std::string_view v) {
                      before.emplace(std::string(k), std::string(v));
                      return true;
                    })
           .ok())
    return 4;
  Stats st;
  if (!store.GetStats(&st).ok()) return 5;
  rlimit limit{};
  if (::getrlimit(RLIMIT_FSIZE, &limit) != 0) return 6;
  limit.rlim_cur = st.file_bytes + (4u << 20);
  if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 7;
  WriteBatch batch;
  const uint64_t bytes = std::stoull(args[1]);
  for (uint64_t i = 0; i * 10000 < bytes; ++i) batch.Put("big" + std::to_string(i), std::string(10000, 'b'));
  for (const auto& [k, v] : before) batch.Erase(k);
  Status s = store.Write(batch);
  if (s.code() != Code::kNoSpace) {
    std::fprintf(stderr, "batch past the file-size limit: %s\n", s.ToString().c_str());
    return 8;
  }
  Model after;
  if (!store
           .ForEach("",
                    [&](std::string_view k, std::string_view v) {
                      after.emplace(std::string(k), std::string(v));
                      return true;
                    })
           .ok())
    return 9;
  if (after != before) return 10;
  CheckReport report;
  if (!store.Check(&report).ok() || !report.ok()) return 11;
  if (!store.Put("after-failure", "ok").ok()) return 12;
  return 0;
}

// args: path, log path. Increments "n" (in place, after the first time
// since a checkpoint) and a second counter through CompareAndSwap, forever,
// logging each value of "n" once Increment returns; every 5000 it
// checkpoints, so the next increment copies the record again.
int CounterChild(const std::vector<std::string>& args) {
  if (args.size() != 2) return 2;
  Options o;
  o.checkpoint_on_close = false;
  Store store;
  if (!Store::Open(args[0], o, &store).ok()) return 3;
  FILE* log = std::fopen(args[1].c_str(), "a");
  if (log == nullptr) return 4;
  for (;;) {
    int64_t now = 0;
    if (!store.Increment("n", 1, &now).ok()) return 5;
    std::fprintf(log, "%lld\n", static_cast<long long>(now));
    std::fflush(log);
    std::string cur = "0";
    Status g = store.Get("m", &cur);
    if (!g.ok() && !g.IsNotFound()) return 6;
    std::optional<std::string_view> expected;
    if (g.ok()) expected = cur;
    if (!store.CompareAndSwap("m", expected, std::to_string(now)).ok()) return 7;
    if (now % 5000 == 0 && !store.Flush(FlushMode::kSync).ok()) return 8;
  }
}

const bool registered = RegisterChild("counter", CounterChild) && RegisterChild("increment", IncrementChild) &&
                        RegisterChild("cas", CasChild) && RegisterChild("batch-writer", BatchWriterChild) &&
                        RegisterChild("batch-past-limit", BatchPastLimitChild);

}  // namespace

TEST_SUITE("state") {
  TEST_CASE("state: CompareAndSwap swaps only on the expected value and reports the actual one") {
    REQUIRE(registered);
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    std::optional<std::string> actual;
    // Absent -> value.
    REQUIRE(store.CompareAndSwap("k", std::nullopt, "one").ok());
    // Expecting absent, but present: refused, actual reported.
    Status s = store.CompareAndSwap("k", std::nullopt, "two", &actual);
    CHECK(s.code() == Code::kAborted);
    CHECK(s.message().find("\"k\"") != std::string::npos);
    REQUIRE(actual.has_value());
    CHECK(*actual == "one");
    // Wrong expected value.
    s = store.CompareAndSwap("k", "uno", "two", &actual);
    CHECK(s.code() == Code::kAborted);
    CHECK(*actual == "one");
    std::string v;
    REQUIRE(store.Get("k", &v).ok());
    CHECK(v == "one");
    // Right expected value, binary-safe.
    const std::string bin("\0\x01\xff", 3);
    REQUIRE(store.CompareAndSwap("k", "one", bin).ok());
    REQUIRE(store.Get("k", &v).ok());
    CHECK(v == bin);
    // Value -> erased.
    REQUIRE(store.CompareAndSwap("k", bin, std::nullopt).ok());
    bool found = true;
    REQUIRE(store.Contains("k", &found).ok());
    CHECK_FALSE(found);
    // Expecting a value on an absent key: refused, actual = absent.
    actual = "stale";
    CHECK(store.CompareAndSwap("k", "one", "x", &actual).code() == Code::kAborted);
    CHECK_FALSE(actual.has_value());
    CHECK(store.CompareAndSwap("", std::nullopt, "x").code() == Code::kInvalidArgument);
    CheckClean(store);
  }

  TEST_CASE("state: Increment counts from zero and refuses wrong sizes and overflow") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    int64_t now = 0;
    REQUIRE(store.Increment("c", 5, &now).ok());
    CHECK(now == 5);
    REQUIRE(store.Increment("c", -12, &now).ok());
    CHECK(now == -7);
    REQUIRE(store.Increment("c").ok());
    CHECK(Counter(store, "c") == -6);
    // Stored little-endian, 8 bytes.
    std::string raw;
    REQUIRE(store.Get("c", &raw).ok());
    CHECK(raw == Bytes8(-6));
    CHECK(static_cast<uint8_t>(raw[0]) == 0xfa);

    REQUIRE(store.Put("text", "hello").ok());
    Status s = store.Increment("text", 1);
    CHECK(s.code() == Code::kWrongType);
    CHECK(s.message().find("\"text\"") != std::string::npos);
    CHECK(s.message().find("5 bytes") != std::string::npos);
    REQUIRE(store.Get("text", &raw).ok());
    CHECK(raw == "hello");

    REQUIRE(store.PutValue<int64_t>("big", INT64_MAX - 1).ok());
    REQUIRE(store.Increment("big", 1, &now).ok());
    CHECK(now == INT64_MAX);
    s = store.Increment("big", 1, &now);
    CHECK(s.code() == Code::kOutOfRange);
    CHECK(Counter(store, "big") == INT64_MAX);
    REQUIRE(store.PutValue<int64_t>("small", INT64_MIN).ok());
    CHECK(store.Increment("small", -1).code() == Code::kOutOfRange);
    CHECK(Counter(store, "small") == INT64_MIN);
    CheckClean(store);
  }

  TEST_CASE("state: Update puts keeps or erases and is refused from inside itself") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store
                .Update("list",
                        [](std::optional<std::string_view> cur, std::string* next) {
                          CHECK_FALSE(cur.has_value());
                          *next = "a";
                          return Store::UpdateAction::kPut;
                        })
                .ok());
    for (char c : std::string("bcd")) {
      REQUIRE(store
                  .Update("list",
                          [c](std::optional<std::string_view> cur, std::string* next) {
                            REQUIRE(cur.has_value());
                            *next = std::string(*cur) + "," + c;
                            return Store::UpdateAction::kPut;
                          })
                  .ok());
    }
    std::string v;
    REQUIRE(store.Get("list", &v).ok());
    CHECK(v == "a,b,c,d");

    Stats before, after;
    REQUIRE(store.GetStats(&before).ok());
    REQUIRE(
        store.Update("list", [](std::optional<std::string_view>, std::string*) { return Store::UpdateAction::kKeep; })
            .ok());
    REQUIRE(store.GetStats(&after).ok());
    CHECK(after.change_seq == before.change_seq);  // kKeep is not a change

    // An exception leaves the store as it was and releases the lock.
    CHECK_THROWS_AS(store.Update("list",
                                 [](std::optional<std::string_view>, std::string* next) -> Store::UpdateAction {
                                   *next = "half";
                                   throw std::runtime_error("caller's failure");
                                 }),
                    std::runtime_error);
    REQUIRE(store.Get("list", &v).ok());
    CHECK(v == "a,b,c,d");
    REQUIRE(store.Put("other", "x").ok());

    // Writing to the same handle from inside the function would deadlock.
    Status inner;
    REQUIRE(store
                .Update("list",
                        [&](std::optional<std::string_view>, std::string*) {
                          inner = store.Put("other", "y");
                          return Store::UpdateAction::kKeep;
                        })
                .ok());
    CHECK(inner.code() == Code::kUnsafeUse);

    REQUIRE(
        store.Update("list", [](std::optional<std::string_view>, std::string*) { return Store::UpdateAction::kErase; })
            .ok());
    CHECK(store.Get("list", &v).IsNotFound());
    // Erase of an absent key through Update is a no-op.
    REQUIRE(
        store.Update("list", [](std::optional<std::string_view>, std::string*) { return Store::UpdateAction::kErase; })
            .ok());
    CheckClean(store);
  }

  TEST_CASE("state: MultiGet reads present and absent keys") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    for (int i = 0; i < 1000; i += 2) REQUIRE(store.Put(Key16(i), "v" + std::to_string(i)).ok());
    std::vector<std::string> owned;
    for (int i = 0; i < 50; ++i) owned.push_back(Key16(i * 7));
    std::vector<std::string_view> keys(owned.begin(), owned.end());
    std::vector<std::optional<std::string>> values;
    REQUIRE(store.MultiGet(keys, &values).ok());
    REQUIRE(values.size() == keys.size());
    for (int i = 0; i < 50; ++i) {
      if ((i * 7) % 2 == 0) {
        REQUIRE(values[i].has_value());
        CHECK(*values[i] == "v" + std::to_string(i * 7));
      } else {
        CHECK_FALSE(values[i].has_value());
      }
    }
    keys.push_back("");
    CHECK(store.MultiGet(keys, &values).code() == Code::kInvalidArgument);
  }

  TEST_CASE("state: typed values round-trip and a wrong size names key and sizes") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    struct Position {
      int32_t x;
      int32_t y;
      double heading;
    };
    REQUIRE(store.PutValue("pos", Position{3, -4, 1.5}).ok());
    Position p{};
    REQUIRE(store.GetValue("pos", &p).ok());
    CHECK(p.x == 3);
    CHECK(p.y == -4);
    CHECK(p.heading == 1.5);
    REQUIRE(store.PutValue("pi", 3.25).ok());
    double d = 0;
    REQUIRE(store.GetValue("pi", &d).ok());
    CHECK(d == 3.25);
    uint16_t small = 0;
    Status s = store.GetValue("pi", &small);
    CHECK(s.code() == Code::kWrongType);
    CHECK(s.message().find("\"pi\"") != std::string::npos);
    CHECK(s.message().find("is 8 bytes, expected 2") != std::string::npos);
    CHECK(small == 0);  // nothing reinterpreted
    CHECK(store.GetValue("absent", &d).IsNotFound());

    const std::vector<uint32_t> ids = {1, 2, 3, 0xdeadbeef, 5};  // 20 bytes
    REQUIRE(store.PutArray<uint32_t>("ids", ids).ok());
    std::vector<uint32_t> back;
    REQUIRE(store.GetArray("ids", &back).ok());
    CHECK(back == ids);
    std::string raw;
    REQUIRE(store.Get("ids", &raw).ok());
    CHECK(raw.substr(12, 4) == std::string("\xef\xbe\xad\xde", 4));  // little-endian on disk
    std::vector<uint64_t> wrong;
    s = store.GetArray("ids", &wrong);
    CHECK(s.code() == Code::kWrongType);
    CHECK(s.message().find("a multiple of 8") != std::string::npos);
    REQUIRE(store.PutArray<uint64_t>("empty", {}).ok());
    REQUIRE(store.GetArray("empty", &wrong).ok());
    CHECK(wrong.empty());

    WriteBatch batch;
    batch.PutValue("n", int64_t{41});
    REQUIRE(store.Write(batch).ok());
    int64_t n = 0;
    REQUIRE(store.Increment("n", 1, &n).ok());
    CHECK(n == 42);
  }

  TEST_CASE("state: a synchronous batch is checkpointed before Write returns") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    Stats before, after;
    REQUIRE(store.GetStats(&before).ok());
    WriteBatch batch;
    for (int i = 0; i < 100; ++i) batch.Put(Key16(i), "durable");
    REQUIRE(store.Write(batch, WriteOptions{.sync = true}).ok());
    REQUIRE(store.GetStats(&after).ok());
    CHECK(after.checkpoint_generation == before.checkpoint_generation + 1);
    // A plain batch is not.
    REQUIRE(store.Write(batch).ok());
    Stats third;
    REQUIRE(store.GetStats(&third).ok());
    CHECK(third.checkpoint_generation == after.checkpoint_generation);
    // An empty synchronous batch is a checkpoint.
    REQUIRE(store.Write(WriteBatch{}, WriteOptions{.sync = true}).ok());
    REQUIRE(store.GetStats(&third).ok());
    CHECK(third.checkpoint_generation == after.checkpoint_generation + 1);
  }

  TEST_CASE("state: a batch of 300000 puts overwrites and erases commits whole") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    Model model;
    for (int i = 0; i < 50000; ++i) {
      REQUIRE(store.Put(Key16(i), "old" + std::to_string(i)).ok());
      model[Key16(i)] = "old" + std::to_string(i);
    }
    REQUIRE(store.Flush(FlushMode::kSync).ok());  // the table pages are checkpointed: copy-on-write
    WriteBatch batch;
    Rng rng(7);
    for (int i = 0; i < 300000; ++i) {
      const std::string k = Key16(rng.Uniform(200000));
      if (rng.Uniform(10) == 0) {
        batch.Erase(k);
        model.erase(k);
      } else {
        const std::string v = "new" + std::to_string(i) + std::string(rng.Uniform(150), 'n');
        batch.Put(k, v);
        model[k] = v;
      }
    }
    REQUIRE(store.Write(batch).ok());
    CHECK(store.size() == model.size());
    CHECK(Dump(store) == model);
    CheckClean(store);
    REQUIRE(store.Close().ok());
    store = MustOpen(dir.File("s.mkv"));
    CHECK(Dump(store) == model);
    CheckClean(store);
  }

  TEST_CASE("state: a batch past the file-size limit fails with NoSpace and changes nothing") {
    TempDir dir;
    {
      Store store = MustOpen(dir.File("s.mkv"));
      for (int i = 0; i < 20000; ++i) REQUIRE(store.Put(Key16(i), "before" + std::to_string(i)).ok());
    }
    const int pid = SpawnChild("batch-past-limit", {dir.File("s.mkv"), std::to_string(64u << 20)});
    CHECK(WaitChild(pid) == 0);
    Store store = MustOpen(dir.File("s.mkv"));
    CHECK(store.size() == 20001);
    std::string v;
    REQUIRE(store.Get(Key16(19999), &v).ok());
    CHECK(v == "before19999");
    CheckClean(store);
  }

  TEST_CASE("state: a batch of 1 GiB commits and reads back") {
    TempDir dir;
    Options o;
    o.checkpoint_on_close = false;
    Store store = MustOpen(dir.File("s.mkv"), o);
    constexpr int kValues = 1024;
    WriteBatch batch;
    std::string value(1 << 20, '\0');
    for (int i = 0; i < kValues; ++i) {
      std::memcpy(value.data(), &i, sizeof i);
      value[value.size() - 1] = static_cast<char>(i);
      batch.Put("blob" + std::to_string(i), value);
    }
    CHECK(batch.ByteSize() >= (uint64_t{1} << 30));
    const auto start = Clock::now();
    REQUIRE(store.Write(batch).ok());
    MESSAGE("1 GiB batch: " << SecondsSince(start) << " s");
    batch.Clear();
    CHECK(store.size() == kValues);
    std::string v;
    for (int i = 0; i < kValues; i += 101) {
      REQUIRE(store.Get("blob" + std::to_string(i), &v).ok());
      REQUIRE(v.size() == (1u << 20));
      int got = -1;
      std::memcpy(&got, v.data(), sizeof got);
      CHECK(got == i);
      CHECK(v.back() == static_cast<char>(i));
    }
  }
}

TEST_SUITE("concurrency") {
  TEST_CASE("concurrency: 4 processes x 2 threads x 100000 increments of one counter end at 800000") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    { MustOpen(path); }
    const int kIncrements = 100000;
    std::vector<int> pids;
    const auto start = Clock::now();
    for (int p = 0; p < 4; ++p) {
      pids.push_back(SpawnChild("increment", {path, "2", std::to_string(kIncrements)}));
      REQUIRE(pids.back() > 0);
    }
    for (int pid : pids) CHECK(WaitChild(pid) == 0);
    MESSAGE("800000 contended increments: " << SecondsSince(start) << " s");
    Store store = MustOpen(path);
    CHECK(Counter(store, "hits") == 4 * 2 * kIncrements);
    CheckClean(store);
  }

  TEST_CASE("concurrency: compare-and-swap retry loops in 4 processes lose no update") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    {
      Store store = MustOpen(path);
      REQUIRE(store.Put("cas", "0").ok());
    }
    std::vector<int> pids;
    for (int p = 0; p < 4; ++p) {
      pids.push_back(SpawnChild("cas", {path, "3000"}));
      REQUIRE(pids.back() > 0);
    }
    for (int pid : pids) CHECK(WaitChild(pid) == 0);
    Store store = MustOpen(path);
    std::string v;
    REQUIRE(store.Get("cas", &v).ok());
    CHECK(v == "12000");
  }

  TEST_CASE("concurrency: MultiGet ForEach and ReadGuard see a large batch whole or not at all") {
    TempDir dir;
    Store store = MustOpen(dir.File("s.mkv"));
    REQUIRE(store.Write(GroupBatch(0)).ok());
    std::atomic<bool> stop{false};
    std::atomic<int> mixed{0}, reads{0};
    // The version a value belongs to ("v<version>:...").
    auto version = [](std::string_view v) { return v.substr(1, v.find(':') - 1); };
    std::vector<std::string> owned;
    for (int i = 0; i < kGroupKeys; i += 997) owned.push_back("g" + std::to_string(i));
    std::vector<std::string_view> keys(owned.begin(), owned.end());
    std::vector<std::thread> readers;
    readers.emplace_back([&] {  // MultiGet
      std::vector<std::optional<std::string>> values;
      while (!stop.load()) {
        if (!store.MultiGet(keys, &values).ok()) {
          mixed.fetch_add(1);
          continue;
        }
        for (const auto& v : values) {
          if (!v || version(*v) != version(*values[0])) mixed.fetch_add(1);
        }
        reads.fetch_add(1);
      }
    });
    readers.emplace_back([&] {  // ForEach: one state for the whole walk
      while (!stop.load()) {
        std::string first;
        int n = 0;
        Status s = store.ForEach("g", [&](std::string_view, std::string_view v) {
          if (n++ == 0) first = std::string(version(v));
          if (version(v) != first) mixed.fetch_add(1);
          return true;
        });
        if (!s.ok() || n != kGroupKeys) mixed.fetch_add(1);
        reads.fetch_add(1);
      }
    });
    readers.emplace_back([&] {  // ReadGuard: views of one state while held
      while (!stop.load()) {
        ReadGuard guard;
        if (!guard.Lock(store).ok()) {
          mixed.fetch_add(1);
          continue;
        }
        std::string first;
        for (const std::string_view k : keys) {
          std::string_view v;
          if (!guard.Get(k, &v).ok()) {
            mixed.fetch_add(1);
            break;
          }
          if (first.empty()) first = std::string(version(v));
          if (version(v) != first) mixed.fetch_add(1);
        }
        reads.fetch_add(1);
      }
    });
    for (uint64_t v = 1; v <= 12; ++v) REQUIRE(store.Write(GroupBatch(v)).ok());
    stop.store(true);
    for (auto& t : readers) t.join();
    MESSAGE(reads.load() << " multi-key reads during 12 batches of " << kGroupKeys << " puts");
    CHECK(reads.load() > 0);
    CHECK(mixed.load() == 0);
  }
}

TEST_SUITE("crash") {
  TEST_CASE("crash: a writer killed while incrementing in place loses no acknowledged increment") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const std::string log = dir.File("acked.log");
    Rng rng(5);
    int64_t last = 0;
    int advanced = 0;  // rounds in which the child acknowledged increments
    for (int round = 0; round < 30; ++round) {
      CAPTURE(round);
      const uint64_t before = LastLogged(log);
      // Killed while it increments: once its first increment of the round
      // is acknowledged, after a random time more.
      const int64_t acked = static_cast<int64_t>(KillWhileWriting("counter", path, log, before, 40000, &rng));
      advanced += acked > static_cast<int64_t>(before);
      Options o;
      o.verify_checksums = true;  // a torn in-place change would fail its checksum
      Store store = MustOpen(path, o);
      CheckClean(store);
      int64_t n = 0;
      Status s = store.GetValue("n", &n);
      if (acked > 0) REQUIRE_MESSAGE(s.ok(), s.ToString());
      CHECK(n >= acked);
      CHECK(n >= last);
      // At most one increment returned without reaching the log, in this
      // round (the child resumes from the store, not from the log).
      CHECK(n <= std::max(acked, last) + 1);
      last = n;
    }
    CHECK(advanced == 30);
    CHECK(last >= 30);
  }

  TEST_CASE("crash: a writer killed during large batches leaves each batch whole or absent") {
    TempDir dir;
    const std::string path = dir.File("s.mkv");
    const std::string log = dir.File("acked.log");
    Rng rng(99);
    uint64_t last_seen = 0;
    int advanced = 0;  // rounds in which the child acknowledged batches
    for (int round = 0; round < 25; ++round) {
      CAPTURE(round);
      const uint64_t before = LastLogged(log);
      const uint64_t acked = KillWhileWriting("batch-writer", path, log, before, 250000, &rng);
      advanced += acked > before;
      Store store = MustOpen(path);
      CheckClean(store);
      // Every key of the group holds the same version: the newest batch that
      // committed, which is the last acknowledged one or the one after it.
      uint64_t version = 0;
      int seen = 0;
      bool same = true;
      REQUIRE(store
                  .ForEach("g",
                           [&](std::string_view k, std::string_view v) {
                             const uint64_t ver = std::stoull(std::string(v.substr(1, v.find(':') - 1)));
                             if (seen++ == 0) version = ver;
                             same &= ver == version;
                             same &= v.substr(v.find(':') + 1, k.size() - 1) == k.substr(1);
                             return true;
                           })
                  .ok());
      CAPTURE(acked);
      CHECK(same);
      if (seen > 0) CHECK(seen == kGroupKeys);
      CHECK(version >= acked);
      CHECK(version <= std::max(acked, last_seen) + 1);  // the child resumes from the store
      CHECK(version >= last_seen);
      last_seen = version;
    }
    MESSAGE(advanced << " of 25 rounds acknowledged batches of " << kGroupKeys << " puts before the kill; last version "
                     << last_seen);
    CHECK(advanced == 25);
    CHECK(last_seen >= 25);
  }
}

}  // namespace mapkv::test
