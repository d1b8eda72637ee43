// open.cc: create, open, validate, recover and close a store.
//
// Creation is atomic: the new store is built and synced in a temporary file
// next to the target and published with link(2), which fails if the target
// appeared meanwhile. So `path` never names a half-built store, and two
// processes creating the same store at once both end up opening one store.
//
// Opening trusts nothing in the file. Both meta pages are checked (magic,
// version, checksum, geometry, every offset against the file size) and the
// newest valid one is chosen. The control page is trusted only when it was
// written in the current boot (its boot id) for this store (its hash seed):
//  - same boot: the page cache holds everything every process wrote; a
//    writer killed mid-write left its undo log, which is applied.
//  - another boot: the page cache may have been lost in a power cut or an OS
//    crash, so the live state is rebuilt from the newest meta page: its page
//    map snapshot is copied back, and its allocation map is used when its
//    checksum still matches, else rebuilt from the table.
// A read-only open never writes; when the file needs recovery it says so.
//
// A named shared-memory store ("shm:NAME") has no directory to publish a
// finished file into, so it is built in place: the first writable opener
// finds it empty and initializes it while holding the write lock, which
// every other opener (Attach) takes before it reads anything.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "hash.h"
#include "store_impl.h"

namespace mapkv::internal {

using namespace format;  // NOLINT

namespace {

uint64_t RoundUp(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

// The change sequence a recovery from a checkpoint restarts at: past every
// number handed out before the power cut, so that a watcher's number from
// then reads as lost (kRescan) and is never taken for a new change's. Those
// numbers are gone with the control page, but writers checkpoint before the
// sequence runs kCheckpointEveryChanges past the last checkpoint's (a write
// of more than 2^39 changes cannot be built in memory), so they are all
// below the checkpoint's plus kRestartGap. The control page cannot tell a
// clean shutdown from a cut that came after later writes: the gap is taken
// after every restart of the machine. (Not a clock: in nanoseconds the
// sequence would pass 2^53, where JSON readers that keep numbers as doubles
// round it; with this gap, after 8192 such restarts.)
uint64_t RestartSequence(uint64_t checkpoint_seq) {
  return checkpoint_seq > ~uint64_t{0} - kRestartGap ? ~uint64_t{0} : checkpoint_seq + kRestartGap;
}

uint64_t RandomSeed() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd();
}

// Checks one meta page against the file; empty string when valid.
std::string MetaProblem(const MetaPage& m, uint64_t file_size, bool* newer_version) {
  *newer_version = false;
  if (m.magic != kMetaMagic) return "bad magic";
  if (m.major > kMajor) {
    *newer_version = true;
    return "format version " + std::to_string(m.major) + "." + std::to_string(m.minor) +
           " is newer than this library's " + std::to_string(kMajor) + "." + std::to_string(kMinor);
  }
  if (m.major < 1) return "format version 0 is not a released format";
  if (MetaChecksum(m) != m.checksum) return "checksum mismatch";
  if (m.page_size != kPageSize || m.granule != kGranule) return "unsupported page or granule size";
  if (!(m.flags & kMetaLittleEndian)) return "not little-endian";
  if (m.table_shift < kMinTableShift || m.table_shift > kMaxTableShift) return "bad table size";
  // Everything lies in the part of the file that the allocation map covers
  // (the store's length then; the file may be longer): a structure past it
  // would be freed by marks past the map's end.
  const uint64_t covered =
      m.alloc_words <= (uint64_t{1} << 40) ? m.alloc_words * kGranulesPerAllocWord * kGranule : file_size;
  const uint64_t store_size = std::min(file_size, covered);
  auto in_file = [&](uint64_t off, uint64_t len) {
    return off >= kHeapOffset && off <= store_size && len <= store_size - off;
  };
  const uint64_t pm = PagemapBytes(m.table_shift);
  if (!in_file(m.snapshot_offset, pm) || !in_file(m.pagemap_offset, pm)) return "page map out of file";
  if (m.snapshot_offset % kGranule != 0 || m.pagemap_offset % kGranule != 0 || m.alloc_offset % kGranule != 0) {
    return "misaligned offset";
  }
  if (m.alloc_words == 0 || m.alloc_words > (uint64_t{1} << 40) ||
      !in_file(m.alloc_offset, m.alloc_words * sizeof(AllocWord))) {
    return "allocation map out of file";
  }
  if (m.heap_end > file_size || m.heap_end < kHeapOffset ||
      m.heap_end > m.alloc_words * kGranulesPerAllocWord * kGranule) {
    return "heap end out of file";
  }
  if (m.entries >= (uint64_t{1} << m.table_shift)) return "more entries than slots";
  if (m.ring_capacity != 0 &&
      (m.ring_capacity > kMaxRingCapacity || m.ring_capacity % kRingCapacityUnit != 0 ||
       m.ring_offset % kPageSize != 0 || !in_file(m.ring_offset, m.ring_capacity * kChangeEntrySize))) {
    return "change ring out of file";
  }
  return "";
}

}  // namespace

StoreImpl::StoreImpl(std::string path, const Options& options)
    : path_(std::move(path)), options_(options), read_only_(options.read_only) {}

StoreImpl::~StoreImpl() { Close().IgnoreError(); }

Status StoreImpl::Open(std::string_view path_view, const Options& options, std::unique_ptr<StoreImpl>* out) {
  std::string path(path_view);
  if (path.empty()) return Status(Code::kInvalidArgument, "store path is empty");
  if (options.read_only && options.error_if_exists) {
    return Status(Code::kInvalidArgument, path + ": read_only and error_if_exists contradict each other");
  }
  if (options.lock_timeout.count() < 0) return Status(Code::kInvalidArgument, path + ": negative lock_timeout");
  if (options.change_ring_capacity > kMaxRingCapacity) {
    return Status(Code::kInvalidArgument, path + ": change_ring_capacity " +
                                              std::to_string(options.change_ring_capacity) + " is over the limit of " +
                                              std::to_string(kMaxRingCapacity) + " entries");
  }
  // The largest table that fits the format's 4 TiB (kMaxFileSize) with room
  // to spare: 2^38 slots, 2 TiB.
  constexpr uint64_t kMaxInitialCapacity = (uint64_t{1} << 38) / kMaxLoadDen * kMaxLoadNum;
  if (options.initial_capacity > kMaxInitialCapacity) {
    return Status(Code::kInvalidArgument, path + ": initial_capacity " + std::to_string(options.initial_capacity) +
                                              " is over the limit of " + std::to_string(kMaxInitialCapacity) +
                                              " entries (a store is at most 4 TiB)");
  }
  if (path.compare(0, kSharedPrefix.size(), kSharedPrefix) == 0) return OpenShared(path, options, out);
  FileSpec spec;
  spec.read_only = options.read_only;
  spec.mode = options.file_mode;
  std::unique_ptr<File> file;
  Status s = File::Open(path, spec, &file);
  if (s.ok() && options.error_if_exists) return Status(Code::kInvalidArgument, path + ": already exists");
  if (s.IsNotFound() && options.create_if_missing && !options.read_only) {
    s = CreateNew(path, options);
    if (!s.ok() &&
        !(s.code() == Code::kInvalidArgument && !options.error_if_exists && s.message() == path + ": already exists")) {
      return s;
    }
    s = File::Open(path, spec, &file);
  }
  if (s.IsNotFound()) {
    // Still missing after a creation that found the name taken: the name is
    // a symbolic link to nothing (or the store was removed at that moment).
    const bool tried = options.create_if_missing && !options.read_only;
    return Status(Code::kNotFound, path + (tried ? ": no such store, and it cannot be made there: the name is taken "
                                                   "(a symbolic link to a missing file?)"
                                                 : ": no such store (and create_if_missing is off)"));
  }
  if (!s.ok()) return s;
  std::unique_ptr<StoreImpl> impl(new StoreImpl(path, options));
  impl->file_ = std::move(file);
  try {
    s = impl->Attach();
  } catch (...) {
    // Out of memory: Attach left the store as a process killed at that
    // point would (its recovery steps are made to be taken over).
    impl->DropParts();
    throw;
  }
  if (!s.ok()) {
    // Never attached: Close (run by the destructor) must not checkpoint or
    // trim a file that failed validation; a failed open changes nothing.
    impl->DropParts();
    return s;
  }
  *out = std::move(impl);
  return Status::Ok();
}

Status StoreImpl::OpenShared(const std::string& path, const Options& options, std::unique_ptr<StoreImpl>* out) {
  const std::string name = path.substr(kSharedPrefix.size());
  FileSpec spec;
  spec.read_only = options.read_only;
  spec.mode = options.file_mode;
  spec.create = options.create_if_missing && !options.read_only;
  spec.exclusive = options.error_if_exists;
  std::unique_ptr<File> file;
  Status s = File::OpenShared(name, spec, &file);
  // Exclusive creation refuses an existing store; without creation it must
  // be refused here, as a file path's open does.
  if (s.ok() && options.error_if_exists && !spec.create)
    return Status(Code::kInvalidArgument, path + ": already exists");
  if (s.IsNotFound()) {
    return Status(Code::kNotFound, path + ": no such shared-memory store" +
                                       (options.create_if_missing ? "" : " (and create_if_missing is off)"));
  }
  if (!s.ok()) return s;
  std::unique_ptr<StoreImpl> impl(new StoreImpl(path, options));
  impl->file_ = std::move(file);
  try {
    if (!options.read_only) s = impl->InitializeIfEmpty();
    if (s.ok()) s = impl->Attach();
  } catch (...) {  // out of memory, as in Open
    impl->DropParts();
    throw;
  }
  if (!s.ok()) {
    impl->DropParts();  // as in Open: a failed open changes nothing more
    return s;
  }
  *out = std::move(impl);
  return Status::Ok();
}

Status StoreImpl::InitializeIfEmpty() {
  uint64_t size = 0;
  Status s = file_->Size(&size);
  if (!s.ok() || size != 0) return s;
  // Empty: new. Initialize under the write lock, checking again under it
  // (another process may have been first).
  LockManager init_lock(file_.get(), options_.lock_timeout);
  s = init_lock.LockWrite();
  if (!s.ok()) return s;
  struct Unlocker {  // also when the build runs out of memory
    LockManager* lock;
    ~Unlocker() { lock->UnlockWrite(false); }
  } unlocker{&init_lock};
  s = file_->Size(&size);
  if (s.ok() && size == 0) {
    // A half-built store must not be taken for a damaged one: whatever stops
    // the build, an error or running out of memory, the store goes back to
    // empty (and the Unlocker lets go of the lock after that).
    struct Undo {
      StoreImpl* self;
      bool done = false;
      ~Undo() {
        // Attach maps and validates the store again, as any opener does.
        self->DropParts();
        if (done) return;
        try {
          self->file_->Truncate(0).IgnoreError();
        } catch (...) {  // its error message could not be made either
        }
      }
    } undo{this};
    s = InitializeNew(options_.initial_capacity);
    if (s.ok()) s = file_->Sync();
    undo.done = s.ok();
  }
  return s;
}

Status StoreImpl::CreateNew(const std::string& path, const Options& options) {
  // Made beside the target and renamed over it, so that no other process
  // sees a store half made. Named after the target when that fits the 255
  // bytes a file name may have, else after nothing but the process.
  const std::string suffix =
      ".mapkv-new." + std::to_string(ProcessId()) + "." + std::to_string(RandomSeed() & 0xffffff);
  const size_t name_at = path.find_last_of(kPathSeparators) + 1;  // npos + 1 == 0
  const std::string tmp =
      path.size() - name_at + suffix.size() <= 255 ? path + suffix : path.substr(0, name_at) + suffix;
  FileSpec spec;
  spec.create = true;
  spec.exclusive = true;
  spec.mode = options.file_mode;
  std::unique_ptr<StoreImpl> impl(new StoreImpl(tmp, options));
  Status s;
  bool not_made = false;  // File::Open failed: the file is not ours to remove
  try {
    s = File::Open(tmp, spec, &impl->file_);
    if (!s.ok()) {
      not_made = true;
      // Report the target, not our temporary name.
      return Status(s.code(), path + ": cannot create the store: " + s.message());
    }
    s = impl->InitializeNew(options.initial_capacity);
    if (s.ok()) s = impl->file_->Sync();
    impl->DropParts();
    impl->file_.reset();
    if (s.ok()) s = LinkFile(tmp, path);  // allocates on Windows (a wide path)
  } catch (...) {
    // Out of memory (File::Open may run out after it made the file): no
    // temporary file is left behind.
    impl->DropParts();
    impl->file_.reset();
    if (!not_made) RemoveFile(tmp).IgnoreError();
    throw;
  }
  try {
    RemoveFile(tmp).IgnoreError();
  } catch (...) {
    // Out of memory for the path: once more. Failing again, the exception
    // reaches the caller with the store made and the temporary name left.
    RemoveFile(tmp).IgnoreError();
  }
  // The new name must survive a power cut as the store's contents do (a
  // Flush(kSync) syncs the file, not its directory).
  if (s.ok()) s = SyncDirectoryOf(path);
  return s;
}

Status StoreImpl::InitializeNew(uint64_t capacity) {
  uint32_t shift = kMinTableShift;
  while (shift < kMaxTableShift && (uint64_t{1} << shift) / kMaxLoadDen * kMaxLoadNum < capacity) ++shift;
  const uint64_t table_bytes = uint64_t{1} << (shift + 3);
  const uint64_t pm_bytes = PagemapBytes(shift);
  uint64_t size = kHeapOffset + table_bytes + 4 * RoundUp(pm_bytes, kPageSize);
  uint64_t words = RoundUp(size * 2 + (256u << 10), 1024) / 1024;
  uint64_t map_bytes = RoundUp(words * sizeof(AllocWord), kPageSize);
  size = RoundUp(size + map_bytes, 64 * 1024);
  words = std::max(words, RoundUp(size * 2, 1024) / 1024);
  map_bytes = RoundUp(words * sizeof(AllocWord), kPageSize);
  size = RoundUp(kHeapOffset + map_bytes + table_bytes + 4 * RoundUp(pm_bytes, kPageSize), 64 * 1024);

  Status s = file_->Reserve(size);
  if (!s.ok()) return s;
  maps_ = std::make_unique<MapSet>(file_.get(), true, options_.large_pages && kLargePageMappings);
  s = maps_->Cover(size);
  if (!s.ok()) return s;
  maps_->KeepSmall(kHeapOffset, map_bytes);
  uint8_t* base = maps_->Current()->base;
  ctl_ = reinterpret_cast<ControlPage*>(base + kControlOffset);
  std::memset(static_cast<void*>(ctl_), 0, kPageSize);
  ctl_->file_size.store(size);
  ctl_->hash_seed = RandomSeed();
  seed_ = ctl_->hash_seed;
  auto boot = BootId();
  std::memcpy(ctl_->boot_id, boot.data(), 16);
  ctl_->alloc_offset = kHeapOffset;
  ctl_->alloc_words = words;
  ctl_->heap_end = kHeapOffset + map_bytes;
  ctl_->alloc_cursor = ctl_->heap_end / kGranule;
  heap_ = std::make_unique<Heap>(file_.get(), maps_.get(), ctl_);
  table_ = std::make_unique<TableWriter>(heap_.get());
  heap_->MarkUsed(0, ctl_->heap_end / kGranule);

  s = heap_->Begin();
  uint64_t tg = 0, pm = 0;
  if (s.ok()) s = table_->CreateTable(shift, &tg, &pm);
  if (!s.ok()) return s;
  ctl_->table_shift.store(shift);
  ctl_->pagemap_offset.store(pm);
  ctl_->pagemap_bytes = pm_bytes;
  heap_->Commit();
  ctl_->dirty = 1;
  ctl_->magic = kControlMagic;
  return Checkpoint();
}

Status StoreImpl::ChooseMeta(const MetaPage** chosen) const {
  uint64_t file_size = 0;
  Status s = file_->Size(&file_size);
  return s.ok() ? ChooseMeta(file_size, chosen) : s;
}

Status StoreImpl::ChooseMeta(uint64_t file_size, const MetaPage** chosen) const {
  const uint8_t* base = maps_->Current()->base;
  const MetaPage* best = nullptr;
  std::string problems[2];
  int bad_magic = 0, newer = 0;
  for (int i = 0; i < 2; ++i) {
    const auto* m = reinterpret_cast<const MetaPage*>(base + kMetaOffset[i]);
    bool newer_version = false;
    problems[i] = MetaProblem(*m, file_size, &newer_version);
    if (problems[i] == "bad magic") ++bad_magic;
    if (newer_version) ++newer;
    if (problems[i].empty() && (best == nullptr || m->generation > best->generation)) best = m;
  }
  // A page of a newer format in either slot means a newer library wrote the
  // store: going back to the older page would silently undo its writes.
  if (best != nullptr && newer == 0) {
    *chosen = best;
    return Status::Ok();
  }
  if (newer > 0)
    return Status(Code::kVersionTooNew,
                  path_ + ": " + (problems[0].find("newer") != std::string::npos ? problems[0] : problems[1]));
  if (bad_magic == 2)
    return Status(Code::kCorruption, path_ + ": not a mapkv store (no meta page has the mapkv magic)");
  return Status(Code::kCorruption,
                path_ + ": both meta pages are damaged (slot 0: " + problems[0] + "; slot 1: " + problems[1] + ")");
}

Status StoreImpl::CheckControlPage(const ControlPage& c, uint64_t file_size, const char* which, bool mid_write) const {
  auto bad = [&](const std::string& what) {
    return Status(Code::kCorruption, path_ + ": control page" + which + ": " + what);
  };
  auto in_file = [&](uint64_t off, uint64_t len) {
    return off >= kHeapOffset && off <= file_size && len <= file_size - off;
  };
  const uint64_t fs = c.file_size.load();
  if (fs > file_size) {
    return bad("the file is " + std::to_string(file_size) + " bytes but the store had grown to " + std::to_string(fs) +
               " (truncated by another program?)");
  }
  if (c.alloc_offset % kGranule != 0 || c.alloc_words == 0 || c.alloc_words > (uint64_t{1} << 40) ||
      !in_file(c.alloc_offset, c.alloc_words * sizeof(AllocWord)) ||
      c.alloc_words * kGranulesPerAllocWord * kGranule < fs) {
    return bad("allocation map out of file");
  }
  // The rest may be half changed in the middle of a write (a table rebuild
  // stores its size, page map and page-map size one after another, and a
  // rollback restores them in the other order); only what the rollback reads
  // is checked above, and the rest where the rollback would leave it.
  if (mid_write) return Status::Ok();
  // Everything lies in the store, which the allocation map covers (checked
  // above): the file may be longer than the store, and a structure past the
  // store's end would be freed by marks past the map's end.
  auto in_store = [&](uint64_t off, uint64_t len) { return off >= kHeapOffset && off <= fs && len <= fs - off; };
  if (!in_store(c.alloc_offset, c.alloc_words * sizeof(AllocWord))) return bad("allocation map out of the store");
  const uint64_t shift = c.table_shift.load();
  if (shift < kMinTableShift || shift > kMaxTableShift) return bad("bad table size (2^" + std::to_string(shift) + ")");
  if (!in_store(c.pagemap_offset.load(), PagemapBytes(static_cast<uint32_t>(shift))))
    return bad("page map out of the store");
  if (c.pagemap_offset.load() % kGranule != 0) return bad("misaligned page map");
  if (c.heap_end > fs || c.heap_end < kHeapOffset)
    return bad("heap end " + std::to_string(c.heap_end) + " out of the heap");
  if (c.entries.load() >= (uint64_t{1} << shift)) return bad("more entries than slots");
  // A checkpoint copies pagemap_bytes into a snapshot slot: both must agree
  // with the table and lie in the file (a fuzzed file had 64 GiB here).
  if (c.pagemap_bytes != PagemapBytes(static_cast<uint32_t>(shift))) {
    return bad("page map size " + std::to_string(c.pagemap_bytes) + " does not match a table of 2^" +
               std::to_string(shift) + " slots");
  }
  for (int i = 0; i < 2; ++i) {
    const uint64_t off = c.snapshot_slot_offset[i], bytes = c.snapshot_slot_bytes[i];
    if (bytes != 0 && (off % kGranule != 0 || !in_store(off, bytes))) {
      return bad("page-map snapshot slot " + std::to_string(i) + " out of the store");
    }
  }
  const uint64_t ring_cap = c.ring_capacity;
  if (ring_cap != 0 && (ring_cap > kMaxRingCapacity || ring_cap % kRingCapacityUnit != 0 ||
                        c.ring_offset % kPageSize != 0 || !in_store(c.ring_offset, ring_cap * kChangeEntrySize))) {
    return bad("change ring out of the store");
  }
  return Status::Ok();
}

void StoreImpl::RolledBackControl(unsigned char* copy) const {
  std::memcpy(copy, static_cast<const void*>(ctl_), sizeof(ControlPage));
  heap_->RollBackCopy(kControlOffset, copy, sizeof(ControlPage));
}

Status StoreImpl::CheckAllocMapMarks() const {
  // Its place is checked with the control page; this checks that what lies
  // there is an allocation map. A damaged alloc_offset that still lies in
  // the file names other bytes, and a write would allocate over live
  // records by them. The header's granules and the map's own are used.
  uint64_t offset = ctl_->alloc_offset;
  uint64_t words = ctl_->alloc_words;
  if (ctl_->undo_count.load() != 0) {
    // A killed writer may have been moving the map, whose offset and size
    // are two words switched one after the other (and restored so by a
    // rollback): the map checked is the one its rollback leaves in force,
    // which nothing changed after the switch.
    alignas(ControlPage) unsigned char copy[sizeof(ControlPage)];
    RolledBackControl(copy);
    offset = reinterpret_cast<const ControlPage*>(copy)->alloc_offset;
    words = reinterpret_cast<const ControlPage*>(copy)->alloc_words;
  }
  const auto* m = reinterpret_cast<const AllocWord*>(maps_->Current()->base + offset);
  bool sound = true;
  for (uint64_t w = 0; w < kHeapOffset / kGranule / kGranulesPerAllocWord; ++w) sound &= m[w].used == ~uint64_t{0};
  auto used = [&](uint64_t g) { return ((m[g / kGranulesPerAllocWord].used >> (g % kGranulesPerAllocWord)) & 1) != 0; };
  const uint64_t first = offset / kGranule;
  const uint64_t end = (offset + RoundUp(words * sizeof(AllocWord), kPageSize)) / kGranule;
  // A map that does not cover its own place is no map (and its marks of
  // that place would lie past its end).
  sound &= first < end && end <= words * kGranulesPerAllocWord && used(first) && used(end - 1);
  if (sound) return Status::Ok();
  return Status(Code::kCorruption, path_ + ": control page: the allocation map at offset " + std::to_string(offset) +
                                       " does not mark the file's header and itself as used (a damaged alloc_offset?)");
}

Status StoreImpl::ValidateControl() const {
  uint64_t file_size = 0;
  Status s = file_->Size(&file_size);
  return s.ok() ? ValidateControl(file_size) : s;
}

Status StoreImpl::ValidateControl(uint64_t file_size) const {
  // A killed writer's page is checked as its undo log would leave it (below);
  // as it is, only where the rollback reads it.
  const bool mid_write = ctl_->undo_count.load() != 0;
  Status s = CheckControlPage(*ctl_, file_size, "", mid_write);
  // Every undo entry must stay inside the file and the allocation map.
  if (s.ok()) s = heap_->ValidateLog();
  if (!s.ok() || !mid_write) return s;
  // The log of a killed writer restores control-page words too: the page it
  // would leave must be as sound as this one (a fuzzed log restored a table
  // of 2^70 slots). Checked on a copy, before recovery changes anything.
  alignas(ControlPage) unsigned char copy[sizeof(ControlPage)];
  RolledBackControl(copy);
  return CheckControlPage(*reinterpret_cast<const ControlPage*>(copy), file_size,
                          " as the killed writer's undo log would leave it");
}

Status StoreImpl::Attach() {
  locks_ = std::make_unique<LockManager>(file_.get(), options_.lock_timeout);
  Status s = locks_->JoinPresence();
  if (!s.ok()) return s;
  s = read_only_ ? locks_->LockRead() : locks_->LockWrite();
  if (!s.ok()) return s;
  struct Unlocker {
    StoreImpl* self;
    ~Unlocker() { self->read_only_ ? self->locks_->UnlockRead() : self->locks_->UnlockWrite(false); }
  } unlocker{this};

  uint64_t size = 0;
  s = file_->Size(&size);
  if (!s.ok()) return s;
  if (size == 0) return Status(Code::kCorruption, path_ + ": empty file, not a mapkv store");
  if (size < kHeapOffset) {
    return Status(Code::kCorruption, path_ + ": not a mapkv store or truncated (" + std::to_string(size) +
                                         " bytes; a store has at least " + std::to_string(kHeapOffset) + ")");
  }
  if (file_->OnNetworkFileSystem()) {
    return Status(Code::kNotSupported, path_ +
                                           ": on a network file system, where shared mappings and "
                                           "file locks are not coherent; mapkv refuses it");
  }
  maps_ = std::make_unique<MapSet>(file_.get(), !read_only_, options_.large_pages && kLargePageMappings);
  s = maps_->Cover(size);
  if (!s.ok()) return s;
  const MetaPage* meta_in_file = nullptr;
  // `size` holds while the lock does: no fstat per check below.
  s = ChooseMeta(size, &meta_in_file);
  if (!s.ok()) return s;
  const MetaPage meta = *meta_in_file;
  seed_ = meta.hash_seed;
  ctl_ = reinterpret_cast<ControlPage*>(maps_->Current()->base + kControlOffset);
  heap_ = std::make_unique<Heap>(file_.get(), maps_.get(), ctl_);
  table_ = std::make_unique<TableWriter>(heap_.get());
  fork_generation_ = ForkGeneration();

  const auto boot = BootId();
  const bool same_boot = ctl_->magic == kControlMagic && ctl_->hash_seed == meta.hash_seed &&
                         std::memcmp(ctl_->boot_id, boot.data(), 16) == 0;
  // The control page knows the newest checkpoint's generation. When the meta
  // page chosen is older, the newest one was written, completed (its release
  // ran) and damaged since: the older page may name space reused after it.
  const bool newest_damaged = ctl_->magic == kControlMagic && ctl_->hash_seed == meta.hash_seed &&
                              ctl_->release_pending == 0 && ctl_->generation > meta.generation;
  if (!same_boot && newest_damaged) {
    return Status(Code::kCorruption, path_ + ": the newest meta page (generation " + std::to_string(ctl_->generation) +
                                         ", slot " + std::to_string(ctl_->generation % 2) +
                                         ") is damaged, and the machine restarted since; the older one cannot "
                                         "be trusted (dump what is readable with a newer mapkv, or restore a copy)");
  }
  if (!same_boot) {
    if (read_only_) {
      // Usable as it is only when nothing changed since the checkpoint.
      bool clean = ctl_->magic == kControlMagic && ctl_->hash_seed == meta.hash_seed && ctl_->dirty == 0 &&
                   ctl_->generation == meta.generation && ctl_->undo_count.load() == 0 && ValidateControl(size).ok() &&
                   ctl_->pagemap_offset.load() == meta.pagemap_offset && ctl_->table_shift.load() == meta.table_shift &&
                   std::memcmp(maps_->Current()->base + meta.pagemap_offset,
                               maps_->Current()->base + meta.snapshot_offset, PagemapBytes(meta.table_shift)) == 0;
      if (!clean) {
        return Status(Code::kBusy, path_ +
                                       ": the machine restarted before the store's last changes were "
                                       "checkpointed; open it once writable to recover it");
      }
    } else {
      s = RecoverFromCheckpoint(meta);
      if (!s.ok()) return s;
      // The restarted change sequence is made durable before any number
      // past it is handed out: a second cut before the next checkpoint would
      // otherwise restart at the same place and hand those numbers out again
      // (and the forced checkpoint, which measures from the meta page, would
      // see nothing to do in a store that is not dirty).
      ctl_->dirty = 1;
      s = Checkpoint();
      if (!s.ok()) return s;
    }
  } else {
    s = ValidateControl(size);
    if (!s.ok()) return s;
    const bool interrupted = ctl_->undo_count.load() != 0 || (ctl_->seq.load() & 1) != 0 ||
                             ctl_->release_pending != 0 || meta.generation > ctl_->generation;
    if (interrupted) {
      if (read_only_) {
        return Status(Code::kBusy, path_ +
                                       ": a writer was killed in the middle of a write; open the store "
                                       "once writable to recover it");
      }
      s = CheckAllocMapMarks();
      if (s.ok()) s = RecoverKilledWriter();
      if (!s.ok()) return s;
    }
    if (!read_only_ && ctl_->change_published.load() != ctl_->change_seq.load()) {
      // Last written by an engine that did not publish changes (or by none
      // since the ring fields were zero): what it changed is in no ring.
      ctl_->ring_floor = ctl_->change_seq.load();
      ctl_->change_published.store(ctl_->change_seq.load());
    }
    if (newest_damaged && !read_only_) {
      // The live state is intact in this boot: a checkpoint now writes a good
      // newest meta page again (into the other slot).
      ctl_->dirty = 1;
      s = Checkpoint();
      if (!s.ok()) return s;
    }
    // A sequence too far past the last checkpoint (the restart's checkpoint
    // above failed, or the process died before it): checkpointed before this
    // handle's first write publishes a number past it. Failing, each write
    // tries again as it ends.
    if (!read_only_) CheckpointIfDue();
  }
  uint64_t fs = ctl_->file_size.load();
  if (fs > size) {
    s = maps_->Cover(fs);
    if (!s.ok()) return s;
  }
  KeepAllocMapSmall();
  locks_->set_ctl(ctl_, !read_only_);
  return Status::Ok();
}

Status StoreImpl::RecoverKilledWriter() {
  // Called with the write lock held; the writer that held it before is dead.
  // It may have died after its commit, before freeing its log's chunks.
  if (ctl_->undo_count.load() == 0 && ctl_->undo_chain != 0) heap_->DropChain();
  Status s = heap_->Rollback();
  // What the log restored is checked as the page was before it: a log that
  // passed its checks entry by entry must still leave a valid store.
  if (s.ok()) s = ValidateControl();
  if (s.ok()) s = CheckAllocMapMarks();
  if (!s.ok()) return s;
  const MetaPage* meta = nullptr;
  s = ChooseMeta(&meta);
  if (!s.ok()) return s;
  if (ctl_->release_pending != 0 || meta->generation > ctl_->generation) {
    // A checkpoint wrote its meta page and died before (or while) releasing.
    if (ctl_->release_pending == 0) {
      // It may have died before its meta page was synced: the page is in the
      // page cache, maybe not on disk. Releasing now would let later writes
      // reuse space the meta page on disk still names, so the page is synced
      // first, as the checkpoint would have (everything it names was synced
      // before it was written). Failing that, it is wiped as the checkpoint
      // wipes it, and the previous checkpoint stays the newest.
      const uint64_t slot = kMetaOffset[meta->generation & 1];
      s = maps_->Flush(slot, kPageSize, /*sync=*/true);
      if (!s.ok()) {
        std::memset(maps_->Current()->base + slot, 0, sizeof(MetaPage));
        maps_->Flush(slot, kPageSize, /*sync=*/true).IgnoreError();  // the error reported is s
        return s;
      }
    }
    heap_->ReleaseAll();
    ctl_->generation = std::max(meta->generation, ctl_->release_pending);
    ctl_->dirty = 0;
    ctl_->release_pending = 0;
  }
  // A writer killed after its commit, before it published its changes
  // (the seqlock was still odd): publish them now. After a rollback the two
  // are equal already. One killed after publishing, before its wake (also
  // odd), woke nobody: watchers are woken either way.
  const bool published = ctl_->change_published.load() != ctl_->change_seq.load();
  if (published) ctl_->change_published.store(ctl_->change_seq.load(), std::memory_order_seq_cst);
  if ((published || (ctl_->seq.load() & 1) != 0) && ctl_->change_waiters.load() > 0) BumpChangeWord();
  uint64_t seq = ctl_->seq.load();
  if (seq & 1) ctl_->seq.store(seq + 1, std::memory_order_release);
  return Status::Ok();
}

Status StoreImpl::RecoverFromCheckpoint(const MetaPage& meta) {
  uint64_t file_size = 0;
  Status s = file_->Size(&file_size);
  if (!s.ok()) return s;
  uint8_t* base = maps_->Current()->base;
  // The snapshot becomes the live page map: a damaged one would silently
  // hide entries, so it is refused before anything changes.
  if (XXH3_64bits(base + meta.snapshot_offset, PagemapBytes(meta.table_shift)) != meta.snapshot_checksum) {
    return Status(Code::kCorruption, path_ + ": the page map snapshot of checkpoint " +
                                         std::to_string(meta.generation) +
                                         " does not match its checksum; the store cannot be restored to it "
                                         "(nothing was changed)");
  }
  // Invalidate first and validate last: killed halfway, the next open starts over.
  ctl_->magic = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memset(reinterpret_cast<uint8_t*>(ctl_) + offsetof(ControlPage, hash_seed), 0,
              kPageSize - offsetof(ControlPage, hash_seed));
  ctl_->seq.store(0);
  // The file may have grown after the checkpoint, past what its allocation
  // map covers; that tail holds nothing the checkpoint needs, so it is ignored.
  file_size = std::min(file_size, meta.alloc_words * kGranulesPerAllocWord * kGranule);
  ctl_->file_size.store(file_size);
  ctl_->table_shift.store(meta.table_shift);
  ctl_->pagemap_offset.store(meta.pagemap_offset);
  ctl_->entries.store(meta.entries);
  const uint64_t restart_seq = RestartSequence(meta.change_seq);
  ctl_->change_seq.store(restart_seq);
  ctl_->change_published.store(restart_seq);
  ctl_->change_waiters.store(0);  // no process of an earlier boot waits
  ctl_->reserved_line1.store(0);
  ctl_->writer_pid.store(0);
  ctl_->lock_waiters.store(0);
  ctl_->writers_waiting.store(0);
  ctl_->undo_count.store(0);
  ctl_->hash_seed = meta.hash_seed;
  ctl_->generation = meta.generation;
  ctl_->heap_end = meta.heap_end;
  ctl_->alloc_offset = meta.alloc_offset;
  ctl_->alloc_words = meta.alloc_words;
  ctl_->alloc_cursor = meta.heap_end / kGranule;
  ctl_->live_bytes = meta.live_bytes;
  ctl_->pagemap_bytes = PagemapBytes(meta.table_shift);
  for (int i = 0; i < 2; ++i) {
    ctl_->snapshot_slot_offset[i] = meta.snapshot_slot_offset[i];
    ctl_->snapshot_slot_bytes[i] = meta.snapshot_slot_bytes[i];
  }
  ctl_->ring_offset = meta.ring_offset;
  ctl_->ring_capacity = meta.ring_capacity;
  // Ring entries after the checkpoint may be lost or torn: nothing up to the
  // restart is served (a watcher that kept a sequence number across the
  // reboot rescans, and no number it kept is handed out again).
  ctl_->ring_floor = restart_seq;
  std::memcpy(base + meta.pagemap_offset, base + meta.snapshot_offset, ctl_->pagemap_bytes);
  if (heap_->ReleasedMapChecksum() == meta.alloc_checksum) {
    heap_->ReleaseAll();
  } else {
    s = RebuildAllocMap();
    if (!s.ok()) return s;
  }
  auto boot = BootId();
  std::memcpy(ctl_->boot_id, boot.data(), 16);
  ctl_->dirty = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ctl_->magic = kControlMagic;
  return ValidateControl();
}

Status StoreImpl::RebuildAllocMap() {
  const uint64_t fs = ctl_->file_size.load();
  const uint64_t granules = ctl_->alloc_words * kGranulesPerAllocWord;
  std::memset(static_cast<void*>(heap_->map()), 0, ctl_->alloc_words * sizeof(AllocWord));
  uint64_t heap_end = kHeapOffset;
  Status bad;
  auto mark = [&](uint64_t off, uint64_t bytes, const char* what) {
    if (off % kGranule != 0 || off > fs || bytes > fs - off || (off + bytes) / kGranule > granules) {
      bad |= Status(Code::kCorruption, path_ + ": " + what + " at offset " + std::to_string(off) + " out of file");
      return;
    }
    // Nothing is in two places: table pages that alias one another would
    // make the walk below visit every slot of a table the file cannot hold,
    // and a later free of one of two overlapping structures would hand out
    // space the other still uses.
    if (heap_->AnyUsed(off / kGranule, RoundUp(bytes, kGranule) / kGranule)) {
      bad |= Status(Code::kCorruption, path_ + ": " + what + " at offset " + std::to_string(off) +
                                           " overlaps another structure of the checkpoint");
      return;
    }
    heap_->MarkUsed(off / kGranule, RoundUp(bytes, kGranule) / kGranule);
    heap_end = std::max(heap_end, off + RoundUp(bytes, kGranule));
  };
  mark(0, kHeapOffset, "header");
  mark(ctl_->alloc_offset, RoundUp(ctl_->alloc_words * sizeof(AllocWord), kPageSize), "allocation map");
  mark(ctl_->pagemap_offset.load(), ctl_->pagemap_bytes, "page map");
  for (int i = 0; i < 2; ++i) {
    if (ctl_->snapshot_slot_bytes[i] != 0) {
      mark(ctl_->snapshot_slot_offset[i], ctl_->snapshot_slot_bytes[i], "page map snapshot");
    }
  }
  if (ctl_->ring_capacity != 0) mark(ctl_->ring_offset, ctl_->ring_capacity * kChangeEntrySize, "change ring");
  if (!bad.ok()) return bad;
  TableReader r = ReaderSnapshot();
  const uint32_t* pm = heap_->At<uint32_t>(r.pagemap);
  for (uint64_t p = 0; p < r.slots() / kSlotsPerPage; ++p) mark(uint64_t{pm[p]} * kPageSize, kPageSize, "table page");
  if (!bad.ok()) return bad;
  Status s = WalkRecords(r, [&](uint64_t, uint64_t slot, const RecordRef& rec, Status*) {
    mark(SlotGranule(slot) * kGranule, rec.granules() * kGranule, "record");
    return true;
  });
  if (!s.ok()) return s;
  if (!bad.ok()) return bad;
  ctl_->heap_end = heap_end;
  ctl_->alloc_cursor = heap_end / kGranule;
  return Status::Ok();
}

Status StoreImpl::TrimIfAlone() {
  if (read_only_ || !locks_->TryBecomeAlone()) return Status::Ok();
  bool fresh = false;
  Status s = locks_->LockWrite(&fresh);
  if (!s.ok()) return s;
  struct Unlock {  // also when memory runs out below
    LockManager* locks;
    ~Unlock() { locks->UnlockWrite(false); }
  } unlock{locks_.get()};
  // A process killed in the middle of a write is recovered first, as by any
  // write: the close's own writes would otherwise commit its undo log. (The
  // same for this handle's own write left unfinished, as BeginWrite.)
  if (fresh || ctl_->undo_count.load() != 0 || (ctl_->seq.load() & 1) != 0) s = TakeOverWriteLock();
  if (s.ok()) s = ValidateControl();  // a file cut by another program: touch nothing past its end
  const bool unchanged = ctl_->tail_checked_seq != 0 && ctl_->tail_checked_seq == ctl_->change_seq.load() + 1;
  // A close that does not checkpoint moves no record (that would leave the
  // store dirty): the closes that want speed (the option's purpose) or no
  // writes (mapkv watch) turn checkpoints off. It still cuts what is free
  // at the file's end below, which changes no byte of the store.
  const bool trim = options_.checkpoint_on_close;
  // A damaged record is left where it is by the compaction; the close
  // still checkpoints and cuts, and then reports the damage.
  Status damaged;
  if (s.ok() && trim && !unchanged) s = CompactTail(&damaged);
  if (s.ok() && trim) {
    s = Checkpoint();  // also frees what CompactTail moved away from
    if (s.ok() && !unchanged && SnapshotOnTop()) s = RehomeSnapshots(kHeapOffset / kGranule);
    const uint64_t map_end = ctl_->alloc_offset + RoundUp(ctl_->alloc_words * sizeof(AllocWord), kPageSize);
    uint64_t hole = 0;
    if (s.ok() && !unchanged && map_end >= heap_->HighestUsedEnd() && heap_->MapCanGoLower(&hole)) {
      // The records are down; the allocation map is still on top, and fits
      // lower. (Only then a write: a close must leave the store clean.)
      s = RunWrite([&] { return heap_->LowerMap(); });
      if (s.ok()) s = Checkpoint();  // frees the map's old place
    }
    const uint64_t top = heap_->HighestUsedEnd();
    if (s.ok() && top < ctl_->heap_end) {
      // Record the lower high-water mark, so no meta page names bytes past the cut.
      ctl_->heap_end = top;
      ctl_->dirty = 1;
      s = Checkpoint();
    }
  }
  const MetaPage* meta = nullptr;
  if (s.ok()) s = ChooseMeta(&meta);
  const uint64_t target =
      s.ok() ? heap_->RoundGrowth(RoundUp(std::max(heap_->HighestUsedEnd(), meta->heap_end), 64 * 1024)) : 0;
  // Never past the store's length (the allocation map covers no more), but
  // the file's own length may be longer than the store: a cut that Windows
  // put off and a Compact gave up, one that failed, or a recovery from a
  // checkpoint that ignored a tail its map does not cover.
  const uint64_t cut = std::min(target, ctl_->file_size.load());
  uint64_t file_length = 0;
  if (s.ok()) s = file_->Size(&file_length);
  if (s.ok() && cut < std::max(ctl_->file_size.load(), file_length) && ctl_->undo_count.load() == 0) {
    // Alone: no other handle maps the file, so shortening it cannot fault
    // anyone. Nothing is allocated past the target, so the high-water mark
    // may come down to it.
    ctl_->heap_end = std::min(ctl_->heap_end, cut);
    s = CutFile(cut);
  }
  if (s.ok() && trim && ctl_->dirty == 0 && damaged.ok()) ctl_->tail_checked_seq = ctl_->change_seq.load() + 1;
  return s.ok() ? damaged : s;
}

void StoreImpl::DropParts() noexcept {
  table_.reset();
  heap_.reset();
  maps_.reset();
  ctl_ = nullptr;
}

Status StoreImpl::Close() {
  if (!file_) return Status::Ok();
  Status s;
  if (ctl_ != nullptr && fork_generation_ == ForkGeneration()) {
    try {
      s = TrimIfAlone();
    } catch (...) {
      // Out of memory in the close's trim: the store is left as a process
      // killed at that point would leave it (the next writer recovers it),
      // and the handle closes all the same; a close never throws (~Store
      // calls it).
      try {
        s = Status(Code::kIoError, path_ +
                                       ": out of memory while trimming the store at close (left for the next "
                                       "writer to recover, as after a killed process)");
      } catch (...) {
      }
    }
  }
  if (locks_ && fork_generation_ != ForkGeneration()) {
    // A forked child: the parent's threads (the lock keeper, waiting writers)
    // are not here, but the mutexes and condition variables they held or
    // waited on at the fork were copied as they were.
    KeepForkedCopy(std::shared_ptr<LockManager>(std::move(locks_)));
  }
  table_.reset();
  heap_.reset();
  locks_.reset();
  maps_.reset();
  file_.reset();
  ctl_ = nullptr;
  return s;
}

}  // namespace mapkv::internal
