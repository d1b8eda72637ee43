// table.h: the hash table: lookups for readers, changes for the writer.
//
// Layout (format.h): 2^shift slots of 8 bytes in 4 KiB logical pages; the
// page map (u32 physical page numbers) places each logical page in the file.
// A slot is (tag << 38) | granule; 0 is empty. Robin Hood linear probing: an
// entry's distance from its home slot never exceeds that of the entry it
// passes, so a lookup stops at the first slot holding an entry closer to home
// than the probe is (an absent key costs about as much as a present one), and
// erase shifts the following entries back instead of leaving tombstones.
//
// Readers (TableReader) run without a lock, against a state that a writer may
// change under them: every offset they load is checked against the file size
// before it is followed, every loop is bounded, and the caller validates the
// whole read with the seqlock afterwards. A reader never faults and never
// loops, whatever the bytes.
//
// The writer (TableWriter) runs under the write lock and records every change
// in the undo log (heap.h). A page the last checkpoint references is copied
// before its first change (copy-on-write), so the checkpoint stays intact on
// disk. A page the running write allocated (a copy, or a new table after a
// resize) is changed with no undo: a rollback frees it whole.
#ifndef MAPKV_TABLE_H_
#define MAPKV_TABLE_H_

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "format.h"
#include "hash.h"
#include "heap.h"
#include "mapkv/status.h"
#include "racy.h"

namespace mapkv::internal {

// Inline: for a short key the hash is a few instructions, less than a call.
inline uint64_t HashKey(std::string_view key, uint64_t seed) {
  return XXH3_64bits_withSeed(key.data(), key.size(), seed);
}
uint32_t RecordChecksum(const format::RecordHeader& h, const uint8_t* key_and_value);

// A record located and bounds-checked in the mapping.
struct RecordRef {
  uint64_t granule = 0;
  const uint8_t* header = nullptr;
  uint64_t key_size = 0;
  uint64_t value_size = 0;
  const uint8_t* key() const { return header + format::kRecordHeaderSize; }
  const uint8_t* value() const { return key() + key_size; }
  uint64_t granules() const { return format::RecordGranules(key_size, value_size); }
  // True when the record's bytes match its checksum. Safe on a record a
  // writer may be changing (the caller validates with the seqlock).
  bool Intact() const;
};

// A snapshot of where the table is, taken from the control page.
struct TableReader {
  const uint8_t* base;
  uint64_t limit;  // file size: nothing at or past it is read
  uint32_t shift;
  uint64_t pagemap;
  uint64_t seed;
  // The writer's reader also prefetches the allocation-map word of a
  // candidate record, which a put reads next to decide whether the record
  // may be overwritten in place or freed at once. nullptr: readers.
  const format::AllocWord* alloc_map = nullptr;

  uint64_t slots() const { return uint64_t{1} << shift; }
  uint64_t mask() const { return slots() - 1; }

  // Address of slot i, or nullptr when the page map points out of the file.
  MAPKV_OPTIMISTIC const uint64_t* SlotPtr(uint64_t i) const {
    uint64_t pm = pagemap + (i >> format::kSlotsPerPageShift) * 4;
    if (pm + 4 > limit) return nullptr;
    uint32_t phys = RacyLoad(reinterpret_cast<const uint32_t*>(base + pm));
    uint64_t off = uint64_t{phys} * format::kPageSize + (i & (format::kSlotsPerPage - 1)) * 8;
    if (off < format::kHeapOffset || off + 8 > limit) return nullptr;
    return reinterpret_cast<const uint64_t*>(base + off);
  }
  // True when the whole page that starts at `first_slot` lies in the file.
  bool PageFits(const uint64_t* first_slot) const {
    return static_cast<uint64_t>(reinterpret_cast<const uint8_t*>(first_slot) - base) + format::kPageSize <= limit;
  }
  MAPKV_OPTIMISTIC bool LoadSlot(uint64_t i, uint64_t* slot) const {
    const uint64_t* p = SlotPtr(i);
    if (p == nullptr) return false;
    *slot = RacyLoad(p);
    return true;
  }
  // Finds and checks the record at `granule`; false when it does not fit the file.
  bool Record(uint64_t granule, RecordRef* rec) const;
  // Home slot of the entry in `slot`; may read its record (tables past 2^26
  // slots). False when the record is out of bounds.
  bool Home(uint64_t slot, uint64_t* home) const;

  // Starts loading what a lookup reads after a tag matches: the rest of the
  // record, and for the writer its allocation-map word.
  void PrefetchCandidate(uint64_t granule) const;
  // For lookups of many keys (MultiGet): the first starts loading the home
  // slot of `hash`; the second, once that slot has arrived, the record its
  // entry points to when the tag matches. Issued for a window of keys before
  // their Finds, the misses of the window overlap instead of queueing.
  void PrefetchHome(uint64_t hash) const;
  void PrefetchHomeRecord(uint64_t hash) const;

  enum class Result { kFound, kAbsent, kBad };
  // Looks `key` (hash `hash`) up. kFound sets *index, *rec. kBad: an offset
  // or loop bound failed (a changing or corrupt state).
  Result Find(std::string_view key, uint64_t hash, uint64_t* index, RecordRef* rec) const;
};

class TableWriter {
 public:
  explicit TableWriter(Heap* heap) : heap_(heap) {}

  TableReader Reader() const;

  // What a Find under the write lock returned. A put passes it on to its
  // Upsert when nothing changed the table in between (writing the record
  // only allocates), so that the key is looked up once.
  struct Lookup {
    TableReader::Result result;
    uint64_t index;  // kFound: the slot
    RecordRef rec;   // kFound: the record (its pointers may predate a remap)
  };

  // Puts the record at `granule` (already written) for `key`. *replaced says
  // whether it replaced an entry, and *old_rec is then the replaced record
  // (granule and sizes; its pointers may predate a remap). `known`: the
  // lookup of `key` made since the table last changed, or nullptr.
  Status Upsert(std::string_view key, uint64_t hash, uint64_t granule, RecordRef* old_rec, bool* replaced,
                const Lookup* known = nullptr);
  // Removes `key`; *found says whether it was there, *old_rec what it held.
  Status Erase(std::string_view key, uint64_t hash, bool* found, RecordRef* old_rec);
  // Points slot `index` at a copy of its record at `granule` (compaction).
  Status Relocate(uint64_t index, uint64_t granule);
  // Rebuilds the table with 2^shift slots.
  Status Resize(uint32_t shift);
  // Allocates a table of 2^shift empty slots and its page map; used at
  // creation. Sets *pagemap.
  Status CreateTable(uint32_t shift, uint64_t* table_granule, uint64_t* pagemap);

 private:
  // Makes slot i writable (copying its page when the checkpoint holds it,
  // or in a bulk write) and returns its address; *local: the page belongs to
  // the running write, so the slot's change needs no undo.
  Status WritableSlot(uint64_t i, uint64_t** slot, bool* local);
  Status SetSlot(uint64_t i, uint64_t value);

  Heap* const heap_;
};

}  // namespace mapkv::internal

#endif  // MAPKV_TABLE_H_
