// lock.h: the locks of one handle: in-process and cross-process, as one.
//
// Two levels, always taken in this order:
//  1. In-process: a writer-preferring reader-writer lock shared by the
//     threads using this handle (RwLock). Writers and read guards of this
//     handle take it; optimistic reads take nothing.
//  2. Cross-process: an open-file-description lock on byte kRwLockByte of the
//     store file, exclusive for a writer, shared for read guards (the
//     handle's guards share one shared lock, counted). The OS drops it when
//     the process dies, so a killed holder never blocks anyone.
//
// Waiting: a process that cannot get the file lock counts itself in
// ctl->lock_waiters and sleeps on the futex word ctl->lock_released, which
// every releaser bumps (and wakes when someone waits); it re-tries at least
// every few milliseconds, so a holder that died (and so never woke anyone)
// costs a waiter a few milliseconds at most. A waiting writer also counts
// itself in ctl->writers_waiting, and new read guards hold back while it is
// non-zero (for a bounded time), so a stream of readers cannot starve it.
// After options.lock_timeout the wait fails with kBusy naming the holder.
//
// Sticky write lock. A file lock and unlock cost two system calls (about
// 1 us together), more than a whole put. So a writable handle keeps the file
// lock after a write ("sticky") for as long as writes keep coming and nobody
// waits: the next write then takes only the in-process lock. It gives the
// lock up (1) at the end of a write when ctl->lock_waiters says someone
// waits, and (2) from a small keeper thread, which wakes when a waiter
// counts itself (a futex on lock_waiters) or when the handle has been idle
// for kStickyIdle. A process that dies holding it loses it like any file
// lock.
//
// Hand-off. Nobody queues for the file lock (waiters poll it), so a writer
// that writes without pause would take it back before any waiter woke. A
// write that let the lock go to waiters therefore makes the next write of
// the handle wait, up to kHandoff, until one of them holds it.
//
// Read-only handles cannot write the control page, so they cannot count
// themselves; they hold kReadOnlyWaiterByte shared while they wait and wake
// the keeper, which probes that byte.
#ifndef MAPKV_LOCK_H_
#define MAPKV_LOCK_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "format.h"
#include "mapkv/status.h"
#include "platform/platform.h"

namespace mapkv::internal {

inline constexpr uint64_t kRwLockByte = 0;    // writer / reader lock
inline constexpr uint64_t kPresenceByte = 1;  // held shared by every open handle
// Held shared by every process counted in ctl->lock_waiters while it waits;
// whoever can take it exclusively knows that no counted waiter is alive.
inline constexpr uint64_t kWaiterByte = 2;
// Held shared by every process counted in ctl->change_waiters (WaitForChange,
// watch.cc) while it is counted, for the same repair.
inline constexpr uint64_t kChangeWaiterByte = 3;
// Held shared by a read-only handle while it waits for the rw lock (it cannot
// write the counts); a writer's keeper probes it.
inline constexpr uint64_t kReadOnlyWaiterByte = 4;

// A reader-writer lock for the threads of one process that lets a waiting
// writer in before newly arriving readers.
class RwLock {
 public:
  void Lock();
  void Unlock();
  void LockShared();
  // For a thread that holds a shared lock already: ignores waiting writers
  // (they wait for that lock, so queueing behind them would never end).
  void LockSharedNested();
  bool TryLockShared();
  // As Lock, but only waits behind a writer: returns false, holding
  // nothing, while readers hold the lock (they may hold it for long, and a
  // waiting writer holds back the other threads' new readers meanwhile).
  bool LockUnlessShared();
  void UnlockShared();
  // Threads in Lock() that wait for the lock (for tests).
  uint32_t WaitingWriters() const { return (state_.load() & kWaitMask) >> kWaitShift; }

 private:
  // One word, so an uncontended lock or unlock is one atomic operation:
  // kWriter | waiting writers << kWaitShift | readers. Waiters block in
  // WaitInProcess (a private futex, WaitOnAddress on Windows).
  static constexpr uint32_t kWriter = 1u << 31;
  static constexpr uint32_t kWaitShift = 16;
  static constexpr uint32_t kWaitOne = 1u << kWaitShift;
  static constexpr uint32_t kWaitMask = 0x7fffu << kWaitShift;
  static constexpr uint32_t kReaderMask = 0xffffu;
  std::atomic<uint32_t> state_{0};
};

// now + timeout on the steady clock, or the clock's last instant when that
// would overflow it: a timeout of milliseconds::max() waits for ever rather
// than wrapping to a deadline in the past.
inline std::chrono::steady_clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point now = Clock::now();
  if (timeout.count() <= 0) return now;
  const auto room = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now);
  return timeout >= room ? Clock::time_point::max() : now + std::chrono::duration_cast<Clock::duration>(timeout);
}

class LockManager {
 public:
  LockManager(File* file, std::chrono::milliseconds timeout) : file_(file), timeout_(timeout) {}
  ~LockManager();
  LockManager(const LockManager&) = delete;
  LockManager& operator=(const LockManager&) = delete;

  // The control page, once mapped; until then waits poll. Null for read-only
  // handles is fine too (they cannot write the counters).
  void set_ctl(format::ControlPage* ctl, bool writable) {
    ctl_ = ctl;
    ctl_writable_ = writable;
  }

  // *fresh (when given) is set when the file lock had to be taken from the
  // OS, rather than kept from the previous write (sticky).
  Status LockWrite(bool* fresh = nullptr);
  // `may_stick`: keep the file lock for the next write (see above); false for
  // one-off writes such as open's recovery and close.
  void UnlockWrite(bool may_stick = true);
  // True while the handle keeps the file write lock from its last write (the
  // file's size was checked when the lock was taken, and no other process
  // can write). A hint: the keeper may give the lock up at any moment.
  bool HoldsStickyWrite() const { return sticky_.load(std::memory_order_relaxed); }
  // Whether the calling thread holds this handle's read or write lock.
  bool HeldByThisThread() const;
  // For tests: read locks that converted a sticky write lock to shared.
  uint64_t StickyConversionsForTesting() const { return sticky_conversions_.load(); }
  // For tests: the keeper thread runs and sleeps until a sticky write.
  bool KeeperWaitingForTesting() const { return keeper_started_.load() && keeper_idle_.load(); }
  Status LockRead();
  void UnlockRead();
  // Threads of this process waiting for this handle's write lock behind a
  // holder of the same handle (for tests: "a writer is queued").
  uint32_t WritersWaitingInProcess() const { return rw_.WaitingWriters(); }

  // Takes the presence lock (shared) for the handle's lifetime, waiting while
  // a closing handle holds it exclusively.
  Status JoinPresence();
  // True, holding presence exclusively, when no other handle has the file open.
  bool TryBecomeAlone();
  // Turns the exclusive presence of TryBecomeAlone back into a shared one.
  void EndAlone();

 private:
  Status AcquireFile(LockMode mode);
  // AcquireFile's end of waiting: uncounts the waiter and gives its waiter
  // byte back (`counters`: counted in the control page; `uncounted`: held
  // the read-only waiter byte instead).
  void EndWaiting(LockMode mode, bool counters, bool uncounted);
  // True when a read-only handle waits (holds kReadOnlyWaiterByte): a probe,
  // two system calls when none does.
  bool ReadOnlyWaiterHeld() noexcept;
  // Zeroes the waiter counts when every process they count has died waiting.
  void RepairWaiterCounts();
  // For a handle that cannot repair them (read-only): true when writers are
  // counted as waiting but none holds the waiter byte, so all of them died.
  bool WaiterCountsStale() const;
  // Unlocks the rw byte and bumps ctl->lock_released, waking its sleepers
  // when waiters are counted or `wake` says one waits uncounted.
  void ReleaseFile(bool wake = false);
  // The bump and wake of ReleaseFile, for a writable handle (also after a
  // sticky lock became shared: readers may come in).
  void AnnounceRelease(bool wake = false);
  void KeeperLoop();
  // Under rw_ (a write's unlock): starts the keeper thread unless it runs.
  // False when no thread could be created; the write lock must then not be
  // kept sticky, since nothing would let it go.
  bool StartKeeper();
  void StopKeeper();
  // Under rw_ (a write's lock, before it takes the file lock): when the last
  // write let the file lock go to waiters, waits up to kHandoff for one of
  // them to take it.
  void LetWaitersIn();
  // Names who holds the lock a wait for `mode` timed out on. Called holding
  // no lock on kRwLockByte.
  Status BusyError(LockMode mode) const;
  // Probes kRwLockByte with a shared try-lock (let go at once): false when
  // only readers (or nobody) hold it.
  bool WriterHoldsFile() const;
  // While a handle opens, its control page is not mapped yet: the writer's
  // pid for BusyError, from a read-only mapping of the file's header made
  // for the message alone (0 when unknown).
  uint64_t WriterPidFromFile() const;
  // File::WaitWord/WakeWord on a word of the control page.
  void Wait(std::atomic<uint32_t>* word, uint32_t expected, std::chrono::microseconds timeout) {
    file_->WaitWord(word, format::ControlOffsetOf(ctl_, word), expected, timeout);
  }
  void Wake(std::atomic<uint32_t>* word, uint32_t seen) {
    file_->WakeWord(word, format::ControlOffsetOf(ctl_, word), seen);
  }
  // Stores only when a pid is there: an open that merely looked leaves the
  // control page clean, so it costs no write fault (on ext4, a journal
  // update of the file's times, which can wait behind a commit).
  void ClearWriterPid() {
    if (ctl_->writer_pid.load(std::memory_order_relaxed) != 0) ctl_->writer_pid.store(0, std::memory_order_relaxed);
  }

  File* const file_;
  const std::chrono::milliseconds timeout_;
  format::ControlPage* ctl_ = nullptr;
  bool ctl_writable_ = false;
  RwLock rw_;
  std::mutex file_mu_;  // guards shared_holders_ and the keeper's sleep on keeper_cv_
  int shared_holders_ = 0;
  // The file lock is held exclusively with no write running. Changed only
  // with rw_ held exclusively (a write, or the keeper releasing it), so
  // holders of rw_ read it without file_mu_.
  std::atomic<bool> sticky_{false};
  // Set when this handle last let the write lock go because someone waited
  // (with the waiters counted then): its next write lets them in first.
  // Under rw_ held exclusively.
  bool handoff_ = false;
  uint32_t handoff_waiters_ = 0;
  std::atomic<uint64_t> sticky_conversions_{0};  // StickyConversionsForTesting
  std::atomic<bool> keeper_idle_{false};         // the keeper sleeps on keeper_cv_ (the lock is not sticky)
  std::atomic<bool> keeper_started_{false};
  std::atomic<uint64_t> writes_{0};  // sticky writes so far; unchanged over kStickyIdle = idle
  const uint64_t pid_ = ProcessId();
  // On the heap: a forked child must not destroy the parent's copy (a
  // keeper that was waiting on it at the fork stays counted in it, and
  // destroying it would wait for that waiter forever); StopKeeper leaks it.
  std::unique_ptr<std::condition_variable> keeper_cv_ = std::make_unique<std::condition_variable>();
  std::thread keeper_;
  std::atomic<bool> keeper_stop_{false};
  uint64_t keeper_fork_generation_ = 0;
};

}  // namespace mapkv::internal

#endif  // MAPKV_LOCK_H_
