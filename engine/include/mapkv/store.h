// mapkv/store.h: the store handle.
//
// A Store is one open handle on one store file. Any number of threads may use
// one handle at once, and any number of handles (in this process or others)
// may open the same file at once.
//
//   mapkv::Store store;
//   mapkv::Status s = mapkv::Store::Open("state.mkv", {}, &store);
//   if (s.ok()) s = store.Put("user:42", "alice");
//   std::string v;
//   if (s.ok()) s = store.Get("user:42", &v);   // v == "alice"
//
// Consistency: every Put, Erase and Write is atomic and, once it returns, is
// seen by every later read in every process. A reader never sees a torn value
// or part of a batch.
//
// Durability: a returned write survives the death of any process (SIGKILL
// included): it lives in the shared mapping and the OS writes it back. It
// survives a power cut or OS crash once Flush(FlushMode::kSync) has returned
// after it. See docs/DESIGN.md, "Durability levels".
//
// Caveats (see docs/DESIGN.md):
//  - A handle carried into a child by fork() is refused with kUnsafeUse; open
//    the store again in the child.
//  - Another program that truncates the file under a live mapping makes
//    readers fault; mapkv cannot prevent that. Never edit a store in place
//    with other tools.
//  - Do not put a store on a network file system; file locks and shared
//    mappings are not coherent there.
#ifndef MAPKV_STORE_H_
#define MAPKV_STORE_H_

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "mapkv/options.h"
#include "mapkv/status.h"

namespace mapkv {

namespace internal {
class StoreImpl;
}  // namespace internal

// Limits of format v1.
inline constexpr size_t kMaxKeySize = 64 * 1024;             // bytes, at least 1
inline constexpr size_t kMaxValueSize = 1024 * 1024 * 1024;  // bytes, 0 allowed

struct Stats {
  uint32_t format_major = 0;
  uint32_t format_minor = 0;
  uint64_t entries = 0;                // live key/value pairs
  uint64_t slots = 0;                  // hash table capacity
  double load_factor = 0;              // entries / slots
  uint64_t file_bytes = 0;             // length of the file
  uint64_t heap_bytes = 0;             // bytes of the file in use (allocated) by any structure
  uint64_t live_bytes = 0;             // bytes of live records (headers, keys, values)
  uint64_t garbage_bytes = 0;          // bytes freed but not yet reusable (waiting for a checkpoint)
  uint64_t free_bytes = 0;             // bytes free for reuse inside the file
  uint64_t table_bytes = 0;            // bytes of the hash table
  uint64_t change_seq = 0;             // the change sequence number
  uint64_t checkpoint_generation = 0;  // generation of the newest durable meta page
  uint64_t max_probe = 0;              // longest probe sequence in the table
  double mean_probe = 0;               // mean probe length of present keys
};

// What Check found. `problems` is empty when the store is sound.
struct CheckReport {
  uint64_t entries_checked = 0;
  std::vector<std::string> problems;  // one line each, naming the structure and offset
  bool ok() const { return problems.empty(); }
};

// What Store::Salvage copied, and what it left behind or copied in doubt.
struct SalvageReport {
  bool created = false;               // `to` was created (it keeps what was copied, even after an error)
  uint64_t copied = 0;                // pairs written into `to`
  uint64_t problem_count = 0;         // records, slots and table pages left behind or copied in doubt
  std::vector<std::string> problems;  // one line each, naming it and why (the first 1000)
  bool complete() const { return problem_count == 0; }
};

// A group of puts and erases that Store::Write applies all or nothing.
class WriteBatch {
 public:
  // Copy the key and value into the batch. Out of memory they throw
  // std::bad_alloc and leave the batch as it was.
  void Put(std::string_view key, std::string_view value);
  void Erase(std::string_view key);
  // A trivially copyable value, stored as its bytes (see Store::PutValue).
  template <typename T>
  requires std::is_trivially_copyable_v<T>
  void PutValue(std::string_view key, const T& value) {
    Put(key, std::string_view(reinterpret_cast<const char*>(&value), sizeof(T)));
  }
  void Clear();
  size_t Count() const { return ops_.size(); }
  size_t ByteSize() const { return bytes_; }

 private:
  friend class internal::StoreImpl;
  struct Op {
    bool erase;
    uint32_t key_size;
    uint64_t offset;  // into data_: key bytes then value bytes
    uint64_t value_size;
  };
  std::vector<Op> ops_;
  std::string data_;
  size_t bytes_ = 0;
};

// ---- watch: what Store::ChangesSince reports.
enum class ChangeOp : uint8_t { kPut = 1, kErase = 2 };

// Keys longer than this are kept in the change ring as their first
// kChangeKeyBytes bytes, their size and their hash.
inline constexpr size_t kChangeKeyBytes = 40;

struct Change {
  uint64_t seq = 0;  // the change sequence number after this change
  ChangeOp op = ChangeOp::kPut;
  // The key; when key_truncated, only its first kChangeKeyBytes bytes (the
  // key was key_size bytes long, and key_hash tells it from others).
  std::string key;
  bool key_truncated = false;
  uint32_t key_size = 0;
  uint64_t key_hash = 0;  // the store's hash of the whole key (Store::KeyHash)
};

// Which changes ChangesSince returns: all, those of one key, or those of the
// keys starting with a prefix. A prefix longer than kChangeKeyBytes also
// matches a long key whose stored first bytes match it (never misses one,
// may report a long key that differs further on: key_truncated says so).
struct ChangeFilter {
  enum class Kind : uint8_t { kAll, kKey, kPrefix };
  Kind kind = Kind::kAll;
  std::string text;
  static ChangeFilter All() { return {}; }
  static ChangeFilter Key(std::string_view key) { return {Kind::kKey, std::string(key)}; }
  static ChangeFilter Prefix(std::string_view prefix) { return {Kind::kPrefix, std::string(prefix)}; }
};

class ReadGuard;

class Store {
 public:
  // Opens (and with options.create_if_missing, creates) the store at `path`.
  // On success `*store` holds the open handle (any handle it held before is
  // closed first). On failure `*store` is left closed and the file is not
  // changed. Returns kOk, kNotFound (no file and no create),
  // kInvalidArgument (bad options, error_if_exists, a directory), kCorruption
  // (not a store, damaged header), kVersionTooNew, kPermissionDenied,
  // kIoError, kNoSpace, kBusy, kNotSupported (a network file system, where
  // shared mappings and locks are not coherent).
  //
  // A path "shm:NAME" names a shared-memory store instead of a file: shared
  // by every process that opens the same name, with no file behind it (POSIX
  // shared memory, shm_open, on Linux; a paging-file-backed section
  // "Local\mapkv-NAME" on Windows). It does not survive a reboot; on Windows
  // it also disappears when the last process that has it open closes it.
  // Same API, same format, same locking as a file store.
  static Status Open(std::string_view path, const Options& options, Store* store);

  // Copies every pair of the store at `from` whose record is intact into a
  // new store at `to`: the way past damage short of a backup, since Put,
  // Erase and Compact refuse a damaged record (its size cannot be trusted to
  // free it). `from` is opened read-only, never changed, and read-locked for
  // the whole copy (it must not need recovery: a writable open does that
  // first). `to` must not exist; it is created once that lock is held, with
  // `options` (whose create_if_missing, error_if_exists and read_only are
  // overridden), and checkpointed before Salvage returns.
  //
  // Left behind, each named in report->problems: a record that fails its
  // checksum or overlaps one already copied; a slot that points out of the
  // file, at a record whose key does not hash to it, or at a key that a
  // lookup finds in another slot (a stray or second slot, which may hold an
  // older value); a table page out of the file, or one that the page map
  // points at another table page's page. Copied in doubt, and named too: a
  // pair in a page or record that the allocation map does not hold in use
  // (an older copy a damaged slot led to, or a current one beside a damaged
  // map), in a slot no lookup reaches, or in a second slot of a key whose
  // reached record is damaged. A table holding fewer entries than the store
  // counts is named as well (cleared slots leave no other trace). Returns
  // kOk when the walk completed (report->complete() says whether there was
  // anything to name), else the error that stopped it; `to`, if
  // report->created, then keeps the pairs copied so far and is a sound
  // store. On Windows a "shm:NAME" `to` ends when Salvage closes it, unless
  // another handle has it open.
  static Status Salvage(std::string_view from, std::string_view to, const Options& options, SalvageReport* report);

  // Removes the named shared-memory store "shm:NAME" (or just NAME). On
  // Linux, handles still open keep working and the name is free at once; on
  // Windows the store lives while a process has it open, so this fails with
  // kBusy then (it only removes the store's lock file otherwise). kNotFound
  // when there is no such store.
  static Status RemoveShared(std::string_view name);

  Store();
  ~Store();  // Close()s, ignoring its status
  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Closes the handle: checkpoints when options.checkpoint_on_close and this is
  // the last handle on the file, releases locks and the mapping. Idempotent.
  // The handle is closed whatever it returns, but for kUnsafeUse: called from
  // a callback of this handle (Update, ForEach) or under its ReadGuard, it
  // closes nothing. kCorruption names a damaged record that the close's
  // compaction of the file's tail found (and left where it was, after
  // checkpointing everything else).
  Status Close();
  bool is_open() const { return impl_ != nullptr; }
  const std::string& path() const;

  // Copies the value of `key` into `*value`. Returns kOk, kNotFound,
  // kInvalidArgument (empty or oversized key), kCorruption, kUnsafeUse, or
  // kBusy (a writer stayed busy past lock_timeout). Takes no lock in the
  // common case (an optimistic read validated by a sequence counter), so it
  // never waits for a writer unless the writer stays busy.
  Status Get(std::string_view key, std::string* value) const;

  // Sets `*found`. Same returns as Get, except that an absent key is kOk.
  Status Contains(std::string_view key, bool* found) const;

  // Inserts or replaces. Returns kOk, kInvalidArgument, kNoSpace (the file
  // could not grow; the store is unchanged), kPermissionDenied (read-only),
  // kBusy, kIoError, kCorruption, kUnsafeUse.
  Status Put(std::string_view key, std::string_view value);

  // Removes `key`. Returns kNotFound when it was absent, else as Put.
  Status Erase(std::string_view key);

  // Applies every operation of `batch` in order, all or nothing: a reader
  // (Get, MultiGet, ForEach, a ReadGuard) sees the state before the batch or
  // after it, and a process killed during Write leaves the store as before
  // or with the whole batch. Any size up to what the disk holds (a batch of
  // 1 GiB is tested); a batch the disk cannot hold fails with kNoSpace and
  // changes nothing. With options.sync the batch is also checkpointed before
  // Write returns, so it survives a power cut (as Write then Flush(kSync),
  // without letting another write in between). Returns as Put.
  Status Write(const WriteBatch& batch, const WriteOptions& options = {});

  // ---- read-modify-write: each runs under the write lock, so no other
  // ---- thread or process can change the key between the read and the write.

  // Replaces the value of `key` with `desired` (erases it when desired is
  // nullopt) only when its current value is `expected` (absent when
  // nullopt). Returns kOk when it did; kAborted when the current value
  // differed (then *actual, when given, receives it: nullopt for absent);
  // else as Put.
  Status CompareAndSwap(std::string_view key, std::optional<std::string_view> expected,
                        std::optional<std::string_view> desired, std::optional<std::string>* actual = nullptr);

  // Adds `delta` to the 64-bit signed counter at `key` (8 bytes,
  // little-endian; an absent key counts as 0) and stores *new_value when
  // given. Returns kWrongType (naming the key and the value's size) when the
  // value is not 8 bytes, kOutOfRange when the sum overflows; both change
  // nothing. Else as Put.
  Status Increment(std::string_view key, int64_t delta = 1, int64_t* new_value = nullptr);

  // What an Update function decides.
  enum class UpdateAction : uint8_t { kKeep, kPut, kErase };
  // Calls fn(current, &next) with the current value (nullopt when absent;
  // the view is valid only during the call) under the write lock, then
  // stores `next` (kPut), erases the key (kErase) or changes nothing
  // (kKeep). fn must not use the store (a write, a ForEach, a ReadGuard or
  // GetStats from inside it returns kUnsafeUse); it runs while every other
  // writer waits, so keep it short.
  // An exception thrown by fn leaves the store unchanged and propagates.
  using UpdateFn = std::function<UpdateAction(std::optional<std::string_view> current, std::string* next)>;
  Status Update(std::string_view key, const UpdateFn& fn);

  // Reads several keys from one state (no write lands between two of them).
  // (*values)[i] is the value of keys[i], nullopt when absent.
  Status MultiGet(std::span<const std::string_view> keys, std::vector<std::optional<std::string>>* values) const;

  // ---- typed values: trivially copyable types stored as their bytes.
  // Numbers are little-endian in the file (mapkv runs only on little-endian
  // hosts, so a store file moves between machines as it is). A struct is
  // stored with its in-memory layout, padding included: give it fixed-width
  // members and no pointers. A stored value of another size gives kWrongType
  // naming the key, the expected and the actual size.
  template <typename T>
  requires std::is_trivially_copyable_v<T> Status PutValue(std::string_view key, const T& value) {
    return Put(key, std::string_view(reinterpret_cast<const char*>(&value), sizeof(T)));
  }
  template <typename T>
  requires std::is_trivially_copyable_v<T> Status GetValue(std::string_view key, T* value)
  const {
    std::string bytes;
    Status s = Get(key, &bytes);
    if (s.ok()) s = CheckTypedSize(key, bytes.size(), sizeof(T), false);
    if (s.ok()) std::memcpy(value, bytes.data(), sizeof(T));
    return s;
  }
  template <typename T>
  requires std::is_trivially_copyable_v<T> Status PutArray(std::string_view key, std::span<const T> values) {
    return Put(key, std::string_view(reinterpret_cast<const char*>(values.data()), values.size_bytes()));
  }
  // The stored size must be a multiple of sizeof(T).
  template <typename T>
  requires std::is_trivially_copyable_v<T> Status GetArray(std::string_view key, std::vector<T>* values)
  const {
    std::string bytes;
    Status s = Get(key, &bytes);
    if (s.ok()) s = CheckTypedSize(key, bytes.size(), sizeof(T), true);
    if (s.ok()) {
      values->resize(bytes.size() / sizeof(T));
      if (!bytes.empty()) std::memcpy(values->data(), bytes.data(), bytes.size());
    }
    return s;
  }

  // Number of live entries (0 for a closed handle, or one used after fork).
  uint64_t size() const;

  // Calls fn(key, value) for each entry whose key starts with `prefix` (all
  // entries when empty), in table order, until fn returns false. Holds a read
  // lock for the whole walk, so the walk sees one state. The views are valid
  // only inside fn. Writers wait while it runs; do not write to the same
  // store from inside fn (that would deadlock; it returns kUnsafeUse).
  Status ForEach(std::string_view prefix,
                 const std::function<bool(std::string_view key, std::string_view value)>& fn) const;

  // kAsync: schedules write-back. kSync: a checkpoint; see FlushMode.
  Status Flush(FlushMode mode = FlushMode::kSync);

  Status GetStats(Stats* stats) const;

  // Verifies every structure and checksum under a read lock and reports each
  // problem. Returns kOk when the walk completed (problems are in *report),
  // or an error when the walk itself could not run.
  Status Check(CheckReport* report) const;

  // Rewrites the store densely, in place, and cuts the file to its live data
  // (at once when no other handle has the file open, else when the last one
  // closes). A series of ordinary crash-safe writes holding the write lock:
  // readers keep reading, a kill leaves a valid store. Needs free disk space
  // for one more copy of the live data meanwhile. A damaged record (its
  // checksum) makes it fail with kCorruption before it moves anything. See
  // docs/DESIGN.md.
  Status Compact();

  // ---- watch: cross-process change notification (docs/DESIGN.md, "Watch").

  // The change sequence number: advanced by one for every put and every
  // erase that removes a key, of every committed write (a batch of n such
  // operations advances it by n, all at once), in every process; persistent (checkpointed with the data). One
  // load from the mapping: no lock, no system call. 0 for a closed handle.
  // After a restart of the machine the sequence jumps 2^40 ahead of the last
  // checkpoint's (a power cut may have lost changes after it, and no number
  // handed out before is handed out again); a watcher that kept a number
  // gets kRescan once.
  uint64_t ChangeSeq() const;

  // Blocks until ChangeSeq() differs from `since` (normally: has passed it),
  // or `timeout` passes. Returns kOk with *seq (when given) set to the new
  // sequence number, or kTimedOut (with *seq the unchanged one). Sleeps on a
  // futex word of the shared mapping, looking again once a second (a writer
  // killed before its wake wakes nobody), no CPU to speak of while idle; a
  // writer wakes sleepers only when one is counted, so a put with nobody
  // waiting makes no system call. Needs a writable handle (the waiter counts
  // itself in the file's control page): kNotSupported on a read-only one
  // (unless the sequence has already moved, kOk, or the timeout is 0,
  // kTimedOut: neither needs to wait).
  Status WaitForChange(uint64_t since, std::chrono::milliseconds timeout, uint64_t* seq = nullptr) const;

  // Appends to *out (cleared first) the changes with a sequence number in
  // (since, *next] that `filter` accepts, oldest first, where *next is the
  // sequence number the ring was read up to (pass it as `since` next time).
  // No lock. Returns kRescan when some change after `since` is no longer in
  // the ring (the watcher fell more than Options::change_ring_capacity
  // changes behind, or history was lost to a recovery): read the store
  // afresh and go on from ChangeSeq(). kNotSupported when the store has no
  // ring yet: every write so far came through handles opened with
  // change_ring_capacity = 0 (the first change by another handle makes one).
  Status ChangesSince(uint64_t since, const ChangeFilter& filter, std::vector<Change>* out, uint64_t* next) const;

  // The store's 64-bit hash of `key` (the Change::key_hash of its changes).
  uint64_t KeyHash(std::string_view key) const;

 private:
  friend class ReadGuard;
  friend class internal::StoreImpl;  // its test hooks
  // kWrongType unless `actual` is `expected` (or, with `array`, a multiple).
  Status CheckTypedSize(std::string_view key, size_t actual, size_t expected, bool array) const;
  std::unique_ptr<internal::StoreImpl> impl_;
};

// A read lock held on a store: zero-copy views and a consistent state.
//
//   mapkv::ReadGuard guard;
//   if (guard.Lock(store).ok()) { std::string_view v; guard.Get("k", &v); }
//
// While a guard is held no writer can change the store, so views returned by
// Get stay valid until the guard is released (Unlock or destruction). Hold
// guards briefly: writers in every process wait for them. A guard must not
// outlive its store, and is unlocked on the thread that locked it. A write
// from the thread holding it returns kUnsafeUse (it would wait for itself);
// reads (ForEach, GetStats, another guard) nest.
class ReadGuard {
 public:
  ReadGuard() = default;
  ~ReadGuard();
  ReadGuard(const ReadGuard&) = delete;
  ReadGuard& operator=(const ReadGuard&) = delete;

  // Takes the read lock. Returns kOk, kBusy (lock_timeout passed), kUnsafeUse.
  Status Lock(const Store& store);
  void Unlock();
  bool locked() const { return store_ != nullptr; }

  // Points `*value` into the mapping. Valid until Unlock.
  Status Get(std::string_view key, std::string_view* value) const;

  // As Store::ForEach, without taking the lock again.
  Status ForEach(std::string_view prefix,
                 const std::function<bool(std::string_view key, std::string_view value)>& fn) const;

 private:
  internal::StoreImpl* store_ = nullptr;
};

}  // namespace mapkv

#endif  // MAPKV_STORE_H_
