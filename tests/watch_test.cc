// watch_test.cc: change notification (engine/src/watch.cc): the change
// sequence, the change ring and its filters, waits and wake-ups across
// processes, killed watchers and writers, growth, persistence and recovery.
//
// Bounds asserted (2-core machine shared with builds): an idle watcher waiting
// 1 s uses under 10 ms of CPU; woken watchers return within 5 s of the put
// (they return in microseconds; the bound only catches a lost wake-up, which
// would leave them asleep until their 20 s timeout).
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "platform/platform.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

using namespace std::chrono_literals;

#if defined(__SANITIZE_THREAD__)
constexpr int kManyWatchers = 20;  // ThreadSanitizer processes take ~100 MiB each
#else
constexpr int kManyWatchers = 100;
#endif

bool Exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds limit = 20s) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

Options Ring(uint64_t capacity) {
  Options o;
  o.change_ring_capacity = capacity;
  o.lock_timeout = 30s;
  return o;
}

std::string Msg(uint64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "msg/%06llu", static_cast<unsigned long long>(i));
  return buf;
}

// ---- children ---------------------------------------------------------------

// args: path, n, ready file. Waits for the ready file, then puts Msg(1..n).
int ProducerChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Ring(0), &s).ok()) return 3;  // the ring exists already: the option is not used
  const uint64_t n = std::stoull(args[1]);
  if (!WaitUntil([&] { return Exists(args[2]); })) return 4;
  for (uint64_t i = 1; i <= n; ++i) {
    if (!s.Put(Msg(i), std::to_string(i)).ok()) return 5;
  }
  return 0;
}

// args: path, since, timeout ms, result file. Waits for a change after
// `since`; writes "<status code> <seq> <cpu us> <wall us>".
int WaiterChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Ring(1024), &s).ok()) return 3;
  const int64_t cpu_before = ProcessCpuMicros();
  const auto t0 = Clock::now();
  uint64_t seq = 0;
  Status st = s.WaitForChange(std::stoull(args[1]), std::chrono::milliseconds(std::stoll(args[2])), &seq);
  const auto wall = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
  const int64_t cpu = ProcessCpuMicros() - cpu_before;
  WriteFileBytes(args[3], std::to_string(static_cast<int>(st.code())) + " " + std::to_string(seq) + " " +
                              std::to_string(cpu) + " " + std::to_string(wall));
  return 0;
}

// args: path, bytes, done file. Puts values of 64 KiB until the file has grown
// past `bytes`, then creates the done file.
int GrowerChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Ring(1024), &s).ok()) return 3;
  const uint64_t target = std::stoull(args[1]);
  auto size = [&] {  // not FileSize: its REQUIRE needs a running test
    std::error_code ec;
    const uint64_t n = std::filesystem::file_size(args[0], ec);
    return ec ? 0 : n;
  };
  for (uint64_t i = 0; size() < target; ++i) {
    if (!s.Put("grow/" + std::to_string(i), std::string(64 * 1024, static_cast<char>('a' + i % 26))).ok()) return 4;
  }
  WriteFileBytes(args[2], "done");
  return 0;
}

// args: path, n. One batch of n puts of "dead/..." keys, without end (killed in it).
int BatchChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], Ring(1 << 17), &s).ok()) return 3;
  WriteBatch b;  // built once: the child is nearly always inside a Write
  for (uint64_t i = 0; i < std::stoull(args[1]); ++i) b.Put("dead/" + std::to_string(i), "v");
  for (;;) {
    if (!s.Write(b).ok()) return 4;
  }
}

const bool registered = RegisterChild("watch.producer", ProducerChild) && RegisterChild("watch.waiter", WaiterChild) &&
                        RegisterChild("watch.grower", GrowerChild) && RegisterChild("watch.batch", BatchChild);

struct WaitResult {
  int code = -1;
  uint64_t seq = 0;
  int64_t cpu_us = -1;
  int64_t wall_us = -1;
};

WaitResult ReadResult(const std::string& path) {
  WaitResult r;
  const std::string text = ReadFileBytes(path);
  std::sscanf(text.c_str(), "%d %llu %lld %lld", &r.code, reinterpret_cast<unsigned long long*>(&r.seq),
              reinterpret_cast<long long*>(&r.cpu_us), reinterpret_cast<long long*>(&r.wall_us));
  return r;
}

// Reads all changes after `since` (which must all be in the ring).
std::vector<Change> All(const Store& s, uint64_t since, const ChangeFilter& f = {}) {
  std::vector<Change> out;
  uint64_t next = 0;
  Status st = s.ChangesSince(since, f, &out, &next);
  REQUIRE_MESSAGE(st.ok(), st.ToString());
  CHECK(next == s.ChangeSeq());
  return out;
}

// ---- single process -----------------------------------------------------------

TEST_CASE("watch: ChangeSeq counts every put and erase, a batch at once, and persists across reopen") {
  REQUIRE(registered);
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  {
    Store s = MustOpen(path);
    CHECK(s.ChangeSeq() == 0);
    REQUIRE(s.Put("a", "1").ok());
    REQUIRE(s.Put("a", "2").ok());
    CHECK(s.ChangeSeq() == 2);
    CHECK(s.Erase("a").ok());
    CHECK(s.Erase("a").code() == Code::kNotFound);  // no change: no sequence number
    CHECK(s.ChangeSeq() == 3);
    WriteBatch b;
    for (int i = 0; i < 10; ++i) b.Put("b" + std::to_string(i), "v");
    b.Erase("b0");
    REQUIRE(s.Write(b).ok());
    CHECK(s.ChangeSeq() == 14);
    int64_t v = 0;
    REQUIRE(s.Increment("n", 5, &v).ok());  // a new record
    REQUIRE(s.Increment("n", 5, &v).ok());  // in place
    CHECK(s.ChangeSeq() == 16);
    const std::vector<Change> ch = All(s, 14);
    REQUIRE(ch.size() == 2);
    CHECK(ch[1].key == "n");
    CHECK(ch[1].seq == 16);
    Stats st;
    REQUIRE(s.GetStats(&st).ok());
    CHECK(st.change_seq == 16);
  }
  Store s = MustOpen(path);
  CHECK(s.ChangeSeq() == 16);
  // The ring persists too: the batch's changes are still readable.
  const std::vector<Change> ch = All(s, 3);
  REQUIRE(ch.size() == 13);
  CHECK(ch[0].seq == 4);
  CHECK(ch[0].key == "b0");
  CHECK(ch[10].op == ChangeOp::kErase);
  CHECK(ch[10].key == "b0");
  CheckClean(s);  // Check knows the ring extent (no leak, no overlap)
}

TEST_CASE("watch: ChangesSince filters by key and prefix, keeps long keys as start and hash, and says rescan") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path, Ring(100));  // rounded up to 128 entries
  const std::string long_a = "long/" + std::string(60, 'a');
  const std::string long_b = "long/" + std::string(60, 'a') + "b";  // same first 40 bytes
  REQUIRE(s.Put("cfg", "1").ok());
  REQUIRE(s.Put("cfg2", "1").ok());
  REQUIRE(s.Put("user/1", "x").ok());
  REQUIRE(s.Put(long_a, "x").ok());
  REQUIRE(s.Put(long_b, "x").ok());
  REQUIRE(s.Erase("cfg").ok());
  REQUIRE(s.Put(std::string("\xff\x00k", 3), "bin").ok());

  std::vector<Change> ch = All(s, 0, ChangeFilter::Key("cfg"));
  REQUIRE(ch.size() == 2);
  CHECK(ch[0].seq == 1);
  CHECK(ch[0].op == ChangeOp::kPut);
  CHECK(ch[1].seq == 6);
  CHECK(ch[1].op == ChangeOp::kErase);
  CHECK(All(s, 1, ChangeFilter::Key("cfg")).size() == 1);  // only after `since`
  CHECK(All(s, 0, ChangeFilter::Prefix("cfg")).size() == 3);
  CHECK(All(s, 0, ChangeFilter::Prefix("user/")).size() == 1);
  CHECK(All(s, 0, ChangeFilter::Key(std::string("\xff\x00k", 3))).size() == 1);

  // A long key: its first 40 bytes, size and hash; the exact-key filter tells
  // the two long keys apart by size and hash.
  ch = All(s, 0, ChangeFilter::Key(long_b));
  REQUIRE(ch.size() == 1);
  CHECK(ch[0].seq == 5);
  CHECK(ch[0].key_truncated);
  CHECK(ch[0].key == long_b.substr(0, kChangeKeyBytes));
  CHECK(ch[0].key_size == long_b.size());
  CHECK(ch[0].key_hash == s.KeyHash(long_b));
  CHECK(All(s, 0, ChangeFilter::Key(long_a)).size() == 1);
  CHECK(All(s, 0, ChangeFilter::Prefix("long/")).size() == 2);
  // A prefix longer than what is kept matches both (conservative, flagged).
  ch = All(s, 0, ChangeFilter::Prefix(long_a));
  CHECK(ch.size() == 2);
  CHECK(All(s, 0, ChangeFilter::Prefix("cfg2")).size() == 1);

  // Past the ring's 128 entries, the oldest changes are gone: rescan.
  for (int i = 0; i < 200; ++i) REQUIRE(s.Put("fill", std::to_string(i)).ok());
  std::vector<Change> out;
  uint64_t next = 0;
  Status st = s.ChangesSince(0, {}, &out, &next);
  CHECK(st.code() == Code::kRescan);
  CHECK(st.message().find("no longer in the change ring") != std::string::npos);
  CHECK(out.empty());
  const uint64_t head = s.ChangeSeq();
  CHECK(s.ChangesSince(head - 128, {}, &out, &next).ok());
  CHECK(out.size() == 128);
  CHECK(s.ChangesSince(head - 129, {}, &out, &next).code() == Code::kRescan);
  CHECK(s.ChangesSince(head + 5, {}, &out, &next).code() == Code::kRescan);  // ahead of the store

  // A store without a ring still counts and wakes, but cannot list.
  Store none = MustOpen(dir.File("none.mkv"), Ring(0));
  REQUIRE(none.Put("k", "v").ok());
  CHECK(none.ChangeSeq() == 1);
  CHECK(none.ChangesSince(0, {}, &out, &next).code() == Code::kNotSupported);
}

// The ring is not checksummed. An entry that says its key is not truncated
// but longer than the bytes it keeps made the key filter compare that many
// bytes of a 40-byte copy.
TEST_CASE("watch: a damaged ring entry whose key size and truncation flag disagree is Corruption") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path, Ring(64));
  REQUIRE(s.Put("short", "v").ok());
  {
    std::unique_ptr<internal::File> file;
    std::unique_ptr<internal::Mapping> map;
    REQUIRE(internal::File::Open(path, internal::FileSpec{}, &file).ok());
    REQUIRE(file->Map(FileSize(path), true, &map).ok());
    const auto* ctl =
        reinterpret_cast<const internal::format::ControlPage*>(map->data() + internal::format::kControlOffset);
    REQUIRE(ctl->ring_offset != 0);
    auto* e = reinterpret_cast<internal::format::ChangeEntry*>(map->data() + ctl->ring_offset);  // sequence 1
    REQUIRE(e->seq == 1);
    REQUIRE(e->key_size == 5);
    e->key_size = 5000;  // flags still say "not truncated"
  }
  const std::string long_key(5000, 'k');
  std::vector<Change> out;
  uint64_t next = 0;
  for (const ChangeFilter& f : {ChangeFilter::Key(long_key), ChangeFilter::Prefix(long_key), ChangeFilter{}}) {
    const Status st = s.ChangesSince(0, f, &out, &next);
    CHECK(st.code() == Code::kCorruption);
    CHECK(st.message().find("change ring entry 1 is damaged") != std::string::npos);
    CHECK(out.empty());
  }
}

TEST_CASE("watch: WaitForChange times out, returns at once when behind, and needs a writable handle") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  REQUIRE(s.Put("k", "v").ok());
  uint64_t seq = 99;
  const auto t0 = Clock::now();
  Status st = s.WaitForChange(1, 200ms, &seq);
  const double waited = SecondsSince(t0);
  CHECK(st.code() == Code::kTimedOut);
  CHECK(seq == 1);
  CHECK(waited >= 0.19);
  CHECK(waited < 5);
  CHECK(s.WaitForChange(0, 10s, &seq).ok());  // already past: no wait
  CHECK(seq == 1);
  CHECK(s.WaitForChange(1, 0ms).code() == Code::kTimedOut);
  CHECK(s.WaitForChange(1, -1ms).code() == Code::kInvalidArgument);
  // A thread of the same process wakes it: the put comes once the watcher
  // has found no change and gone to sleep.
  // (Checked after the join: two threads asserting at once corrupted
  // doctest's state under Wine.)
  const uint64_t sleeps = internal::StoreImpl::WatchSleepsForTesting(s);
  bool asleep = false;
  Status put;
  std::thread writer([&] {
    asleep = WaitUntil([&] { return internal::StoreImpl::WatchSleepsForTesting(s) > sleeps; });
    put = s.Put("k", "w");
  });
  // Woken, not timed out: a lost wake-up would return kOk only at the
  // deadline (WaitForChange reads the sequence once more then).
  const auto t_wake = Clock::now();
  CHECK(s.WaitForChange(1, 20s, &seq).ok());
  CHECK(SecondsSince(t_wake) < 5);
  CHECK(seq == 2);
  writer.join();
  CHECK_MESSAGE(asleep, "the watcher did not go to sleep within 20 s");
  CHECK(put.ok());
  Options ro;
  ro.read_only = true;
  Store r = MustOpen(path, ro);
  CHECK(r.ChangeSeq() == 2);
  st = r.WaitForChange(2, 10ms);
  CHECK(st.code() == Code::kNotSupported);
  CHECK(st.message().find("read-only") != std::string::npos);
  std::vector<Change> out;
  uint64_t next = 0;
  CHECK(r.ChangesSince(0, {}, &out, &next).ok());  // reading the ring needs no write access
  CHECK(out.size() == 2);
}

// The restart gap is sound only if no more changes than it are ever lost:
// a writer checkpoints when the sequence runs kCheckpointEveryChanges past
// the newest checkpoint's (100 here, through a test hook), without a Flush.
TEST_CASE("watch: writers checkpoint on their own before the sequence runs too far past the last checkpoint") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  internal::SetCheckpointEveryChangesForTesting(100);
  Options o;
  o.checkpoint_on_close = false;
  Store s = MustOpen(path, o);
  Stats st;
  REQUIRE(s.GetStats(&st).ok());
  const uint64_t gen0 = st.checkpoint_generation;
  for (int i = 0; i < 250; ++i) REQUIRE(s.Put("k" + std::to_string(i), "v").ok());
  REQUIRE(s.GetStats(&st).ok());
  CHECK(st.checkpoint_generation == gen0 + 2);  // at 100 and 200 changes
  internal::SetCheckpointEveryChangesForTesting(0);
  // A power cut now loses at most the last 50.
  const std::string cut = dir.File("cut.mkv");
  WriteFileBytes(cut, ReadFileBytes(path));
  BootIdGuard reboot(3);
  Store after = MustOpen(cut);
  CHECK(after.size() == 200);
  CHECK(after.ChangeSeq() == 200 + internal::format::kRestartGap);
}

// The same bound across opens: a store whose sequence ran that far past its
// last checkpoint (here without the hook; in life, a restart whose forced
// checkpoint failed) is checkpointed by the next writable open, before its
// first write hands out a number.
TEST_CASE("watch: a writable open checkpoints a store whose sequence ran too far past the last checkpoint") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Options o;
  o.checkpoint_on_close = false;
  uint64_t gen0 = 0;
  {
    Store s = MustOpen(path, o);
    Stats st;
    REQUIRE(s.GetStats(&st).ok());
    gen0 = st.checkpoint_generation;
    for (int i = 0; i < 150; ++i) REQUIRE(s.Put("k" + std::to_string(i), "v").ok());
    REQUIRE(s.GetStats(&st).ok());
    REQUIRE(st.checkpoint_generation == gen0);
  }
  // Also with dirty = 0, as a recovery killed between its control page and
  // its checkpoint leaves it (a checkpoint of a clean store writes nothing).
  const std::string image = ReadFileBytes(path);
  for (const bool clean : {false, true}) {
    CAPTURE(clean);
    std::string bytes = image;
    if (clean)
      reinterpret_cast<internal::format::ControlPage*>(bytes.data() + internal::format::kControlOffset)->dirty = 0;
    WriteFileBytes(path, bytes);
    struct Bound {  // reset however the test ends
      Bound() { internal::SetCheckpointEveryChangesForTesting(100); }
      ~Bound() { internal::SetCheckpointEveryChangesForTesting(0); }
    } bound;
    Store s = MustOpen(path, o);
    Stats st;
    REQUIRE(s.GetStats(&st).ok());
    CHECK(st.checkpoint_generation == gen0 + 1);
  }
}

// A writer killed after it published a change and before it woke the
// watchers leaves a change that nobody's wake announces. Here the change is
// published by a store into the control page, with no wake: the waiting
// watcher must see it on its own, well before its timeout.
TEST_CASE("watch: a change published without a wake is seen within seconds, not at the timeout") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  REQUIRE(s.Put("k", "v").ok());
  const uint64_t before = s.ChangeSeq();
  Status st;
  uint64_t seen = 0;
  const uint64_t sleeps = internal::StoreImpl::WatchSleepsForTesting(s);
  std::thread watcher([&] { st = s.WaitForChange(before, 60s, &seen); });
  std::unique_ptr<internal::File> file;
  REQUIRE(internal::File::Open(path, internal::FileSpec{}, &file).ok());
  std::unique_ptr<internal::Mapping> map;
  REQUIRE(file->Map(internal::format::kControlOffset + 4096, true, &map).ok());
  auto* ctl = reinterpret_cast<internal::format::ControlPage*>(map->data() + internal::format::kControlOffset);
  // Once it has looked at the sequence and gone to sleep on the wake word:
  // from then on only its own second look can find the change.
  const bool asleep = WaitUntil([&] { return internal::StoreImpl::WatchSleepsForTesting(s) > sleeps; });
  REQUIRE(ctl->change_waiters.load() == 1);
  REQUIRE(asleep);
  const auto t0 = Clock::now();
  ctl->change_seq.store(before + 1);
  ctl->change_published.store(before + 1);  // and no bump of change_futex
  watcher.join();
  CHECK(st.ok());
  CHECK(seen == before + 1);
  CHECK(SecondsSince(t0) < 10);
}

// now + timeout overflowed the steady clock for the largest timeouts and
// wrapped to a deadline in the past: "wait for ever" timed out at once.
TEST_CASE("watch: WaitForChange and lock waits with the largest timeouts wait, not time out at once") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Options forever;
  forever.lock_timeout = std::chrono::milliseconds::max();
  Store s = MustOpen(path, forever);
  REQUIRE(s.Put("k", "v").ok());
  const uint64_t since = s.ChangeSeq();
  Status waited;
  std::thread t([&] { waited = s.WaitForChange(since, std::chrono::milliseconds::max(), nullptr); });
  ControlView ctl(path);
  const bool counted = WaitUntil([&] { return ctl->change_waiters.load() == 1; });
  // Another handle, also waiting "for ever" for the file lock this one keeps
  // for a moment after its put (sticky).
  Store other = MustOpen(path, forever);
  const Status put = other.Put("k", "w");
  t.join();
  REQUIRE(counted);
  CHECK(put.ok());
  CHECK(waited.ok());
  for (int i = 0; i < 20; ++i) {
    REQUIRE(s.Put("a", std::to_string(i)).ok());
    CHECK(other.Put("b", std::to_string(i)).ok());  // contended: waits for the sticky holder
  }
}

// After a power cut the store goes back to its checkpoint, and the changes
// after it are lost with their sequence numbers. Those numbers must not come
// again: a watcher that kept one (7 here) would take the new changes after it
// for the rest of its history (an earlier version gave it 8 and 9 after the
// reboot: changes it never saw 6 and 7 of). The sequence restarts 2^40 past
// the checkpoint's, past every number handed out before (writers checkpoint
// before they get 2^39 past it: the next test).
TEST_CASE("watch: after a simulated reboot the sequence restarts past every number handed out before") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  {
    Options o;
    o.checkpoint_on_close = false;
    Store s = MustOpen(path, o);
    for (int i = 0; i < 5; ++i) REQUIRE(s.Put("k" + std::to_string(i), "v").ok());
    REQUIRE(s.Flush(FlushMode::kSync).ok());
    for (int i = 5; i < 9; ++i) REQUIRE(s.Put("k" + std::to_string(i), "v").ok());
    CHECK(s.ChangeSeq() == 9);
  }
  internal::SetBootIdForTesting({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
  {
    Store s = MustOpen(path);
    const uint64_t restart = s.ChangeSeq();
    CHECK(restart == 5 + internal::format::kRestartGap);
    std::string v;
    CHECK(s.Get("k5", &v).IsNotFound());  // the 4 puts after the checkpoint were lost with the "power"
    std::vector<Change> out;
    uint64_t next = 0;
    for (uint64_t kept : {uint64_t{2}, uint64_t{5}, uint64_t{7}, uint64_t{9}}) {
      CAPTURE(kept);
      CHECK(s.ChangesSince(kept, {}, &out, &next).code() == Code::kRescan);
      CHECK(next == restart);
    }
    for (int i = 0; i < 4; ++i) REQUIRE(s.Put("after" + std::to_string(i), "v").ok());
    // Four changes later a watcher that kept 7 still rescans (it got 8 and
    // 9, changes of another history, before).
    CHECK(s.ChangesSince(7, {}, &out, &next).code() == Code::kRescan);
    const std::vector<Change> ch = All(s, restart);
    REQUIRE(ch.size() == 4);
    CHECK(ch[0].seq == restart + 1);
    CHECK(ch[0].key == "after0");
    // A second cut now, before any checkpoint of these four: the restart
    // must not come back to the same place (the recovery checkpointed the
    // restarted sequence before it handed out a number past it).
    const std::string cut = dir.File("cut2.mkv");
    WriteFileBytes(cut, ReadFileBytes(path));
    internal::SetBootIdForTesting({2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
    Store again = MustOpen(cut);
    CHECK(again.ChangeSeq() == restart + internal::format::kRestartGap);
  }
  internal::ResetBootIdForTesting();
}

// ---- processes ----------------------------------------------------------------

TEST_CASE("concurrency: watch producer and consumer processes, 100,000 puts, every sequence in order") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  constexpr uint64_t kN = 100000;
  Store s = MustOpen(path, Ring(1 << 17));
  REQUIRE(s.Put("start", "").ok());
  const uint64_t start = s.ChangeSeq();
  const int pid = SpawnChild("watch.producer", {path, std::to_string(kN), dir.File("go")});
  REQUIRE(pid > 0);
  WriteFileBytes(dir.File("go"), "x");
  uint64_t since = start, expect = start + 1, wakes = 0, timeouts = 0;
  bool in_order = true;
  std::vector<Change> out;
  while (since < start + kN && timeouts < 30) {
    uint64_t next = 0;
    Status st = s.ChangesSince(since, {}, &out, &next);
    REQUIRE_MESSAGE(st.ok(), st.ToString());
    for (const Change& c : out) {
      if (c.seq != expect || c.key != Msg(expect - start) || c.op != ChangeOp::kPut) {
        in_order = false;
        break;
      }
      ++expect;
    }
    if (!in_order) break;
    since = next;
    if (since < start + kN) {
      st = s.WaitForChange(since, 1s);
      timeouts += st.code() == Code::kTimedOut;
      ++wakes;
    }
  }
  CHECK(WaitChild(pid) == 0);
  CHECK(in_order);
  CHECK(expect == start + kN + 1);
  MESSAGE("consumer read 100,000 changes in " << wakes << " wake-ups");

  // A ring too small for a consumer that falls behind: a clear rescan.
  const std::string small = dir.File("small.mkv");
  Store t = MustOpen(small, Ring(64));
  REQUIRE(t.Put("start", "").ok());
  const uint64_t t0 = t.ChangeSeq();
  const int pid2 = SpawnChild("watch.producer", {small, "1000", dir.File("go")});
  CHECK(WaitChild(pid2) == 0);
  uint64_t next = 0;
  Status st = t.ChangesSince(t0, {}, &out, &next);
  CHECK(st.code() == Code::kRescan);
  CHECK(st.message().find("1000 changes since, the ring holds 64") != std::string::npos);
  CHECK(next == t0 + 1000);
}

TEST_CASE("concurrency: watch an idle watcher waiting 1 s uses under 10 ms of CPU") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  REQUIRE(s.Put("k", "v").ok());
  const int pid = SpawnChild("watch.waiter", {path, "1", "1000", dir.File("r")});
  REQUIRE(pid > 0);
  REQUIRE(WaitChild(pid) == 0);
  const WaitResult r = ReadResult(dir.File("r"));
  CHECK(r.code == static_cast<int>(Code::kTimedOut));
  CHECK(r.wall_us >= 990000);
  CHECK(r.cpu_us >= 0);
  CHECK(r.cpu_us < 10000);
  MESSAGE("idle watcher: " << r.cpu_us << " us of CPU in " << r.wall_us << " us");
}

TEST_CASE("concurrency: watch a killed waiting watcher costs writers nothing and other watchers are still woken") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  REQUIRE(s.Put("k", "v").ok());
  ControlView ctl(path);
  const int victim = SpawnChild("watch.waiter", {path, "1", "60000", dir.File("victim")});
  const int other = SpawnChild("watch.waiter", {path, "1", "20000", dir.File("other")});
  REQUIRE(victim > 0);
  REQUIRE(other > 0);
  REQUIRE(WaitUntil([&] { return ctl->change_waiters.load() == 2; }));  // both counted, asleep
  KillChild(victim);
  CHECK(WaitChild(victim) == kKilledExitCode);
  const auto t0 = Clock::now();
  REQUIRE(s.Put("k", "w").ok());
  CHECK(WaitChild(other) == 0);
  const double woke = SecondsSince(t0);
  const WaitResult r = ReadResult(dir.File("other"));
  CHECK(r.code == 0);
  CHECK(r.seq == 2);
  CHECK(woke < 5);
  // Writers go on; the dead watcher's count is repaired within a few dozen writes.
  const auto t1 = Clock::now();
  for (int i = 0; i < 200; ++i) REQUIRE(s.Put("k", std::to_string(i)).ok());
  CHECK(SecondsSince(t1) < 5);
  CHECK(s.ChangeSeq() == 202);
  CHECK(ctl->change_waiters.load() == 0);  // the dead watcher's count, repaired
  // A new watcher after that is woken as usual.
  const int late = SpawnChild("watch.waiter", {path, "202", "20000", dir.File("late")});
  REQUIRE(WaitUntil([&] { return ctl->change_waiters.load() == 1; }));
  REQUIRE(s.Put("k", "late").ok());
  CHECK(WaitChild(late) == 0);
  const WaitResult late_result = ReadResult(dir.File("late"));
  CHECK(late_result.seq == 203);
  CHECK(late_result.wall_us < 5'000'000);  // woken by the put, not by its 20 s deadline
}

// The waiter byte's lock is the handle's, not the thread's. Two threads of
// one handle waiting: the first to leave released the handle's lock while
// the second was still counted, and a writer's repair then zeroed the count
// under it (its leaving wrapped the count to 2^32 - 1, and the next watcher's
// count of "0" was never woken). A writer on the watching handle itself
// converted that handle's own shared lock and did the same.
TEST_CASE("concurrency: watch threads waiting on one handle keep the count right while writers repair it") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store watcher = MustOpen(path);
  Store other = MustOpen(path);
  REQUIRE(watcher.Put("k", "v").ok());
  ControlView ctl(path);
  // Enough rounds for several repair attempts by each writer (one every few
  // dozen wakes).
  for (Store* writer : {&other, &watcher}) {
    const std::string who = writer == &other ? "another handle" : "the watching handle";
    for (int round = 0; round < 200; ++round) {
      const uint64_t since = watcher.ChangeSeq();
      Status long_wait;
      std::thread t([&] { long_wait = watcher.WaitForChange(since, 20s, nullptr); });
      const bool counted = WaitUntil([&] { return ctl->change_waiters.load() == 1; });
      if (writer == &other && counted) {
        // A second thread of the handle waits and leaves while the first waits on.
        CHECK(watcher.WaitForChange(since, 1ms, nullptr).code() == Code::kTimedOut);
      }
      const auto t_put = Clock::now();
      const Status put = writer->Put("k", std::to_string(round));
      t.join();
      REQUIRE(put.ok());
      // Woken by the put: a lost wake-up ends only at the 20 s deadline.
      CHECK_MESSAGE(SecondsSince(t_put) < 5, "writer: " << who << ", round " << round << ": not woken");
      REQUIRE_MESSAGE(counted, "writer: " << who << ", round " << round << ": the waiting thread was not counted");
      CHECK(long_wait.ok());
      const uint32_t left = ctl->change_waiters.load();
      REQUIRE_MESSAGE(left == 0,
                      "writer: " << who << ", round " << round << ": " << left << " watchers counted, none waits");
    }
  }
  // And a watcher is still woken at once.
  const uint64_t since = watcher.ChangeSeq();
  Status last;
  std::thread t([&] { last = watcher.WaitForChange(since, 20s, nullptr); });
  const bool counted = WaitUntil([&] { return ctl->change_waiters.load() == 1; });
  const auto t0 = Clock::now();
  const Status put = other.Put("k", "last");
  t.join();
  REQUIRE(put.ok());
  CHECK(counted);
  CHECK(last.ok());
  CHECK(SecondsSince(t0) < 10);
}

TEST_CASE("concurrency: watch many watcher processes on one store are all woken by one put") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  REQUIRE(s.Put("k", "v").ok());
  std::vector<int> pids;
  for (int i = 0; i < kManyWatchers; ++i) {
    const int pid = SpawnChild("watch.waiter", {path, "1", "20000", dir.File("w" + std::to_string(i))});
    REQUIRE(pid > 0);
    pids.push_back(pid);
  }
  // Every watcher counted (asleep, or about to re-check and sleep) before the put.
  ControlView ctl(path);
  REQUIRE(WaitUntil([&] { return ctl->change_waiters.load() == static_cast<uint32_t>(kManyWatchers); }, 60s));
  const auto t0 = Clock::now();
  REQUIRE(s.Put("k", "go").ok());
  int woken = 0;
  for (int i = 0; i < kManyWatchers; ++i) {
    CHECK(WaitChild(pids[static_cast<size_t>(i)]) == 0);
    const WaitResult r = ReadResult(dir.File("w" + std::to_string(i)));
    woken += r.code == 0 && r.seq == 2;
  }
  const double all = SecondsSince(t0);
  CHECK(woken == kManyWatchers);
  CHECK(all < 10);
  MESSAGE(woken << " watcher processes woken; all exited " << all * 1000 << " ms after the put");
}

TEST_CASE("concurrency: watch a store that another process grows") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path, Ring(1024));
  REQUIRE(s.Put("start", "").ok());
  const uint64_t before = FileSize(path);
  const std::string done = dir.File("done");
  const int pid = SpawnChild("watch.grower", {path, std::to_string(64ull << 20), done});
  REQUIRE(pid > 0);
  const auto deadline = Clock::now() + 120s;
  uint64_t since = 1, seen = 0;
  bool values_ok = true;
  std::vector<Change> out;
  for (;;) {
    Status st = s.WaitForChange(since, 200ms);
    uint64_t next = 0;
    st = s.ChangesSince(since, ChangeFilter::Prefix("grow/"), &out, &next);
    REQUIRE_MESSAGE(st.ok(), st.ToString());
    for (const Change& c : out) {
      std::string v;
      // The value lives past this process's mapping at first: Get maps more.
      values_ok = values_ok && s.Get(c.key, &v).ok() && v.size() == 64 * 1024;
      ++seen;
    }
    since = next;
    if (Exists(done) || Clock::now() > deadline) break;
  }
  CHECK_MESSAGE(Exists(done), "the grower did not finish within 120 s");
  CHECK(WaitChild(pid) == 0);
  uint64_t next = 0;
  REQUIRE(s.ChangesSince(since, ChangeFilter::Prefix("grow/"), &out, &next).ok());
  CHECK(values_ok);
  CHECK(FileSize(path) > before + (60ull << 20));
  CHECK(seen + out.size() == s.ChangeSeq() - 1);
}

TEST_CASE("concurrency: watch a writer killed inside a batch leaves no ring record") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path, Ring(1 << 17));
  for (int i = 0; i < 100; ++i) REQUIRE(s.Put("before/" + std::to_string(i), "v").ok());
  ControlView ctl(path);
  // Kill it inside a batch: once its first batch committed, while a later
  // one has written part of its log (and of its ring entries). A kill that
  // a descheduled test lands between two batches is tried again.
  for (int attempt = 0; attempt < 5 && ctl->undo_count.load() == 0; ++attempt) {
    const uint64_t before = s.ChangeSeq();
    const int pid = SpawnChild("watch.batch", {path, "50000"});
    REQUIRE(pid > 0);
    const bool committed_one = WaitUntil([&] { return s.ChangeSeq() >= before + 50000; });
    const bool inside = committed_one && WaitUntil([&] { return ctl->undo_count.load() > 1000; });
    KillChild(pid);
    CHECK(WaitChild(pid) == kKilledExitCode);
    REQUIRE(committed_one);
    REQUIRE(inside);
  }
  REQUIRE(ctl->undo_count.load() > 0);  // the kill landed inside a batch
  const uint64_t committed = s.ChangeSeq();
  CHECK((committed - 100) % 50000 == 0);  // whole batches only
  REQUIRE(s.Put("after", "v").ok());      // recovers the killed writer first
  CHECK(s.ChangeSeq() == committed + 1);
  const std::vector<Change> ch = All(s, committed);
  REQUIRE(ch.size() == 1);
  CHECK(ch[0].key == "after");
  // Entries behind the killed batch's slots are intact.
  const std::vector<Change> first = All(s, 0, ChangeFilter::Prefix("before/"));
  CHECK(first.size() == 100);
  CheckClean(s);
}

}  // namespace
}  // namespace mapkv::test
