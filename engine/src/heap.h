// heap.h: the file as the engine sees it: its mappings, the undo log of the
// running write, and the allocator of the heap.
//
// Mappings (MapSet). A handle maps the file with headroom past its end, and
// when another process has grown the file past the mapping it maps it again,
// larger. Old mappings are kept until the handle closes, so a reader that
// loaded the previous View keeps reading valid memory (both mappings show the
// same file pages). Nothing is ever unmapped under a reader.
//
// Undo log. Every change a write makes to a structure that already existed
// (a slot, a page-map entry, an allocation bit, a control-page word) is first
// recorded in the undo log in the file, so that a process killed in the middle
// of a write leaves enough behind for the next writer to take it back.
// Records and new pages are written into space that was free, so they need no
// undo. The commit of a write is the single store undo_count = 0.
//
// Allocator. Next-fit over the allocation map (format.h, AllocWord): first
// from the cursor to the end of the file, then from the start of the heap,
// and otherwise by growing the file. The map grows by relocation into the
// newly grown tail.
//
// Threading: a Heap is used only by the thread holding the write lock; the
// MapSet's Current() may be called by any thread at any time.
#ifndef MAPKV_HEAP_H_
#define MAPKV_HEAP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "format.h"
#include "mapkv/status.h"
#include "platform/platform.h"

namespace mapkv::internal {

struct View {
  uint8_t* base;
  uint64_t length;  // bytes mapped (may exceed the file's size)
};

class MapSet {
 public:
  MapSet(File* file, bool writable) : file_(file), writable_(writable) {}
  MapSet(const MapSet&) = delete;
  MapSet& operator=(const MapSet&) = delete;

  // The newest view; never null after a successful Init.
  const View* Current() const { return current_.load(std::memory_order_acquire); }

  // Maps the file so that at least `bytes` are covered.
  Status Cover(uint64_t bytes);
  // The file offset of `p`, a pointer into any of the mappings. Pointers
  // taken once and kept (the control page) lie in an older mapping than the
  // newest once the file has been mapped again, so `p - Current()->base` is
  // not the offset then.
  uint64_t OffsetOf(const void* p);
  // Writes back a byte range through the newest mapping (see Mapping::Flush).
  Status Flush(uint64_t offset, uint64_t length, bool sync);

 private:
  File* const file_;
  const bool writable_;
  std::mutex mu_;
  std::atomic<const View*> current_{nullptr};
  std::vector<std::unique_ptr<Mapping>> mappings_;
  std::vector<std::unique_ptr<View>> views_;
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
  uint64_t OffsetOf(const void* p) const { return maps_->OffsetOf(p); }
  // Starts a write: records the control-page counters once, so the write may
  // change them freely afterwards.
  Status Begin();
  // Marks the running write committed (undo_count = 0), then makes the fresh
  // space it freed reusable.
  void Commit();
  // Applies the undo log in reverse and clears it. Used on a failed write and
  // by recovery after a killed writer.
  void Rollback();
  uint64_t undo_count() const { return ctl_->undo_count.load(std::memory_order_relaxed); }

  // ---- allocator ----
  // Allocates `granules` granules, aligned to `align` granules (a power of
  // two), and returns the first granule's index. Grows the file when needed:
  // kNoSpace (disk full / file-size limit) leaves everything as it was.
  Status Allocate(uint64_t granules, uint64_t align, uint64_t* granule);
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
  // The map with every pending granule released: what the map will be right
  // after a checkpoint. Used for its checksum.
  uint64_t ReleasedMapChecksum() const;
  // Turns every pending granule free and every fresh granule checkpointed.
  void ReleaseAll();
  // Copies the allocation map to a newly allocated place (compaction).
  Status MoveMap();
  // Compaction: allocate only upwards from the cursor (growing the file
  // rather than reusing a hole below it).
  void set_append_only(bool on) { append_only_ = on; }
  // End of the highest allocated granule.
  uint64_t HighestUsedEnd() const;

  format::AllocWord* map() const { return At<format::AllocWord>(ctl_->alloc_offset); }

 private:
  Status Log(format::UndoKind kind, uint64_t target, uint64_t value);
  void ApplyUndo(const format::UndoEntry& e);
  void MarkRange(uint64_t granule, uint64_t n, bool used, bool fresh, bool freed);
  void SetFreed(uint64_t granule, uint64_t n, bool freed);
  void NoteFree(uint64_t granule, uint64_t n);
  bool FindRun(uint64_t from, uint64_t to, uint64_t n, uint64_t align, uint64_t* found) const;
  Status Grow(uint64_t min_heap_end);

  File* const file_;
  MapSet* const maps_;
  format::ControlPage* const ctl_;
  // Fresh extents freed by the running write, made free by Commit.
  std::vector<std::pair<uint64_t, uint64_t>> fresh_frees_;
  bool append_only_ = false;
};

}  // namespace mapkv::internal

#endif  // MAPKV_HEAP_H_
