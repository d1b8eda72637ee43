// format.h: every on-disk constant and structure of the mapkv file, format v1.
//
// docs/FORMAT.md is the prose description; this header is its single source
// in code. Nothing else in the engine hard-codes an offset or a size.
//
// File layout (all numbers little-endian; the magic exposes a byte-order
// mistake because it reads differently byte-swapped):
//
//   offset 0       MetaPage slot 0   \  two checkpoint copies; the valid one with
//   offset 4096    MetaPage slot 1   /  the higher generation wins (torn-write safe)
//   offset 8192    ControlPage          live shared state: seqlock, counters, locks
//   offset 12288   undo log             kUndoCapacity entries for the running write
//   offset 65536   heap                 16-byte granules; everything else lives here:
//                                        records, hash-table pages, the page map of
//                                        the table, the allocation map, snapshots of
//                                        the page map, the change ring
//
// Hash table: 2^k slots of 8 bytes, Robin Hood linear probing. A slot holds
// (tag << 38) | granule, where granule is the record's offset / 16 and tag the
// top 26 bits of the key's hash; 0 is an empty slot. The table is an array of
// 4 KiB logical pages; the page map translates a logical page to the physical
// page that holds it now, so a page referenced by the last checkpoint is
// copied before it is changed (copy-on-write) and survives a power cut.
//
// Record: RecordHeader (12 bytes), key, value, padded to 16 bytes.
#ifndef MAPKV_FORMAT_H_
#define MAPKV_FORMAT_H_

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace mapkv::internal::format {

// The engine reads and writes the mapping in place, so it runs only where the
// file's byte order is native.
static_assert(std::endian::native == std::endian::little, "mapkv v1 runs on little-endian hosts only");

// ---- versions -------------------------------------------------------------
// Major: an incompatible layout; a newer major is refused. Minor: additions an
// older reader may ignore; an older minor opens.
inline constexpr uint16_t kMajor = 1;
inline constexpr uint16_t kMinor = 0;

// "MAPKVm01" read as a little-endian u64. Byte-swapped it reads "10mVKPAM",
// so a big-endian writer would be caught by the magic check.
inline constexpr uint64_t kMetaMagic = 0x31306D564B50414Dull;
// "MAPKVc01": the control page.
inline constexpr uint64_t kControlMagic = 0x313063564B50414Dull;

// ---- geometry ---------------------------------------------------------------
inline constexpr uint64_t kPageSize = 4096;  // unit of copy-on-write and of torn writes
inline constexpr uint64_t kGranule = 16;     // allocation unit; records are 16-aligned
inline constexpr uint32_t kGranuleShift = 4;
inline constexpr uint64_t kMetaOffset[2] = {0, 4096};
inline constexpr uint64_t kControlOffset = 8192;
inline constexpr uint64_t kUndoOffset = 12288;
inline constexpr uint64_t kHeapOffset = 65536;  // first byte the allocator manages
inline constexpr uint64_t kUndoEntrySize = 16;
inline constexpr uint64_t kUndoCapacity = (kHeapOffset - kUndoOffset) / kUndoEntrySize;  // 3328

// Granules of one page; pages are allocated page-aligned.
inline constexpr uint64_t kGranulesPerPage = kPageSize / kGranule;

// ---- hash table -------------------------------------------------------------
inline constexpr uint32_t kSlotBytes = 8;
inline constexpr uint64_t kSlotsPerPage = kPageSize / kSlotBytes;  // 512
inline constexpr uint32_t kSlotsPerPageShift = 9;
inline constexpr uint32_t kOffsetBits = 38;  // granule index: records start below 4 TiB
// The largest file: every record then starts below 4 TiB, and every page
// number fits a u32. Heap::Grow refuses to pass it (kNoSpace).
inline constexpr uint64_t kMaxFileSize = uint64_t{1} << (kOffsetBits + kGranuleShift);
inline constexpr uint32_t kTagBits = 64 - kOffsetBits;  // 26: home slot known up to 2^26 slots
inline constexpr uint64_t kOffsetMask = (uint64_t{1} << kOffsetBits) - 1;
inline constexpr uint32_t kMinTableShift = 9;  // one page
inline constexpr uint32_t kMaxTableShift = 40;
// Bytes of the page map (and of each snapshot of it) for 2^shift slots: a
// u32 per table page, rounded up to whole granules.
inline constexpr uint64_t PagemapBytes(uint32_t shift) {
  return ((uint64_t{1} << shift) / kSlotsPerPage * 4 + kGranule - 1) / kGranule * kGranule;
}
// Grow when entries would exceed 3/4 of the slots. A lookup stays short at
// higher loads under Robin Hood, but an insert shifts every entry up to the
// next empty slot, about (1 + 1/(1-a)^2)/2 of them: 8.5 at 3/4 against 32 at
// 7/8, each a slot write and an undo entry. Between a doubling (load 3/8) and
// the next (3/4), the table costs 21.3 to 10.7 bytes an entry.
inline constexpr uint64_t kMaxLoadNum = 3;
inline constexpr uint64_t kMaxLoadDen = 4;

inline constexpr uint64_t MakeSlot(uint64_t hash, uint64_t granule) {
  return ((hash >> kOffsetBits) << kOffsetBits) | granule;
}
inline constexpr uint64_t SlotGranule(uint64_t slot) { return slot & kOffsetMask; }
inline constexpr uint64_t SlotTag(uint64_t slot) { return slot >> kOffsetBits; }
inline constexpr uint64_t HashTag(uint64_t hash) { return hash >> kOffsetBits; }

// ---- records ----------------------------------------------------------------
struct RecordHeader {
  uint32_t value_size;   // bytes of value, at most 2^30
  uint16_t key_size_m1;  // bytes of key minus one (keys are 1..65536 bytes)
  uint16_t flags;        // 0 in v1
  uint32_t checksum;     // low 32 bits of XXH3_64(key ++ value, seed = RecordSeed(...))
};
static_assert(sizeof(RecordHeader) == 12, "record header must stay 12 bytes");
inline constexpr uint64_t kRecordHeaderSize = sizeof(RecordHeader);
inline constexpr uint64_t RecordSeed(uint32_t value_size, uint16_t key_size_m1) {
  return (uint64_t{value_size} << 16) | key_size_m1;
}
inline constexpr uint64_t RecordGranules(uint64_t key_size, uint64_t value_size) {
  return (kRecordHeaderSize + key_size + value_size + kGranule - 1) >> kGranuleShift;
}

// ---- allocation map -----------------------------------------------------------
// One word triple per 64 granules (1 KiB of file). A granule is
//   free            used=0                   (fresh and freed mean nothing; see below)
//   checkpointed    used=1 fresh=0 freed=0   (referenced by the last checkpoint)
//   fresh           used=1 fresh=1 freed=0   (allocated since the last checkpoint)
//   pending free    used=1 fresh=0 freed=1   (freed since the last checkpoint, but the
//                                             checkpoint still references it)
//   freed fresh     used=1 fresh=1 freed=1   (freed by the write that allocated it;
//                                             free at its commit)
// Freeing a fresh granule makes it free at once; freeing a checkpointed one makes
// it pending, and a checkpoint turns pending granules free. So space the last
// checkpoint needs is never reused before the next checkpoint is durable.
// Making a run free stores used, fresh and freed one after another, so a writer
// killed in between leaves a free granule with fresh or freed set; readers of
// the map look at fresh and freed only where used is set, and an allocation
// sets all three.
struct AllocWord {
  uint64_t used;
  uint64_t fresh;
  uint64_t freed;
};
static_assert(sizeof(AllocWord) == 24, "alloc word triple is 24 bytes");
inline constexpr uint64_t kGranulesPerAllocWord = 64;

// ---- meta page (checkpoint) ---------------------------------------------------
// Written only by a checkpoint, to slot generation % 2, after everything it
// references is on stable storage. Its checksum covers bytes [0, checksum).
struct MetaPage {
  uint64_t magic;       // kMetaMagic
  uint16_t major;       // kMajor
  uint16_t minor;       // kMinor
  uint32_t page_size;   // kPageSize
  uint32_t granule;     // kGranule
  uint32_t flags;       // kMetaLittleEndian
  uint64_t generation;  // 1 at creation, +1 per checkpoint
  uint64_t hash_seed;   // seed of XXH3 for keys, random per store
  // Table at this checkpoint.
  uint32_t table_shift;  // log2(slots)
  uint32_t reserved0;
  uint64_t entries;
  uint64_t snapshot_offset;    // frozen copy of the page map (u32 page numbers)
  uint64_t snapshot_checksum;  // XXH3_64 of the snapshot
  uint64_t pagemap_offset;     // the live page map extent (rewritten from the snapshot on recovery)
  // Allocation map at this checkpoint.
  uint64_t alloc_offset;
  uint64_t alloc_words;     // AllocWord triples
  uint64_t alloc_checksum;  // XXH3_64 of the map with pending granules released
  uint64_t heap_end;        // high-water mark of allocation
  uint64_t live_bytes;      // bytes of live records
  uint64_t change_seq;
  uint64_t ring_offset;              // change ring extent (issue: watch)
  uint64_t ring_capacity;            // entries
  uint64_t snapshot_slot_offset[2];  // the two snapshot extents (alternating by generation)
  uint64_t snapshot_slot_bytes[2];
  uint8_t boot_id[16];    // boot in which this checkpoint was written
  uint64_t reserved[32];  // zero in v1; room for minor versions
  uint64_t checksum;      // XXH3_64 of the bytes before this field
};
static_assert(sizeof(MetaPage) <= kPageSize, "meta page fits one page");
static_assert(offsetof(MetaPage, checksum) % 8 == 0, "checksum aligned");
inline constexpr uint32_t kMetaLittleEndian = 1;

// ---- control page (live) --------------------------------------------------------
// Shared by every process that maps the store; never checksummed (it changes at
// every write). It is trusted only within the boot that wrote it (boot_id); after
// a reboot it is rebuilt from the newest meta page.
//
// Line 0 is what every reader loads; writers change it twice per write.
struct alignas(64) ControlPage {
  // -- cache line 0: the read path
  std::atomic<uint64_t> seq;             // seqlock: odd while a writer changes reader-visible state
  std::atomic<uint64_t> file_size;       // bytes reserved; a mapping must cover it before use
  std::atomic<uint64_t> table_shift;     // log2(slots)
  std::atomic<uint64_t> pagemap_offset;  // live page map: u32 physical page per logical page
  std::atomic<uint64_t> entries;
  std::atomic<uint64_t> change_seq;  // advanced by every change, inside its write (undo-logged)
  // change_seq as of the last committed write: what watchers read. Stored
  // after the commit while `seq` is still odd, so a writer killed between
  // its commit and this store is finished by recovery (which sets it from
  // change_seq); readers never see a change that is later rolled back.
  std::atomic<uint64_t> change_published;
  std::atomic<uint32_t> reserved_line0[2];  // 0 in v1; nothing uses or waits on them
  // -- cache line 1: lock coordination and change notification
  alignas(64) std::atomic<uint32_t> reserved_line1;  // 0 in v1
  std::atomic<uint32_t> lock_released;               // the holder bumps it and wakes on release
  std::atomic<uint64_t> writer_pid;                  // pid of the process holding the write lock (0: none)
  std::atomic<uint32_t> lock_waiters;                // processes waiting for the file lock (wake on release)
  std::atomic<uint32_t> writers_waiting;             // writers waiting: new readers hold back (no starvation)
  std::atomic<uint32_t> change_waiters;              // processes in WaitForChange (each holds kChangeWaiterByte shared)
  std::atomic<uint32_t> change_futex;  // bumped and woken by a writer that publishes while change_waiters > 0
  // -- cache line 2+: writer state (read and written under the write lock)
  alignas(64) uint64_t magic;  // kControlMagic
  uint64_t hash_seed;
  uint8_t boot_id[16];       // boot that wrote this page
  uint64_t generation;       // generation of the checkpoint this state follows
  uint64_t dirty;            // 1: changed since that checkpoint
  uint64_t release_pending;  // generation of a checkpoint whose release is running
  uint64_t heap_end;         // high-water mark of allocation
  uint64_t alloc_offset;     // allocation map extent
  uint64_t alloc_words;
  uint64_t alloc_cursor;  // next-fit cursor (granule)
  uint64_t live_bytes;
  uint64_t pending_bytes;  // bytes waiting for a checkpoint to become free
  uint64_t pagemap_bytes;  // bytes of the live page map extent
  uint64_t snapshot_slot_offset[2];
  uint64_t snapshot_slot_bytes[2];
  uint64_t ring_offset;              // change ring extent (0: none yet)
  uint64_t ring_capacity;            // ChangeEntry slots
  std::atomic<uint64_t> undo_count;  // entries of the running write; 0: none in progress
  uint64_t undo_chain;               // first UndoChunk of the running write past the fixed log (0: none)
  // Changes with a sequence number <= ring_floor are not in the ring (made
  // before it existed, or before a recovery from a checkpoint): a watcher
  // behind it must rescan.
  uint64_t ring_floor;
  // change_seq + 1 as of the last close that was alone, compacted the tail
  // (or found it unchanged), checkpointed and found no damaged record;
  // 0: unknown. A hint: while it matches, nothing has
  // changed since, and a close skips the compaction's scan of the allocation
  // map and the table (a store of 10M keys took 0.13 s to close without it).
  uint64_t tail_checked_seq;
  uint64_t reserved[21];
};
static_assert(sizeof(ControlPage) <= kPageSize, "control page fits one page");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared atomics must be lock-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "shared atomics must be lock-free");
static_assert(sizeof(std::atomic<uint64_t>) == 8, "atomic u64 has the size of u64");

// File offset of a field of the mapped control page `ctl` (a wait word's
// offset names its event on Windows).
inline uint64_t ControlOffsetOf(const ControlPage* ctl, const void* field) {
  return kControlOffset +
         static_cast<uint64_t>(static_cast<const uint8_t*>(field) - reinterpret_cast<const uint8_t*>(ctl));
}

// ---- undo log ---------------------------------------------------------------
// A write records, before each change, how to take it back. Its commit is
// undo_count = 0. Recovery after a killed writer applies entries in reverse.
// A free inside a write only sets the `freed` bits; space that was fresh is
// made free after the commit (so a rolled-back write finds every byte it
// freed intact), space the checkpoint references at the next checkpoint.
enum class UndoKind : uint64_t {
  kWord = 0,        // restore the u64 at file offset `target` to `value`
  kAllocated = 1,   // granules [target, target+value) were allocated: make them free
  kFreed = 2,       // granules [target, target+value) were freed: clear their freed bits
  kFreedPages = 3,  // the `value` pages listed by the page map at `target` were freed:
                    // clear their freed bits
};
struct UndoEntry {
  uint64_t kind_target;  // kind << 56 | target
  uint64_t value;
};
static_assert(sizeof(UndoEntry) == kUndoEntrySize, "undo entry size");
inline constexpr uint32_t kUndoKindShift = 56;
inline UndoKind KindOf(const UndoEntry& e) { return static_cast<UndoKind>(e.kind_target >> kUndoKindShift); }
inline uint64_t TargetOf(const UndoEntry& e) { return e.kind_target & ((uint64_t{1} << kUndoKindShift) - 1); }

// A write that outgrows the fixed log (a large batch) continues it in chunks
// allocated from the heap like any other extent: entry i of the write lives
// in the fixed log when i < kUndoCapacity, else in the chain that starts at
// ControlPage::undo_chain, each chunk holding `capacity` entries after its
// header. A chunk is linked before the first entry that lands in it is
// counted, so recovery can always walk to every counted entry. Chunks are
// freed when their write commits or rolls back.
struct UndoChunk {
  uint64_t next;      // file offset of the next chunk, 0 at the end of the chain
  uint64_t capacity;  // entries that follow this header
};
static_assert(sizeof(UndoChunk) == kUndoEntrySize, "a chunk header takes the place of one entry");

// ---- change ring (watch) -------------------------------------------------------
// A bounded ring of the newest changes, in one heap extent of ring_capacity
// entries of 64 bytes (page-aligned; capacity a multiple of 64, so the extent
// is whole pages). The change with sequence number s lives in slot
// (s - 1) % ring_capacity, so the ring needs no head of its own: the control
// page's change_seq is its head, restored with it by a rollback.
//
// A write fills the entries of its changes in slots past the committed head,
// overwriting the oldest entries, with no undo: a rolled-back write leaves
// its entries past the restored head (never read: readers stop at
// change_published) and the oldest entries it overwrote are lost, which a
// reader sees as a sequence mismatch and reports as "rescan". Each entry is
// its own seqlock: `seq` is 0 while its writer fills it and is stored last,
// so a reader copies the entry, re-reads `seq`, and keeps the copy only when
// both reads give the sequence number it wanted.
inline constexpr uint64_t kChangeKeyBytes = 40;  // a longer key keeps its first 40 bytes and its hash
inline constexpr uint8_t kChangePut = 1;
inline constexpr uint8_t kChangeErase = 2;
inline constexpr uint8_t kChangeKeyTruncated = 1;                // flags bit: key_size > kChangeKeyBytes
inline constexpr uint64_t kRingCapacityUnit = 64;                // capacity granularity (64 entries = one page)
inline constexpr uint64_t kMaxRingCapacity = uint64_t{1} << 24;  // 1 GiB of ring

// Change sequence numbers are never handed out twice, across power cuts
// too: a writer checkpoints once the sequence runs kCheckpointEveryChanges
// past the newest checkpoint's, so no more than that (plus one write's
// changes) are ever lost, and a recovery from a checkpoint restarts the
// sequence kRestartGap past the checkpoint's (docs/FORMAT.md, Recovery).
inline constexpr uint64_t kCheckpointEveryChanges = uint64_t{1} << 39;
inline constexpr uint64_t kRestartGap = uint64_t{1} << 40;
struct ChangeEntry {
  uint64_t seq;                  // sequence number of this change; 0 while being written
  uint64_t key_hash;             // XXH3_64(key, seed = hash_seed), as the table hashes it
  uint32_t key_size;             // bytes of the whole key
  uint8_t op;                    // kChangePut or kChangeErase
  uint8_t flags;                 // kChangeKeyTruncated
  uint16_t reserved;             // 0
  uint8_t key[kChangeKeyBytes];  // the key, or its first 40 bytes; zero-padded
};
static_assert(sizeof(ChangeEntry) == 64, "a change entry is one cache line");
inline constexpr uint64_t kChangeEntrySize = sizeof(ChangeEntry);

}  // namespace mapkv::internal::format

#endif  // MAPKV_FORMAT_H_
