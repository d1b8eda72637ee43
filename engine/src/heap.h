// heap.h: the file as the engine sees it: its mappings, the undo log of the
// running write, and the allocator of the heap.
//
// Mappings (MapSet). A handle maps the file with headroom past its end, and
// when another process has grown the file past the mapping it maps it again,
// larger. Old mappings are kept until the handle closes, so a reader that
// loaded the previous View keeps reading valid memory (both mappings show the
// same file pages). Nothing is ever unmapped under a reader.
//
// A read past the file's end takes SIGBUS. Readers stay below the file size
// they loaded, which is safe while the file only grows, though a mapping's
// headroom maps the file past its end. A cut (Compact, while alone) first
// withdraws the cut range from every mapping (MapSet::Cut: zeros from then
// on), and when the file grows back the newest mapping maps it again only up
// to its new end (Mapping::Withdraw and Restore). So a reader holding sizes
// from before a cut reads zeros there, and its check of the sequence number
// sends it round again.
//
// Undo log. Every change a write makes to a structure that already existed
// (a slot, a page-map entry, an allocation bit, a control-page word) is first
// recorded in the undo log in the file, so that a process killed in the middle
// of a write leaves enough behind for the next writer to take it back.
// Records and new pages are written into space that was free, so they need no
// undo. The commit of a write is the single store undo_count = 0. The log has
// a fixed part in front of the heap and, for large writes, a chain of chunks
// in the heap (format.h, UndoChunk), so a write has no size limit but the
// disk's. Past bulk() entries (half the fixed part, and as many bytes as the
// table) a write stops logging slots one by one: the table copies each page
// once and changes the copy freely.
//
// Allocator. Next-fit over the allocation map (format.h, AllocWord): first
// from the cursor to the end of the file, then from the start of the heap,
// and otherwise by growing the file. The map grows by relocation into the
// newly grown tail. A record (AllocateRecord) first tries the newest of the
// small extents the last commits made free (reuse_).
//
// Threading: a Heap is used only by the thread holding the write lock; the
// MapSet's Current() may be called by any thread at any time, and its
// prefault thread sets pages up for writing (changing none of their bytes).
#ifndef MAPKV_HEAP_H_
#define MAPKV_HEAP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_set>
#include <utility>
#include <vector>

#include "format.h"
#include "mapkv/status.h"
#include "platform/platform.h"
#include "prefaulter.h"

namespace mapkv::internal {

struct View {
  View(uint8_t* b, uint64_t n) : base(b), mapped(n) {}
  // Bytes of the file mapped from `base` (may exceed the file's size).
  uint64_t length() const { return mapped.load(std::memory_order_acquire); }

  uint8_t* const base;
  // Lowered by MapSet::Cut and raised back by Cover; any value it ever held
  // is safe to read below (a withdrawn range reads zeros).
  std::atomic<uint64_t> mapped;
};

class MapSet {
 public:
  // `large_pages`: Options::large_pages.
  MapSet(File* file, bool writable, bool large_pages) : file_(file), writable_(writable), large_pages_(large_pages) {}
  MapSet(const MapSet&) = delete;
  MapSet& operator=(const MapSet&) = delete;

  // The newest view; never null after a successful Init.
  const View* Current() const { return current_.load(std::memory_order_acquire); }

  // Maps the file so that at least `bytes` are covered.
  Status Cover(uint64_t bytes);
  // Before the file is cut to `size` bytes while other threads of the
  // handle may be reading: every mapping stops mapping the file past `size`
  // (Mapping::Withdraw) and the newest view covers `size` bytes, until Cover
  // maps the file there again. On an error some mappings may still map past
  // `size`: the file must not be cut then.
  Status Cut(uint64_t size);
  // The file offset of `p`, a pointer into any of the mappings. Pointers
  // taken once and kept (the control page) lie in an older mapping than the
  // newest once the file has been mapped again, so `p - Current()->base` is
  // not the offset then.
  uint64_t OffsetOf(const void* p);
  // Writes back a byte range through the newest mapping (see Mapping::Flush).
  Status Flush(uint64_t offset, uint64_t length, bool sync);

  // Large pages (Options::large_pages): every mapping asks for them past the
  // first kLargePagesFrom bytes (the meta pages, the control page and the
  // undo log, rewritten at every checkpoint, stay in small pages), except
  // over the range given here, the allocation map: an overwrite changes its
  // words at random places, and write-back writes each changed page whole.
  // Re-advises the newest mapping only when the range moved.
  bool large_pages() const { return large_pages_; }
  void KeepSmall(uint64_t offset, uint64_t length);
  // Mapping::Prefault on the newest mapping, for a range in the file:
  // PrefaultNow in the calling thread, for pages it writes next;
  // PrefaultSoon on the prefault thread (prefaulter.h), returning at once.
  void PrefaultNow(uint64_t offset, uint64_t length);
  void PrefaultSoon(uint64_t offset, uint64_t length);
  bool PrefaulterWaitingForTesting() const { return prefaulter_.WaitingForTesting(); }
  static constexpr uint64_t kLargePagesFrom = 2ull << 20;

 private:
  File* const file_;
  const bool writable_;
  const bool large_pages_;
  uint64_t small_offset_ = 0;  // the range KeepSmall was last given
  uint64_t small_length_ = 0;
  std::mutex mu_;
  std::atomic<View*> current_{nullptr};
  std::vector<std::unique_ptr<Mapping>> mappings_;
  std::vector<std::unique_ptr<View>> views_;
  Mapping* NewestWritable();  // nullptr when read-only or not mapped yet
  // Options::large_pages' advice over [from, to) of `mapping`. Under mu_.
  void AdviseLocked(Mapping* mapping, uint64_t from, uint64_t to);
  // After mappings_: destroyed first, so its thread is done with them.
  Prefaulter prefaulter_;
};

class Heap {
 public:
  Heap(File* file, MapSet* maps, format::ControlPage* ctl) : file_(file), maps_(maps), ctl_(ctl) {}

  uint8_t* base() const { return maps_->Current()->base; }
  format::ControlPage* ctl() const { return ctl_; }
  File* file() const { return file_; }
  MapSet* maps() const { return maps_; }
  template <typename T>
  T* At(uint64_t offset) const {
    return reinterpret_cast<T*>(base() + offset);
  }

  // ---- undo log ----
  // Records the current value of the u64 at `offset` (8-aligned), then stores
  // `value` there.
  Status SetWord(uint64_t offset, uint64_t value);
  Status SetWord(const uint64_t* p, uint64_t value) { return SetWord(OffsetOf(p), value); }
  Status SetWord(const std::atomic<uint64_t>* p, uint64_t value) { return SetWord(OffsetOf(p), value); }
  uint64_t OffsetOf(const void* p) const {
    // Control-page words, logged by every write, without the mapping search
    // (ctl_ may lie in an older view than the newest, where MapSet takes a mutex).
    const auto* q = static_cast<const uint8_t*>(p);
    const auto* c = reinterpret_cast<const uint8_t*>(ctl_);
    if (q >= c && q < c + sizeof(format::ControlPage)) return format::ControlOffsetOf(ctl_, p);
    return maps_->OffsetOf(p);
  }
  // Starts a write: records the control-page counters once, so the write may
  // change them freely afterwards. kInPlace: a write that changes no
  // structure, only bytes it saves with SaveRange, and change_seq.
  enum class WriteScope : uint8_t { kFull, kInPlace };
  Status Begin(WriteScope scope = WriteScope::kFull);
  // Records the current bytes of [begin, end) (as the 8-byte words that
  // cover it), so that the write may change them in place.
  Status SaveRange(uint64_t begin, uint64_t end);
  // Marks the running write committed (undo_count = 0), then makes the fresh
  // space it freed reusable.
  void Commit();
  // Applies the undo log in reverse and clears it. Used on a failed write and
  // by recovery after a killed writer (whose log ValidateLog accepted). Each
  // entry applied is uncounted at once, so a rollback killed halfway is
  // finished by the next one. kCorruption, with the entries not applied
  // still counted, when an entry is out of range for the state the entries
  // after it left (a damaged log).
  Status Rollback();
  uint64_t undo_count() const { return ctl_->undo_count.load(std::memory_order_relaxed); }
  // Checks that the log's entries, the fixed part and the chain of chunks,
  // lie inside the file and the allocation map; names the first bad one.
  Status ValidateLog() const;
  // Does the entry's target lie in the first `file_size` bytes of the file
  // and in the allocation map as it is now?
  bool EntryInRange(const format::UndoEntry& e, uint64_t file_size) const;
  // Applies the log's word entries that fall in [offset, offset + size) to
  // `copy`, a copy of those bytes, as Rollback would apply them to the file.
  // Only after ValidateLog accepted the log.
  void RollBackCopy(uint64_t offset, uint8_t* copy, uint64_t size) const;
  // Frees the chunks of a committed write whose writer died before freeing
  // them (undo_count == 0, undo_chain != 0).
  void DropChain();
  // A large write: the table copies each page it changes once (page-level
  // undo) instead of logging every slot. Copying pays once the write has
  // logged as many bytes as the whole table holds, not before: a page copy
  // costs 256 entries, and a batch of a thousand puts on a million-key store
  // touches a thousand pages a few times each (it copied one page per put,
  // 1,000-1,700 ns a put instead of 250).
  bool bulk() const {
    const uint64_t count = undo_count();
    return count > format::kUndoCapacity / 2 &&
           count > (uint64_t{8} << ctl_->table_shift.load(std::memory_order_relaxed)) / format::kUndoEntrySize;
  }
  // Table pages allocated by the running write: their changes need no undo
  // (a rollback frees the whole page).
  void NoteWriteLocal(uint64_t first_page, uint64_t pages);
  bool IsWriteLocal(uint64_t page) const { return !write_pages_.empty() && write_pages_.contains(page); }

  // ---- allocator ----
  // Allocates `granules` granules, aligned to `align` granules (a power of
  // two), and returns the first granule's index. Grows the file when needed:
  // kNoSpace (disk full / file-size limit) leaves everything as it was.
  Status Allocate(uint64_t granules, uint64_t align, uint64_t* granule);
  // A record's space: the newest small extent the last commits made free
  // when one fits (its lines are likely still cached, see reuse_), else
  // Allocate's. Allocations whose place matters (compaction's moves, the
  // checkpoint's snapshot) call Allocate.
  Status AllocateRecord(uint64_t granules, uint64_t* granule);
  // Frees granules: after the commit when they were allocated since the last
  // checkpoint, else when the next checkpoint is durable. Freed space is never
  // reused by the write that freed it.
  Status Free(uint64_t granule, uint64_t granules);
  // Frees each of the `pages` pages listed by the page map at `pagemap`.
  Status FreePages(uint64_t pagemap, uint64_t pages);
  // True when the granule is referenced by the last checkpoint (allocated
  // before it), so it must not be changed in place.
  bool IsCheckpointed(uint64_t granule) const;
  // Marks granules used (and not fresh) with no undo: for building a map.
  void MarkUsed(uint64_t granule, uint64_t n) { MarkRange(granule, n, true, false, false); }
  // Whether any of granules [granule, granule + n) is marked used.
  bool AnyUsed(uint64_t granule, uint64_t n) const;
  // Whether every one of them is used and none freed (in use by a live
  // structure). The range must lie inside the map.
  bool AllInUse(uint64_t granule, uint64_t n) const;
  // The map with every pending granule released: what the map will be right
  // after a checkpoint. Used for its checksum.
  uint64_t ReleasedMapChecksum() const;
  // Turns every pending granule free and every fresh granule checkpointed.
  void ReleaseAll();
  // Copies the allocation map to a newly allocated place (compaction).
  Status MoveMap();
  // Trimming at close: the map moves to the tail as the file grows, and
  // there it would stop the file from being cut. MapCanGoLower says whether
  // a hole below the map fits it; LowerMap (in a write) moves it there.
  bool MapCanGoLower(uint64_t* granule) const;
  Status LowerMap();
  // Compaction: allocate only upwards from the cursor (growing the file
  // rather than reusing a hole below it).
  void set_append_only(bool on) { append_only_ = on; }
  // End of the highest allocated granule.
  uint64_t HighestUsedEnd() const;
  // With large pages, a file of 4 MiB or more grows in whole 2 MiB steps,
  // so that the page cache can hold its tail in 2 MiB pieces too.
  uint64_t RoundGrowth(uint64_t size) const;

  format::AllocWord* map() const { return At<format::AllocWord>(ctl_->alloc_offset); }

 private:
  // Marks a stretch in which the allocation map may be inconsistent (an
  // allocation, a move of the map): the log links no new chunk inside it.
  struct AllocationScope {
    explicit AllocationScope(Heap* h) : heap(h) { ++heap->allocating_; }
    ~AllocationScope() { --heap->allocating_; }
    AllocationScope(const AllocationScope&) = delete;
    AllocationScope& operator=(const AllocationScope&) = delete;
    Heap* heap;
  };
  // Appends an undo entry. The common case (room in the log, no merge) is
  // inline: a small write logs a handful of entries and little else.
  Status Log(format::UndoKind kind, uint64_t target, uint64_t value) {
    const uint64_t n = ctl_->undo_count.load(std::memory_order_relaxed);
    if (n + kChunkReserve >= log_capacity_) return LogSlow(kind, target, value);
    if (kind == format::UndoKind::kAllocated && MergeAllocated(n, target, value)) return Status::Ok();
    format::UndoEntry* e = AppendSlot(n);
    e->kind_target = (static_cast<uint64_t>(kind) << format::kUndoKindShift) | target;
    e->value = value;
    // The entry before the count that exposes it, the count before the change
    // it protects (see LogSlow).
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ctl_->undo_count.store(n + 1, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return Status::Ok();
  }
  Status LogSlow(format::UndoKind kind, uint64_t target, uint64_t value);
  // Consecutive allocations (records written one after another) share one
  // entry: true when the last of the n entries was an allocation that ends
  // at `target`, and now covers `value` granules more.
  bool MergeAllocated(uint64_t n, uint64_t target, uint64_t value) {
    if (n == 0) return false;
    format::UndoEntry* prev = AppendSlot(n - 1);
    if (format::KindOf(*prev) != format::UndoKind::kAllocated || format::TargetOf(*prev) + prev->value != target) {
      return false;
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    std::atomic_ref<uint64_t>(prev->value).store(prev->value + value, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return true;
  }
  // The entry that restores the control-page word at `word` to `value`.
  format::UndoEntry WordEntry(const void* word, uint64_t value) const {
    return {(static_cast<uint64_t>(format::UndoKind::kWord) << format::kUndoKindShift) |
                format::ControlOffsetOf(ctl_, word),
            value};
  }
  // Does the allocation map lie in the first `file_size` bytes of the file?
  bool AllocMapInFile(uint64_t file_size) const;
  Status BadLog(const std::string& what) const;
  // Entries kept free for linking the next chunk: its allocation may grow the
  // file and move the allocation map, about eight entries.
  static constexpr uint64_t kChunkReserve = 64;
  // Links one more chunk to the log (its own allocation is logged in the
  // entries kept in reserve for it).
  Status ExtendLog();
  // Entry i of the running write, i < the capacity linked so far. Right
  // after a chunk is linked, the last entries of the one before it (the
  // reserve) are still being filled; never anything older.
  format::UndoEntry* AppendSlot(uint64_t i) {
    const LogSegment& seg = i >= tail_.first ? tail_ : prev_;
    return At<format::UndoEntry>(seg.entries) + (i - seg.first);
  }
  // The log as (offset, entries) extents, in order; false when the chain
  // leaves the file or does not hold `count` entries.
  bool LogExtents(uint64_t count, std::vector<std::pair<uint64_t, uint64_t>>* extents) const;
  void ResetWriteState();
  void ApplyUndo(const format::UndoEntry& e);
  void MarkRange(uint64_t granule, uint64_t n, bool used, bool fresh, bool freed);
  static void MarkRangeIn(format::AllocWord* map, uint64_t granule, uint64_t n, bool used, bool fresh, bool freed);
  void SetFreed(uint64_t granule, uint64_t n, bool freed);
  void NoteFree(uint64_t granule, uint64_t n);
  bool FindRun(uint64_t from, uint64_t to, uint64_t n, uint64_t align, uint64_t* found) const;
  // Takes `n` granules from the newest extents in reuse_ that are still
  // free in the map; false when none of the few it looks at fits.
  bool TakeReused(uint64_t n, uint64_t file_granules, uint64_t* granule);
  // Marks granules [granule, granule + n), found free, allocated to the
  // running write (logged, so a rollback frees them).
  Status Take(uint64_t granule, uint64_t n);
  void NoteReusable(uint64_t granule, uint64_t n);
  Status Grow(uint64_t min_heap_end);

  File* const file_;
  MapSet* const maps_;
  format::ControlPage* const ctl_;
  // Fresh extents freed by the running write, made free by Commit.
  std::vector<std::pair<uint64_t, uint64_t>> fresh_frees_;
  std::unordered_set<uint64_t> write_pages_;
  // The running write's log: entries linked so far, and its last chunk.
  uint64_t log_capacity_ = format::kUndoCapacity;
  uint64_t tail_chunk_ = 0;  // file offset of the last chunk (0: none)
  struct LogSegment {
    uint64_t entries;  // file offset of the segment's first entry
    uint64_t first;    // its index in the write's log
  };
  LogSegment tail_{format::kUndoOffset, 0};  // the last chunk (or the fixed log)
  LogSegment prev_{format::kUndoOffset, 0};  // the one before it
  uint64_t next_chunk_entries_ = 0;
  bool extending_ = false;
  int allocating_ = 0;  // depth of Allocate calls running
  bool append_only_ = false;
  // Small extents (up to 64 granules) that commits made free, newest last,
  // as granule << 8 | granules. Overwrites and erases within one checkpoint
  // epoch free records all over the heap, where next-fit has to search the
  // map for each hole (and, with most of the heap held for the checkpoint,
  // scan it from the start every time it wraps). The newest extent is
  // usually the record the last put replaced: its lines and map word are
  // still in the cache. Only hints: each is checked against the map before
  // use, so another writer's allocations, a rollback or a cut cost nothing
  // but the check.
  std::vector<uint64_t> reuse_;
  // The granules last handed to MapSet::PrefaultSoon (Allocate).
  uint64_t prefault_from_ = 0;
  uint64_t prefault_to_ = 0;
};

// Testing only (tests/crash_test.cc): when `entries` is not 0, a Rollback
// ends the process with std::_Exit(kRollbackStopExit) once it has applied
// that many entries, leaving the file as a kill at that point would.
inline constexpr int kRollbackStopExit = 77;
void SetRollbackStopForTesting(uint64_t entries);
// Testing only (tests/watch_test.cc): writers checkpoint every `changes`
// changes instead of every kCheckpointEveryChanges (0: back to that).
void SetCheckpointEveryChangesForTesting(uint64_t changes);

}  // namespace mapkv::internal

#endif  // MAPKV_HEAP_H_
