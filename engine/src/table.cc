// table.cc: Robin Hood hash table over the page map. See table.h.
#include "table.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "hash.h"
#include "mapkv/store.h"
#include "racy.h"

namespace mapkv::internal {

using namespace format;  // NOLINT

uint32_t RecordChecksum(const RecordHeader& h, const uint8_t* key_and_value) {
  uint64_t n = uint64_t{h.key_size_m1} + 1 + h.value_size;
  return static_cast<uint32_t>(XXH3_64bits_withSeed(key_and_value, n, RecordSeed(h.value_size, h.key_size_m1)));
}

// ---------------------------------------------------------------- reader

MAPKV_OPTIMISTIC bool RecordRef::Intact() const {
  RecordHeader h;
  RacyCopy(&h, header, sizeof h);
  // Hashed with the sizes Record checked against the file, never with the
  // header read again: a writer may have placed another record here since,
  // and sizes read now could run the hash past the end of the file.
  if (h.value_size != value_size || uint64_t{h.key_size_m1} + 1 != key_size) return false;
  return RecordChecksum(h, key()) == h.checksum;
}

Status RecordChecksumError(const std::string& path, const RecordRef& rec) {
  return Status(Code::kCorruption, path + ": the record of the key (at offset " +
                                       std::to_string(rec.granule * kGranule) +
                                       ") fails its checksum; `mapkv check` lists every damaged record");
}

Status DamagedKeyError(const std::string& path, const RecordRef& rec) {
  return Status(Code::kCorruption, path + ": the record at offset " + std::to_string(rec.granule * kGranule) +
                                       ", on this key's probe with its hash tag, holds key bytes that do not hash to "
                                       "the tag (its key or its slot is damaged, and it may be this key's record); "
                                       "`mapkv check` lists it");
}

MAPKV_OPTIMISTIC bool RecordRef::KeyHasTag(uint64_t tag, uint64_t seed) const {
  // Hashed from copies taken by RacyCopy: a writer may be changing the bytes
  // (the caller validates with the seqlock), and the hash's own loads would
  // be a data race to ThreadSanitizer. XXH3 streamed gives the one-shot
  // hash that HashKey computes.
  uint8_t chunk[256];
  if (key_size <= sizeof chunk) {
    RacyCopy(chunk, key(), key_size);
    return HashTag(HashKey(std::string_view(reinterpret_cast<const char*>(chunk), key_size), seed)) == tag;
  }
  XXH3_state_t state{};  // zeroed: GCC cannot see that the reset sets what the digest reads
  XXH3_64bits_reset_withSeed(&state, seed);
  for (uint64_t done = 0; done < key_size; done += sizeof chunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof chunk, key_size - done));
    RacyCopy(chunk, key() + done, n);
    XXH3_64bits_update(&state, chunk, n);
  }
  return HashTag(XXH3_64bits_digest(&state)) == tag;
}

MAPKV_OPTIMISTIC bool TableReader::Home(uint64_t slot, uint64_t* home) const {
  if (shift <= kTagBits) {
    *home = SlotTag(slot) >> (kTagBits - shift);
    return true;
  }
  RecordRef rec;
  if (!Record(SlotGranule(slot), &rec)) return false;
  uint64_t h = HashKey(std::string_view(reinterpret_cast<const char*>(rec.key()), rec.key_size), seed);
  *home = h >> (64 - shift);
  return true;
}

MAPKV_OPTIMISTIC void TableReader::PrefetchHomeRecord(uint64_t hash) const {
  uint64_t s;
  if (LoadSlot(hash >> (64 - shift), &s) && s != 0 && SlotTag(s) == HashTag(hash)) {
    const uint8_t* r = base + (SlotGranule(s) << kGranuleShift);
    __builtin_prefetch(r);
    PrefetchCandidate(SlotGranule(s));
  }
}

// ---------------------------------------------------------------- writer

Status TableWriter::WritableSlot(uint64_t i, uint64_t* slot_offset, bool* local) {
  ControlPage* ctl = heap_->ctl();
  const uint64_t pm_off = ctl->pagemap_offset.load(std::memory_order_relaxed) + (i >> kSlotsPerPageShift) * 4;
  uint32_t phys = *heap_->At<uint32_t>(pm_off);
  *local = heap_->IsWriteLocal(phys);
  // Copy-on-write: a page the checkpoint holds is kept until the next one;
  // in a large write every page is copied once, so that its slots need no
  // undo entries (the copy is freed by a rollback).
  if (!*local && (heap_->IsCheckpointed(uint64_t{phys} * kGranulesPerPage) || heap_->bulk())) {
    uint64_t g;
    Status s = heap_->Allocate(kGranulesPerPage, kGranulesPerPage, &g);
    if (!s.ok()) return s;
    std::memcpy(heap_->base() + g * kGranule, heap_->base() + uint64_t{phys} * kPageSize, kPageSize);
    const uint64_t word_off = pm_off & ~uint64_t{7};
    uint64_t word = *heap_->At<uint64_t>(word_off);
    uint32_t halves[2];
    std::memcpy(halves, &word, 8);
    halves[(pm_off & 7) / 4] = static_cast<uint32_t>(g / kGranulesPerPage);
    std::memcpy(&word, halves, 8);
    s = heap_->SetWord(word_off, word);
    if (!s.ok()) return s;
    s = heap_->Free(uint64_t{phys} * kGranulesPerPage, kGranulesPerPage);
    if (!s.ok()) return s;
    phys = static_cast<uint32_t>(g / kGranulesPerPage);
    heap_->NoteWriteLocal(phys, 1);
    *local = true;
  }
  *slot_offset = uint64_t{phys} * kPageSize + (i & (kSlotsPerPage - 1)) * 8;
  return Status::Ok();
}

Status TableWriter::SetSlot(uint64_t i, uint64_t value) {
  uint64_t off;
  bool local;
  Status s = WritableSlot(i, &off, &local);
  if (!s.ok()) return s;
  if (local) {
    std::atomic_ref<uint64_t>(*heap_->At<uint64_t>(off)).store(value, std::memory_order_relaxed);
    return Status::Ok();
  }
  return heap_->SetWord(off, value);
}

Status TableWriter::Relocate(uint64_t index, uint64_t granule) {
  uint64_t slot;
  if (!Reader().LoadSlot(index, &slot))
    return Status(Code::kCorruption, heap_->file()->path() + ": table page out of file");
  return SetSlot(index, (slot & ~kOffsetMask) | granule);
}

Status TableWriter::Upsert(std::string_view key, uint64_t hash, uint64_t granule, RecordRef* old_rec, bool* replaced,
                           const Lookup* known) {
  ControlPage* ctl = heap_->ctl();
  TableReader r = Reader();
  uint64_t idx = 0;
  TableReader::Result found;
  uint64_t slot;
  if (known != nullptr && (known->result == TableReader::Result::kAbsent ||
                           (r.LoadSlot(known->index, &slot) && slot == MakeSlot(hash, known->rec.granule)))) {
    found = known->result;
    idx = known->index;
    *old_rec = known->rec;
  } else {
    found = r.Find(key, hash, &idx, old_rec);
  }
  switch (found) {
    case TableReader::Result::kFound:
      *replaced = true;
      return SetSlot(idx, MakeSlot(hash, granule));
    case TableReader::Result::kBad:
      return Status(Code::kCorruption, heap_->file()->path() + ": hash table probe left the file");
    case TableReader::Result::kDamagedKey:
      return DamagedKeyError(heap_->file()->path(), *old_rec);
    case TableReader::Result::kAbsent:
      break;
  }
  *replaced = false;
  const uint64_t entries = ctl->entries.load(std::memory_order_relaxed);
  if ((entries + 1) * kMaxLoadDen > r.slots() * kMaxLoadNum) {
    Status s = Resize(r.shift + 1);
    if (!s.ok()) return s;
    r = Reader();
  }
  const uint64_t m = r.mask();
  uint64_t cur = MakeSlot(hash, granule);
  uint64_t i = hash >> (64 - r.shift);
  uint64_t d = 0;
  for (uint64_t step = 0; step <= m; ++step) {
    uint64_t s;
    if (!r.LoadSlot(i, &s)) return Status(Code::kCorruption, heap_->file()->path() + ": table page out of file");
    if (s == 0) {
      Status st = SetSlot(i, cur);
      if (!st.ok()) return st;
      ctl->entries.store(entries + 1, std::memory_order_relaxed);
      return Status::Ok();
    }
    uint64_t home;
    if (!r.Home(s, &home)) return Status(Code::kCorruption, heap_->file()->path() + ": slot points out of file");
    uint64_t sd = (i - home) & m;
    if (sd < d) {  // take the place of the richer entry and carry it on
      Status st = SetSlot(i, cur);
      if (!st.ok()) return st;
      cur = s;
      d = sd;
      r = Reader();  // SetSlot may have remapped
    }
    i = (i + 1) & m;
    ++d;
  }
  return Status(Code::kCorruption, heap_->file()->path() + ": hash table has no empty slot");
}

Status TableWriter::Erase(std::string_view key, uint64_t hash, bool* found, RecordRef* old_rec) {
  ControlPage* ctl = heap_->ctl();
  TableReader r = Reader();
  uint64_t i;
  switch (r.Find(key, hash, &i, old_rec)) {
    case TableReader::Result::kAbsent:
      *found = false;
      return Status::Ok();
    case TableReader::Result::kBad:
      return Status(Code::kCorruption, heap_->file()->path() + ": hash table probe left the file");
    case TableReader::Result::kDamagedKey:
      return DamagedKeyError(heap_->file()->path(), *old_rec);
    case TableReader::Result::kFound:
      break;
  }
  if (ctl->entries.load(std::memory_order_relaxed) == 0) {
    return Status(Code::kCorruption,
                  heap_->file()->path() + ": the control page counts no entries, but the table holds the key");
  }
  *found = true;
  const uint64_t m = r.mask();
  // Backward shift: pull each following displaced entry one slot closer to home.
  for (uint64_t step = 0; step <= m; ++step) {
    uint64_t next = (i + 1) & m;
    uint64_t s;
    if (!r.LoadSlot(next, &s)) return Status(Code::kCorruption, heap_->file()->path() + ": table page out of file");
    uint64_t home = next;
    if (s != 0 && !r.Home(s, &home)) {
      return Status(Code::kCorruption, heap_->file()->path() + ": slot points out of file");
    }
    if (s == 0 || home == next) {
      Status st = SetSlot(i, 0);
      if (!st.ok()) return st;
      break;
    }
    Status st = SetSlot(i, s);
    if (!st.ok()) return st;
    r = Reader();
    i = next;
  }
  ctl->entries.store(ctl->entries.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  return Status::Ok();
}

Status TableWriter::CreateTable(uint32_t shift, uint64_t* table_granule, uint64_t* pagemap) {
  const uint64_t slots = uint64_t{1} << shift;
  const uint64_t pages = slots / kSlotsPerPage;
  uint64_t tg, pg;
  const uint64_t pm_bytes = PagemapBytes(shift);
  Status s = heap_->Allocate(pm_bytes / kGranule, 1, &pg);  // small: first, into the first hole
  if (!s.ok()) return s;
  s = heap_->Allocate(pages * kGranulesPerPage, kGranulesPerPage, &tg);
  if (!s.ok()) return s;
  std::memset(heap_->base() + tg * kGranule, 0, pages * kPageSize);
  heap_->NoteWriteLocal(tg / kGranulesPerPage, pages);
  uint32_t* pm = heap_->At<uint32_t>(pg * kGranule);
  for (uint64_t p = 0; p < pages; ++p) pm[p] = static_cast<uint32_t>(tg / kGranulesPerPage + p);
  *table_granule = tg;
  *pagemap = pg * kGranule;
  return Status::Ok();
}

Status TableWriter::Resize(uint32_t shift) {
  ControlPage* ctl = heap_->ctl();
  if (shift > kMaxTableShift) {
    return Status(Code::kNoSpace, heap_->file()->path() + ": hash table at its format limit");
  }
  const TableReader old_before = Reader();
  const uint64_t old_pagemap = old_before.pagemap;
  const uint64_t old_pages = old_before.slots() / kSlotsPerPage;
  const uint64_t old_pm_bytes = ctl->pagemap_bytes;
  uint64_t tg, pm;
  Status s = CreateTable(shift, &tg, &pm);
  if (!s.ok()) return s;
  const TableReader old = Reader();  // the mapping may have moved
  uint64_t* table = heap_->At<uint64_t>(tg * kGranule);
  const uint64_t m = (uint64_t{1} << shift) - 1;
  TableReader fresh = old;
  fresh.shift = shift;
  fresh.pagemap = pm;
  for (uint64_t i = 0; i < old.slots(); ++i) {
    uint64_t cur;
    if (!old.LoadSlot(i, &cur)) return Status(Code::kCorruption, heap_->file()->path() + ": table page out of file");
    if (cur == 0) continue;
    uint64_t home;
    if (!fresh.Home(cur, &home)) return Status(Code::kCorruption, heap_->file()->path() + ": slot points out of file");
    uint64_t d = 0;
    for (uint64_t j = home;; j = (j + 1) & m, ++d) {
      if (table[j] == 0) {
        table[j] = cur;
        break;
      }
      uint64_t h2;
      fresh.Home(table[j], &h2);  // already checked when it was placed
      uint64_t sd = (j - h2) & m;
      if (sd < d) {
        std::swap(table[j], cur);
        d = sd;
      }
    }
  }
  ctl->table_shift.store(shift, std::memory_order_relaxed);  // logged by Heap::Begin
  ctl->pagemap_offset.store(pm, std::memory_order_relaxed);
  ctl->pagemap_bytes = PagemapBytes(shift);
  s = heap_->FreePages(old_pagemap, old_pages);
  if (!s.ok()) return s;
  return heap_->Free(old_pagemap / kGranule, old_pm_bytes / kGranule);
}

}  // namespace mapkv::internal
