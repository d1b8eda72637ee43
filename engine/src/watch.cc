// watch.cc: cross-process change notification (docs/DESIGN.md, "Watch").
//
// Three parts:
//  - The change ring (format.h, ChangeEntry): every change a write makes is
//    counted in change_seq and described in the ring slot of its sequence
//    number, inside the write. Nothing of the ring is undo-logged: the head
//    is change_seq itself (logged by Heap::Begin), entries past it are never
//    read, and an old entry a rolled-back write overwrote reads as a
//    sequence mismatch, which readers report as kRescan.
//  - Publishing: after the commit, while the seqlock is still odd, the
//    writer stores change_published = change_seq. Watchers read only
//    change_published, so they see a batch's changes all at once and never
//    a change that is rolled back. A writer killed between its commit and
//    that store left the seqlock odd; recovery publishes for it.
//  - Waking: a watcher counts itself in change_waiters (holding
//    kChangeWaiterByte shared while counted), re-checks change_published and
//    sleeps on the futex word change_futex. A writer that publishes while
//    change_waiters > 0 bumps change_futex and wakes it; with nobody counted
//    a write makes no system call. A watcher killed while counted leaves the
//    count raised, which costs writers a wake system call per write until a
//    writer repairs the count (every kRepairEvery wakes it tries the waiter
//    byte exclusively; getting it proves every counted watcher dead).
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "racy.h"
#include "store_impl.h"

namespace mapkv::internal {

using namespace format;  // NOLINT

namespace {

using Clock = std::chrono::steady_clock;

// Wakes between two attempts to zero a count raised by dead watchers.
constexpr uint64_t kRepairEvery = 64;

// The longest a waiting watcher sleeps before it looks at the sequence
// again, woken or not: the latency of a change whose writer was killed
// after publishing it and before waking the watchers.
constexpr auto kWatchRecheck = std::chrono::seconds(1);

// Does the change (its stored key bytes, full size and hash) pass `filter`?
// `want_hash` is the store's hash of filter.text (kKey filters only).
bool Matches(const ChangeFilter& filter, uint64_t want_hash, const ChangeEntry& e) {
  const bool truncated = (e.flags & kChangeKeyTruncated) != 0;
  const uint64_t stored = truncated ? kChangeKeyBytes : e.key_size;
  const std::string_view key(reinterpret_cast<const char*>(e.key), stored);
  const std::string_view text = filter.text;
  switch (filter.kind) {
    case ChangeFilter::Kind::kAll:
      return true;
    case ChangeFilter::Kind::kKey:
      if (e.key_size != text.size()) return false;
      if (!truncated) return key == text;
      return e.key_hash == want_hash && text.substr(0, kChangeKeyBytes) == key;
    case ChangeFilter::Kind::kPrefix:
      if (e.key_size < text.size()) return false;
      // Only the stored bytes can be compared: a longer prefix matches a long
      // key whose stored start matches (reported with key_truncated).
      return key.substr(0, std::min<uint64_t>(text.size(), stored)) == text.substr(0, stored);
  }
  return false;
}

// Copies the first min(key.size(), kChangeKeyBytes) bytes of `key` to `dst`,
// in 8-byte words (the last one overlapping): no string instruction, no call.
void CopyKeyStart(uint8_t* dst, std::string_view key) {
  const size_t n = std::min<size_t>(key.size(), kChangeKeyBytes);
  const char* src = key.data();
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8) std::memcpy(dst + i, src + i, 8);
    std::memcpy(dst + n - 8, src + n - 8, 8);  // the last word, overlapping
    return;
  }
  if (n >= 4) {
    std::memcpy(dst, src, 4);
    std::memcpy(dst + n - 4, src + n - 4, 4);
    return;
  }
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(src[i]);
}

}  // namespace

uint64_t StoreImpl::KeyHash(std::string_view key) const { return HashKey(key, seed_); }

uint64_t StoreImpl::ChangeSeq() const {
  if (fork_generation_ != ForkGeneration()) return 0;
  return ctl_->change_published.load(std::memory_order_acquire);
}

Status StoreImpl::RecordChange(uint8_t op, std::string_view key, uint64_t hash, bool may_allocate) {
  if (ctl_->ring_capacity == 0 && options_.change_ring_capacity != 0 && may_allocate) {
    // The store's first change by an engine that keeps a ring: allocate it,
    // inside this write (a rollback frees it again).
    const uint64_t cap = std::min(kMaxRingCapacity, (options_.change_ring_capacity + kRingCapacityUnit - 1) /
                                                        kRingCapacityUnit * kRingCapacityUnit);
    const uint64_t bytes = cap * kChangeEntrySize;
    uint64_t g = 0;
    Status s = heap_->Allocate(bytes / kGranule, kGranulesPerPage, &g);
    if (!s.ok()) return s;
    std::memset(heap_->base() + g * kGranule, 0, bytes);
    s = heap_->SetWord(&ctl_->ring_floor, ctl_->change_seq.load(std::memory_order_relaxed));
    if (s.ok()) s = heap_->SetWord(&ctl_->ring_offset, g * kGranule);
    if (s.ok()) s = heap_->SetWord(&ctl_->ring_capacity, cap);
    if (!s.ok()) return s;
  }
  const uint64_t seq = ctl_->change_seq.load(std::memory_order_relaxed) + 1;
  ctl_->change_seq.store(seq, std::memory_order_relaxed);
  const uint64_t cap = ctl_->ring_capacity;
  if (cap == 0) return Status::Ok();
  // A power-of-two capacity (the default) spares the put a division.
  const uint64_t index = (cap & (cap - 1)) == 0 ? (seq - 1) & (cap - 1) : (seq - 1) % cap;
  ChangeEntry* const ring = heap_->At<ChangeEntry>(ctl_->ring_offset);
  ChangeEntry* const e = ring + index;
  std::atomic_ref<uint64_t> entry_seq(e->seq);
  SeqlockMarkWriting(entry_seq, 0);  // the 0 before any byte of the new entry
  e->key_hash = hash;
  e->key_size = static_cast<uint32_t>(key.size());
  e->op = op;
  e->flags = key.size() > kChangeKeyBytes ? kChangeKeyTruncated : 0;
  e->reserved = 0;
  // Fixed-size zeroing and word copies: a variable-length memcpy/memset
  // compiled to rep-prefixed string instructions, slow to start for keys
  // this short.
  std::memset(e->key, 0, kChangeKeyBytes);
  CopyKeyStart(e->key, key);
  entry_seq.store(seq, std::memory_order_release);
  return Status::Ok();
}

void StoreImpl::PublishChanges() {
  const uint64_t seq = ctl_->change_seq.load(std::memory_order_relaxed);
  if (ctl_->change_published.load(std::memory_order_relaxed) == seq) return;
  // Sequentially consistent with the load of change_waiters in WakeWatchers,
  // as the watcher's count is with its load of change_published: either the
  // writer sees the watcher counted or the watcher sees the new sequence.
  ctl_->change_published.store(seq, std::memory_order_seq_cst);
  wake_pending_ = true;
}

void StoreImpl::BumpChangeWord() {
  const uint32_t before = ctl_->change_futex.fetch_add(1, std::memory_order_seq_cst);
  file_->WakeWord(&ctl_->change_futex, ControlOffsetOf(ctl_, &ctl_->change_futex), before);
}

void StoreImpl::WakeWatchers() {
  if (!wake_pending_) return;
  wake_pending_ = false;
  if (ctl_->change_waiters.load(std::memory_order_seq_cst) == 0) return;
  BumpChangeWord();
  if (++watcher_wakes_ % kRepairEvery != 0) return;
  // Every live counted watcher holds the byte shared from before it counts
  // itself until after it uncounts itself: when we get it exclusively, the
  // count is that of watchers killed while waiting.
  std::lock_guard<std::mutex> own(watch_mu_);
  if (own_watchers_ != 0) return;  // counted, and this handle holds the byte for them
  bool alone = false;
  if (!file_->TryLock(kChangeWaiterByte, 1, LockMode::kExclusive, &alone).ok() || !alone) return;
  ctl_->change_waiters.store(0, std::memory_order_release);
  file_->Unlock(kChangeWaiterByte, 1).IgnoreError();
}

Status StoreImpl::CountWatcher() const {
  std::lock_guard<std::mutex> own(watch_mu_);
  if (own_watchers_ == 0) {
    Status s = file_->Lock(kChangeWaiterByte, 1, LockMode::kShared);
    if (!s.ok()) return s;
  }
  ++own_watchers_;
  ctl_->change_waiters.fetch_add(1, std::memory_order_seq_cst);
  return Status::Ok();
}

void StoreImpl::UncountWatcher() const {
  std::lock_guard<std::mutex> own(watch_mu_);
  ctl_->change_waiters.fetch_sub(1, std::memory_order_seq_cst);
  if (--own_watchers_ == 0) file_->Unlock(kChangeWaiterByte, 1).IgnoreError();
}

Status StoreImpl::WaitForChange(uint64_t since, std::chrono::milliseconds timeout, uint64_t* seq) const {
  Status s = CheckUsable();
  if (!s.ok()) return s;
  if (timeout.count() < 0) return Status(Code::kInvalidArgument, path_ + ": WaitForChange: negative timeout");
  uint64_t cur = ctl_->change_published.load(std::memory_order_acquire);
  if (seq != nullptr) *seq = cur;
  if (cur != since) return Status::Ok();
  if (timeout.count() == 0) return Status(Code::kTimedOut, path_ + ": no change within 0 ms");
  if (read_only_) {
    return Status(Code::kNotSupported, path_ +
                                           ": WaitForChange needs a writable handle (a waiter counts itself in "
                                           "the store's control page); this one is read-only");
  }
  const auto deadline = DeadlineAfter(timeout);
  s = CountWatcher();
  if (!s.ok()) return s;
  bool changed = false;
  while (true) {
    // The futex word before the sequence: a writer that publishes after this
    // load bumps the word, so the wait below returns at once.
    const uint32_t word = ctl_->change_futex.load(std::memory_order_seq_cst);
    cur = ctl_->change_published.load(std::memory_order_seq_cst);
    if (cur != since) {
      changed = true;
      break;
    }
    const auto now = Clock::now();
    if (now >= deadline) break;
    // Spurious returns (a wake meant for another sequence, a signal) loop.
    // A writer killed between its publish and its wake leaves a change that
    // wakes nobody, so the wait also looks again every kWatchRecheck.
    const auto slice = std::min<Clock::duration>(deadline - now, kWatchRecheck);
    watch_sleeps_.fetch_add(1, std::memory_order_relaxed);
    file_->WaitWord(&ctl_->change_futex, ControlOffsetOf(ctl_, &ctl_->change_futex), word,
                    std::chrono::duration_cast<std::chrono::microseconds>(slice) + std::chrono::microseconds(1));
  }
  UncountWatcher();
  if (seq != nullptr) *seq = cur;
  if (changed) return Status::Ok();
  return Status(Code::kTimedOut, path_ + ": no change within " + std::to_string(timeout.count()) + " ms");
}

MAPKV_OPTIMISTIC Status StoreImpl::ChangesSince(uint64_t since, const ChangeFilter& filter, std::vector<Change>* out,
                                                uint64_t* next) const {
  Status s = CheckUsable();
  if (!s.ok()) return s;
  out->clear();
  const uint64_t head = ctl_->change_published.load(std::memory_order_acquire);
  *next = head;
  if (since == head) return Status::Ok();
  auto rescan = [&](const std::string& why) {
    *next = head;
    out->clear();
    return Status(Code::kRescan, path_ + ": changes after sequence " + std::to_string(since) +
                                     " are no longer in the change ring (" + why + "); read the store afresh");
  };
  if (since > head) {
    return rescan("the store is at sequence " + std::to_string(head) +
                  ", behind it: changes were lost in a recovery from a checkpoint");
  }
  // The write that makes the ring stores its floor, offset and capacity
  // one after another, and its rollback puts them back in the other order:
  // read as a pair of equal snapshots, never a mix (a capacity with the
  // offset already back at 0 read as a damaged ring).
  uint64_t cap = 0, offset = 0, floor = 0;
  for (int attempt = 0;; ++attempt) {
    cap = RacyLoad(&ctl_->ring_capacity);
    offset = RacyLoad(&ctl_->ring_offset);
    floor = RacyLoad(&ctl_->ring_floor);
    SeqlockReadFence();
    if ((cap == RacyLoad(&ctl_->ring_capacity) && offset == RacyLoad(&ctl_->ring_offset) &&
         floor == RacyLoad(&ctl_->ring_floor)) ||
        attempt == 1000) {
      break;
    }
    std::this_thread::yield();
  }
  if (cap == 0) {
    return Status(
        Code::kNotSupported,
        path_ +
            ": the store keeps no change ring (every write so far came through handles with change_ring_capacity = 0)");
  }
  if (since < floor) {
    return rescan("the ring starts after sequence " + std::to_string(floor) +
                  " (it was created then, or history was lost in a recovery)");
  }
  if (head - since > cap) {
    return rescan(std::to_string(head - since) + " changes since, the ring holds " + std::to_string(cap));
  }
  const uint64_t fs = ctl_->file_size.load(std::memory_order_acquire);
  if (cap > kMaxRingCapacity || offset < kHeapOffset || offset % kChangeEntrySize != 0 || offset > fs ||
      cap * kChangeEntrySize > fs - offset) {
    return Status(Code::kCorruption, path_ + ": control page: change ring at offset " + std::to_string(offset) + " (" +
                                         std::to_string(cap) + " entries) is outside the file");
  }
  s = EnsureMapped();
  if (!s.ok()) return s;
  const uint8_t* base = maps_->Current()->base;
  const uint64_t want_hash = filter.kind == ChangeFilter::Kind::kKey ? HashKey(filter.text, seed_) : 0;
  for (uint64_t q = since + 1; q <= head; ++q) {
    const auto* e = reinterpret_cast<const ChangeEntry*>(base + offset + (q - 1) % cap * kChangeEntrySize);
    ChangeEntry copy;
    const uint64_t before = std::atomic_ref<uint64_t>(const_cast<uint64_t&>(e->seq)).load(std::memory_order_acquire);
    RacyCopy(&copy, e, sizeof copy);
    SeqlockReadFence();
    const uint64_t after = RacyLoad(&e->seq);
    if (before != q || after != q) {
      return rescan("entry " + std::to_string(q) + " was overwritten by a newer change or a rolled-back write");
    }
    // The truncation flag must agree with the size: Matches reads key_size
    // stored bytes of an entry that says it is not truncated.
    const bool truncated = (copy.flags & kChangeKeyTruncated) != 0;
    if (copy.key_size == 0 || copy.key_size > kMaxKeySize || truncated != (copy.key_size > kChangeKeyBytes) ||
        (copy.op != kChangePut && copy.op != kChangeErase)) {
      return Status(Code::kCorruption, path_ + ": change ring entry " + std::to_string(q) +
                                           " is damaged (bad key size, truncation flag or operation)");
    }
    if (!Matches(filter, want_hash, copy)) continue;
    Change c;
    c.seq = q;
    c.op = copy.op == kChangePut ? ChangeOp::kPut : ChangeOp::kErase;
    c.key_truncated = (copy.flags & kChangeKeyTruncated) != 0;
    c.key_size = copy.key_size;
    c.key_hash = copy.key_hash;
    c.key.assign(reinterpret_cast<const char*>(copy.key), std::min<uint64_t>(copy.key_size, kChangeKeyBytes));
    out->push_back(std::move(c));
  }
  return Status::Ok();
}

}  // namespace mapkv::internal
