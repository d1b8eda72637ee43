// compact.cc: Compact, in place, as a series of ordinary crash-safe writes.
//
// Space the last checkpoint references cannot be reused before the next
// checkpoint (format.h, AllocWord), so records cannot simply slide down over
// each other. Compaction instead copies everything twice, holding the write
// lock:
//   A. everything live (allocation map, page map and table, records) is copied
//      densely to the free space past the end of the heap; a checkpoint then
//      frees everything below it;
//   B. everything is copied densely back to the bottom of the heap; the
//      page-map snapshots are re-created there by checkpoints, which free the
//      copies of step A;
//   C. the file is cut to the end of its highest allocated byte, when no other
//      handle has it open (a shorter file would fault their mappings);
//      otherwise the last handle to close cuts it.
// The file needs room for one extra copy of the live data meanwhile. A
// process killed at any point leaves a valid store; readers see every move
// atomically (each write holds the seqlock).
#include <algorithm>
#include <bit>
#include <functional>
#include <vector>

#include "store_impl.h"

namespace mapkv::internal {

using namespace format;  // NOLINT

namespace {
constexpr uint64_t kMovesPerWrite = 256;
}

// Copies the record of slot `index` to a newly allocated place and re-points
// the slot, inside the running write. With `only_lower`, a place no lower than
// the record is given back and *moved is false.
Status StoreImpl::MoveRecord(uint64_t index, bool only_lower, bool* moved) {
  *moved = false;
  TableReader r = table_->Reader();
  uint64_t slot;
  RecordRef rec;
  if (!r.LoadSlot(index, &slot)) return Status(Code::kCorruption, path_ + ": table page out of file");
  if (slot == 0) return Status::Ok();
  if (!r.Record(SlotGranule(slot), &rec)) {
    return Status(Code::kCorruption, path_ + ": slot " + std::to_string(index) + " points out of the file");
  }
  // A damaged record is not moved: its copy would lose what Check sees (a
  // size that runs into the next record, say) while keeping the damage.
  if (!rec.Intact()) return ChecksumError(rec);
  const uint64_t n = rec.granules();
  uint64_t g;
  Status s = heap_->Allocate(n, 1, &g);
  if (!s.ok()) return s;
  if (only_lower && g >= rec.granule) return heap_->Free(g, n);
  if (g < rec.granule + n && rec.granule < g + n) {
    // Only a damaged allocation map hands out space a live record occupies.
    return Status(Code::kCorruption, path_ + ": record at offset " + std::to_string(rec.granule * kGranule) +
                                         " is marked free in the allocation map");
  }
  std::memcpy(heap_->base() + g * kGranule, heap_->base() + rec.granule * kGranule, n * kGranule);
  s = table_->Relocate(index, g);
  if (s.ok()) s = heap_->Free(rec.granule, n);
  *moved = s.ok();
  return s;
}

Status StoreImpl::MoveEverything() {
  Status s = RunWrite([&] { return heap_->MoveMap(); });
  if (s.ok()) {
    s = RunWrite([&] {
      SeqBegin();
      return table_->Resize(static_cast<uint32_t>(ctl_->table_shift.load()));
    });
  }
  const uint64_t slots = uint64_t{1} << ctl_->table_shift.load();
  for (uint64_t first = 0; first < slots && s.ok(); first += kMovesPerWrite) {
    s = RunWrite([&] {
      SeqBegin();
      for (uint64_t i = first; i < std::min(slots, first + kMovesPerWrite); ++i) {
        bool moved;
        Status st = MoveRecord(i, /*only_lower=*/false, &moved);
        if (!st.ok()) return st;
      }
      return Status::Ok();
    });
  }
  return s;
}

Status StoreImpl::FirstDamagedRecord() const {
  // Two slots whose records share granules (a slot copied over another, say)
  // would be moved as two records: the key twice, each free of the other.
  const uint64_t granules = std::min(ctl_->file_size.load() / kGranule, ctl_->alloc_words * kGranulesPerAllocWord);
  std::vector<uint64_t> claimed((granules + 63) / 64, 0);
  return WalkRecords(table_->Reader(), [&](uint64_t i, uint64_t, const RecordRef& rec, Status* error) {
    if (!rec.Intact()) {
      *error = ChecksumError(rec);
      return false;
    }
    for (uint64_t g = rec.granule; g < rec.granule + rec.granules(); ++g) {
      const uint64_t bit = uint64_t{1} << (g % 64);
      if (g >= granules || (claimed[g / 64] & bit) != 0) {
        *error = Status(Code::kCorruption, path_ + ": the record of slot " + std::to_string(i) + " (at offset " +
                                               std::to_string(rec.granule * kGranule) +
                                               ") overlaps another slot's record; `mapkv check` lists it");
        return false;
      }
      claimed[g / 64] |= bit;
    }
    return true;
  });
}

Status StoreImpl::CompactTail(Status* damaged) {
  // Worth it only when the holes below the top add up to something.
  const uint64_t top = heap_->HighestUsedEnd();
  uint64_t used = 0;
  const AllocWord* m = heap_->map();
  for (uint64_t w = 0; w < (top / kGranule + 63) / 64; ++w) used += static_cast<uint64_t>(std::popcount(m[w].used));
  used *= kGranule;
  if (top - used < std::max<uint64_t>(1 << 20, top / 64)) return Status::Ok();
  // The records above `used` are the ones that could go lower; highest first.
  std::vector<std::pair<uint64_t, uint64_t>> movers;  // (granule, slot)
  {
    TableReader r = table_->Reader();
    for (uint64_t i = 0; i < r.slots(); ++i) {
      uint64_t slot;
      if (!r.LoadSlot(i, &slot)) return Status(Code::kCorruption, path_ + ": table page out of file");
      if (slot == 0 || SlotGranule(slot) * kGranule < used) continue;
      // A damaged record stays where it is (MoveRecord refuses it) and is
      // reported instead.
      RecordRef rec;
      if (!r.Record(SlotGranule(slot), &rec)) {
        if (damaged->ok()) {
          *damaged = Status(Code::kCorruption, path_ + ": slot " + std::to_string(i) + " points out of the file");
        }
        continue;
      }
      if (!rec.Intact()) {
        if (damaged->ok()) *damaged = ChecksumError(rec);
        continue;
      }
      movers.emplace_back(SlotGranule(slot), i);
    }
  }
  std::sort(movers.begin(), movers.end(), std::greater<>());
  // Two slots that point at one record (damage) are left as they are: moved,
  // the record would be copied twice, the key stored twice.
  std::vector<std::pair<uint64_t, uint64_t>> single;
  single.reserve(movers.size());
  for (size_t j = 0; j < movers.size(); ++j) {
    const bool shared = (j > 0 && movers[j - 1].first == movers[j].first) ||
                        (j + 1 < movers.size() && movers[j + 1].first == movers[j].first);
    if (!shared) {
      single.push_back(movers[j]);
    } else if (damaged->ok()) {
      *damaged = Status(Code::kCorruption, path_ + ": slot " + std::to_string(movers[j].second) +
                                               " and another point at the record at offset " +
                                               std::to_string(movers[j].first * kGranule) + "; `mapkv check` lists it");
    }
  }
  movers.swap(single);
  ctl_->alloc_cursor = kHeapOffset / kGranule;
  bool done = false;
  Status s;
  for (size_t first = 0; first < movers.size() && s.ok() && !done; first += kMovesPerWrite) {
    s = RunWrite([&] {
      SeqBegin();
      for (size_t j = first; j < std::min(movers.size(), first + kMovesPerWrite) && !done; ++j) {
        bool moved;
        Status st = MoveRecord(movers[j].second, /*only_lower=*/true, &moved);
        if (!st.ok()) return st;
        done = !moved;  // no lower hole fits this one: the rest are lower still
      }
      return Status::Ok();
    });
  }
  return s;
}

Status StoreImpl::RehomeSnapshots(uint64_t cursor) {
  Status s = RunWrite([&] {
    for (int k = 0; k < 2; ++k) {
      if (ctl_->snapshot_slot_bytes[k] == 0) continue;
      Status st = heap_->Free(ctl_->snapshot_slot_offset[k] / kGranule, ctl_->snapshot_slot_bytes[k] / kGranule);
      if (st.ok()) st = heap_->SetWord(&ctl_->snapshot_slot_bytes[k], 0);
      if (!st.ok()) return st;
    }
    return Status::Ok();
  });
  ctl_->alloc_cursor = cursor;
  for (int round = 0; round < 2 && s.ok(); ++round) {  // one checkpoint writes one slot
    ctl_->dirty = 1;
    s = Checkpoint();
  }
  return s;
}

Status StoreImpl::CutFile(uint64_t size) {
  // The control page first: killed in between, the file is longer than the
  // store says, which is valid (the reverse is not). Then no mapping of this
  // handle may still show the file past the cut, or another thread's get
  // that found a record there a moment ago would fault.
  const uint64_t old_size = ctl_->file_size.load();
  ctl_->file_size.store(size);
  Status s = maps_->Cut(size);
  if (s.ok()) s = file_->Truncate(size);
  // Not cut: the store takes back its old size once the newest view covers
  // it again, or else keeps the shorter one (the file is longer than the
  // store says, which is valid; it grows back through Cover).
  if (!s.ok() && maps_->Cover(old_size).ok()) ctl_->file_size.store(old_size);
  return s;
}

bool StoreImpl::SnapshotOnTop() const {
  const uint64_t top = heap_->HighestUsedEnd();
  for (int k = 0; k < 2; ++k) {
    const uint64_t bytes = ctl_->snapshot_slot_bytes[k];
    if (bytes != 0 && ctl_->snapshot_slot_offset[k] + bytes >= top) return true;
  }
  return false;
}

Status StoreImpl::Compact() {
  Status s = BeginWrite();
  if (!s.ok()) return s;
  struct Finish {
    StoreImpl* self;
    ~Finish() {
      self->heap_->set_append_only(false);
      self->EndWrite();
    }
  } finish{this};

  // Moving a damaged record would keep its damage and lose what shows it
  // (a size that runs into its neighbour): refused before anything moves.
  s = FirstDamagedRecord();
  if (!s.ok()) return s;
  heap_->set_append_only(true);
  for (int stage = 0; stage < 2 && s.ok(); ++stage) {
    ctl_->dirty = 1;
    s = Checkpoint();  // frees what the previous stage moved away from
    if (!s.ok()) break;
    ctl_->alloc_cursor = stage == 0 ? ctl_->heap_end / kGranule : kHeapOffset / kGranule;
    s = MoveEverything();
  }
  if (!s.ok()) return s;
  // The snapshots go right after the moved records (and the two checkpoints
  // release stage A's copies); a third records the lowered high-water mark,
  // so no meta page names bytes past the cut.
  s = RehomeSnapshots(ctl_->alloc_cursor);
  if (s.ok()) {
    ctl_->heap_end = heap_->HighestUsedEnd();
    ctl_->dirty = 1;
    s = Checkpoint();
  }
  if (!s.ok()) return s;
  ctl_->alloc_cursor = kHeapOffset / kGranule;
  if (locks_->TryBecomeAlone()) {
    // Not alone from the end of this block on, however it ends (also when
    // memory runs out in the cut). A shortening the OS put off (Windows,
    // while this handle's own views exist) would be done when this handle
    // is destroyed, over bytes another process may have written since (its
    // growth up to the file's old length changes no length to notice); the
    // file keeps its length instead, and a close that finds itself alone
    // cuts it then.
    struct EndAlone {
      StoreImpl* self;
      ~EndAlone() {
        self->file_->KeepLength();
        self->locks_->EndAlone();
      }
    } end_alone{this};
    const uint64_t target = heap_->RoundGrowth((ctl_->heap_end + 65535) / 65536 * 65536);
    if (target < ctl_->file_size.load()) s = CutFile(target);
  }
  return s;
}

}  // namespace mapkv::internal
