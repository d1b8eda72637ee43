// checkpoint.cc: the synchronous flush.
//
// A checkpoint makes the current state survive a power cut. The state on disk
// is only ever the newest valid meta page plus what it references, and the
// engine never changes in place anything the newest durable meta page
// references: table pages are copied before their first change after a
// checkpoint, and space the checkpoint references is freed only by the next
// one (format.h, AllocWord). A checkpoint, holding the write lock:
//   1. copies the live page map into the snapshot slot of the new generation
//      (slot generation % 2; the other slot belongs to the previous meta page,
//      which must stay usable until this one is durable);
//   2. writes back every dirty page of the file, synchronously;
//   3. writes the meta page (generation + 1) into its slot, synchronously;
//   4. releases the space the previous checkpoint held (release_pending marks
//      the step, so a writer killed in it is finished by the next one).
// Killed or cut before 3 completes, the previous meta page still describes a
// complete state on disk.
#include <cstddef>
#include <cstring>

#include "hash.h"
#include "store_impl.h"

namespace mapkv::internal {

using namespace format;  // NOLINT

uint64_t MetaChecksum(const MetaPage& m) { return XXH3_64bits(&m, offsetof(MetaPage, checksum)); }

Status StoreImpl::Checkpoint() {
  if (ctl_->dirty == 0 && ctl_->generation > 0) return Status::Ok();
  const uint64_t gen = ctl_->generation + 1;
  const int k = static_cast<int>(gen & 1);
  const uint64_t need = ctl_->pagemap_bytes;

  Status s;
  try {
    s = heap_->Begin();
    if (s.ok() && ctl_->snapshot_slot_bytes[k] < need) {
      uint64_t g = 0;
      s = heap_->Allocate(need / kGranule, 1, &g);
      if (s.ok() && ctl_->snapshot_slot_bytes[k] != 0) {
        s = heap_->Free(ctl_->snapshot_slot_offset[k] / kGranule, ctl_->snapshot_slot_bytes[k] / kGranule);
      }
      if (s.ok()) s = heap_->SetWord(&ctl_->snapshot_slot_offset[k], g * kGranule);
      if (s.ok()) s = heap_->SetWord(&ctl_->snapshot_slot_bytes[k], need);
    }
  } catch (...) {  // out of memory (a growth's mapping): undone as a failed step is
    AbandonWrite();
    throw;
  }
  if (!s.ok()) {
    Status r = RollBackWrite();
    return r.ok() ? s : r;
  }
  uint8_t* base = heap_->base();
  std::memcpy(base + ctl_->snapshot_slot_offset[k], base + ctl_->pagemap_offset.load(), need);
  heap_->Commit();

  s = maps_->Flush(0, ctl_->file_size.load(), /*sync=*/true);
  if (!s.ok()) return s;

  MetaPage m;
  std::memset(&m, 0, sizeof m);
  m.magic = kMetaMagic;
  m.major = kMajor;
  m.minor = kMinor;
  m.page_size = kPageSize;
  m.granule = kGranule;
  m.flags = kMetaLittleEndian;
  m.generation = gen;
  m.hash_seed = ctl_->hash_seed;
  m.table_shift = static_cast<uint32_t>(ctl_->table_shift.load());
  m.entries = ctl_->entries.load();
  m.snapshot_offset = ctl_->snapshot_slot_offset[k];
  m.snapshot_checksum = XXH3_64bits(base + m.snapshot_offset, need);
  m.pagemap_offset = ctl_->pagemap_offset.load();
  m.alloc_offset = ctl_->alloc_offset;
  m.alloc_words = ctl_->alloc_words;
  m.alloc_checksum = heap_->ReleasedMapChecksum();
  m.heap_end = ctl_->heap_end;
  m.live_bytes = ctl_->live_bytes;
  m.change_seq = ctl_->change_seq.load();
  m.ring_offset = ctl_->ring_offset;
  m.ring_capacity = ctl_->ring_capacity;
  for (int i = 0; i < 2; ++i) {
    m.snapshot_slot_offset[i] = ctl_->snapshot_slot_offset[i];
    m.snapshot_slot_bytes[i] = ctl_->snapshot_slot_bytes[i];
  }
  std::memcpy(m.boot_id, ctl_->boot_id, 16);
  m.checksum = MetaChecksum(m);
  std::memcpy(base + kMetaOffset[k], &m, sizeof m);
  s = maps_->Flush(kMetaOffset[k], kPageSize, /*sync=*/true);
  if (!s.ok()) {
    // The page may still reach the disk, whole or in part, and a later lock
    // holder would take it for a checkpoint killed after its meta page and
    // finish it: over the writes made since, which no checkpoint would then
    // hold. Wiped, the slot names nothing; the previous checkpoint stays the
    // newest (its snapshot is in the other slot) and the next one tries again.
    std::memset(base + kMetaOffset[k], 0, sizeof m);
    maps_->Flush(kMetaOffset[k], kPageSize, /*sync=*/true).IgnoreError();  // the error already reported is s
    return s;
  }

  ctl_->release_pending = gen;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  heap_->ReleaseAll();
  ctl_->generation = gen;
  ctl_->dirty = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ctl_->release_pending = 0;
  return Status::Ok();
}

}  // namespace mapkv::internal
