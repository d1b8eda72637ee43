// check.cc: GetStats (cheap, bounded time) and Check (a full walk).
//
// Check verifies, under the read lock: the newest meta page and its page-map
// snapshot checksum; the control page's offsets; every slot (record inside
// the file, record checksum, slot tag equal to the key's hash, Robin Hood
// order); the entry and live-byte counts; and the allocation map against what
// the structures claim: every claimed granule is allocated, no two structures
// overlap, and nothing is allocated that no structure claims (a leak), except
// space waiting for a checkpoint.
#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <vector>

#include "hash.h"
#include "store_impl.h"

namespace mapkv::internal {

using namespace format;  // NOLINT

Status StoreImpl::GetStats(Stats* st) const {
  Status s = LockRead();
  if (!s.ok()) return s;
  ReadUnlocker unlock{this};
  *st = Stats{};
  const MetaPage* meta = nullptr;
  s = ChooseMeta(&meta);
  if (!s.ok()) return s;
  s = ValidateControl();  // the allocation map is read below: it must lie inside the file
  if (!s.ok()) return s;
  st->format_major = meta->major;
  st->format_minor = meta->minor;
  st->checkpoint_generation = meta->generation;
  TableReader r = ReaderSnapshot();
  st->entries = ctl_->entries.load();
  st->slots = r.slots();
  st->load_factor = static_cast<double>(st->entries) / static_cast<double>(st->slots);
  uint64_t file_size = 0;
  s = file_->Size(&file_size);
  if (!s.ok()) return s;
  st->file_bytes = file_size;
  st->live_bytes = ctl_->live_bytes;
  st->garbage_bytes = ctl_->pending_bytes;
  st->table_bytes = r.slots() * kSlotBytes;
  st->change_seq = ctl_->change_seq.load();
  uint64_t used = 0;
  const AllocWord* m = heap_->map();
  const uint64_t words = std::min<uint64_t>(ctl_->alloc_words, (ctl_->file_size.load() + 1023) / 1024);
  for (uint64_t i = 0; i < words; ++i) used += static_cast<uint64_t>(std::popcount(m[i].used));
  st->heap_bytes = used * kGranule;
  st->free_bytes = file_size > st->heap_bytes ? file_size - st->heap_bytes : 0;
  // Probe lengths from a sample of at most 64 Ki slots (stats stay fast).
  const uint64_t sample = std::min<uint64_t>(r.slots(), 65536);
  const uint64_t stride = r.slots() / sample;
  uint64_t probes = 0, counted = 0;
  for (uint64_t k = 0; k < sample; ++k) {
    uint64_t i = k * stride, slot, home;
    if (!r.LoadSlot(i, &slot) || slot == 0 || !r.Home(slot, &home)) continue;
    uint64_t dist = (i - home) & r.mask();
    st->max_probe = std::max(st->max_probe, dist + 1);
    probes += dist + 1;
    ++counted;
  }
  st->mean_probe = counted ? static_cast<double>(probes) / static_cast<double>(counted) : 0.0;
  return Status::Ok();
}

Status StoreImpl::Check(CheckReport* report) const {
  Status s = LockRead();
  if (!s.ok()) return s;
  ReadUnlocker unlock{this};
  *report = CheckReport{};
  auto problem = [&](std::string text) { report->problems.push_back(std::move(text)); };

  const MetaPage* meta = nullptr;
  s = ChooseMeta(&meta);
  if (!s.ok()) {
    problem(s.message());
    return Status::Ok();
  }
  const uint8_t* base = maps_->Current()->base;
  if (XXH3_64bits(base + meta->snapshot_offset, PagemapBytes(meta->table_shift)) != meta->snapshot_checksum) {
    problem("meta page generation " + std::to_string(meta->generation) + ": page map snapshot checksum mismatch");
  }
  s = ValidateControl();
  if (s.ok()) s = CheckAllocMapMarks();
  if (!s.ok()) {
    problem(s.message());
    return Status::Ok();
  }

  const uint64_t fs = ctl_->file_size.load();
  const uint64_t granules = std::min(fs / kGranule, ctl_->alloc_words * kGranulesPerAllocWord);
  std::vector<uint64_t> claimed((granules + 63) / 64, 0);
  auto claim = [&](uint64_t off, uint64_t bytes, const std::string& what) {
    // Against the granules counted above too: a file_size that is not a
    // multiple of 16 (a damaged file) leaves a last granule uncounted.
    if (off % kGranule != 0 || off > fs || bytes > fs - off || (off + bytes + kGranule - 1) / kGranule > granules) {
      problem(what + " at offset " + std::to_string(off) + " (" + std::to_string(bytes) +
              " bytes) is outside the file");
      return;
    }
    const AllocWord* m = heap_->map();
    uint64_t first = off / kGranule, n = (bytes + kGranule - 1) / kGranule;
    bool overlap = false, unallocated = false, freed = false;
    for (uint64_t g = first; g < first + n; ++g) {
      uint64_t bit = uint64_t{1} << (g % 64);
      if (claimed[g / 64] & bit) overlap = true;
      claimed[g / 64] |= bit;
      if (!(m[g / 64].used & bit)) unallocated = true;
      if (m[g / 64].freed & bit) freed = true;  // the next checkpoint would release it
    }
    if (overlap) problem(what + " at offset " + std::to_string(off) + " overlaps another structure");
    if (unallocated) problem(what + " at offset " + std::to_string(off) + " is not marked allocated");
    if (freed) problem(what + " at offset " + std::to_string(off) + " is marked freed while in use");
  };
  claim(0, kHeapOffset, "header");
  claim(ctl_->alloc_offset, (ctl_->alloc_words * sizeof(AllocWord) + kPageSize - 1) / kPageSize * kPageSize,
        "allocation map");
  claim(ctl_->pagemap_offset.load(), ctl_->pagemap_bytes, "page map");
  for (int i = 0; i < 2; ++i) {
    if (ctl_->snapshot_slot_bytes[i] != 0) {
      claim(ctl_->snapshot_slot_offset[i], ctl_->snapshot_slot_bytes[i], "page map snapshot " + std::to_string(i));
    }
  }
  if (ctl_->ring_capacity != 0) claim(ctl_->ring_offset, ctl_->ring_capacity * kChangeEntrySize, "change ring");
  TableReader r = ReaderSnapshot();
  const uint32_t* pm = reinterpret_cast<const uint32_t*>(base + r.pagemap);
  for (uint64_t p = 0; p < r.slots() / kSlotsPerPage; ++p) {
    claim(uint64_t{pm[p]} * kPageSize, kPageSize, "table page " + std::to_string(p));
  }
  if (!report->ok()) return Status::Ok();  // the walk below needs sound table pages

  // Robin Hood order: an entry is at most one slot further from home than the
  // one before it, and at home right after an empty slot. Slot 0's
  // predecessor is the last slot (a damaged record there gives no distance).
  uint64_t entries = 0, live = 0;
  int64_t prev_dist = 0;
  bool have_prev = false;
  {
    uint64_t slot = 0;
    RecordRef rec;
    r.LoadSlot(r.mask(), &slot);
    if (slot == 0) {
      have_prev = true;
      prev_dist = -1;
    } else if (r.Record(SlotGranule(slot), &rec)) {
      const uint64_t hash = HashKey(std::string_view(reinterpret_cast<const char*>(rec.key()), rec.key_size), seed_);
      prev_dist = static_cast<int64_t>((r.mask() - (hash >> (64 - r.shift))) & r.mask());
      have_prev = true;
    }
  }
  for (uint64_t i = 0; i < r.slots(); ++i) {
    uint64_t slot = 0;
    r.LoadSlot(i, &slot);  // pages were checked above
    if (slot == 0) {
      have_prev = true;
      prev_dist = -1;
      continue;
    }
    ++entries;
    RecordRef rec;
    const std::string where = "slot " + std::to_string(i);
    if (!r.Record(SlotGranule(slot), &rec)) {
      problem(where + ": record at granule " + std::to_string(SlotGranule(slot)) + " does not fit in the file");
      have_prev = false;
      continue;
    }
    claim(rec.granule * kGranule, rec.granules() * kGranule, where + " record");
    live += rec.granules() * kGranule;
    RecordHeader h;
    std::memcpy(&h, rec.header, sizeof h);
    if (RecordChecksum(h, rec.key()) != h.checksum) problem(where + ": record checksum mismatch");
    // The checksum does not cover the header's flags.
    if (h.flags != 0) problem(where + ": record flags are " + std::to_string(h.flags) + " (0 in this format version)");
    const uint64_t hash = HashKey(std::string_view(reinterpret_cast<const char*>(rec.key()), rec.key_size), seed_);
    if (HashTag(hash) != SlotTag(slot)) problem(where + ": slot tag does not match the key's hash");
    const auto dist = static_cast<int64_t>((i - (hash >> (64 - r.shift))) & r.mask());
    if (have_prev && dist > prev_dist + 1) problem(where + ": entry out of Robin Hood order");
    prev_dist = dist;
    have_prev = true;
    ++report->entries_checked;
  }
  if (entries != ctl_->entries.load()) {
    problem("table holds " + std::to_string(entries) + " entries, the control page counts " +
            std::to_string(ctl_->entries.load()));
  }
  if (live != ctl_->live_bytes) {
    problem("records take " + std::to_string(live) + " bytes, the control page counts " +
            std::to_string(ctl_->live_bytes));
  }
  // Leaks: allocated, not waiting for a checkpoint, claimed by nothing.
  const AllocWord* m = heap_->map();
  uint64_t leaked = 0, first_leak = 0;
  for (uint64_t w = 0; w < claimed.size(); ++w) {
    uint64_t valid = (w + 1) * 64 <= granules ? ~uint64_t{0} : ((uint64_t{1} << (granules % 64)) - 1);
    uint64_t leak = m[w].used & ~m[w].freed & ~claimed[w] & valid;
    if (leak != 0 && leaked == 0) first_leak = w * 64 + static_cast<uint64_t>(std::countr_zero(leak));
    leaked += static_cast<uint64_t>(std::popcount(leak));
  }
  if (leaked != 0) {
    problem(std::to_string(leaked * kGranule) + " bytes allocated but used by nothing (first at offset " +
            std::to_string(first_leak * kGranule) + ")");
  }
  // A free granule's fresh and freed bits are not checked: they mean nothing
  // (docs/FORMAT.md), and a writer killed while it releases a run (MarkRange
  // stores used, fresh and freed one after another) leaves them set.
  // Past the end of the file the map must be clear: growth takes that space
  // as free without looking.
  uint64_t marked_beyond = 0;
  for (uint64_t w = granules / 64; w < ctl_->alloc_words; ++w) {
    const uint64_t past = w == granules / 64 ? ~((uint64_t{1} << (granules % 64)) - 1) : ~uint64_t{0};
    marked_beyond += static_cast<uint64_t>(std::popcount((m[w].used | m[w].fresh | m[w].freed) & past));
  }
  if (ctl_->release_pending == 0 && ctl_->generation > meta->generation) {
    problem("the newest meta page (generation " + std::to_string(ctl_->generation) + ", slot " +
            std::to_string(ctl_->generation % 2) + ") is damaged; the next checkpoint rewrites it");
  }
  if (marked_beyond != 0) {
    problem("allocation map marks " + std::to_string(marked_beyond) + " granules past the end of the file (" +
            std::to_string(fs) + " bytes)");
  }
  return Status::Ok();
}

}  // namespace mapkv::internal
