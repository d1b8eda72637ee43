// heap.cc: mappings, undo log and allocator. See heap.h for the design.
#include "heap.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>

#include "hash.h"

namespace mapkv::internal {

using namespace format;  // NOLINT: this file is all about the format

namespace {

constexpr uint64_t kMinMapHeadroom = 64ull << 20;  // map at least 64 MiB of address space
constexpr uint64_t kMinGrowth = 256ull << 10;
constexpr uint64_t kMaxGrowth = 1ull << 30;
// Allocations set the file up for writing this far ahead (Heap::Allocate).
constexpr uint64_t kPrefaultGranules = (256ull << 10) / kGranule;

// Bits [bit, bit + n) of an allocation-map word; n <= 64 - bit.
constexpr uint64_t RunMask(uint64_t n, uint64_t bit) {
  return n == kGranulesPerAllocWord ? ~uint64_t{0} : ((uint64_t{1} << n) - 1) << bit;
}

uint64_t RoundUp(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

}  // namespace

// ---------------------------------------------------------------- MapSet

Status MapSet::Cover(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  View* cur = current_.load(std::memory_order_relaxed);
  if (cur != nullptr && cur->length() >= bytes) return Status::Ok();
  const uint64_t attach = RoundUp(bytes, kPageSize);
  if (cur != nullptr && mappings_.back()->length() >= attach) {
    // Cut short (Cut), and the newest mapping reaches that far: it maps the
    // file again up to its new end, and past it still reads zeros.
    const uint64_t from = cur->length();
    if (mappings_.back()->Restore(from, attach).ok()) {
      AdviseLocked(mappings_.back().get(), from, attach);
      cur->mapped.store(attach, std::memory_order_release);
      return Status::Ok();
    }
  }
  // Headroom: twice what is needed, so a growing file is remapped O(log n)
  // times. It maps the file past its end (one mmap, not two): only sizes
  // loaded after the growth that needs this mapping reach past the previous
  // one, and those are below the file's end.
  const uint64_t length = RoundUp(std::max(bytes * 2, kMinMapHeadroom), kMinMapHeadroom);
  std::unique_ptr<Mapping> mapping;
  Status s = file_->Map(length, writable_, &mapping);
  if (!s.ok()) {
    // Address space may be short (32-bit, ulimit -v): retry without headroom.
    s = file_->Map(attach, writable_, &mapping);
    if (!s.ok()) return s;
  }
  AdviseLocked(mapping.get(), 0, mapping->length());
  auto view = std::make_unique<View>(mapping->data(), mapping->length());
  if (view->length() < bytes) {
    return Status(Code::kIoError, file_->path() + ": mapping covers " + std::to_string(view->length()) + " bytes, " +
                                      std::to_string(bytes) + " needed");
  }
  // Kept first, published last: a push that throws (out of memory) leaves
  // the current view as it was, never pointing at a view freed meanwhile.
  View* fresh = view.get();
  mappings_.reserve(mappings_.size() + 1);
  views_.reserve(views_.size() + 1);
  mappings_.push_back(std::move(mapping));
  views_.push_back(std::move(view));
  current_.store(fresh, std::memory_order_release);
  return Status::Ok();
}

Status MapSet::Cut(uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s;
  for (const std::unique_ptr<Mapping>& m : mappings_) {
    Status w = m->Withdraw(size);
    if (s.ok()) s = w;
  }
  View* cur = current_.load(std::memory_order_relaxed);
  if (cur != nullptr && cur->length() > size) cur->mapped.store(size, std::memory_order_release);
  return s;
}

void MapSet::AdviseLocked(Mapping* mapping, uint64_t from, uint64_t to) {
  if (!large_pages_) return;
  auto advise = [&](uint64_t begin, uint64_t end, Mapping::PageHint hint) {
    begin = std::max(begin, from);
    end = std::min(end, to);
    if (begin < end) mapping->Advise(begin, end - begin, hint);
  };
  advise(0, kLargePagesFrom, Mapping::PageHint::kSmall);
  advise(kLargePagesFrom, mapping->length(), Mapping::PageHint::kLarge);
  if (small_length_ != 0) advise(small_offset_, small_offset_ + small_length_, Mapping::PageHint::kSmall);
}

void MapSet::KeepSmall(uint64_t offset, uint64_t length) {
  if (!large_pages_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (offset == small_offset_ && length == small_length_) return;
  small_offset_ = offset;
  small_length_ = length;
  if (!mappings_.empty()) mappings_.back()->Advise(offset, length, Mapping::PageHint::kSmall);
}

Mapping* MapSet::NewestWritable() {
  std::lock_guard<std::mutex> lock(mu_);
  return writable_ && !mappings_.empty() ? mappings_.back().get() : nullptr;
}

void MapSet::PrefaultNow(uint64_t offset, uint64_t length) {
  if (Mapping* newest = NewestWritable(); newest != nullptr) newest->Prefault(offset, length);
}

void MapSet::PrefaultSoon(uint64_t offset, uint64_t length) {
  // A mapping lives as long as the MapSet, so the thread may use it unlocked.
  Mapping* newest = NewestWritable();
  if (newest != nullptr && newest->CanPrefault()) prefaulter_.Request(newest, offset, length);
}

uint64_t MapSet::OffsetOf(const void* p) {
  const auto* q = static_cast<const uint8_t*>(p);
  const View* cur = current_.load(std::memory_order_acquire);
  if (q >= cur->base && q < cur->base + cur->length()) return static_cast<uint64_t>(q - cur->base);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = views_.rbegin(); it != views_.rend(); ++it) {
    const View& v = **it;
    if (q >= v.base && q < v.base + v.length()) return static_cast<uint64_t>(q - v.base);
  }
  return static_cast<uint64_t>(q - cur->base);  // in no mapping: a caller's bug; as before
}

Status MapSet::Flush(uint64_t offset, uint64_t length, bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  if (mappings_.empty()) return Status::Ok();
  return mappings_.back()->Flush(offset, length, sync);
}

// ---------------------------------------------------------------- undo log

namespace {
constexpr uint64_t kFirstChunkEntries = (256u << 10) / kUndoEntrySize - 1;  // 256 KiB
constexpr uint64_t kMaxChunkEntries = (64u << 20) / kUndoEntrySize - 1;     // 64 MiB
}  // namespace

void Heap::ResetWriteState() {
  fresh_frees_.clear();
  if (!write_pages_.empty()) write_pages_.clear();  // clear() touches every bucket
  log_capacity_ = kUndoCapacity;
  tail_chunk_ = 0;
  tail_ = prev_ = LogSegment{kUndoOffset, 0};
  next_chunk_entries_ = kFirstChunkEntries;
  extending_ = false;
}

void Heap::NoteWriteLocal(uint64_t first_page, uint64_t pages) {
  for (uint64_t p = 0; p < pages; ++p) write_pages_.insert(first_page + p);
}

Status Heap::ExtendLog() {
  extending_ = true;
  const uint64_t entries = next_chunk_entries_;
  const uint64_t granules = (entries + 1) * kUndoEntrySize / kGranule;
  uint64_t g = 0;
  Status s = Allocate(granules, kGranulesPerPage, &g);
  if (s.ok()) {
    auto* chunk = At<UndoChunk>(g * kGranule);
    chunk->next = 0;
    chunk->capacity = entries;
    // Linked before any entry in it is counted; the chunk is this write's own
    // space, so its link needs no undo, but the chain's head does.
    if (tail_chunk_ == 0) {
      s = SetWord(&ctl_->undo_chain, g * kGranule);
    } else {
      At<UndoChunk>(tail_chunk_)->next = g * kGranule;
    }
  }
  if (s.ok()) {
    tail_chunk_ = g * kGranule;
    prev_ = tail_;
    tail_ = LogSegment{g * kGranule + sizeof(UndoChunk), log_capacity_};
    log_capacity_ += entries;
    next_chunk_entries_ = std::min(kMaxChunkEntries, next_chunk_entries_ * 2 + 1);
  }
  extending_ = false;
  return s;
}

Status Heap::LogSlow(UndoKind kind, uint64_t target, uint64_t value) {
  uint64_t n = ctl_->undo_count.load(std::memory_order_relaxed);
  // Never from inside an allocation: the allocation map may be half moved
  // (Grow), and the chunk's own allocation would land in the middle of that.
  // The reserve covers what one allocation logs.
  if (!extending_ && allocating_ == 0 && n + kChunkReserve >= log_capacity_) {
    Status s = ExtendLog();
    if (!s.ok() && n >= log_capacity_) return s;  // else the reserve still has room
    n = ctl_->undo_count.load(std::memory_order_relaxed);
  }
  if (n >= log_capacity_) {
    return Status(Code::kNoSpace, file_->path() + ": the undo log of this write could not grow");
  }
  if (kind == UndoKind::kAllocated && MergeAllocated(n, target, value)) return Status::Ok();
  UndoEntry* e = AppendSlot(n);
  e->kind_target = (static_cast<uint64_t>(kind) << kUndoKindShift) | target;
  e->value = value;
  // The entry must be in place before the count that exposes it, and the
  // count before the change it protects (a killed writer's stores are all
  // visible to the process that recovers, in program order of this thread).
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ctl_->undo_count.store(n + 1, std::memory_order_release);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  return Status::Ok();
}

Status Heap::SaveRange(uint64_t begin, uint64_t end) {
  for (uint64_t w = begin & ~uint64_t{7}; w < end; w += 8) {
    Status s = Log(UndoKind::kWord, w, *At<uint64_t>(w));
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

Status Heap::SetWord(uint64_t offset, uint64_t value) {
  uint64_t* p = At<uint64_t>(offset);
  if (*p == value) return Status::Ok();
  Status s = Log(UndoKind::kWord, offset, *p);
  if (!s.ok()) return s;
  std::atomic_ref<uint64_t>(*p).store(value, std::memory_order_relaxed);
  return Status::Ok();
}

Status Heap::Begin(WriteScope scope) {
  if (ctl_->undo_chain != 0) DropChain();
  ResetWriteState();
  if (scope == WriteScope::kInPlace) return Log(UndoKind::kWord, OffsetOf(&ctl_->change_seq), ctl_->change_seq.load());
  // The counters a write may touch, logged once: later changes in this write
  // are plain stores.
  // (alloc_offset/alloc_words are logged where the map moves, so that undo
  // entries before the move are taken back on the old map, after it.)
  const format::UndoEntry words[] = {
      WordEntry(&ctl_->heap_end, ctl_->heap_end),
      WordEntry(&ctl_->live_bytes, ctl_->live_bytes),
      WordEntry(&ctl_->pending_bytes, ctl_->pending_bytes),
      WordEntry(&ctl_->pagemap_bytes, ctl_->pagemap_bytes),
      WordEntry(&ctl_->entries, ctl_->entries.load(std::memory_order_relaxed)),
      WordEntry(&ctl_->change_seq, ctl_->change_seq.load(std::memory_order_relaxed)),
      WordEntry(&ctl_->table_shift, ctl_->table_shift.load(std::memory_order_relaxed)),
      WordEntry(&ctl_->pagemap_offset, ctl_->pagemap_offset.load(std::memory_order_relaxed)),
  };
  constexpr uint64_t kWords = std::size(words);
  const uint64_t n = ctl_->undo_count.load(std::memory_order_relaxed);
  if (n + kWords + kChunkReserve < log_capacity_) {
    // Nothing has changed yet, so the entries may all go in before the one
    // count that exposes them (Log's rule, for eight entries at once). The
    // write state was just reset: the log is the fixed one, a single
    // segment, so the eight slots are consecutive (one copy, not eight
    // segment lookups).
    std::memcpy(At<format::UndoEntry>(format::kUndoOffset) + n, words, sizeof words);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ctl_->undo_count.store(n + kWords, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return Status::Ok();
  }
  for (const format::UndoEntry& e : words) {
    const uint64_t offset = e.kind_target & ((uint64_t{1} << format::kUndoKindShift) - 1);
    Status s = Log(UndoKind::kWord, offset, e.value);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

void Heap::Commit() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ctl_->undo_count.store(0, std::memory_order_release);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  // Killed from here on, these extents stay fresh+freed and the next
  // checkpoint (or recovery) releases them; the chain is dropped by the next
  // writer.
  for (auto [g, n] : fresh_frees_) {
    MarkRange(g, n, false, false, false);
    NoteReusable(g, n);
  }
  if (ctl_->undo_chain != 0) DropChain();
  ResetWriteState();
}

void Heap::DropChain() {
  // The chunks were allocated by the committed write: fresh, so free at once.
  // Idempotent, so a writer killed halfway leaves work the next one redoes.
  const uint64_t file_size = ctl_->file_size.load(std::memory_order_relaxed);
  uint64_t off = ctl_->undo_chain;
  for (uint64_t hops = 0; off != 0 && hops < file_size / kPageSize; ++hops) {
    const auto* chunk = At<UndoChunk>(off);
    const uint64_t next = chunk->next;
    MarkRange(off / kGranule, (chunk->capacity + 1) * kUndoEntrySize / kGranule, false, false, false);
    off = next;
  }
  ctl_->undo_chain = 0;
}

namespace {
uint64_t rollback_stop_for_testing = 0;  // SetRollbackStopForTesting

// The log's extents (LogExtents: offset and entries) as byte ranges
// [start, end), sorted and merged, so that InLog is a binary search: a log
// of many chunks is checked once per entry.
using ByteRanges = std::vector<std::pair<uint64_t, uint64_t>>;
ByteRanges LogRanges(const std::vector<std::pair<uint64_t, uint64_t>>& extents) {
  ByteRanges r;
  r.reserve(extents.size());
  for (const auto& [start, count] : extents) r.emplace_back(start, start + count * kUndoEntrySize);
  std::sort(r.begin(), r.end());
  ByteRanges merged;
  for (const auto& range : r) {
    if (!merged.empty() && range.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, range.second);
    } else {
      merged.push_back(range);
    }
  }
  return merged;
}

// True when [off, off + len) meets the log.
bool InLog(const ByteRanges& log, uint64_t off, uint64_t len) {
  // The first range that ends past off (ends are sorted, as the ranges are
  // disjoint).
  auto it = std::upper_bound(log.begin(), log.end(), off,
                             [](uint64_t o, const std::pair<uint64_t, uint64_t>& r) { return o < r.second; });
  return it != log.end() && it->first < off + len;
}
}  // namespace

void SetRollbackStopForTesting(uint64_t entries) { rollback_stop_for_testing = entries; }

bool Heap::LogExtents(uint64_t count, std::vector<std::pair<uint64_t, uint64_t>>* extents) const {
  extents->clear();
  const uint64_t file_size = ctl_->file_size.load(std::memory_order_relaxed);
  // More entries than the file could hold is a damaged count; refused before
  // the walk, which would otherwise follow a looping chain for that long.
  if (count > kUndoCapacity + file_size / kUndoEntrySize) return false;
  extents->emplace_back(kUndoOffset, std::min(count, kUndoCapacity));
  uint64_t left = count - extents->back().second;
  uint64_t off = ctl_->undo_chain;
  for (uint64_t hops = 0; left > 0; ++hops) {
    if (hops > file_size / kPageSize || off < kHeapOffset || off % kGranule != 0 || off > file_size - sizeof(UndoChunk))
      return false;
    const auto* chunk = At<UndoChunk>(off);
    const uint64_t cap = chunk->capacity;
    if (cap == 0 || cap > (file_size - off) / kUndoEntrySize - 1) return false;
    const uint64_t take = std::min(left, cap);
    extents->emplace_back(off + sizeof(UndoChunk), take);
    left -= take;
    off = chunk->next;
  }
  return true;
}

bool Heap::EntryInRange(const UndoEntry& e, uint64_t fs) const {
  const uint64_t granules = ctl_->alloc_words * kGranulesPerAllocWord;
  const uint64_t target = TargetOf(e);
  const uint64_t value = e.value;
  switch (KindOf(e)) {
    case UndoKind::kWord:
      return target % 8 == 0 && target <= fs && 8 <= fs - target;
    case UndoKind::kAllocated:
    case UndoKind::kFreed:
      return target <= granules && value <= granules - target;
    case UndoKind::kFreedPages: {
      if (target < kHeapOffset || target > fs || value > (fs - target) / 4) return false;
      const uint32_t* pm = At<uint32_t>(target);
      for (uint64_t p = 0; p < value; ++p) {
        if ((uint64_t{pm[p]} + 1) * kGranulesPerPage > granules) return false;
      }
      return true;
    }
  }
  return false;
}

void Heap::ApplyUndo(const UndoEntry& e) {
  const uint64_t target = TargetOf(e);
  switch (KindOf(e)) {
    case UndoKind::kWord:
      std::atomic_ref<uint64_t>(*At<uint64_t>(target)).store(e.value, std::memory_order_relaxed);
      break;
    case UndoKind::kAllocated:
      MarkRange(target, e.value, false, false, false);
      break;
    case UndoKind::kFreed:
      SetFreed(target, e.value, false);
      break;
    case UndoKind::kFreedPages: {
      const uint32_t* pm = At<uint32_t>(target);
      for (uint64_t i = 0; i < e.value; ++i) SetFreed(uint64_t{pm[i]} * kGranulesPerPage, kGranulesPerPage, false);
      break;
    }
  }
}

Status Heap::Rollback() {
  const uint64_t n = ctl_->undo_count.load(std::memory_order_acquire);
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  // The extents are taken before any entry is applied: undoing the chain's
  // head pointer or a chunk's allocation changes no entry, but the walk
  // must not depend on them. A chain that does not hold n entries was
  // refused by ValidateLog before recovery; a running write built its own.
  if (!LogExtents(n, &extents)) return BadLog("the chain of chunks no longer holds its entries");
  // Resumable: the count comes down with each entry applied, so a rollback
  // killed halfway leaves the entries still to apply and a control page as
  // it was when the first of them was logged (the chain's head, the file's
  // and the allocation map's sizes that the walk and the checks depend on
  // included). The next lock holder goes on from there. Each entry is checked
  // against the state it is applied to, which the entries after it may have
  // changed since ValidateLog saw them: a damaged log stops here, with the
  // entries not applied still counted, instead of writing outside the file.
  // The bound is the file's own size, mapped whole, not file_size as the
  // entries restore it: a map moved into the grown tail is restored after the
  // size that was logged after it.
  uint64_t limit = 0;
  Status s = file_->Size(&limit);
  if (s.ok()) s = maps_->Cover(limit);
  if (!s.ok()) return s;
  // Nothing an entry changes may be part of the log: an entry that rewrote
  // one not yet applied (its target, or an allocation map placed over the
  // log) would get past the checks made of it. No write logs a change there.
  const ByteRanges in_log = LogRanges(extents);
  uint64_t left = n;
  for (auto it = extents.rbegin(); it != extents.rend(); ++it) {
    const UndoEntry* log = At<UndoEntry>(it->first);
    for (uint64_t i = it->second; i > 0; --i, --left) {
      const UndoEntry& e = log[i - 1];
      if (!EntryInRange(e, limit) || !AllocMapInFile(limit) ||
          InLog(in_log, ctl_->alloc_offset, ctl_->alloc_words * sizeof(AllocWord)) ||
          (KindOf(e) == UndoKind::kWord && InLog(in_log, TargetOf(e), 8))) {
        return BadLog(
            "entry " + std::to_string(left - 1) + " (kind " + std::to_string(static_cast<int>(KindOf(e))) +
            ", target " + std::to_string(TargetOf(e)) + ", value " + std::to_string(e.value) +
            ") is out of range, or changes the log itself, for the state the entries after it leave (file size " +
            std::to_string(ctl_->file_size.load(std::memory_order_relaxed)) + ", allocation map at " +
            std::to_string(ctl_->alloc_offset) + ", " + std::to_string(ctl_->alloc_words) + " words)");
      }
      ApplyUndo(e);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      ctl_->undo_count.store(left - 1, std::memory_order_release);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      if (rollback_stop_for_testing != 0 && n - (left - 1) == rollback_stop_for_testing) {
        std::_Exit(kRollbackStopExit);
      }
    }
  }
  ctl_->undo_chain = 0;
  ResetWriteState();
  return Status::Ok();
}

bool Heap::AllocMapInFile(uint64_t fs) const {
  const uint64_t off = ctl_->alloc_offset;
  const uint64_t words = ctl_->alloc_words;
  return off >= kHeapOffset && off % kGranule == 0 && off <= fs && words <= (fs - off) / sizeof(AllocWord);
}

Status Heap::BadLog(const std::string& what) const {
  return Status(Code::kCorruption, file_->path() + ": control page: undo log: " + what);
}

void Heap::RollBackCopy(uint64_t offset, uint8_t* copy, uint64_t size) const {
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  if (!LogExtents(ctl_->undo_count.load(std::memory_order_acquire), &extents)) return;
  for (auto it = extents.rbegin(); it != extents.rend(); ++it) {
    const UndoEntry* log = At<UndoEntry>(it->first);
    for (uint64_t i = it->second; i > 0; --i) {
      const UndoEntry& e = log[i - 1];
      const uint64_t target = TargetOf(e);
      if (KindOf(e) == UndoKind::kWord && target >= offset && target - offset <= size - 8) {
        std::memcpy(copy + (target - offset), &e.value, 8);
      }
    }
  }
}

Status Heap::ValidateLog() const {
  const uint64_t count = ctl_->undo_count.load();
  const uint64_t fs = ctl_->file_size.load();
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  if (!LogExtents(count, &extents)) {
    return BadLog(std::to_string(count) + " entries, but the chain of chunks at offset " +
                  std::to_string(ctl_->undo_chain) + " leaves the file or holds fewer");
  }
  // A committed write's leftover chain (count 0) is freed by DropChain: it
  // must lie in the file too.
  if (count == 0 && ctl_->undo_chain != 0) {
    std::vector<std::pair<uint64_t, uint64_t>> chain;
    uint64_t off = ctl_->undo_chain;
    for (uint64_t hops = 0; off != 0; ++hops) {
      if (hops > fs / kPageSize || off < kHeapOffset || off % kGranule != 0 || off > fs - sizeof(UndoChunk))
        return BadLog("leftover chain of chunks leaves the file");
      const auto* chunk = At<UndoChunk>(off);
      if (chunk->capacity == 0 || chunk->capacity > (fs - off) / kUndoEntrySize - 1)
        return BadLog("leftover chunk at offset " + std::to_string(off) + " has a bad capacity (" +
                      std::to_string(chunk->capacity) + " entries in a file of " + std::to_string(fs) + " bytes)");
      off = chunk->next;
    }
  }
  const ByteRanges in_log = LogRanges(extents);
  // A write frees each table page once: more freed pages than the file has
  // is a damaged log (and would make the checks below read page lists for
  // as long as the file is, once per entry).
  uint64_t freed_pages = 0;
  uint64_t index = 0;
  for (auto [off, n] : extents) {
    const UndoEntry* log = At<UndoEntry>(off);
    for (uint64_t i = 0; i < n; ++i, ++index) {
      if (KindOf(log[i]) == UndoKind::kFreedPages) {
        if (log[i].value > fs / kPageSize - freed_pages) {
          return BadLog("entry " + std::to_string(index) + " frees more table pages than the file has");
        }
        freed_pages += log[i].value;
      }
      if (!EntryInRange(log[i], fs)) return BadLog("entry " + std::to_string(index) + " out of range");
      if (KindOf(log[i]) == UndoKind::kWord && InLog(in_log, TargetOf(log[i]), 8)) {
        return BadLog("entry " + std::to_string(index) + " would change the log itself");
      }
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- allocator

void Heap::MarkRange(uint64_t g, uint64_t n, bool used, bool fresh, bool freed) {
  MarkRangeIn(map(), g, n, used, fresh, freed);
}

void Heap::MarkRangeIn(AllocWord* m, uint64_t g, uint64_t n, bool used, bool fresh, bool freed) {
  while (n > 0) {
    uint64_t w = g / kGranulesPerAllocWord;
    uint64_t b = g % kGranulesPerAllocWord;
    uint64_t take = std::min(n, kGranulesPerAllocWord - b);
    uint64_t mask = RunMask(take, b);
    m[w].used = used ? (m[w].used | mask) : (m[w].used & ~mask);
    m[w].fresh = fresh ? (m[w].fresh | mask) : (m[w].fresh & ~mask);
    m[w].freed = freed ? (m[w].freed | mask) : (m[w].freed & ~mask);
    g += take;
    n -= take;
  }
}

void Heap::SetFreed(uint64_t g, uint64_t n, bool freed) {
  AllocWord* m = map();
  while (n > 0) {
    uint64_t w = g / kGranulesPerAllocWord;
    uint64_t b = g % kGranulesPerAllocWord;
    uint64_t take = std::min(n, kGranulesPerAllocWord - b);
    uint64_t mask = RunMask(take, b);
    m[w].freed = freed ? (m[w].freed | mask) : (m[w].freed & ~mask);
    g += take;
    n -= take;
  }
}

bool Heap::AnyUsed(uint64_t g, uint64_t n) const {
  const AllocWord* m = map();
  while (n > 0) {
    const uint64_t b = g % kGranulesPerAllocWord;
    const uint64_t take = std::min(n, kGranulesPerAllocWord - b);
    if ((m[g / kGranulesPerAllocWord].used & RunMask(take, b)) != 0) return true;
    g += take;
    n -= take;
  }
  return false;
}

bool Heap::AllInUse(uint64_t g, uint64_t n) const {
  const AllocWord* m = map();
  while (n > 0) {
    const uint64_t b = g % kGranulesPerAllocWord;
    const uint64_t take = std::min(n, kGranulesPerAllocWord - b);
    const uint64_t mask = RunMask(take, b);
    const AllocWord& w = m[g / kGranulesPerAllocWord];
    if ((w.used & mask) != mask || (w.freed & mask) != 0) return false;
    g += take;
    n -= take;
  }
  return true;
}

bool Heap::IsCheckpointed(uint64_t g) const {
  const AllocWord& w = map()[g / kGranulesPerAllocWord];
  uint64_t bit = uint64_t{1} << (g % kGranulesPerAllocWord);
  return (w.used & bit) && !(w.fresh & bit);
}

bool Heap::FindRun(uint64_t from, uint64_t to, uint64_t n, uint64_t align, uint64_t* found) const {
  const AllocWord* m = map();
  uint64_t run_start = 0;
  uint64_t run_len = 0;
  uint64_t g = from;
  auto fits = [&](uint64_t* at) {
    uint64_t aligned = (run_start + align - 1) & ~(align - 1);
    if (aligned + n <= run_start + run_len && aligned + n <= to) {
      *at = aligned;
      return true;
    }
    return false;
  };
  while (g < to) {
    uint64_t b = g % kGranulesPerAllocWord;
    uint64_t used = m[g / kGranulesPerAllocWord].used >> b;
    uint64_t avail = kGranulesPerAllocWord - b;
    if (used == 0) {
      if (run_len == 0) run_start = g;
      run_len += avail;
      g += avail;
      if (fits(found)) return true;
      continue;
    }
    uint64_t nfree = static_cast<uint64_t>(std::countr_zero(used));
    if (nfree > 0) {
      if (run_len == 0) run_start = g;
      run_len += nfree;
      if (fits(found)) return true;
    }
    uint64_t rest = used >> nfree;  // starts with a used bit
    uint64_t nused = std::min<uint64_t>(static_cast<uint64_t>(std::countr_one(rest)), avail - nfree);
    g += nfree + nused;
    run_len = 0;
  }
  return false;
}

uint64_t Heap::RoundGrowth(uint64_t size) const {
  const uint64_t step = MapSet::kLargePagesFrom;
  return maps_->large_pages() && size >= 2 * step ? RoundUp(size, step) : size;
}

Status Heap::Grow(uint64_t need_end) {
  const uint64_t file_size = ctl_->file_size.load(std::memory_order_relaxed);
  const uint64_t covered = ctl_->alloc_words * kGranulesPerAllocWord * kGranule;
  uint64_t new_size = file_size;
  if (need_end > file_size) {
    new_size = RoundUp(std::max(need_end, file_size + std::clamp(file_size / 8, kMinGrowth, kMaxGrowth)), 64 * 1024);
    new_size = RoundGrowth(new_size);
  }
  // The map must cover the whole file; when it would not, a larger map goes
  // right after the request, in the new tail.
  const bool relocate = new_size > covered;
  uint64_t map_off = 0, map_words = 0, map_bytes = 0;
  if (relocate) {
    map_off = RoundUp(std::max(need_end, ctl_->heap_end), kPageSize);
    // The map goes after the request, which may make the file longer again
    // (and, with large pages, round it up by up to 2 MiB): sized again until
    // it covers the file it ends in.
    for (;;) {
      const uint64_t span = std::max(new_size, map_off + new_size / 32 + kPageSize);
      // A quarter more than the file: the map costs 2.3% of what it covers,
      // and moving it (a copy) every time the file grows by a quarter is cheap.
      map_words = RoundUp(span + span / 4, kGranulesPerAllocWord * kGranule) / (kGranulesPerAllocWord * kGranule);
      map_bytes = RoundUp(map_words * sizeof(AllocWord), kPageSize);
      const uint64_t end = std::max(new_size, RoundGrowth(RoundUp(map_off + map_bytes, 64 * 1024)));
      const bool covers = end <= map_words * kGranulesPerAllocWord * kGranule;
      new_size = end;
      if (covers) break;
    }
  }
  if (new_size > kMaxFileSize && !relocate && need_end <= kMaxFileSize) {
    new_size = kMaxFileSize;  // the last growth: less headroom than usual
  }
  if (new_size > kMaxFileSize) {
    return Status(Code::kNoSpace, file_->path() + ": the store would grow to " + std::to_string(new_size) +
                                      " bytes, past the format's limit of " + std::to_string(kMaxFileSize) +
                                      " (4 TiB)");
  }
  if (new_size > file_size) {
    Status s = file_->Reserve(new_size);
    const uint64_t minimum = RoundUp(relocate ? map_off + map_bytes : need_end, kPageSize);
    if (!s.ok() && s.code() == Code::kNoSpace && new_size > minimum) {
      new_size = minimum;  // try again without headroom
      s = file_->Reserve(new_size);
    }
    if (!s.ok()) return s;
    s = maps_->Cover(new_size);
    if (!s.ok()) return s;
    if (!relocate) {
      // Growth is not undone: a longer file with free space is a valid state.
      ctl_->file_size.store(new_size, std::memory_order_release);
    }
  }
  if (relocate) {
    // Every state on the way, and every state a rollback leaves, has a map
    // that covers file_size and a heap_end inside it (open validates both
    // before it rolls a killed writer back): the new map first, then the
    // size (logged, so a rollback of the move takes it back too), then the
    // high-water mark.
    maps_->KeepSmall(map_off, map_bytes);    // before its pages are first touched
    maps_->PrefaultNow(map_off, map_bytes);  // one call, not a fault for every page the copy writes
    AllocWord* fresh_map = At<AllocWord>(map_off);
    const uint64_t old_off = ctl_->alloc_offset;
    const uint64_t old_words = ctl_->alloc_words;
    std::memcpy(fresh_map, At<AllocWord>(old_off), old_words * sizeof(AllocWord));
    std::memset(static_cast<void*>(fresh_map + old_words), 0, map_bytes - old_words * sizeof(AllocWord));
    // The new map owns its own granules before it becomes the map: from the
    // switch on, every state a kill can leave, going forward or rolling back,
    // has a map that marks itself used (open checks that before it recovers).
    // Rolled back, the switch takes the whole copy with it, so the marks
    // need no undo entry.
    MarkRangeIn(fresh_map, map_off / kGranule, map_bytes / kGranule, true, true, false);
    Status s = SetWord(&ctl_->alloc_offset, map_off);
    if (s.ok()) s = SetWord(&ctl_->alloc_words, map_words);
    if (!s.ok()) return s;
    // Now in the new map; the old one is garbage.
    if (new_size > file_size) {
      s = Log(UndoKind::kWord, OffsetOf(&ctl_->file_size), file_size);
      if (!s.ok()) return s;
      ctl_->file_size.store(new_size, std::memory_order_release);
    }
    ctl_->heap_end = std::max(ctl_->heap_end, map_off + map_bytes);
    s = Free(old_off / kGranule, RoundUp(old_words * sizeof(AllocWord), kPageSize) / kGranule);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

void Heap::NoteReusable(uint64_t g, uint64_t n) {
  constexpr size_t kMaxReuse = 512;
  if (n > kGranulesPerAllocWord) return;  // spans at most two map words
  if (reuse_.size() == kMaxReuse) reuse_.erase(reuse_.begin(), reuse_.begin() + kMaxReuse / 2);  // the oldest half
  reuse_.push_back(g << 8 | n);
}

bool Heap::TakeReused(uint64_t n, uint64_t file_granules, uint64_t* out) {
  // The newest few only: in a store of records of one size the newest fits,
  // and a longer search would cost more than next-fit saves.
  constexpr size_t kLook = 4;
  size_t i = reuse_.size();
  for (size_t looked = 0; looked < kLook && i > 0; ++looked) {
    --i;
    const uint64_t g = reuse_[i] >> 8;
    const uint64_t len = reuse_[i] & 0xFF;
    if (g + len > file_granules || AnyUsed(g, len)) {
      reuse_.erase(reuse_.begin() + static_cast<std::ptrdiff_t>(i));  // taken since (another writer) or cut off
      continue;
    }
    if (len < n) continue;
    *out = g;
    if (len == n) {
      reuse_.erase(reuse_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      reuse_[i] = (g + n) << 8 | (len - n);
    }
    return true;
  }
  return false;
}

Status Heap::AllocateRecord(uint64_t n, uint64_t* out) {
  uint64_t g;
  if (reuse_.empty() || append_only_) return Allocate(n, 1, out);
  AllocationScope scope(this);
  if (!TakeReused(n, ctl_->file_size.load(std::memory_order_relaxed) / kGranule, &g)) return Allocate(n, 1, out);
  // The cursor stays where next-fit left it, and no prefault: the extent
  // was in use until the last commits, so its pages are set up already.
  Status s = Take(g, n);
  if (s.ok()) *out = g;
  return s;
}

Status Heap::Take(uint64_t g, uint64_t n) {
  Status s = Log(UndoKind::kAllocated, g, n);
  if (!s.ok()) return s;
  MarkRange(g, n, true, true, false);
  ctl_->heap_end = std::max(ctl_->heap_end, (g + n) * kGranule);
  return Status::Ok();
}

Status Heap::Allocate(uint64_t n, uint64_t align, uint64_t* out) {
  AllocationScope scope(this);
  const uint64_t heap_start = kHeapOffset / kGranule;
  uint64_t file_granules = ctl_->file_size.load(std::memory_order_relaxed) / kGranule;
  uint64_t cursor = std::clamp<uint64_t>(ctl_->alloc_cursor, heap_start, file_granules);
  uint64_t g = cursor;
  // The common case first: the granules at the cursor are free (records
  // written one after another at the end of the heap).
  const uint64_t bit = cursor % kGranulesPerAllocWord;
  const bool at_cursor = align == 1 && n <= kGranulesPerAllocWord - bit && cursor + n <= file_granules &&
                         (map()[cursor / kGranulesPerAllocWord].used & RunMask(n, bit)) == 0;
  bool ok = at_cursor || FindRun(cursor, file_granules, n, align, &g) ||
            (!append_only_ && FindRun(heap_start, std::min(file_granules, cursor + n + align), n, align, &g));
  if (!ok) {
    // Never below the heap: open checks heap_end, and the clamp keeps a bad
    // one from placing a record over the control page.
    const uint64_t high = std::max({ctl_->heap_end / kGranule, heap_start, append_only_ ? cursor : 0});
    uint64_t tail = (high + align - 1) & ~(align - 1);
    Status s = Grow((tail + n) * kGranule);
    if (!s.ok()) return s;
    file_granules = ctl_->file_size.load(std::memory_order_relaxed) / kGranule;
    if (!FindRun(std::min(tail, file_granules), file_granules, n, align, &g) &&
        !FindRun(heap_start, file_granules, n, align, &g)) {
      return Status(Code::kCorruption, file_->path() + ": allocation map inconsistent after growth");
    }
  }
  // The caller writes the granules next, and the allocations after it tend
  // to follow them. So the stretch after them is set up for writing in one
  // call, on the prefault thread while the writer goes on (a write fault on
  // a shared file mapping maps a single 4 KiB page; see prefaulter.h and
  // bench/README.md): the kPrefaultGranules after this allocation, asked for
  // again once allocations have used half of them or gone elsewhere.
  const uint64_t end = g + n;
  if ((end < prefault_from_ || end + kPrefaultGranules / 2 > prefault_to_) && end < file_granules) {
    prefault_from_ = end;
    prefault_to_ = std::min(end + kPrefaultGranules, file_granules);
    maps_->PrefaultSoon(end * kGranule, (prefault_to_ - end) * kGranule);
  }
  Status s = Take(g, n);
  if (!s.ok()) return s;
  ctl_->alloc_cursor = g + n;
  *out = g;
  return Status::Ok();
}

void Heap::NoteFree(uint64_t g, uint64_t n) {
  const AllocWord& w = map()[g / kGranulesPerAllocWord];
  if ((w.fresh >> (g % kGranulesPerAllocWord)) & 1) {
    fresh_frees_.emplace_back(g, n);
  } else {
    ctl_->pending_bytes += n * kGranule;
  }
  SetFreed(g, n, true);
}

Status Heap::Free(uint64_t g, uint64_t n) {
  Status s = Log(UndoKind::kFreed, g, n);
  if (!s.ok()) return s;
  NoteFree(g, n);
  return Status::Ok();
}

Status Heap::FreePages(uint64_t pagemap, uint64_t pages) {
  Status s = Log(UndoKind::kFreedPages, pagemap, pages);
  if (!s.ok()) return s;
  const uint32_t* pm = At<uint32_t>(pagemap);
  for (uint64_t i = 0; i < pages; ++i) NoteFree(uint64_t{pm[i]} * kGranulesPerPage, kGranulesPerPage);
  return Status::Ok();
}

uint64_t Heap::ReleasedMapChecksum() const {
  // On the stack (xxhash.h is inlined whole, so the state's type is
  // complete): XXH3_createState would malloc, and return null when memory
  // is short.
  alignas(64) XXH3_state_t state_storage;
  XXH3_state_t* state = &state_storage;
  XXH3_INITSTATE(state);
  XXH3_64bits_reset(state);
  const AllocWord* m = map();
  AllocWord buf[256];
  const uint64_t words = ctl_->alloc_words;
  for (uint64_t i = 0; i < words; i += 256) {
    uint64_t k = std::min<uint64_t>(256, words - i);
    for (uint64_t j = 0; j < k; ++j) buf[j] = AllocWord{m[i + j].used & ~m[i + j].freed, 0, 0};
    XXH3_64bits_update(state, buf, k * sizeof(AllocWord));
  }
  return XXH3_64bits_digest(state);
}

void Heap::ReleaseAll() {
  AllocWord* m = map();
  const uint64_t words = ctl_->alloc_words;
  for (uint64_t i = 0; i < words; ++i) {
    if ((m[i].fresh | m[i].freed) == 0) continue;
    m[i].used &= ~m[i].freed;
    m[i].fresh = 0;
    m[i].freed = 0;
  }
  ctl_->pending_bytes = 0;
}

Status Heap::MoveMap() {
  AllocationScope scope(this);  // no log chunk between the copy and the switch
  const uint64_t old_off = ctl_->alloc_offset;
  const uint64_t bytes = RoundUp(ctl_->alloc_words * sizeof(AllocWord), kPageSize);
  uint64_t g = 0;
  Status s = Allocate(bytes / kGranule, kGranulesPerPage, &g);
  if (!s.ok()) return s;
  // The allocation grew the file and moved the map already (to the tail).
  if (ctl_->alloc_offset != old_off) return Free(g, bytes / kGranule);
  if (g * kGranule < old_off + bytes && old_off < (g * kGranule) + bytes) {
    // Only a damaged map marks its own pages free.
    return Status(Code::kCorruption, file_->path() + ": the allocation map at offset " + std::to_string(old_off) +
                                         " is marked free in itself");
  }
  // Small pages for the map wherever it goes (MapSet::KeepSmall), asked
  // before the copy first touches them. The copy carries the new extent's
  // own allocation, made in the old map.
  maps_->KeepSmall(g * kGranule, bytes);
  std::memcpy(At<AllocWord>(g * kGranule), At<AllocWord>(old_off), ctl_->alloc_words * sizeof(AllocWord));
  s = SetWord(&ctl_->alloc_offset, g * kGranule);
  if (!s.ok()) return s;
  return Free(old_off / kGranule, bytes / kGranule);
}

bool Heap::MapCanGoLower(uint64_t* granule) const {
  const uint64_t granules = RoundUp(ctl_->alloc_words * sizeof(AllocWord), kPageSize) / kGranule;
  return FindRun(kHeapOffset / kGranule, ctl_->alloc_offset / kGranule, granules, kGranulesPerPage, granule);
}

Status Heap::LowerMap() {
  uint64_t g = 0;
  if (!MapCanGoLower(&g)) return Status::Ok();
  ctl_->alloc_cursor = g;  // next-fit: MoveMap's allocation takes this hole
  return MoveMap();
}

uint64_t Heap::HighestUsedEnd() const {
  const AllocWord* m = map();
  const uint64_t words = std::min<uint64_t>(ctl_->alloc_words, RoundUp(ctl_->file_size.load(), 1024) / 1024);
  for (uint64_t w = words; w > 0; --w) {
    if (m[w - 1].used != 0) {
      return ((w - 1) * kGranulesPerAllocWord + 64 - static_cast<uint64_t>(std::countl_zero(m[w - 1].used))) * kGranule;
    }
  }
  return kHeapOffset;
}

}  // namespace mapkv::internal
