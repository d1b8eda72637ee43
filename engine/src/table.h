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
#include <string>
#include <string_view>

#include "format.h"
#include "hash.h"
#include "heap.h"
#include "mapkv/status.h"
#include "mapkv/store.h"
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
  // True when the record's key bytes hash (with `seed`) to `tag`, as the
  // slot pointing at it says they do. Safe as Intact is.
  bool KeyHasTag(uint64_t tag, uint64_t seed) const;
};

// kCorruption naming the record of a key that fails its checksum.
Status RecordChecksumError(const std::string& path, const RecordRef& rec);
// kCorruption for Result::kDamagedKey.
Status DamagedKeyError(const std::string& path, const RecordRef& rec);

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

  enum class Result { kFound, kAbsent, kBad, kDamagedKey };
  // Looks `key` (hash `hash`) up. kFound sets *index, *rec. kBad: an offset
  // or loop bound failed (a changing or corrupt state). kDamagedKey: a slot
  // on the probe has the key's tag, but its record holds other key bytes
  // that do not hash to that tag: damaged bytes that may have been this
  // key's, so its presence cannot be told (*index, *rec name that record).
  // Another key that merely shares the tag (one probe in tens of millions)
  // hashes to it and is passed over.
  // `max_probes`: a lookup that has not ended after that many slots gives up
  // with kBad (Salvage's bound on a damaged table; a sound table's longest
  // probe is a few dozen slots).
  Result Find(std::string_view key, uint64_t hash, uint64_t* index, RecordRef* rec,
              uint64_t max_probes = ~uint64_t{0}) const;
  // Find's common case, for the get's fast path: a probe that stays in the
  // page of the home slot (a present key's probe leaves it about once in 250
  // lookups at the table's highest load, 3/4; 43 of 100,000 keys at 0.38).
  // kFound sets *rec. kBad also when the probe would go on into the next
  // page, or meets a record with the key's tag but another key: the caller
  // then runs Find.
  Result FindInHomePage(std::string_view key, uint64_t hash, RecordRef* rec) const;
};

// ---- the lookup, inline: a get is a few hundred instructions around two
// cache misses, and the fewer there are, the more of the next get's misses
// the CPU starts before this one's have arrived.

// True when the `n` bytes at `p` (mapping, racy) equal `key` (n == key.size()).
MAPKV_OPTIMISTIC inline bool KeyEquals(const uint8_t* p, std::string_view key) {
#if !defined(MAPKV_TSAN)
  const size_t n = key.size();
  if (n >= 8 && n <= 16) {  // two overlapping words, no call
    uint64_t a0, a1, b0, b1;
    std::memcpy(&a0, p, 8);
    std::memcpy(&a1, p + n - 8, 8);
    std::memcpy(&b0, key.data(), 8);
    std::memcpy(&b1, key.data() + n - 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
  }
#endif
  return RacyEqual(p, key.data(), key.size());
}

MAPKV_OPTIMISTIC inline bool TableReader::Record(uint64_t granule, RecordRef* rec) const {
  const uint64_t off = granule << format::kGranuleShift;
  if (off < format::kHeapOffset || off + format::kRecordHeaderSize > limit) return false;
  format::RecordHeader h;
  RacyCopy(&h, base + off, sizeof h);
  if (h.value_size > mapkv::kMaxValueSize) return false;
  const uint64_t key_size = uint64_t{h.key_size_m1} + 1;
  if (off + format::kRecordHeaderSize + key_size + h.value_size > limit) return false;
  rec->granule = granule;
  rec->header = base + off;
  rec->key_size = key_size;
  rec->value_size = h.value_size;
  return true;
}

// Always inline: GCC 12 takes a call of it for a pure function (a prefetch
// has no visible effect) and may delete the call before it inlines it (it did
// so in an earlier version of the get's fast path).
[[gnu::always_inline]] inline void TableReader::PrefetchCandidate(uint64_t granule) const {
  // The header's line is loaded next anyway; asking for the lines after it
  // now overlaps their misses with its miss (a 16-byte key and a 100-byte
  // value span two or three lines). A prefetch never faults, so an offset
  // past the file does no harm; it is checked before any load.
  const uint8_t* r = base + (granule << format::kGranuleShift);
  __builtin_prefetch(r + 64);
  __builtin_prefetch(r + 2 * 64 - 1);
  if (alloc_map != nullptr) __builtin_prefetch(alloc_map + granule / format::kGranulesPerAllocWord);
}

MAPKV_OPTIMISTIC inline void TableReader::PrefetchHome(uint64_t hash) const {
  if (const uint64_t* p = SlotPtr(hash >> (64 - shift)); p != nullptr) __builtin_prefetch(p);
}

MAPKV_OPTIMISTIC inline TableReader::Result TableReader::Find(std::string_view key, uint64_t hash, uint64_t* index,
                                                              RecordRef* rec, uint64_t max_probes) const {
  using namespace format;  // NOLINT
  const uint64_t m = mask();
  const uint64_t tag = HashTag(hash);
  const uint64_t home = hash >> (64 - shift);
  // Robin Hood's early stop needs each entry's home slot, which its tag
  // gives while the table has at most 2^26 slots.
  const bool tag_gives_home = shift <= kTagBits;
  // A probe walks consecutive slots, which share a page until it wraps to
  // the next one: the page map is read (and its offsets checked) once a page.
  const uint64_t* page = nullptr;
  uint64_t page_no = ~uint64_t{0};
  const uint64_t probes = max_probes <= m ? max_probes : m + 1;  // one compare a probe, as without a bound
  for (uint64_t d = 0; d < probes; ++d) {
    const uint64_t i = (home + d) & m;
    if ((i >> kSlotsPerPageShift) != page_no) {
      page_no = i >> kSlotsPerPageShift;
      page = SlotPtr(page_no << kSlotsPerPageShift);
      if (page == nullptr || !PageFits(page)) return Result::kBad;
    }
    const uint64_t s = RacyLoad(page + (i & (kSlotsPerPage - 1)));
    if (s == 0) return Result::kAbsent;
    if (tag_gives_home) {
      const uint64_t dist = (i - (SlotTag(s) >> (kTagBits - shift))) & m;
      if (dist < d) return Result::kAbsent;  // Robin Hood: the key would have been placed here
    }
    if (SlotTag(s) == tag) {
      PrefetchCandidate(SlotGranule(s));
      if (!Record(SlotGranule(s), rec)) return Result::kBad;
      if (rec->key_size == key.size() && KeyEquals(rec->key(), key)) {
        *index = i;
        return Result::kFound;
      }
      if (!rec->KeyHasTag(tag, seed)) [[unlikely]] {
        *index = i;
        return Result::kDamagedKey;
      }
    }
  }
  return Result::kBad;  // a table with no empty slot is not a valid state (or max_probes passed)
}

[[gnu::always_inline]] MAPKV_OPTIMISTIC inline TableReader::Result TableReader::FindInHomePage(std::string_view key,
                                                                                               uint64_t hash,
                                                                                               RecordRef* rec) const {
  using namespace format;  // NOLINT
  const uint64_t home = hash >> (64 - shift);
  const uint64_t page_first = home & ~(kSlotsPerPage - 1);
  const uint64_t* page = SlotPtr(page_first);
  if (page == nullptr || !PageFits(page)) return Result::kBad;
  const uint64_t tag = HashTag(hash);
  const uint64_t start = home - page_first;
  for (uint64_t j = start; j < kSlotsPerPage; ++j) {
    const uint64_t s = RacyLoad(page + j);
    if (s == 0) return Result::kAbsent;
    // Robin Hood's early stop, as in Find (the tag gives an entry's home
    // while the table has at most 2^26 slots).
    if (shift <= kTagBits && ((page_first + j - (SlotTag(s) >> (kTagBits - shift))) & mask()) < j - start)
      return Result::kAbsent;
    // No PrefetchCandidate here, unlike Find: with the record's later lines
    // prefetched, peer_bench's get loop ran at 390-430 ns instead of
    // 240-260 (session 7; the copy that follows loads them soon enough).
    if (SlotTag(s) == tag) {
      if (!Record(SlotGranule(s), rec)) return Result::kBad;
      return rec->key_size == key.size() && KeyEquals(rec->key(), key) ? Result::kFound : Result::kBad;
    }
  }
  return Result::kBad;
}

class TableWriter {
 public:
  explicit TableWriter(Heap* heap) : heap_(heap) {}

  // Inline: a caller's Find reads the fields right away, and a struct
  // returned through memory by an out-of-line call can make those loads wait
  // for the stores to retire (see StoreImpl::OptimisticReader).
  TableReader Reader() const {
    format::ControlPage* ctl = heap_->ctl();
    return TableReader{heap_->base(),
                       ctl->file_size.load(std::memory_order_relaxed),
                       static_cast<uint32_t>(ctl->table_shift.load(std::memory_order_relaxed)),
                       ctl->pagemap_offset.load(std::memory_order_relaxed),
                       ctl->hash_seed,
                       heap_->map()};
  }

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
  // or in a bulk write) and returns its file offset; *local: the page belongs
  // to the running write, so the slot's change needs no undo.
  Status WritableSlot(uint64_t i, uint64_t* slot_offset, bool* local);
  Status SetSlot(uint64_t i, uint64_t value);

  Heap* const heap_;
};

}  // namespace mapkv::internal

#endif  // MAPKV_TABLE_H_
