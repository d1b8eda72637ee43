// store.cc: the public API over StoreImpl: argument checks, optimistic reads,
// writes and batches. See store_impl.h for the read and write protocols.
#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "racy.h"
#include "store_impl.h"

namespace mapkv {

using internal::StoreImpl;

// ---------------------------------------------------------------- WriteBatch

namespace {
// A key of 4 GiB or more is kept as one of 2^32 - 1 bytes: still too long,
// so Write refuses the batch, where a cast would wrap to a short valid key.
uint32_t OpKeySize(std::string_view key) {
  return static_cast<uint32_t>(std::min<size_t>(key.size(), std::numeric_limits<uint32_t>::max()));
}
}  // namespace

// Both leave the batch as it was when they throw (out of memory): an op
// whose bytes were not all appended would have Write copy past the data.
void WriteBatch::Put(std::string_view key, std::string_view value) {
  const size_t offset = data_.size();
  try {
    data_.append(key);
    data_.append(value);
    ops_.push_back(Op{false, OpKeySize(key), offset, value.size()});
  } catch (...) {
    data_.resize(offset);
    throw;
  }
  bytes_ += key.size() + value.size();
}

void WriteBatch::Erase(std::string_view key) {
  const size_t offset = data_.size();
  try {
    data_.append(key);
    ops_.push_back(Op{true, OpKeySize(key), offset, 0});
  } catch (...) {
    data_.resize(offset);
    throw;
  }
  bytes_ += key.size();
}

void WriteBatch::Clear() {
  ops_.clear();
  data_.clear();
  bytes_ = 0;
}

// ---------------------------------------------------------------- Store

namespace {
Status Closed() { return Status(Code::kInvalidArgument, "the store handle is not open"); }
}  // namespace

Store::Store() = default;
Store::~Store() { Close().IgnoreError(); }
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&& other) noexcept {
  if (this != &other) {
    Close().IgnoreError();
    impl_ = std::move(other.impl_);
  }
  return *this;
}

Status Store::Open(std::string_view path, const Options& options, Store* store) {
  Status s = store->Close();
  if (s.code() == Code::kUnsafeUse) return s;  // the handle is in use on this thread: kept
  std::unique_ptr<StoreImpl> impl;
  s |= StoreImpl::Open(path, options, &impl);
  if (s.ok()) store->impl_ = std::move(impl);
  return s;
}

Status Store::RemoveShared(std::string_view name) {
  std::string_view bare = name;
  if (bare.substr(0, internal::kSharedPrefix.size()) == internal::kSharedPrefix) {
    bare.remove_prefix(internal::kSharedPrefix.size());
  }
  return internal::File::RemoveShared(std::string(bare));
}

Status Store::Close() {
  if (!impl_) return Status::Ok();
  if (impl_->HeldByThisThread()) {
    // From a callback or under a guard: the call that holds the lock would
    // go on with a destroyed handle.
    return Status(Code::kUnsafeUse, impl_->path() +
                                        ": Close (or Open) of a handle asked for by a thread that holds its lock (a "
                                        "ReadGuard, or inside a ForEach or Update callback); nothing was closed");
  }
  Status s = impl_->Close();
  impl_.reset();
  return s;
}

const std::string& Store::path() const {
  static const std::string kEmpty;
  return impl_ ? impl_->path() : kEmpty;
}

MAPKV_OPTIMISTIC Status Store::Get(std::string_view key, std::string* value) const {
  if (!impl_) return Closed();
  switch (impl_->TryGet(key, value)) {
    case StoreImpl::FastGet::kFound:
      return Status::Ok();
    case StoreImpl::FastGet::kAbsent:
      return Status::KeyNotFound();
    case StoreImpl::FastGet::kSlow:
      break;
  }
  bool found = false;
  Status s = impl_->GetSlow(key, value, &found);
  if (s.ok() && !found) return Status::KeyNotFound();
  return s;
}

MAPKV_OPTIMISTIC Status Store::Contains(std::string_view key, bool* found) const {
  if (!impl_) return Closed();
  switch (impl_->TryGet(key, nullptr)) {
    case StoreImpl::FastGet::kFound:
      *found = true;
      return Status::Ok();
    case StoreImpl::FastGet::kAbsent:
      *found = false;
      return Status::Ok();
    case StoreImpl::FastGet::kSlow:
      break;
  }
  return impl_->GetSlow(key, nullptr, found);
}

Status Store::Put(std::string_view key, std::string_view value) { return impl_ ? impl_->Put(key, value) : Closed(); }
Status Store::Erase(std::string_view key) { return impl_ ? impl_->Erase(key) : Closed(); }
Status Store::Write(const WriteBatch& batch, const WriteOptions& options) {
  return impl_ ? impl_->Write(batch, options) : Closed();
}
Status Store::CompareAndSwap(std::string_view key, std::optional<std::string_view> expected,
                             std::optional<std::string_view> desired, std::optional<std::string>* actual) {
  return impl_ ? impl_->CompareAndSwap(key, expected, desired, actual) : Closed();
}
Status Store::Increment(std::string_view key, int64_t delta, int64_t* new_value) {
  return impl_ ? impl_->Increment(key, delta, new_value) : Closed();
}
Status Store::Update(std::string_view key, const UpdateFn& fn) { return impl_ ? impl_->Update(key, fn) : Closed(); }
Status Store::MultiGet(std::span<const std::string_view> keys, std::vector<std::optional<std::string>>* values) const {
  return impl_ ? impl_->MultiGet(keys, values) : Closed();
}

Status Store::CheckTypedSize(std::string_view key, size_t actual, size_t expected, bool array) const {
  if (array ? actual % expected == 0 : actual == expected) return Status::Ok();
  return Status(Code::kWrongType, path() + ": the value of key " + internal::DescribeKey(key) + " is " +
                                      std::to_string(actual) + " bytes, expected " + (array ? "a multiple of " : "") +
                                      std::to_string(expected));
}
uint64_t Store::size() const { return impl_ ? impl_->size() : 0; }
Status Store::Flush(FlushMode mode) { return impl_ ? impl_->Flush(mode) : Closed(); }
Status Store::GetStats(Stats* stats) const { return impl_ ? impl_->GetStats(stats) : Closed(); }
Status Store::Check(CheckReport* report) const { return impl_ ? impl_->Check(report) : Closed(); }
Status Store::Compact() { return impl_ ? impl_->Compact() : Closed(); }
uint64_t Store::ChangeSeq() const { return impl_ ? impl_->ChangeSeq() : 0; }
Status Store::WaitForChange(uint64_t since, std::chrono::milliseconds timeout, uint64_t* seq) const {
  return impl_ ? impl_->WaitForChange(since, timeout, seq) : Closed();
}
Status Store::ChangesSince(uint64_t since, const ChangeFilter& filter, std::vector<Change>* out, uint64_t* next) const {
  return impl_ ? impl_->ChangesSince(since, filter, out, next) : Closed();
}
uint64_t Store::KeyHash(std::string_view key) const { return impl_ ? impl_->KeyHash(key) : 0; }

Status Store::ForEach(std::string_view prefix,
                      const std::function<bool(std::string_view, std::string_view)>& fn) const {
  if (!impl_) return Closed();
  Status s = impl_->LockRead();
  if (!s.ok()) return s;
  const internal::StoreImpl::ReadUnlocker unlock{impl_.get()};
  return impl_->GuardedForEach(prefix, fn);
}

// ---------------------------------------------------------------- ReadGuard

ReadGuard::~ReadGuard() { Unlock(); }

Status ReadGuard::Lock(const Store& store) {
  Unlock();
  if (!store.impl_) return Closed();
  Status s = store.impl_->LockRead();
  if (s.ok()) store_ = store.impl_.get();
  return s;
}

void ReadGuard::Unlock() {
  if (store_ != nullptr) store_->UnlockRead();
  store_ = nullptr;
}

Status ReadGuard::Get(std::string_view key, std::string_view* value) const {
  if (store_ == nullptr) return Status(Code::kInvalidArgument, "the read guard is not locked");
  return store_->GuardedGet(key, value);
}

Status ReadGuard::ForEach(std::string_view prefix,
                          const std::function<bool(std::string_view, std::string_view)>& fn) const {
  if (store_ == nullptr) return Status(Code::kInvalidArgument, "the read guard is not locked");
  return store_->GuardedForEach(prefix, fn);
}

// ---------------------------------------------------------------- StoreImpl

namespace internal {

using namespace format;  // NOLINT

std::string DescribeKey(std::string_view key) {
  constexpr size_t kShown = 64;
  std::string out = "\"";
  for (size_t i = 0; i < key.size() && i < kShown; ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  out += key.size() > kShown ? "\"... (" + std::to_string(key.size()) + " bytes)" : "\"";
  return out;
}

namespace {

constexpr int kOptimisticAttempts = 64;
// Keys whose lookups MultiGet starts together: enough misses in flight to
// cover the memory latency, few enough lines that none is evicted before use.
constexpr size_t kMultiGetWindow = 16;

// The checks run on every call; what builds their messages runs only on a
// failure, out of line, so the checks inline into the hot paths.
[[gnu::cold, gnu::noinline]] Status BadKey(const std::string& path, std::string_view key) {
  if (key.empty()) return Status(Code::kInvalidArgument, path + ": empty key (keys are 1 to 65536 bytes)");
  return Status(Code::kInvalidArgument,
                path + ": key of " + std::to_string(key.size()) + " bytes (keys are 1 to 65536 bytes)");
}

[[gnu::cold, gnu::noinline]] Status BadValue(const std::string& path, std::string_view value) {
  return Status(Code::kInvalidArgument, path + ": value of " + std::to_string(value.size()) + " bytes (at most 1 GiB)");
}

inline Status CheckKey(const std::string& path, std::string_view key) {
  if (key.empty() || key.size() > kMaxKeySize) [[unlikely]]
    return BadKey(path, key);
  return Status::Ok();
}

inline Status CheckValue(const std::string& path, std::string_view value) {
  if (value.size() > kMaxValueSize) [[unlikely]]
    return BadValue(path, value);
  return Status::Ok();
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void Backoff(int attempt) {
  if (attempt < 16) {
    for (int i = 0; i < (1 << (attempt / 2)); ++i) CpuRelax();
  } else {
    std::this_thread::yield();
  }
}

// Copies a value that a writer may be changing; the seqlock decides
// afterwards whether the copy counts.
inline void CopyRacy(std::string* out, const uint8_t* p, uint64_t n) {
  if (out->size() != n) [[unlikely]]
    out->resize(n);  // a caller's reused string often has the size already
  RacyCopy(out->data(), p, n);
}

}  // namespace

uint32_t StoreImpl::WritersWaitingForTesting(const Store& store) {
  return store.impl_ && store.impl_->locks_ ? store.impl_->locks_->WritersWaitingInProcess() : 0;
}

uint64_t StoreImpl::StickyConversionsForTesting(const Store& store) {
  return store.impl_ && store.impl_->locks_ ? store.impl_->locks_->StickyConversionsForTesting() : 0;
}

bool StoreImpl::KeeperWaitingForTesting(const Store& store) {
  return store.impl_ && store.impl_->locks_ && store.impl_->locks_->KeeperWaitingForTesting();
}

bool StoreImpl::ThreadsWaitingForTesting(const Store& store) {
  return KeeperWaitingForTesting(store) && store.impl_->maps_ && store.impl_->maps_->PrefaulterWaitingForTesting();
}

uint64_t StoreImpl::WatchSleepsForTesting(const Store& store) {
  return store.impl_ ? store.impl_->watch_sleeps_.load() : 0;
}

Status StoreImpl::ChecksumError(const RecordRef& rec) const { return RecordChecksumError(path_, rec); }

Status StoreImpl::ForkedError() const {
  return Status(Code::kUnsafeUse, path_ +
                                      ": store handle used in a child process after fork(); open the "
                                      "store again in the child");
}

Status StoreImpl::CheckWritable() const {
  Status s = CheckUsable();
  if (s.ok() && read_only_) s = Status(Code::kPermissionDenied, path_ + ": store is open read-only");
  return s;
}

Status StoreImpl::EnsureMapped() const {
  const uint64_t fs = ctl_->file_size.load(std::memory_order_acquire);
  if (maps_->Current()->length() >= fs) return Status::Ok();
  return maps_->Cover(fs);
}

TableReader StoreImpl::ReaderSnapshot() const {
  return TableReader{maps_->Current()->base, ctl_->file_size.load(std::memory_order_acquire),
                     static_cast<uint32_t>(ctl_->table_shift.load(std::memory_order_relaxed)),
                     ctl_->pagemap_offset.load(std::memory_order_relaxed), seed_};
}

// Inline: it runs on every get, and the mapping rarely needs to grow.
MAPKV_OPTIMISTIC inline TableReader StoreImpl::OptimisticReader(Status* s) const {
  const uint64_t fs = ctl_->file_size.load(std::memory_order_acquire);
  const View* v = maps_->Current();
  if (v->length() < fs) [[unlikely]] {
    *s = maps_->Cover(fs);
    if (!s->ok()) return TableReader{nullptr, 0, 0, 0, 0};
    v = maps_->Current();
  }
  return TableReader{v->base, fs, static_cast<uint32_t>(ctl_->table_shift.load(std::memory_order_relaxed)),
                     ctl_->pagemap_offset.load(std::memory_order_relaxed), seed_};
}

MAPKV_OPTIMISTIC void StoreImpl::PrefetchHomeUnlocked(uint64_t hash) const {
  // Only while the handle keeps the write lock from its last write: the page
  // map is then where the file was checked to be. Otherwise another program
  // may have cut the file, and the write lock's check must come first.
  if (!locks_->HoldsStickyWrite()) return;
  const View* v = maps_->Current();
  const TableReader r{v->base, std::min(ctl_->file_size.load(std::memory_order_relaxed), v->length()),
                      static_cast<uint32_t>(ctl_->table_shift.load(std::memory_order_relaxed)),
                      ctl_->pagemap_offset.load(std::memory_order_relaxed), seed_};
  if (r.shift >= kMinTableShift && r.shift <= kMaxTableShift) r.PrefetchHome(hash);
}

// A random get is two dependent cache misses (slot, then record), and a loop
// of gets runs at one miss a get or better only while the CPU can start the
// next get's misses before this one's have arrived: while the instructions
// from one get's record load to the next get's slot load, the caller's
// included, fit its reorder window (320 on this project's Zen 4 machine).
// So this path is short and keeps its state in registers: no call but the
// hash and the copy, no loop setup for a probe that crosses a page, no
// struct or flag passed through memory (see docs/DESIGN.md, "Reads").
[[gnu::always_inline]] MAPKV_OPTIMISTIC inline StoreImpl::FastGet StoreImpl::TryGet(std::string_view key,
                                                                                    std::string* value) const {
  if (fork_generation_ != ForkGeneration() || key.empty() || key.size() > kMaxKeySize || options_.verify_checksums)
      [[unlikely]]
    return FastGet::kSlow;
  const format::ControlPage* ctl = ctl_;
  const uint64_t hash = HashKey(key, seed_);
  const uint64_t s1 = ctl->seq.load(std::memory_order_acquire);
  const uint64_t fs = ctl->file_size.load(std::memory_order_acquire);
  const View* v = maps_->Current();
  const TableReader r{v->base, fs, static_cast<uint32_t>(ctl->table_shift.load(std::memory_order_relaxed)),
                      ctl->pagemap_offset.load(std::memory_order_relaxed), seed_};
  if ((s1 & 1) != 0 || v->length() < fs || r.shift < kMinTableShift || r.shift > kMaxTableShift) [[unlikely]]
    return FastGet::kSlow;
  RecordRef rec;
  const TableReader::Result res = r.FindInHomePage(key, hash, &rec);
  if (res == TableReader::Result::kFound && value != nullptr) CopyRacy(value, rec.value(), rec.value_size);
  SeqlockReadFence();
  if (ctl->seq.load(std::memory_order_relaxed) != s1 || res == TableReader::Result::kBad) [[unlikely]]
    return FastGet::kSlow;
  return res == TableReader::Result::kFound ? FastGet::kFound : FastGet::kAbsent;
}

[[gnu::noinline]] MAPKV_OPTIMISTIC Status StoreImpl::GetSlow(std::string_view key, std::string* value,
                                                             bool* found) const {
  Status s = CheckUsable();
  if (s.ok()) s = CheckKey(path_, key);
  if (!s.ok()) return s;
  const uint64_t hash = HashKey(key, seed_);
  for (int attempt = 0; attempt < kOptimisticAttempts; ++attempt) {
    const uint64_t s1 = ctl_->seq.load(std::memory_order_acquire);
    if (s1 & 1) {
      Backoff(attempt);
      continue;
    }
    const TableReader r = OptimisticReader(&s);
    if (!s.ok()) return s;
    if (r.shift < kMinTableShift || r.shift > kMaxTableShift) continue;  // torn; re-check below
    uint64_t index;
    RecordRef rec;
    const TableReader::Result res = r.Find(key, hash, &index, &rec);
    bool intact = true;
    if (res == TableReader::Result::kFound && value != nullptr) {
      CopyRacy(value, rec.value(), rec.value_size);
      intact = !options_.verify_checksums || rec.Intact();
    }
    SeqlockReadFence();
    if (ctl_->seq.load(std::memory_order_relaxed) != s1) continue;
    if (res == TableReader::Result::kBad) {
      return ProbeLeftFile();
    }
    if (res == TableReader::Result::kDamagedKey) return DamagedKeyError(path_, rec);
    if (!intact) return ChecksumError(rec);
    *found = res == TableReader::Result::kFound;
    return Status::Ok();
  }
  // A long write, or a dead writer: read under the lock.
  s = LockRead();
  if (!s.ok()) return s;
  const ReadUnlocker unlock{this};
  std::string_view view;
  s = GuardedGet(key, &view);
  if (s.ok()) {
    *found = true;
    if (value != nullptr) value->assign(view);
  } else if (s.IsNotFound()) {
    *found = false;
    s = Status::Ok();
  }
  return s;
}

Status StoreImpl::LockRead() const {
  Status s = CheckUsable();
  if (!s.ok()) return s;
  for (int round = 0; round < 2; ++round) {
    s = locks_->LockRead();
    if (!s.ok()) return s;
    if (ctl_->undo_count.load(std::memory_order_acquire) == 0 && (ctl_->seq.load(std::memory_order_acquire) & 1) == 0) {
      try {
        s = EnsureMapped();
      } catch (...) {  // out of memory mapping a grown file: the lock goes back
        locks_->UnlockRead();
        throw;
      }
      if (!s.ok()) locks_->UnlockRead();
      return s;
    }
    // Under the read lock no writer is running: its state is a dead writer's.
    locks_->UnlockRead();
    if (read_only_) {
      return Status(Code::kBusy, path_ +
                                     ": a writer was killed in the middle of a write; open the store "
                                     "once writable to recover it");
    }
    auto* self = const_cast<StoreImpl*>(this);
    s = self->BeginWrite();
    if (!s.ok()) return s;
    self->EndWrite();
  }
  return Status(Code::kBusy, path_ + ": could not take a consistent read lock");
}

void StoreImpl::UnlockRead() const { locks_->UnlockRead(); }

Status StoreImpl::GuardedGet(std::string_view key, std::string_view* value) const {
  Status s = CheckKey(path_, key);
  if (!s.ok()) return s;
  TableReader r = ReaderSnapshot();
  uint64_t index;
  RecordRef rec;
  switch (r.Find(key, HashKey(key, seed_), &index, &rec)) {
    case TableReader::Result::kFound:
      if (options_.verify_checksums && !rec.Intact()) return ChecksumError(rec);
      *value = std::string_view(reinterpret_cast<const char*>(rec.value()), rec.value_size);
      return Status::Ok();
    case TableReader::Result::kAbsent:
      return Status::KeyNotFound();
    case TableReader::Result::kDamagedKey:
      return DamagedKeyError(path_, rec);
    case TableReader::Result::kBad:
      break;
  }
  return ProbeLeftFile();
}

Status StoreImpl::GuardedForEach(std::string_view prefix,
                                 const std::function<bool(std::string_view, std::string_view)>& fn) const {
  return WalkRecords(ReaderSnapshot(), [&](uint64_t i, uint64_t slot, const RecordRef& rec, Status* error) {
    // Every record, the prefix's or not: a damaged key may match it or not.
    if (options_.verify_checksums && !rec.Intact()) {
      *error = ChecksumError(rec);
      return false;
    }
    std::string_view k(reinterpret_cast<const char*>(rec.key()), rec.key_size);
    // A slot whose offset was damaged can point at another key's record: the
    // walk would give that key twice and never the slot's own. The tag (the
    // top of the key's hash) tells, for the price of hashing each key.
    if (SlotTag(slot) != HashTag(HashKey(k, seed_))) {
      *error = Status(Code::kCorruption, path_ + ": table slot " + std::to_string(i) + " points at the record of key " +
                                             DescribeKey(k) + " (offset " + std::to_string(rec.granule * kGranule) +
                                             "), whose hash does not match the slot (the slot or the record is "
                                             "damaged); `mapkv check` lists the damage");
      return false;
    }
    if (k.substr(0, prefix.size()) != prefix) return true;
    return fn(k, std::string_view(reinterpret_cast<const char*>(rec.value()), rec.value_size));
  });
}

// ---------------------------------------------------------------- writes

Status StoreImpl::BeginWrite() {
  Status s = CheckWritable();
  if (!s.ok()) return s;
  bool fresh = false;
  s = locks_->LockWrite(&fresh);
  if (!s.ok()) return s;
  // Kept from this handle's own last write (sticky): nobody else wrote since,
  // so there is nothing to map or recover, unless that write was left
  // unfinished (a rollback that failed drops the lock, but a write that
  // somehow left its log must never be committed over).
  if (!fresh && ctl_->undo_count.load(std::memory_order_relaxed) == 0 &&
      (ctl_->seq.load(std::memory_order_relaxed) & 1) == 0) {
    return Status::Ok();
  }
  try {
    s = TakeOverWriteLock();
  } catch (...) {  // out of memory: the lock goes back as for an error
    locks_->UnlockWrite(false);
    throw;
  }
  if (!s.ok()) locks_->UnlockWrite(false);
  return s;
}

Status StoreImpl::TakeOverWriteLock() {
  // Another program may have cut the file while nobody held the lock; the
  // write would fault on the missing pages. (One fstat, only when the lock
  // came from the OS: a sticky holder pays nothing. See docs/DESIGN.md.)
  uint64_t size = 0;
  Status s = file_->Size(&size);
  if (s.ok() && size < ctl_->file_size.load()) {
    s = Status(Code::kCorruption, path_ + ": the file is " + std::to_string(size) +
                                      " bytes but the store had grown to " + std::to_string(ctl_->file_size.load()) +
                                      " (truncated by another program?)");
  }
  if (s.ok()) s = EnsureMapped();
  // Before this handle allocates: the map must be one (a damaged offset
  // would have the write allocate over live records).
  if (s.ok()) s = ValidateControl(size);
  if (s.ok()) s = CheckAllocMapMarks();
  if (!s.ok()) return s;
  KeepAllocMapSmall();  // another process may have moved it
  // A checkpoint killed after its meta page was written but before it set
  // release_pending leaves only the meta page behind: its generation is
  // newer than the control page's (RecoverKilledWriter finishes it).
  const uint8_t* base = maps_->Current()->base;
  const uint64_t newest_meta = std::max(reinterpret_cast<const MetaPage*>(base + kMetaOffset[0])->generation,
                                        reinterpret_cast<const MetaPage*>(base + kMetaOffset[1])->generation);
  if (ctl_->undo_count.load() != 0 || (ctl_->seq.load() & 1) != 0 || ctl_->release_pending != 0 ||
      newest_meta > ctl_->generation) {
    // The previous holder died in the middle of a write.
    s = RecoverKilledWriter();
  }
  return s;
}

namespace {
uint64_t checkpoint_every_changes = kCheckpointEveryChanges;  // SetCheckpointEveryChangesForTesting
}  // namespace

void SetCheckpointEveryChangesForTesting(uint64_t changes) {
  checkpoint_every_changes = changes == 0 ? kCheckpointEveryChanges : changes;
}

void StoreImpl::EndWrite() {
  if (!drop_write_lock_ && ctl_->change_seq.load(std::memory_order_relaxed) >= checkpoint_due_seq_) CheckpointIfDue();
  locks_->UnlockWrite(/*may_stick=*/!std::exchange(drop_write_lock_, false));
}

void StoreImpl::CheckpointIfDue() noexcept {
  // Under the write lock, after a write that ended (committed or undone).
  if (ctl_->undo_count.load(std::memory_order_relaxed) != 0 || (ctl_->seq.load(std::memory_order_relaxed) & 1) != 0)
    return;
  // The newest checkpoint's sequence, from its meta page (a damaged one is
  // looked at again at the next write).
  auto checkpointed_seq = [this](uint64_t* seq) {
    const auto* meta = reinterpret_cast<const MetaPage*>(heap_->base() + kMetaOffset[ctl_->generation & 1]);
    if (meta->magic != kMetaMagic || meta->generation != ctl_->generation || MetaChecksum(*meta) != meta->checksum) {
      return false;
    }
    *seq = meta->change_seq;
    return true;
  };
  uint64_t since = 0;
  if (!checkpointed_seq(&since)) return;
  if (ctl_->change_seq.load(std::memory_order_relaxed) - since >= checkpoint_every_changes) {
    // The sequence may not run further from the last checkpoint (see
    // kCheckpointEveryChanges). Once in 2^39 changes: a synchronous flush.
    // Failing, the next write tries again. Measured again from the meta
    // page: a checkpoint with nothing dirty writes none.
    try {
      ctl_->dirty = 1;  // a recovery killed before its own checkpoint left it 0
      if (!Checkpoint().ok() || !checkpointed_seq(&since)) return;
    } catch (...) {  // out of memory: as a failure
      return;
    }
  }
  checkpoint_due_seq_ = since + checkpoint_every_changes;
}

void StoreImpl::AbandonWrite() noexcept {
  try {
    if (RollBackWrite().ok()) {
      SeqEnd();
      return;
    }
  } catch (...) {
  }
  drop_write_lock_ = true;
}

Status StoreImpl::RollBackWrite() {
  Status s = heap_->Rollback();
  if (!s.ok()) drop_write_lock_ = true;
  return s;
}

void StoreImpl::SeqBegin() {
  const uint64_t seq = ctl_->seq.load(std::memory_order_relaxed);
  if (seq & 1) return;  // already inside
  SeqlockWriteBegin(ctl_->seq);
}

void StoreImpl::SeqEnd() {
  const uint64_t seq = ctl_->seq.load(std::memory_order_relaxed);
  if ((seq & 1) == 0) return;
  ctl_->seq.store(seq + 1, std::memory_order_release);
}

Status StoreImpl::WriteRecord(std::string_view key, std::string_view value, uint64_t* granule) {
  Status s = PlaceRecord(key, value, granule);
  if (s.ok()) SealRecord(*granule);
  return s;
}

Status StoreImpl::PlaceRecord(std::string_view key, std::string_view value, uint64_t* granule) {
  const uint64_t n = RecordGranules(key.size(), value.size());
  Status s = heap_->AllocateRecord(n, granule);
  if (!s.ok()) return s;
  uint8_t* p = heap_->base() + *granule * kGranule;
  RecordHeader h{};
  h.value_size = static_cast<uint32_t>(value.size());
  h.key_size_m1 = static_cast<uint16_t>(key.size() - 1);
  std::memcpy(p, &h, sizeof h);
  std::memcpy(p + kRecordHeaderSize, key.data(), key.size());
  if (!value.empty()) std::memcpy(p + kRecordHeaderSize + key.size(), value.data(), value.size());
  const uint64_t used = kRecordHeaderSize + key.size() + value.size();
  std::memset(p + used, 0, n * kGranule - used);
  return Status::Ok();
}

void StoreImpl::SealRecord(uint64_t granule) {
  uint8_t* p = heap_->base() + granule * kGranule;
  RecordHeader h;
  std::memcpy(&h, p, sizeof h);
  h.checksum = RecordChecksum(h, p + kRecordHeaderSize);
  std::memcpy(p + offsetof(RecordHeader, checksum), &h.checksum, sizeof h.checksum);
}

Status StoreImpl::ApplyPut(std::string_view key, std::string_view value, uint64_t hash,
                           const TableWriter::Lookup* known) {
  uint64_t g;
  Status s = WriteRecord(key, value, &g);
  if (!s.ok()) return s;
  return LinkRecord(key, value, hash, g, known);
}

Status StoreImpl::ApplyPutWriteFirst(std::string_view key, std::string_view value, uint64_t hash, bool* in_place) {
  uint64_t g;
  Status s = PlaceRecord(key, value, &g);
  if (!s.ok()) return s;
  // After the allocation, which may have grown and remapped the file.
  const TableReader r = table_->Reader();
  // Likely an overwrite: the home slot has about arrived, and its record's
  // lines are asked for before the checksum, which then runs in the shadow of
  // their miss. A new key's put keeps the checksum in the shadow of the slot's
  // miss instead (loading the slot now would wait for it): fill 3% slower,
  // overwrite 6% faster with the prefetch (1M keys, scratch A/B, medians).
  if (last_put_replaced_) r.PrefetchHomeRecord(hash);
  SealRecord(g);
  TableWriter::Lookup lookup;
  lookup.result = r.Find(key, hash, &lookup.index, &lookup.rec);
  last_put_replaced_ = lookup.result == TableReader::Result::kFound;
  if (lookup.result == TableReader::Result::kBad) {
    return ProbeLeftFile();
  }
  if (lookup.result == TableReader::Result::kDamagedKey) return DamagedKeyError(path_, lookup.rec);
  *in_place = lookup.result == TableReader::Result::kFound && CanOverwriteInPlace(lookup.rec, value);
  return LinkRecord(key, value, hash, g, &lookup);
}

Status StoreImpl::LinkRecord(std::string_view key, std::string_view value, uint64_t hash, uint64_t g,
                             const TableWriter::Lookup* known) {
  SeqBegin();
  RecordRef old;
  bool replaced = false;
  Status s = table_->Upsert(key, hash, g, &old, &replaced, known);
  if (!s.ok()) return s;
  if (replaced) {
    // The size freed is the record header's: a damaged one would free the
    // records after it (the write is rolled back).
    if (!old.Intact()) return ChecksumError(old);
    s = heap_->Free(old.granule, old.granules());
    if (!s.ok()) return s;
    ctl_->live_bytes -= old.granules() * kGranule;
  }
  ctl_->live_bytes += RecordGranules(key.size(), value.size()) * kGranule;
  return RecordChange(kChangePut, key, hash);
}

Status StoreImpl::ProbeLeftFile() const {
  return Status(Code::kCorruption, path_ + ": hash table probe left the file");
}

bool StoreImpl::CanOverwriteInPlace(const RecordRef& rec, std::string_view value) const {
  // Small values only: each 8 bytes costs an undo entry, and past a few
  // hundred bytes a new record costs less than logging the old one.
  constexpr uint64_t kMaxInPlace = 256;
  // The rewrite enters the change ring without allocating: a ring the
  // options ask for must exist already.
  return RingReady() && value.size() == rec.value_size && value.size() <= kMaxInPlace &&
         !heap_->IsCheckpointed(rec.granule);
}

Status StoreImpl::OverwriteInPlace(const RecordRef& rec, std::string_view value, uint64_t hash) {
  // The last checkpoint does not reference this record, so a power cut cannot
  // need its old bytes; a killed writer's undo log restores them (the
  // checksum's word and the value's words). A damaged size would have the
  // rewrite run into the next record: verified first, as LinkRecord does.
  if (!rec.Intact()) return ChecksumError(rec);
  const uint64_t off = rec.granule * kGranule;
  const uint64_t value_off = off + kRecordHeaderSize + rec.key_size;
  Status s = heap_->SaveRange(off + offsetof(RecordHeader, checksum), off + kRecordHeaderSize);
  if (s.ok() && !value.empty()) s = heap_->SaveRange(value_off, value_off + value.size());
  if (!s.ok()) return s;
  SeqBegin();
  uint8_t* p = heap_->base() + off;
  std::memcpy(p + (value_off - off), value.data(), value.size());
  RecordHeader h;
  std::memcpy(&h, p, sizeof h);
  h.checksum = RecordChecksum(h, p + kRecordHeaderSize);
  std::memcpy(p + offsetof(RecordHeader, checksum), &h.checksum, sizeof h.checksum);
  const std::string_view key(reinterpret_cast<const char*>(rec.key()), rec.key_size);
  return RecordChange(kChangePut, key, hash, /*may_allocate=*/false);
}

Status StoreImpl::ApplyErase(std::string_view key, uint64_t hash, bool* found) {
  SeqBegin();
  RecordRef old;
  Status s = table_->Erase(key, hash, found, &old);
  if (!s.ok() || !*found) return s;
  if (!old.Intact()) return ChecksumError(old);  // as in LinkRecord
  s = heap_->Free(old.granule, old.granules());
  if (!s.ok()) return s;
  ctl_->live_bytes -= old.granules() * kGranule;
  return RecordChange(kChangeErase, key, hash);
}

Status StoreImpl::Put(std::string_view key, std::string_view value) {
  Status s = CheckUsable();  // before the prefetch reads the mapping
  if (s.ok()) s = CheckKey(path_, key);
  if (s.ok()) s = CheckValue(path_, value);
  if (!s.ok()) return s;
  const uint64_t hash = HashKey(key, seed_);
  PrefetchHomeUnlocked(hash);
  s = BeginWrite();
  if (!s.ok()) return s;
  WriteEnder end{this};
  if (!last_put_in_place_) {
    // A new key, or a record the last checkpoint holds: the put needs a new
    // record either way, and writing it before the lookup (the record does
    // not depend on the table) hides most of the home slot's miss.
    bool in_place = false;
    s = RunWrite([&] { return ApplyPutWriteFirst(key, value, hash, &in_place); });
    last_put_in_place_ = s.ok() && in_place;
    return s;
  }
  // A value of the same size over a record of this checkpoint epoch is
  // rewritten where it is: no allocation, no table change, no space to free.
  TableWriter::Lookup lookup;
  lookup.result = table_->Reader().Find(key, hash, &lookup.index, &lookup.rec);
  last_put_in_place_ = lookup.result == TableReader::Result::kFound && CanOverwriteInPlace(lookup.rec, value);
  if (last_put_in_place_) {
    s = RunWrite([&] { return OverwriteInPlace(lookup.rec, value, hash); }, Heap::WriteScope::kInPlace);
  } else if (lookup.result == TableReader::Result::kBad) {
    s = ProbeLeftFile();
  } else if (lookup.result == TableReader::Result::kDamagedKey) {
    s = DamagedKeyError(path_, lookup.rec);
  } else {
    s = RunWrite([&] { return ApplyPut(key, value, hash, &lookup); });
  }
  return s;
}

Status StoreImpl::Erase(std::string_view key) {
  Status s = CheckKey(path_, key);
  if (s.ok()) s = BeginWrite();
  if (!s.ok()) return s;
  WriteEnder end{this};
  const uint64_t hash = HashKey(key, seed_);
  bool found = false;
  // An absent key is looked up first: erasing it changes nothing, so it
  // must not make a write (which would leave the store to checkpoint).
  uint64_t index;
  RecordRef rec;
  const TableReader::Result lookup = table_->Reader().Find(key, hash, &index, &rec);
  if (lookup == TableReader::Result::kBad) {
    s = ProbeLeftFile();
  } else if (lookup == TableReader::Result::kDamagedKey) {
    s = DamagedKeyError(path_, rec);
  } else if (lookup == TableReader::Result::kFound) {
    s = RunWrite([&] { return ApplyErase(key, hash, &found); });
  }
  if (s.ok() && !found) return Status::KeyNotFound();
  return s;
}

Status StoreImpl::Write(const WriteBatch& batch, const WriteOptions& options) {
  for (const WriteBatch::Op& op : batch.ops_) {
    std::string_view key(batch.data_.data() + op.offset, op.key_size);
    Status s = CheckKey(path_, key);
    if (s.ok() && !op.erase)
      s = CheckValue(path_, std::string_view(batch.data_.data() + op.offset + op.key_size, op.value_size));
    if (!s.ok()) return s;
  }
  if (batch.ops_.empty() && !options.sync) return CheckWritable();
  Status s = BeginWrite();
  if (!s.ok()) return s;
  WriteEnder end{this};
  if (!batch.ops_.empty()) {
    s = RunWrite([&] {
      const std::vector<WriteBatch::Op>& ops = batch.ops_;
      auto key_of = [&](const WriteBatch::Op& op) {
        return std::string_view(batch.data_.data() + op.offset, op.key_size);
      };
      // A two-stage pipeline hides both of an op's dependent misses behind
      // the ops before it: kBatchAhead ops ahead its key is hashed and its
      // home slot starts loading; kBatchAhead / 2 ops ahead that slot, loaded
      // by then, names the record whose lines start loading (a single Put
      // starts its slot's miss before it takes the lock). A prefetch changes
      // nothing, so a table that grows or a slot that moves meanwhile only
      // wastes it.
      constexpr size_t kBatchAhead = 8;
      uint64_t hashes[kBatchAhead];  // op j's hash at j % kBatchAhead
      auto look_ahead = [&](size_t j) {
        const TableReader r = table_->Reader();  // after the op before, which may have grown the table
        if (j < ops.size()) {
          hashes[j % kBatchAhead] = HashKey(key_of(ops[j]), seed_);
          r.PrefetchHome(hashes[j % kBatchAhead]);
        }
        const size_t k = j - kBatchAhead / 2;
        if (j >= kBatchAhead / 2 && k < ops.size()) r.PrefetchHomeRecord(hashes[k % kBatchAhead]);
      };
      for (size_t j = 0; j < kBatchAhead; ++j) look_ahead(j);
      for (size_t i = 0; i < ops.size(); ++i) {
        const WriteBatch::Op& op = ops[i];
        const uint64_t hash = hashes[i % kBatchAhead];
        look_ahead(i + kBatchAhead);  // reuses op i's entry
        const std::string_view key = key_of(op);
        Status st;
        if (op.erase) {
          bool found;
          st = ApplyErase(key, hash, &found);
        } else {
          st = ApplyPut(key, std::string_view(batch.data_.data() + op.offset + op.key_size, op.value_size), hash);
        }
        if (!st.ok()) return st;
      }
      return Status::Ok();
    });
  }
  if (s.ok() && options.sync) {
    try {
      s = Checkpoint();
    } catch (const std::bad_alloc&) {
      // The batch is in: a status, not an exception that would say it failed.
      s = Status(Code::kIoError, path_ + ": out of memory in the checkpoint");
    }
    if (!s.ok()) {
      s = Status(s.code(), s.message() + " (the batch was applied, but is not yet safe from a power cut)");
    }
  }
  return s;
}

template <typename Decide>
Status StoreImpl::ReadModifyWrite(std::string_view key, Decide&& decide) {
  Status s = CheckKey(path_, key);
  if (s.ok()) s = BeginWrite();
  if (!s.ok()) return s;
  WriteEnder end{this};
  // Under the write lock nothing changes the table: plain reads are exact.
  std::optional<std::string_view> current;
  const uint64_t hash = HashKey(key, seed_);
  TableWriter::Lookup lookup;
  lookup.result = table_->Reader().Find(key, hash, &lookup.index, &lookup.rec);
  const RecordRef& rec = lookup.rec;
  switch (lookup.result) {
    case TableReader::Result::kFound:
      // Always verified: a value computed from damaged bytes would be
      // stored with a good checksum, and the damage would be lost from view.
      if (!rec.Intact()) return ChecksumError(rec);
      current = std::string_view(reinterpret_cast<const char*>(rec.value()), rec.value_size);
      break;
    case TableReader::Result::kAbsent:
      break;
    case TableReader::Result::kDamagedKey:
      return DamagedKeyError(path_, rec);
    case TableReader::Result::kBad:
      return ProbeLeftFile();
  }
  Store::UpdateAction action = Store::UpdateAction::kKeep;
  std::string next;
  s = decide(current, &action, &next);  // a write to this handle from it is kUnsafeUse (LockWrite)
  if (!s.ok() || action == Store::UpdateAction::kKeep) return s;
  if (action == Store::UpdateAction::kPut) {
    s = CheckValue(path_, next);
    if (!s.ok()) return s;
    if (current && CanOverwriteInPlace(rec, next)) {
      return RunWrite([&] { return OverwriteInPlace(rec, next, hash); }, Heap::WriteScope::kInPlace);
    }
    return RunWrite([&] { return ApplyPut(key, next, hash, &lookup); });
  }
  if (!current) return Status::Ok();  // erase of an absent key: nothing to do
  bool found = false;
  return RunWrite([&] { return ApplyErase(key, hash, &found); });
}

Status StoreImpl::CompareAndSwap(std::string_view key, std::optional<std::string_view> expected,
                                 std::optional<std::string_view> desired, std::optional<std::string>* actual) {
  if (desired) {
    Status s = CheckValue(path_, *desired);
    if (!s.ok()) return s;
  }
  return ReadModifyWrite(
      key, [&](std::optional<std::string_view> current, Store::UpdateAction* action, std::string* next) {
        if (current.has_value() != expected.has_value() || (current && *current != *expected)) {
          if (actual != nullptr) *actual = current ? std::optional<std::string>(std::string(*current)) : std::nullopt;
          return Status(Code::kAborted, path_ + ": compare-and-swap of key " + DescribeKey(key) + ": the value " +
                                            (current ? "differs from the one expected" : "is absent") +
                                            "; nothing changed");
        }
        if (desired) {
          *action = Store::UpdateAction::kPut;
          next->assign(*desired);
        } else {
          *action = Store::UpdateAction::kErase;
        }
        return Status::Ok();
      });
}

Status StoreImpl::Increment(std::string_view key, int64_t delta, int64_t* new_value) {
  return ReadModifyWrite(
      key, [&](std::optional<std::string_view> current, Store::UpdateAction* action, std::string* next) {
        int64_t value = 0;
        if (current) {
          if (current->size() != sizeof value) {
            return Status(Code::kWrongType, path_ + ": the value of key " + DescribeKey(key) + " is " +
                                                std::to_string(current->size()) +
                                                " bytes, not an 8-byte counter; nothing changed");
          }
          std::memcpy(&value, current->data(), sizeof value);  // little-endian in the file and the host
        }
        int64_t sum;
        if (__builtin_add_overflow(value, delta, &sum)) {
          return Status(Code::kOutOfRange, path_ + ": incrementing key " + DescribeKey(key) + " (" +
                                               std::to_string(value) + ") by " + std::to_string(delta) +
                                               " overflows a signed 64-bit counter; nothing changed");
        }
        next->assign(reinterpret_cast<const char*>(&sum), sizeof sum);
        *action = Store::UpdateAction::kPut;
        if (new_value != nullptr) *new_value = sum;
        return Status::Ok();
      });
}

Status StoreImpl::Update(std::string_view key, const Store::UpdateFn& fn) {
  return ReadModifyWrite(key,
                         [&](std::optional<std::string_view> current, Store::UpdateAction* action, std::string* next) {
                           *action = fn(current, next);
                           return Status::Ok();
                         });
}

MAPKV_OPTIMISTIC Status StoreImpl::MultiGet(std::span<const std::string_view> keys,
                                            std::vector<std::optional<std::string>>* values) const {
  Status s = CheckUsable();
  for (size_t i = 0; s.ok() && i < keys.size(); ++i) s = CheckKey(path_, keys[i]);
  if (!s.ok()) return s;
  values->assign(keys.size(), std::nullopt);
  std::vector<uint64_t> hashes(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) hashes[i] = HashKey(keys[i], seed_);
  for (int attempt = 0; attempt < kOptimisticAttempts; ++attempt) {
    const uint64_t s1 = ctl_->seq.load(std::memory_order_acquire);
    if (s1 & 1) {
      Backoff(attempt);
      continue;
    }
    const TableReader r = OptimisticReader(&s);
    if (!s.ok()) return s;
    if (r.shift < kMinTableShift || r.shift > kMaxTableShift) continue;
    bool bad = false;
    const RecordRef* damaged = nullptr;
    bool damaged_key = false;  // Find's kDamagedKey, else a checksum
    RecordRef rec;
    for (size_t i = 0; i < keys.size() && !bad && damaged == nullptr; ++i) {
      if (i % kMultiGetWindow == 0) {
        // A window of keys at a time: their slots' misses overlap, then
        // their records', and the Finds below mostly hit the cache.
        const size_t end = std::min(keys.size(), i + kMultiGetWindow);
        for (size_t j = i; j < end; ++j) r.PrefetchHome(hashes[j]);
        for (size_t j = i; j < end; ++j) r.PrefetchHomeRecord(hashes[j]);
      }
      uint64_t index;
      switch (r.Find(keys[i], hashes[i], &index, &rec)) {
        case TableReader::Result::kFound:
          if (!(*values)[i]) (*values)[i].emplace();
          CopyRacy(&*(*values)[i], rec.value(), rec.value_size);
          if (options_.verify_checksums && !rec.Intact()) damaged = &rec;
          break;
        case TableReader::Result::kAbsent:
          (*values)[i].reset();
          break;
        case TableReader::Result::kDamagedKey:
          damaged = &rec;
          damaged_key = true;
          break;
        case TableReader::Result::kBad:
          bad = true;
          break;
      }
    }
    SeqlockReadFence();
    if (ctl_->seq.load(std::memory_order_relaxed) != s1) continue;
    if (bad) return ProbeLeftFile();
    if (damaged != nullptr) return damaged_key ? DamagedKeyError(path_, *damaged) : ChecksumError(*damaged);
    return Status::Ok();
  }
  // A long write, or a dead writer: read under the lock.
  s = LockRead();
  if (!s.ok()) return s;
  const ReadUnlocker unlock{this};
  for (size_t i = 0; s.ok() && i < keys.size(); ++i) {
    std::string_view view;
    s = GuardedGet(keys[i], &view);
    if (s.ok()) {
      (*values)[i].emplace(view);
    } else if (s.IsNotFound()) {
      (*values)[i].reset();
      s = Status::Ok();
    }
  }
  return s;
}

Status StoreImpl::Flush(FlushMode mode) {
  if (mode == FlushMode::kAsync) {
    Status s = CheckUsable();
    if (!s.ok() || read_only_) return s;
    return maps_->Flush(0, ctl_->file_size.load(), /*sync=*/false);
  }
  Status s = BeginWrite();
  if (!s.ok()) return s;
  WriteEnder end{this};
  return Checkpoint();
}

}  // namespace internal
}  // namespace mapkv
