// salvage.cc: Store::Salvage, the copy of every intact pair of a damaged
// store into a new one.
//
// Writes refuse a damaged record (its size cannot be trusted to free it), and
// Compact refuses to move one, so a store that Check finds damaged can only
// be read. Salvage walks its table under a read lock, page by page, and puts
// each pair whose slot and record are sound into a new store, naming each
// thing it leaves behind or copies in doubt. The walk never stops at damage,
// and nothing in the damaged store changes.
//
// What it trusts, in order:
//  - a table page's place: in the file, and walked once. Pages that the
//    page map points at one physical page (a damaged entry) are told apart
//    by the home slots of the entries there: the page they belong to walks
//    it, the others are lost. So a small file cannot make the walk run over
//    a huge table either.
//  - a slot: its record in the file, of a key whose hash matches the slot's
//    tag, and the slot a lookup of that key reaches (a stray or second slot
//    may point at an older value). A lookup is followed for at most
//    kMaxProbes slots.
//  - the record: passing its checksum, and sharing no granule with a record
//    already copied. Each record is hashed at most once (slots pointing at
//    one huge record cost one hash), and all of them together at most four
//    times the file's bytes (a crafted file of overlapping huge records).
//  - the allocation map, in doubt only: a page or record it does not hold
//    in use may be an older copy that a damaged slot or page-map entry led
//    to, or a current one beside a damaged map. It is copied and named, as
//    is a slot no lookup reaches.
// At the end the number of entries walked is compared with the store's
// count: slots cleared by the damage leave no other trace.
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "hash.h"
#include "store_impl.h"

namespace mapkv {

Status Store::Salvage(std::string_view from, std::string_view to, const Options& options, SalvageReport* report) {
  *report = SalvageReport{};
  Options source_options;
  source_options.read_only = true;
  source_options.create_if_missing = false;
  source_options.lock_timeout = options.lock_timeout;
  Store source;
  Status s = Open(from, source_options, &source);
  if (!s.ok()) return s;
  return source.impl_->SalvageInto(to, options, report);
}

namespace internal {

using namespace format;  // NOLINT

namespace {

constexpr size_t kMaxProblemLines = 1000;
constexpr uint64_t kMaxProbes = 256;

// The walk over one store's table, with what it has learnt so far.
class SalvageWalk {
 public:
  SalvageWalk(const TableReader& r, const Heap& heap, uint64_t alloc_words, const std::string& path,
              SalvageReport* report)
      : r_(r), heap_(heap), path_(path), report_(report) {
    granules_ = std::min(r.limit / kGranule, alloc_words * kGranulesPerAllocWord);
    claimed_.resize(r.limit / kGranule / 64 + 1);
    hash_budget_ = 4 * r.limit;
  }

  void Problem(const std::string& what) {
    ++report_->problem_count;
    if (report_->problems.size() < kMaxProblemLines) report_->problems.push_back(path_ + ": " + what);
  }

  // True when [off, off + bytes) lies in what the allocation map covers and
  // is allocated and not freed.
  bool InUse(uint64_t off, uint64_t bytes) const {
    if (off % kGranule != 0 || off > r_.limit || bytes > r_.limit - off) return false;
    const uint64_t end = (off + bytes + kGranule - 1) / kGranule;
    return end <= granules_ && heap_.AllInUse(off / kGranule, end - off / kGranule);
  }

  // Records copied so far, by granule: a record overlapping one is left
  // behind (crafted overlapping records would each pass their checksum).
  bool Overlaps(const RecordRef& rec) const {
    for (uint64_t g = rec.granule; g < rec.granule + rec.granules(); ++g) {
      if (Claimed(g)) return true;
    }
    return false;
  }
  bool Claimed(uint64_t granule) const { return (claimed_[granule / 64] >> (granule % 64)) & 1; }
  void Claim(const RecordRef& rec) {
    for (uint64_t g = rec.granule; g < rec.granule + rec.granules(); ++g) claimed_[g / 64] |= uint64_t{1} << (g % 64);
  }
  // rec.Intact(), hashing each record at most once (a record that failed,
  // or that a lookup reached from a stray slot, is remembered; one copied is
  // guarded by Claim), and at most four times the file's bytes in all: past
  // that (a crafted file of overlapping huge records) a record is unverified.
  enum class Verdict { kIntact, kDamaged, kUnverified };
  Verdict Verify(const RecordRef& rec) {
    if (auto it = verdicts_.find(rec.granule); it != verdicts_.end()) return it->second;
    const uint64_t bytes = kRecordHeaderSize + rec.key_size + rec.value_size;
    if (bytes > hash_budget_) return Verdict::kUnverified;
    hash_budget_ -= bytes;
    return verdicts_.emplace(rec.granule, rec.Intact() ? Verdict::kIntact : Verdict::kDamaged).first->second;
  }
  void Forget(const RecordRef& rec) { verdicts_.erase(rec.granule); }

  // The physical page of table page `page`, or nullptr when it is out of the file.
  const uint64_t* PageSlots(uint64_t page) const {
    const uint64_t* p = r_.SlotPtr(page * kSlotsPerPage);
    return p != nullptr && r_.PageFits(p) ? p : nullptr;
  }
  uint64_t PhysOf(const uint64_t* p) const {
    return static_cast<uint64_t>(reinterpret_cast<const uint8_t*>(p) - r_.base) / kPageSize;
  }

  // Which physical pages more than one table page points at.
  void FindAliases(uint64_t pages) {
    std::vector<bool> seen(r_.limit / kPageSize + 1);
    for (uint64_t page = 0; page < pages; ++page) {
      const uint64_t* p = PageSlots(page);
      if (p == nullptr) continue;
      const uint64_t phys = PhysOf(p);
      if (seen[phys]) owner_.emplace(phys, kUnknown);
      seen[phys] = true;
    }
  }

  // True when table page `page` should walk its physical page `p`: always,
  // unless other table pages point there too; then only the one page most of
  // its entries' home slots are in (or, when that tells nothing, the first).
  bool Owns(uint64_t page, const uint64_t* p, uint64_t* owner) {
    auto it = owner_.find(PhysOf(p));
    if (it == owner_.end()) return true;
    if (it->second == kUnknown) it->second = VoteOwner(p, page);
    *owner = it->second;
    return *owner == page;
  }

 private:
  static constexpr uint64_t kUnknown = ~uint64_t{0};

  uint64_t VoteOwner(const uint64_t* p, uint64_t first_alias) const {
    std::unordered_map<uint64_t, uint64_t> votes;
    for (uint64_t j = 0; j < kSlotsPerPage; ++j) {
      const uint64_t slot = RacyLoad(p + j);
      uint64_t home;
      if (slot != 0 && r_.Home(slot, &home)) ++votes[home / kSlotsPerPage];
    }
    uint64_t best = first_alias, best_votes = 0;
    for (const auto& [page, n] : votes) {
      if (n > best_votes || (n == best_votes && page < best)) best = page, best_votes = n;
    }
    // A page no alias stands for (the vote names a page whose own entry
    // points elsewhere): the first alias walks it.
    const uint64_t* q = PageSlots(best);
    return q != nullptr && PhysOf(q) == PhysOf(p) ? best : first_alias;
  }

  const TableReader& r_;
  const Heap& heap_;
  const std::string& path_;
  SalvageReport* report_;
  uint64_t granules_ = 0;
  std::unordered_map<uint64_t, uint64_t> owner_;    // aliased physical page -> the table page it belongs to
  std::vector<uint64_t> claimed_;                   // one bit per granule of the file
  std::unordered_map<uint64_t, Verdict> verdicts_;  // granule -> its record's checksum, until copied
  uint64_t hash_budget_ = 0;                        // record bytes the walk may still hash
};

// Whether a store file (or shared-memory store) exists at `path`.
bool Exists(const std::string& path) {
  FileSpec spec;
  spec.read_only = true;
  std::unique_ptr<File> file;
  if (path.compare(0, kSharedPrefix.size(), kSharedPrefix) == 0) {
    return File::OpenShared(path.substr(kSharedPrefix.size()), spec, &file).ok();
  }
  return File::Open(path, spec, &file).ok();
}

}  // namespace

Status StoreImpl::SalvageInto(std::string_view to, const Options& options, SalvageReport* report) const {
  Status s = LockRead();  // before `to` exists: a FROM that stays busy creates nothing
  if (!s.ok()) return s;
  const ReadUnlocker unlock{this};
  Options target_options = options;
  target_options.create_if_missing = true;
  target_options.error_if_exists = true;  // also when `to` names this store
  target_options.read_only = false;
  // An open can fail after the file was made (its directory's sync, the
  // first lock): then `to` exists, and the caller must hear of it.
  const bool existed = Exists(std::string(to));
  Store target;
  s = Store::Open(to, target_options, &target);
  if (!s.ok()) {
    report->created = !existed && Exists(std::string(to));
    return s;
  }
  report->created = true;
  s = SalvageWalkInto(&target, report);
  if (s.ok()) s = target.Flush(FlushMode::kSync);
  s |= target.Close();
  return s;
}

Status StoreImpl::SalvageWalkInto(Store* to, SalvageReport* report) const {
  // As Check does: the file may have changed since the open.
  Status s = ValidateControl();
  if (!s.ok()) return s;
  const TableReader r = ReaderSnapshot();
  SalvageWalk walk(r, *heap_, ctl_->alloc_words, path_, report);
  auto at = [](uint64_t granule) { return "(offset " + std::to_string(granule * kGranule) + ")"; };
  const uint64_t pages = r.slots() / kSlotsPerPage;
  walk.FindAliases(pages);
  uint64_t entries = 0;
  bool page_lost = false;
  for (uint64_t page = 0; page < pages; ++page) {
    const uint64_t first = page * kSlotsPerPage;
    auto slots = [&] {
      return "table slots " + std::to_string(first) + " to " + std::to_string(first + kSlotsPerPage - 1);
    };
    const uint64_t* p = walk.PageSlots(page);
    if (p == nullptr) {
      walk.Problem(slots() + ": their page is out of the file (the table's page map is damaged); their pairs are lost");
      page_lost = true;
      continue;
    }
    const uint64_t page_off = walk.PhysOf(p) * kPageSize;
    uint64_t owner = page;
    if (!walk.Owns(page, p, &owner)) {
      walk.Problem(slots() + ": their page (offset " + std::to_string(page_off) + ") is table page " +
                   std::to_string(owner) + "'s (the table's page map is damaged); their pairs are lost");
      page_lost = true;
      continue;
    }
    if (!walk.InUse(page_off, kPageSize)) {
      walk.Problem(slots() + ": their page (offset " + std::to_string(page_off) +
                   ") is not held in use by the allocation map: it may be an older copy of the page, and the "
                   "values copied from it older ones (or the map is damaged)");
    }
    for (uint64_t i = first; i < first + kSlotsPerPage; ++i) {
      const uint64_t slot = RacyLoad(p + (i - first));
      if (slot == 0) continue;
      ++entries;
      auto where = [&] { return "table slot " + std::to_string(i); };
      RecordRef rec;
      if (!r.Record(SlotGranule(slot), &rec)) {
        const bool header_in_file =
            SlotGranule(slot) >= kHeapOffset / kGranule && SlotGranule(slot) * kGranule + kRecordHeaderSize <= r.limit;
        walk.Problem(where() + (header_in_file ? ": its record's header " + at(SlotGranule(slot)) +
                                                     " claims sizes past the file or over the limits (the header "
                                                     "or the slot is damaged); left behind"
                                               : " points out of the file " + at(SlotGranule(slot))));
        continue;
      }
      const std::string_view key(reinterpret_cast<const char*>(rec.key()), rec.key_size);
      const uint64_t hash = HashKey(key, seed_);
      if (SlotTag(slot) != HashTag(hash)) {  // before any checksum: garbage may claim a 1 GiB value
        walk.Problem(where() + " points at a record " + at(rec.granule) + " of key " + DescribeKey(key) +
                     ", whose hash does not match the slot: the slot or the record is damaged; left behind");
        continue;
      }
      // The slot a lookup reaches holds the value Get would return.
      std::string doubt;
      uint64_t found_at = i;
      RecordRef found;
      const TableReader::Result lookup = r.Find(key, hash, &found_at, &found, kMaxProbes);
      if (lookup == TableReader::Result::kFound && found_at != i) {
        const std::string other = "table slot " + std::to_string(found_at) + " " + at(found.granule);
        // (A record already copied is intact: its first granule is claimed.)
        const SalvageWalk::Verdict v = walk.Claimed(found.granule) ? SalvageWalk::Verdict::kIntact : walk.Verify(found);
        if (v == SalvageWalk::Verdict::kIntact) {
          walk.Problem(where() + ": key " + DescribeKey(key) + " " + at(rec.granule) + ", which a lookup finds at " +
                       other + " instead: this slot is stray or a second one; left behind");
          --entries;  // the count is of keys: an extra slot must not hide a cleared one
          continue;
        }
        doubt = "a lookup finds it at " + other + ", whose record " +
                (v == SalvageWalk::Verdict::kDamaged ? "is damaged" : "was not verified (a crafted file)") +
                ": this one may be an older value";
      } else if (lookup == TableReader::Result::kAbsent) {
        doubt =
            "no lookup of it reaches this slot: one stops at an empty slot or a shorter probe before it (a "
            "slot before it was cleared, or this one is stray)";
      } else if (lookup == TableReader::Result::kDamagedKey) {
        doubt = "a lookup of it stops at table slot " + std::to_string(found_at) + " " + at(found.granule) +
                ", whose slot has its tag but whose key bytes do not hash to it (they may be this key's, damaged): "
                "this one may be an older value";
      } else if (lookup != TableReader::Result::kFound) {
        doubt =
            "no lookup of it reaches this slot: one stops at a table page out of the file, a slot pointing out "
            "of it, or after 256 slots";
      }
      if (walk.Claimed(rec.granule)) {  // before Verify: the record is copied, and intact
        walk.Problem(where() + ": a second slot of key " + DescribeKey(key) + " " + at(rec.granule) +
                     ", pointing at the record already copied; left behind (nothing is lost)");
        --entries;
        continue;
      }
      // Verified before the overlap test, whose cost grows with the size the
      // header claims: Verify's budget bounds both.
      if (const SalvageWalk::Verdict v = walk.Verify(rec); v != SalvageWalk::Verdict::kIntact) {
        walk.Problem(where() + ": its record " + at(rec.granule) +
                     (v == SalvageWalk::Verdict::kDamaged
                          ? " fails its checksum"
                          : " was not verified (the walk has hashed four times the file's bytes: a crafted file)") +
                     " (key as stored: " + DescribeKey(key) + "); left behind");
        continue;
      }
      if (walk.Overlaps(rec)) {
        walk.Problem(where() + ": the record of key " + DescribeKey(key) + " " + at(rec.granule) +
                     " overlaps a record already copied; left behind");
        continue;
      }
      bool present = false;
      s = to->Contains(key, &present);
      if (!s.ok()) return s;
      if (present) {
        walk.Problem(where() + ": a second slot of key " + DescribeKey(key) + " " + at(rec.granule) +
                     ", which no lookup reaches; the first one's value was kept");
        --entries;
        continue;
      }
      if (!walk.InUse(rec.granule * kGranule, rec.granules() * kGranule)) {
        if (!doubt.empty()) doubt += "; and ";
        doubt +=
            "the allocation map does not hold its record in use: it may be an older value (or the map is "
            "damaged)";
      }
      if (!doubt.empty())
        walk.Problem(where() + ": key " + DescribeKey(key) + " " + at(rec.granule) + " was copied, but " + doubt);
      walk.Claim(rec);
      walk.Forget(rec);
      s = to->Put(key, std::string_view(reinterpret_cast<const char*>(rec.value()), rec.value_size));
      if (!s.ok()) return s;
      ++report->copied;
    }
  }
  const uint64_t counted = ctl_->entries.load();
  if (!page_lost && entries < counted) {  // (more: the extra slots were named above)
    walk.Problem("the table holds " + std::to_string(entries) + " keys and the store counts " +
                 std::to_string(counted) +
                 ": slots cleared by the damage lose their pairs without a trace (or the "
                 "count is damaged)");
  }
  return Status::Ok();
}

}  // namespace internal
}  // namespace mapkv
