// store_impl.h: the state behind a Store handle, and where each job lives.
//
//   store.cc       the public API: argument checks, reads, writes, batches
//   open.cc        open and create, validation of an existing file, recovery
//                  after a killed writer or a lost page cache (reboot), close
//   checkpoint.cc  synchronous flush: the meta page and its copy-on-write epoch
//   check.cc       Check and GetStats
//   compact.cc     Compact
//   watch.cc       the change ring, publishing changes, waking and waiting
//                  watchers (ChangeSeq, WaitForChange, ChangesSince)
//
// Reads are optimistic: a reader loads the control page's seqlock word, reads
// the table and record without any lock, and accepts what it read only when
// the word is unchanged and even. A writer makes the word odd for the time it
// changes reader-visible state. A reader that keeps failing (a long write, or
// a writer that died with the word odd) takes the read lock instead; under it
// an odd word can only mean a dead writer, and the reader has the write lock
// taken to recover.
//
// Writes take the write lock (lock.h), start an undo scope (heap.h), write
// the new record into free space, make the seqlock odd, change the table,
// commit, and make the seqlock even.
#ifndef MAPKV_STORE_IMPL_H_
#define MAPKV_STORE_IMPL_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "format.h"
#include "heap.h"
#include "lock.h"
#include "mapkv/store.h"
#include "platform/platform.h"
#include "table.h"

namespace mapkv::internal {

// A store path with this prefix names a shared-memory store (Store::Open).
inline constexpr std::string_view kSharedPrefix = "shm:";

// `key` quoted for a message: printable ASCII as is, other bytes as \xNN,
// at most 64 bytes shown.
std::string DescribeKey(std::string_view key);

// The checksum a meta page carries: XXH3 of everything before the field.
uint64_t MetaChecksum(const format::MetaPage& m);

class StoreImpl {
 public:
  static Status Open(std::string_view path, const Options& options, std::unique_ptr<StoreImpl>* out);
  ~StoreImpl();
  Status Close();

  const std::string& path() const { return path_; }
  // Whether the calling thread holds a lock of this handle (a ReadGuard, or
  // inside a ForEach or Update callback, or a write).
  bool HeldByThisThread() const { return locks_ && locks_->HeldByThisThread(); }

  // For tests: threads of this process waiting for `store`'s write lock
  // behind a holder of the same handle (0 for a closed handle).
  static uint32_t WritersWaitingForTesting(const Store& store);
  // For tests: the lock keeper and the prefault thread of `store` have both
  // started and now wait on their condition variables.
  static bool ThreadsWaitingForTesting(const Store& store);
  // For tests: the lock keeper of `store` has started and sleeps until a
  // write keeps the lock (sticky).
  static bool KeeperWaitingForTesting(const Store& store);
  // For tests: read locks of `store` that converted its sticky write lock.
  static uint64_t StickyConversionsForTesting(const Store& store);
  // For tests: how many times WaitForChange of `store` found no change and
  // went to sleep on the wake word (counted before the sleep begins).
  static uint64_t WatchSleepsForTesting(const Store& store);

  // A get's common case, inline in Store::Get and Store::Contains: one
  // optimistic attempt that probes only the home slot's table page. kSlow:
  // anything out of the ordinary (a writer inside, a grown file, a probe
  // that leaves the page, a key to refuse); GetSlow then does the whole job.
  enum class FastGet { kFound, kAbsent, kSlow };
  FastGet TryGet(std::string_view key, std::string* value) const;
  // The whole get: retries, a growing mapping, checksums, the locked read.
  Status GetSlow(std::string_view key, std::string* value, bool* found) const;
  Status Put(std::string_view key, std::string_view value);
  Status Erase(std::string_view key);
  Status Write(const WriteBatch& batch, const WriteOptions& options);
  Status CompareAndSwap(std::string_view key, std::optional<std::string_view> expected,
                        std::optional<std::string_view> desired, std::optional<std::string>* actual);
  Status Increment(std::string_view key, int64_t delta, int64_t* new_value);
  Status Update(std::string_view key, const Store::UpdateFn& fn);
  Status MultiGet(std::span<const std::string_view> keys, std::vector<std::optional<std::string>>* values) const;
  // 0 in a forked child, where the mapping is not inherited.
  uint64_t size() const {
    return fork_generation_ == ForkGeneration() ? ctl_->entries.load(std::memory_order_relaxed) : 0;
  }
  Status Flush(FlushMode mode);
  Status GetStats(Stats* stats) const;
  Status Check(CheckReport* report) const;
  Status Compact();
  // salvage.cc: creates `to` under this store's read lock and puts every
  // sound pair into it (Store::Salvage).
  Status SalvageInto(std::string_view to, const Options& options, SalvageReport* report) const;
  Status SalvageWalkInto(Store* to, SalvageReport* report) const;

  // watch.cc
  uint64_t ChangeSeq() const;
  Status WaitForChange(uint64_t since, std::chrono::milliseconds timeout, uint64_t* seq) const;
  Status ChangesSince(uint64_t since, const ChangeFilter& filter, std::vector<Change>* out, uint64_t* next) const;
  uint64_t KeyHash(std::string_view key) const;

  // Read guard support: the caller holds the read lock.
  Status LockRead() const;
  void UnlockRead() const;
  // Gives back a read lock LockRead took when it goes out of scope, an
  // exception passing through included (a ForEach callback's, or bad_alloc
  // while a value is copied out).
  struct ReadUnlocker {
    const StoreImpl* store;
    ~ReadUnlocker() { store->UnlockRead(); }
  };
  Status GuardedGet(std::string_view key, std::string_view* value) const;
  Status GuardedForEach(std::string_view prefix,
                        const std::function<bool(std::string_view, std::string_view)>& fn) const;

 private:
  StoreImpl(std::string path, const Options& options);

  // open.cc
  static Status CreateNew(const std::string& path, const Options& options);
  // Opens a named shared-memory store ("shm:NAME"), initializing it in
  // place when it is new (empty).
  static Status OpenShared(const std::string& path, const Options& options, std::unique_ptr<StoreImpl>* out);
  Status InitializeIfEmpty();
  Status Attach();
  Status ChooseMeta(const format::MetaPage** meta) const;
  Status ChooseMeta(uint64_t file_size, const format::MetaPage** meta) const;  // the file's size just read
  // Checks that the control page's offsets and sizes lie in the file and agree,
  // and that the undo log, and the control page it would restore, do too.
  Status ValidateControl() const;
  Status ValidateControl(uint64_t file_size) const;  // the file's size just read
  // mid_write: the page of a killed writer, checked only where its rollback
  // reads it (the file's size and the allocation map).
  Status CheckControlPage(const format::ControlPage& c, uint64_t file_size, const char* which,
                          bool mid_write = false) const;
  // The allocation map the control page names marks the header and its own
  // extent as used. After ValidateControl, before anything allocates or
  // frees: a fresh write lock (TakeOverWriteLock), recovery of a killed
  // writer at open, Check. Not at every open: it touches three pages that
  // a reader never needs (27 -> 36 us for an open with a first get).
  Status CheckAllocMapMarks() const;
  // Copies the control page into `copy` (sizeof(ControlPage) bytes) as the
  // undo log of a killed writer would leave it. After ValidateLog.
  void RolledBackControl(unsigned char* copy) const;
  Status RecoverKilledWriter();
  Status RecoverFromCheckpoint(const format::MetaPage& meta);
  Status RebuildAllocMap();
  Status InitializeNew(uint64_t capacity);
  // Lets go of the mapping and the parts built on it, and of the control
  // page, without the work of a close (no trim, no checkpoint): for a handle
  // whose open failed or ran out of memory, and for the builders of a new
  // store, which map it again.
  void DropParts() noexcept;
  Status TrimIfAlone();

  // compact.cc
  Status MoveEverything();
  Status MoveRecord(uint64_t index, bool only_lower, bool* moved);
  // Moves the highest records into holes below them, when the holes add up
  // (before the file is cut at the last close).
  // `*damaged`: set to the error of the first damaged record seen, which
  // stays where it is while the others move.
  Status CompactTail(Status* damaged);
  // kCorruption naming the first record (in slot order) that fails its
  // checksum or lies out of the file; Ok when there is none.
  Status FirstDamagedRecord() const;
  // Frees both page-map snapshots and checkpoints twice, so that they are
  // allocated again from `cursor` (the lowest hole that fits, unless the
  // heap is append-only). They move at no other time, and one allocated at
  // the top of the heap keeps the file from shrinking.
  Status RehomeSnapshots(uint64_t cursor);
  // A snapshot ends at the top of the used heap.
  bool SnapshotOnTop() const;
  // Shortens the file to `size` (a multiple of 64 KiB), alone with the write
  // lock: the control page, every mapping of the handle (MapSet::Cut), then
  // the file. On an error the file is not cut.
  Status CutFile(uint64_t size);

  // checkpoint.cc
  Status Checkpoint();

  // watch.cc, inside a write: counts one change (change_seq + 1) and writes
  // its entry into the change ring, allocating the ring first when the
  // store has none yet and `may_allocate` (not in an in-place write scope).
  Status RecordChange(uint8_t op, std::string_view key, uint64_t hash, bool may_allocate = true);
  // True when an in-place write can record its change (the ring exists, or
  // this handle keeps none).
  bool RingReady() const { return ctl_->ring_capacity != 0 || options_.change_ring_capacity == 0; }
  // After a commit (seq still odd): makes the write's changes visible to
  // watchers (change_published = change_seq).
  void PublishChanges();
  // After SeqEnd: wakes sleeping watchers when one is counted.
  void WakeWatchers();
  // Advances change_futex and wakes every watcher sleeping on it.
  void BumpChangeWord();
  // A thread of this handle starts or ends waiting in WaitForChange: counts
  // it in change_waiters, and holds the waiter byte while any is counted.
  Status CountWatcher() const;
  void UncountWatcher() const;

  // store.cc
  Status CheckUsable() const {
    if (fork_generation_ != ForkGeneration()) [[unlikely]]
      return ForkedError();
    return Status::Ok();
  }
  [[gnu::cold]] Status ForkedError() const;
  Status ChecksumError(const RecordRef& rec) const;
  Status CheckWritable() const;
  Status BeginWrite();  // write lock + recovery + mapping up to date
  // With the write lock just taken from the OS (not kept from this handle's
  // last write): checks that the file was not cut, maps it whole, and
  // recovers a writer killed in the middle of a write. The caller unlocks
  // when it fails.
  Status TakeOverWriteLock();
  // Gives the write lock back, after a checkpoint when the change sequence
  // ran kCheckpointEveryChanges past the last checkpoint's (CheckpointIfDue).
  void EndWrite();
  void CheckpointIfDue() noexcept;
  // Ends the write at the end of its scope, also when an exception passes.
  struct WriteEnder {
    StoreImpl* self;
    ~WriteEnder() { self->EndWrite(); }
  };
  // RunWrite's way out when its body throws: rolls the write back and ends
  // the seqlock's write; when the rollback fails too (or throws), leaves
  // both for the next holder of the lock, which EndWrite then gives back.
  void AbandonWrite() noexcept;
  // Takes back the running write (Heap::Rollback). A log that no longer reads
  // back (damaged by another program) stays counted, and EndWrite then gives
  // the file lock back to the OS instead of keeping it: the next holder, this
  // handle included, recovers and reports the damage, where a sticky write
  // would have logged and committed on top of the half-undone one.
  Status RollBackWrite();
  // RollBackWrite for a write that failed: when the rollback itself throws
  // (out of memory), the lock is given back to the OS with the log as it is,
  // for the next holder to finish, and the exception goes on.
  Status RollBackOrDrop() {
    try {
      return RollBackWrite();
    } catch (...) {
      drop_write_lock_ = true;
      throw;
    }
  }
  void SeqBegin();
  void SeqEnd();
  Status EnsureMapped() const;
  Status WriteRecord(std::string_view key, std::string_view value, uint64_t* granule);
  Status PlaceRecord(std::string_view key, std::string_view value, uint64_t* granule);
  void SealRecord(uint64_t granule);
  // `hash` is HashKey(key); `known`: the key's lookup, made under this write
  // lock since the table last changed (or nullptr: look it up).
  Status ApplyPut(std::string_view key, std::string_view value, uint64_t hash,
                  const TableWriter::Lookup* known = nullptr);
  // A Put's other order: writes the record first and looks the key up after,
  // so that the home slot's cache miss overlaps the record's allocation,
  // copy and checksum. *in_place: the key's old record could have been
  // rewritten in place (this put still goes through the new record).
  Status ApplyPutWriteFirst(std::string_view key, std::string_view value, uint64_t hash, bool* in_place);
  // ApplyPut's second half: points the table at the record written at
  // `granule` and frees the one it replaces.
  Status LinkRecord(std::string_view key, std::string_view value, uint64_t hash, uint64_t granule,
                    const TableWriter::Lookup* known);
  Status ApplyErase(std::string_view key, uint64_t hash, bool* found);  // hash: HashKey(key)
  // Under the write lock: looks `key` up, lets `decide` choose from its
  // current value what to do (with `decide` unable to write to this handle),
  // and applies that as one write.
  // Decide: Status(std::optional<std::string_view> current, Store::UpdateAction* action, std::string* next).
  // Defined in store.cc, its only user.
  template <typename Decide>
  Status ReadModifyWrite(std::string_view key, Decide&& decide);
  // Runs `body` as one atomic write (undo scope, seqlock, commit/rollback).
  template <typename Body>
  Status RunWrite(Body&& body, Heap::WriteScope scope = Heap::WriteScope::kFull);
  // Whether OverwriteInPlace may replace the value of `rec` by `value`: a
  // small value of the same size, in a record the last checkpoint does not
  // reference.
  bool CanOverwriteInPlace(const RecordRef& rec, std::string_view value) const;
  Status OverwriteInPlace(const RecordRef& rec, std::string_view value, uint64_t hash);
  TableReader ReaderSnapshot() const;
  // Calls fn(index, slot, rec) for each occupied slot of `r`, in slot order,
  // while it returns true; fn may set *error and return false. kCorruption
  // when a table page or a record lies out of the file.
  template <typename Fn>
  Status WalkRecords(const TableReader& r, Fn&& fn) const;
  Status ProbeLeftFile() const;  // the Corruption a probe that left the file reports
  // Tells the mappings where the allocation map is (MapSet::KeepSmall).
  void KeepAllocMapSmall() { maps_->KeepSmall(ctl_->alloc_offset, ctl_->alloc_words * sizeof(format::AllocWord)); }
  // Inside an optimistic read (no lock): the table as the control page says
  // it is now, with the mapping grown to cover the file. The caller checks
  // the shift and validates the whole read with the seqlock. On an error
  // (the mapping could not grow) it sets *s and returns an empty reader.
  TableReader OptimisticReader(Status* s) const;
  // Before a write takes the lock: starts loading the home slot of `hash`,
  // so that its cache miss overlaps the lock and the write's setup instead
  // of following them. Reads the control page and the page map racily,
  // within the current mapping, and only while the write lock is sticky.
  void PrefetchHomeUnlocked(uint64_t hash) const;

  const std::string path_;
  const Options options_;
  const bool read_only_;
  uint64_t fork_generation_ = 0;
  uint64_t seed_ = 0;
  std::unique_ptr<File> file_;
  std::unique_ptr<MapSet> maps_;
  std::unique_ptr<LockManager> locks_;
  format::ControlPage* ctl_ = nullptr;
  std::unique_ptr<Heap> heap_;
  std::unique_ptr<TableWriter> table_;
  // Under the write lock: whether the last Put found a record it could
  // rewrite in place. Put then looks up first (in-place rewrites of the same
  // keys tend to come in runs); otherwise it writes the record first.
  bool last_put_in_place_ = false;
  // Under the write lock: whether the last write-first Put replaced a key.
  // The next one then asks for its old record's lines before it checksums
  // the new record (overwrites come in runs, as fills do).
  bool last_put_replaced_ = false;
  bool wake_pending_ = false;        // PublishChanges advanced change_published; WakeWatchers to run
  bool drop_write_lock_ = false;     // RollBackWrite failed: EndWrite does not keep the lock
  uint64_t watcher_wakes_ = 0;       // wakes issued by this handle (under the write lock): paces the repair
  uint64_t checkpoint_due_seq_ = 0;  // EndWrite looks at the last checkpoint's sequence from this one on
  // The waiter byte's lock belongs to the handle, not to a thread: the first
  // of its threads to wait takes it shared, the last to leave releases it,
  // and the handle repairs the count only while none of its threads waits
  // (its own exclusive attempt would convert its shared lock, not test it).
  mutable std::mutex watch_mu_;
  mutable uint32_t own_watchers_ = 0;              // guarded by watch_mu_
  mutable std::atomic<uint64_t> watch_sleeps_{0};  // WatchSleepsForTesting
};

template <typename Fn>
Status StoreImpl::WalkRecords(const TableReader& r, Fn&& fn) const {
  Status error;
  for (uint64_t i = 0; i < r.slots(); ++i) {
    uint64_t slot;
    RecordRef rec;
    if (!r.LoadSlot(i, &slot)) return Status(Code::kCorruption, path_ + ": table page out of file");
    if (slot == 0) continue;
    if (!r.Record(format::SlotGranule(slot), &rec)) {
      return Status(Code::kCorruption, path_ + ": slot " + std::to_string(i) + " points out of the file");
    }
    if (!fn(i, slot, rec, &error)) break;
  }
  return error;
}

template <typename Body>
Status StoreImpl::RunWrite(Body&& body, Heap::WriteScope scope) {
  Status s;
  try {
    s = heap_->Begin(scope);
    if (s.ok()) s = body();
  } catch (...) {
    // Only memory running out throws in a write (a container's growth, a
    // message): the write is undone like a failed one, and the exception
    // goes on to the caller, whose scope ends the write.
    AbandonWrite();
    throw;
  }
  if (s.ok()) {
    ctl_->dirty = 1;
    heap_->Commit();
    PublishChanges();
  } else if (Status r = RollBackOrDrop(); !r.ok()) {
    // The seqlock stays odd too, so that readers go to the lock (and the
    // recovery that reports the damage) instead of reading a half-undone write.
    return r;
  }
  SeqEnd();
  WakeWatchers();
  return s;
}

}  // namespace mapkv::internal

#endif  // MAPKV_STORE_IMPL_H_
