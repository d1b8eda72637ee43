// lock.cc: in-process and cross-process locks of a handle. See lock.h.
#include "lock.h"

#include <algorithm>
#include <iterator>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace mapkv::internal {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto kRecheck = std::chrono::milliseconds(5);  // a dead holder never wakes us
constexpr auto kReaderHoldBack = std::chrono::milliseconds(50);
constexpr auto kStickyIdle = std::chrono::milliseconds(1);
// How long a write that let the lock go to waiters waits, at its next write,
// for one of them to take it (LetWaitersIn).
constexpr auto kHandoff = std::chrono::milliseconds(5);
constexpr auto kHandoffPoll = std::chrono::microseconds(200);

// The lock managers whose read lock (t_reads) or write lock (t_writes) this
// thread holds, an entry per hold. A thread that holds a read lock and asks
// for another (GetStats or a ForEach under a ReadGuard, or from a ForEach
// callback) must not queue behind a waiting writer, which waits for the
// first read lock: forever. And a thread asking for the write lock while it
// holds a lock of the same handle, or for a read lock while it holds the
// write lock (a read from an Update callback), would wait for itself.
thread_local std::vector<const LockManager*> t_reads;
thread_local std::vector<const LockManager*> t_writes;

bool Holds(const std::vector<const LockManager*>& held, const LockManager* m) {
  return std::find(held.begin(), held.end(), m) != held.end();
}
void Drop(std::vector<const LockManager*>* held, const LockManager* m) {
  auto it = std::find(held->rbegin(), held->rend(), m);
  if (it != held->rend()) held->erase(std::next(it).base());
}
}  // namespace

// ---------------------------------------------------------------- RwLock

void RwLock::Lock() {
  uint32_t s = 0;
  if (state_.compare_exchange_strong(s, kWriter, std::memory_order_acquire)) return;
  // Counted as waiting, new readers hold back (writer preference).
  state_.fetch_add(kWaitOne, std::memory_order_relaxed);
  s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((s & kWriter) == 0 && (s & kReaderMask) == 0) {
      if (state_.compare_exchange_weak(s, (s - kWaitOne) | kWriter, std::memory_order_acquire)) return;
      continue;
    }
    WaitInProcess(&state_, s);
    s = state_.load(std::memory_order_relaxed);
  }
}

bool RwLock::LockUnlessShared() {
  uint32_t s = 0;
  if (state_.compare_exchange_strong(s, kWriter, std::memory_order_acquire)) return true;
  if ((s & kReaderMask) != 0) return false;
  state_.fetch_add(kWaitOne, std::memory_order_relaxed);
  s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((s & kWriter) == 0 && (s & kReaderMask) == 0) {
      if (state_.compare_exchange_weak(s, (s - kWaitOne) | kWriter, std::memory_order_acquire)) return true;
      continue;
    }
    if ((s & kWriter) == 0) {
      // Readers came in before this thread was counted: leave, and let the
      // readers that held back for it in.
      state_.fetch_sub(kWaitOne, std::memory_order_relaxed);
      WakeInProcess(&state_);
      return false;
    }
    WaitInProcess(&state_, s);
    s = state_.load(std::memory_order_relaxed);
  }
}

void RwLock::Unlock() {
  state_.fetch_and(~kWriter, std::memory_order_release);
  // Waiting readers are not counted: wake whoever waits (no system call
  // when nobody does).
  WakeInProcess(&state_);
}

void RwLock::LockShared() {
  uint32_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((s & (kWriter | kWaitMask)) == 0) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire)) return;
      continue;
    }
    WaitInProcess(&state_, s);
    s = state_.load(std::memory_order_relaxed);
  }
}

void RwLock::LockSharedNested() {
  uint32_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((s & kWriter) == 0) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire)) return;
      continue;
    }
    WaitInProcess(&state_, s);  // not while the caller holds a shared lock
    s = state_.load(std::memory_order_relaxed);
  }
}

bool RwLock::TryLockShared() {
  uint32_t s = state_.load(std::memory_order_relaxed);
  while ((s & (kWriter | kWaitMask)) == 0) {
    if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire)) return true;
  }
  return false;
}

void RwLock::UnlockShared() {
  const uint32_t before = state_.fetch_sub(1, std::memory_order_release);
  if ((before & kReaderMask) == 1 && (before & kWaitMask) != 0) WakeInProcess(&state_);
}

// ---------------------------------------------------------------- LockManager

uint64_t LockManager::WriterPidFromFile() const {
  uint64_t size = 0;
  std::unique_ptr<Mapping> header;
  if (!file_->Size(&size).ok() || size < format::kHeapOffset || !file_->Map(format::kHeapOffset, false, &header).ok()) {
    return 0;
  }
  const auto* c = reinterpret_cast<const format::ControlPage*>(header->data() + format::kControlOffset);
  return c->magic == format::kControlMagic ? c->writer_pid.load(std::memory_order_relaxed) : 0;
}

bool LockManager::WriterHoldsFile() const {
  bool acquired = false;
  if (!file_->TryLock(kRwLockByte, 1, LockMode::kShared, &acquired).ok()) return true;  // unknown: keep the name
  if (acquired) file_->Unlock(kRwLockByte, 1).IgnoreError();
  return !acquired;
}

Status LockManager::BusyError(LockMode mode) const {
  uint64_t pid = ctl_ != nullptr ? ctl_->writer_pid.load(std::memory_order_relaxed) : WriterPidFromFile();
  // A writer that was killed leaves its pid in the control page; the lock
  // went with it. Only a write can time out behind readers.
  const bool writer = mode == LockMode::kShared || WriterHoldsFile();
  if (!writer) pid = 0;
  const std::string holder = pid != 0 ? " by process " + std::to_string(pid) + " (writer)"
                             : writer ? " by a writer"
                                      : " by readers";
  return Status(Code::kBusy, file_->path() + ": " + (mode == LockMode::kExclusive ? "write" : "read") +
                                 " lock not granted within " + std::to_string(timeout_.count()) +
                                 " ms; the store is held" + holder);
}

Status LockManager::AcquireFile(LockMode mode) {
  bool acquired = false;
  Status s = file_->TryLock(kRwLockByte, 1, mode, &acquired);
  if (!s.ok() || acquired) return s;

  const auto deadline = DeadlineAfter(timeout_);
  // Counted only while holding the waiter byte, so a waiter that dies is
  // known to be gone (RepairWaiterCounts). A read-only handle cannot write
  // the counts, and an opening one has no control page yet: they hold their
  // own byte instead, which a sticky writer's keeper probes (a read-only
  // handle also wakes the keeper, without a change).
  const bool counters = ctl_ != nullptr && ctl_writable_ && file_->Lock(kWaiterByte, 1, LockMode::kShared).ok();
  const bool uncounted =
      (ctl_ == nullptr || !ctl_writable_) && file_->Lock(kReadOnlyWaiterByte, 1, LockMode::kShared).ok();
  if (counters) {
    const uint32_t before = ctl_->lock_waiters.fetch_add(1, std::memory_order_acq_rel);
    if (mode == LockMode::kExclusive) ctl_->writers_waiting.fetch_add(1, std::memory_order_acq_rel);
    Wake(&ctl_->lock_waiters, before);  // a sticky holder's keeper sleeps on it
  } else if (uncounted && ctl_ != nullptr) {
    Wake(&ctl_->lock_waiters, ctl_->lock_waiters.load(std::memory_order_acquire));
  }
  // The waiter uncounts itself however the wait ends, also when memory runs
  // out in it (Windows allocates in its lock table and its wait events).
  struct Uncount {
    LockManager* self;
    LockMode mode;
    bool counters, uncounted;
    ~Uncount() {
      try {
        self->EndWaiting(mode, counters, uncounted);
      } catch (...) {  // only the wake can throw (out of memory); the counts are down by then
      }
    }
  } uncount{this, mode, counters, uncounted};
  while (true) {
    uint32_t seen = ctl_ != nullptr ? ctl_->lock_released.load(std::memory_order_acquire) : 0;
    s = file_->TryLock(kRwLockByte, 1, mode, &acquired);
    if (!s.ok() || acquired) break;
    auto now = Clock::now();
    if (now >= deadline) {
      s = BusyError(mode);
      break;
    }
    auto wait = std::min<Clock::duration>(deadline - now, kRecheck);
    if (ctl_ != nullptr) {
      Wait(&ctl_->lock_released, seen, std::chrono::duration_cast<std::chrono::microseconds>(wait));
    } else {
      std::this_thread::sleep_for(std::min<Clock::duration>(wait, std::chrono::milliseconds(1)));
    }
  }
  return s;
}

void LockManager::EndWaiting(LockMode mode, bool counters, bool uncounted) {
  if (counters) {
    if (mode == LockMode::kExclusive) ctl_->writers_waiting.fetch_sub(1, std::memory_order_acq_rel);
    const uint32_t before = ctl_->lock_waiters.fetch_sub(1, std::memory_order_acq_rel);
    file_->Unlock(kWaiterByte, 1).IgnoreError();
    Wake(&ctl_->lock_waiters, before);  // a writer in LetWaitersIn sleeps on it
  } else if (uncounted) {
    file_->Unlock(kReadOnlyWaiterByte, 1).IgnoreError();
  }
}

bool LockManager::ReadOnlyWaiterHeld() noexcept {
  // Called by the keeper thread, where an exception would end the process.
  // TryLock allocates on Windows (its table of held ranges); out of memory,
  // the answer is "held", which lets the lock go (the keeper) or waits out
  // the hand-off's bounded time (LetWaitersIn).
  try {
    bool free = false;
    if (!file_->TryLock(kReadOnlyWaiterByte, 1, LockMode::kExclusive, &free).ok()) return false;
    if (free) file_->Unlock(kReadOnlyWaiterByte, 1).IgnoreError();
    return !free;
  } catch (...) {
    return true;
  }
}

bool LockManager::WaiterCountsStale() const {
  // A live counted waiter holds the waiter byte shared (RepairWaiterCounts).
  if (ctl_->writers_waiting.load(std::memory_order_acquire) == 0) return false;
  bool held = true;
  return file_->LockedByOthers(kWaiterByte, 1, &held).ok() && !held;
}

void LockManager::RepairWaiterCounts() {
  if (ctl_ == nullptr || !ctl_writable_) return;
  if (ctl_->lock_waiters.load(std::memory_order_acquire) == 0 &&
      ctl_->writers_waiting.load(std::memory_order_acquire) == 0) {
    return;
  }
  // A live counted waiter holds the waiter byte shared from before it counts
  // itself until after it uncounts itself, so while we hold it exclusively
  // the counts can only be those of processes that died waiting.
  bool alone = false;
  if (!file_->TryLock(kWaiterByte, 1, LockMode::kExclusive, &alone).ok() || !alone) return;
  ctl_->writers_waiting.store(0, std::memory_order_release);
  ctl_->lock_waiters.store(0, std::memory_order_release);
  file_->Unlock(kWaiterByte, 1).IgnoreError();
}

void LockManager::AnnounceRelease(bool wake) {
  const uint32_t before = ctl_->lock_released.fetch_add(1, std::memory_order_acq_rel);
  if (wake || ctl_->lock_waiters.load(std::memory_order_acquire) > 0) Wake(&ctl_->lock_released, before);
}

void LockManager::ReleaseFile(bool wake) {
  file_->Unlock(kRwLockByte, 1).IgnoreError();  // fails only for a closed descriptor
  if (ctl_ != nullptr && ctl_writable_) {
    AnnounceRelease(wake);
  } else if (ctl_ != nullptr && ctl_->lock_waiters.load(std::memory_order_acquire) > 0) {
    // A read-only handle cannot bump the word; a wake without a change
    // reaches the waiters already asleep (one about to sleep re-tries
    // within kRecheck).
    Wake(&ctl_->lock_released, ctl_->lock_released.load(std::memory_order_acquire));
  }
}

LockManager::~LockManager() {
  StopKeeper();
  // A hold this thread never gave back (a bug elsewhere) must not outlive
  // the object: a new LockManager at the same address would inherit it, and
  // its first lock would be refused as one that waits for itself.
  std::erase(t_reads, this);
  std::erase(t_writes, this);
}

void LockManager::StopKeeper() {
  if (keeper_.joinable() && ForkGeneration() != keeper_fork_generation_) {
    // A forked child has the object but not the thread, and the thread may
    // have held file_mu_ or waited on keeper_cv_ at the fork: touch neither,
    // and leave the copy of the condition variable undestroyed. The lock
    // itself is the parent's (a shared open file description).
    keeper_.detach();
    (void)keeper_cv_.release();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(file_mu_);
    keeper_stop_ = true;
  }
  keeper_cv_->notify_all();
  if (keeper_.joinable()) {
    if (ctl_ != nullptr) Wake(&ctl_->lock_waiters, ctl_->lock_waiters.load());  // no change: the current value
    keeper_.join();
  }
  std::lock_guard<std::mutex> lock(file_mu_);
  // In a forked child the lock is the parent's (a shared open file
  // description): leave it alone.
  if (sticky_ && ForkGeneration() == keeper_fork_generation_) {
    sticky_ = false;
    ClearWriterPid();
    ReleaseFile();
  }
}

void LockManager::KeeperLoop() {
  std::unique_lock<std::mutex> lock(file_mu_);
  uint64_t writes_seen = ~uint64_t{0};
  while (!keeper_stop_) {
    const uint64_t writes = writes_.load(std::memory_order_relaxed);
    // Not sticky: a write holds the lock (LockWrite takes sticky_ back) or
    // the lock was let go. Sleep until notified only when no sticky write
    // came since the last look; a writer in the middle of a run of writes
    // would otherwise have to wake the keeper after each idle period.
    const bool sticky = sticky_;
    if (!sticky && writes == writes_seen) {
      // UnlockWrite stores sticky_ and then reads keeper_idle_ (both seq_cst);
      // here idle is stored before the predicate reads sticky_, so either it
      // sees sticky_ set or the writer sees idle and notifies under file_mu_.
      keeper_idle_.store(true);
      keeper_cv_->wait(lock, [&] { return sticky_.load() || keeper_stop_.load(); });
      keeper_idle_.store(false);
      continue;
    }
    writes_seen = writes;
    lock.unlock();
    // Sleeps until a waiter comes (or wakes it: read-only handles cannot
    // count themselves) or the idle time passes. With waiters counted and a
    // write under way it sleeps too: that write lets the lock go at its end.
    const uint32_t counted = ctl_->lock_waiters.load(std::memory_order_acquire);
    if (counted == 0 || !sticky) {
      Wait(&ctl_->lock_waiters, counted, std::chrono::duration_cast<std::chrono::microseconds>(kStickyIdle));
    }
    const bool writing = writes_.load(std::memory_order_relaxed) != writes;
    const bool counted_waiters = ctl_->lock_waiters.load(std::memory_order_acquire) > 0;
    // Waiters of read-only handles are not counted: their byte tells (two
    // system calls a look, a look a millisecond while writes go on).
    const bool read_only_waiters = !counted_waiters && (sticky || writing) && ReadOnlyWaiterHeld();
    const bool wanted = counted_waiters || read_only_waiters;
    // Not sticky: a write holds the lock (and lets counted waiters in at its
    // end), or nothing is held. Sticky: keep the lock while writes go on and
    // nobody waits.
    if ((!sticky && !read_only_waiters) || (sticky && !wanted && writing)) {
      lock.lock();
      continue;
    }
    // No write or guard of this handle may run while the keeper lets the
    // lock go. It waits for a write to end, not for guards: a guard holds
    // the file lock shared, never sticky (LockRead), and a keeper queued
    // behind it would hold back the handle's other readers for as long as
    // the guard lasts (a thread that holds a guard and waits for another
    // thread's read of the handle would wait for ever). It looks again at
    // its next tick.
    if (!rw_.LockUnlessShared()) {
      // A guard holds it (a sticky lock it could not convert): not a spin
      // while waiters are counted and the guard lasts.
      Wait(&ctl_->lock_waiters, ctl_->lock_waiters.load(std::memory_order_acquire),
           std::chrono::duration_cast<std::chrono::microseconds>(kStickyIdle));
      lock.lock();
      continue;
    }
    lock.lock();
    if (sticky_) {
      sticky_ = false;
      handoff_ = wanted;
      handoff_waiters_ = ctl_->lock_waiters.load(std::memory_order_acquire);
      ClearWriterPid();
      ReleaseFile(/*wake=*/wanted);  // a read-only waiter is woken too
    }
    rw_.Unlock();
  }
}

bool LockManager::HeldByThisThread() const { return Holds(t_reads, this) || Holds(t_writes, this); }

Status LockManager::LockWrite(bool* fresh) {
  if (HeldByThisThread()) {
    return Status(Code::kUnsafeUse, file_->path() +
                                        ": a write asked for by a thread that holds a lock of the same handle "
                                        "(a ReadGuard, or a ForEach or Update callback's) would wait for "
                                        "itself");
  }
  // The one allocation, made before anything is taken: memory running out
  // must not leave a lock held that the caller does not know of.
  t_writes.reserve(t_writes.size() + 1);
  rw_.Lock();
  const bool held = sticky_.exchange(false);  // rw_ is held exclusively: nobody else changes it
  if (fresh != nullptr) *fresh = !held;
  if (!held) {
    Status s;
    try {
      if (handoff_) LetWaitersIn();
      s = AcquireFile(LockMode::kExclusive);
    } catch (...) {  // out of memory: nothing is taken but rw_
      rw_.Unlock();
      throw;
    }
    if (!s.ok()) {
      rw_.Unlock();
      return s;
    }
    try {
      RepairWaiterCounts();  // best effort: a later lock holder repairs them
    } catch (...) {
    }
  }
  if (ctl_ != nullptr && ctl_writable_) ctl_->writer_pid.store(pid_, std::memory_order_relaxed);
  t_writes.push_back(this);
  return Status::Ok();
}

void LockManager::LetWaitersIn() {
  // Nobody queues for the file lock: every waiter polls it (TryLock, then
  // sleeps until a release). A writer that takes it again right after
  // letting it go would nearly always win that race, and a reader of another
  // handle could wait for as long as the writes go on (under Wine one waited
  // through 300,000 puts). So the writer first waits, briefly, until a
  // counted waiter has uncounted itself (it holds the lock then), or nobody
  // waits any more.
  handoff_ = false;
  uint32_t last = handoff_waiters_;
  const auto until = Clock::now() + kHandoff;
  for (;;) {
    const uint32_t waiting = ctl_->lock_waiters.load(std::memory_order_acquire);
    const auto now = Clock::now();
    if (waiting < last || now >= until || (waiting == 0 && !ReadOnlyWaiterHeld())) return;
    last = waiting;
    // Woken when a counted waiter uncounts itself; uncounted ones are polled.
    Wait(&ctl_->lock_waiters, waiting,
         std::chrono::duration_cast<std::chrono::microseconds>(std::min<Clock::duration>(until - now, kHandoffPoll)));
  }
}

bool LockManager::StartKeeper() {
  std::lock_guard<std::mutex> lock(file_mu_);
  if (!keeper_.joinable()) {
    keeper_fork_generation_ = ForkGeneration();
    try {
      keeper_ = std::thread([this] { KeeperLoop(); });
    } catch (...) {
      return false;  // out of threads (EAGAIN) or memory: the caller lets the lock go
    }
  }
  keeper_started_.store(true, std::memory_order_release);
  return true;
}

void LockManager::UnlockWrite(bool may_stick) {
  Drop(&t_writes, this);
  const bool can_stick = may_stick && ctl_ != nullptr && ctl_writable_ && !keeper_stop_ &&
                         ctl_->lock_waiters.load(std::memory_order_acquire) == 0;
  if (!can_stick) {
    if (ctl_ != nullptr && ctl_writable_) {
      handoff_waiters_ = ctl_->lock_waiters.load(std::memory_order_acquire);
      handoff_ = handoff_waiters_ != 0;
      ClearWriterPid();
    }
    ReleaseFile();
    rw_.Unlock();
    return;
  }
  if (!keeper_started_.load(std::memory_order_acquire) && !StartKeeper()) {
    // No thread to let the lock go once the writes stop: do not keep it.
    // (The next write tries to start the keeper again.)
    ClearWriterPid();
    ReleaseFile();
    rw_.Unlock();
    return;
  }
  // One writer at a time (rw_): a plain increment, which the keeper only reads.
  writes_.store(writes_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  sticky_.store(true);
  if (keeper_idle_.load()) {
    std::lock_guard<std::mutex> lock(file_mu_);
    keeper_cv_->notify_one();
  }
  rw_.Unlock();
}

Status LockManager::LockRead() {
  if (Holds(t_writes, this)) {
    return Status(Code::kUnsafeUse, file_->path() +
                                        ": a read asked for by the thread that holds the handle's write lock "
                                        "(from inside an Update callback?) would wait for itself");
  }
  t_reads.reserve(t_reads.size() + 1);  // before anything is taken (as in LockWrite)
  if (Holds(t_reads, this)) {
    rw_.LockSharedNested();
  } else {
    rw_.LockShared();
  }
  std::lock_guard<std::mutex> lock(file_mu_);
  if (shared_holders_ == 0 && sticky_) {
    // A guard after this handle's write, which kept the lock exclusively
    // (sticky): hold it shared instead, so that the guard keeps out no
    // reader elsewhere and leaves the keeper nothing to give back. (Failing,
    // the guard leans on the exclusive lock, which the keeper lets go once
    // the guard ends.)
    bool shared = false;
    try {
      if (!file_->TryLock(kRwLockByte, 1, LockMode::kShared, &shared).ok()) shared = false;
    } catch (...) {  // out of memory (Windows' lock table): as a failure
      shared = false;
    }
    if (shared) {
      sticky_conversions_.fetch_add(1, std::memory_order_relaxed);
      sticky_ = false;
      ClearWriterPid();
      AnnounceRelease();  // readers elsewhere may come in now
    }
  } else if (shared_holders_ == 0) {
    try {
      // Let a waiting writer of another process go first, for a bounded time.
      if (ctl_ != nullptr && (ctl_writable_ || !WaiterCountsStale())) {
        RepairWaiterCounts();
        const auto until = Clock::now() + kReaderHoldBack;
        while (ctl_->writers_waiting.load(std::memory_order_acquire) > 0 && Clock::now() < until) {
          uint32_t seen = ctl_->lock_released.load(std::memory_order_acquire);
          Wait(&ctl_->lock_released, seen, std::chrono::milliseconds(1));
        }
      }
      Status s = AcquireFile(LockMode::kShared);
      if (!s.ok()) {
        rw_.UnlockShared();
        return s;
      }
    } catch (...) {  // out of memory: nothing is taken but rw_
      rw_.UnlockShared();
      throw;
    }
  }
  ++shared_holders_;
  t_reads.push_back(this);
  return Status::Ok();
}

void LockManager::UnlockRead() {
  Drop(&t_reads, this);
  {
    std::lock_guard<std::mutex> lock(file_mu_);
    // Under a sticky exclusive lock the guard took no file lock of its own.
    if (--shared_holders_ == 0 && !sticky_) ReleaseFile();
  }
  rw_.UnlockShared();
}

Status LockManager::JoinPresence() {
  const auto deadline = DeadlineAfter(timeout_);
  while (true) {
    bool acquired = false;
    Status s = file_->TryLock(kPresenceByte, 1, LockMode::kShared, &acquired);
    if (!s.ok() || acquired) return s;
    if (Clock::now() >= deadline) {
      return Status(Code::kBusy, file_->path() + ": another handle is closing the store and did not finish within " +
                                     std::to_string(timeout_.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool LockManager::TryBecomeAlone() {
  bool acquired = false;
  return file_->TryLock(kPresenceByte, 1, LockMode::kExclusive, &acquired).ok() && acquired;
}

void LockManager::EndAlone() {
  bool acquired = false;
  file_->TryLock(kPresenceByte, 1, LockMode::kShared, &acquired).IgnoreError();  // a downgrade cannot conflict
}

}  // namespace mapkv::internal
