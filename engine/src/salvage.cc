// salvage.cc: Store::Salvage, the copy of every intact pair of a damaged
// store into a new one.
//
// Writes refuse a damaged record (its size cannot be trusted to free it), and
// Compact refuses to move one, so a store that Check finds damaged can only
// be read. Salvage walks its table under a read lock, page by page, and puts
// each pair whose slot and record are sound into a new store, naming each
// thing it leaves behind. The walk never stops at damage: a table page out
// of the file or already walked (a damaged page map can point two table
// pages at one page, or make a small file claim a huge table) is skipped as
// a whole, a slot or record as itself. Nothing in the damaged store changes.
#include <string>
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
  Options target_options = options;
  target_options.create_if_missing = true;
  target_options.error_if_exists = true;  // also when `to` names `from`
  target_options.read_only = false;
  Store target;
  s = Open(to, target_options, &target);
  if (!s.ok()) return s;
  s = source.impl_->SalvageInto(&target, report);
  if (s.ok()) s = target.Flush(FlushMode::kSync);
  s |= target.Close();
  return s;
}

namespace internal {

using namespace format;  // NOLINT

Status StoreImpl::SalvageInto(Store* to, SalvageReport* report) const {
  Status s = LockRead();
  if (!s.ok()) return s;
  const ReadUnlocker unlock{this};
  const TableReader r = ReaderSnapshot();
  auto skip = [&](std::string what) { report->skipped.push_back(path_ + ": " + std::move(what)); };
  auto at = [](const RecordRef& rec) { return " (offset " + std::to_string(rec.granule * kGranule) + ")"; };
  // One bit per page of the file: a table page walked once is not walked again.
  std::vector<bool> walked(r.limit / kPageSize + 1);
  const uint64_t pages = r.slots() / kSlotsPerPage;
  for (uint64_t page = 0; page < pages; ++page) {
    const uint64_t first = page * kSlotsPerPage;
    auto slots = [&] {
      return "table slots " + std::to_string(first) + " to " + std::to_string(first + kSlotsPerPage - 1);
    };
    const uint64_t* p = r.SlotPtr(first);
    if (p == nullptr || !r.PageFits(p)) {
      skip(slots() + ": their page is out of the file (the table's page map is damaged)");
      continue;
    }
    const uint64_t phys = static_cast<uint64_t>(reinterpret_cast<const uint8_t*>(p) - r.base) / kPageSize;
    if (walked[phys]) {
      skip(slots() + ": their page (offset " + std::to_string(phys * kPageSize) +
           ") is another table page's too (the table's page map is damaged)");
      continue;
    }
    walked[phys] = true;
    for (uint64_t i = first; i < first + kSlotsPerPage; ++i) {
      const uint64_t slot = RacyLoad(p + (i - first));
      if (slot == 0) continue;
      auto where = [&] { return "table slot " + std::to_string(i); };
      RecordRef rec;
      if (!r.Record(SlotGranule(slot), &rec)) {
        skip(where() + " points out of the file (offset " + std::to_string(SlotGranule(slot) * kGranule) + ")");
        continue;
      }
      const std::string_view key(reinterpret_cast<const char*>(rec.key()), rec.key_size);
      if (!rec.Intact()) {
        skip(where() + ": its record" + at(rec) + " fails its checksum (key as stored: " + DescribeKey(key) + ")");
        continue;
      }
      if (SlotTag(slot) != HashTag(HashKey(key, seed_))) {
        skip(where() + " points at the record of key " + DescribeKey(key) + at(rec) +
             ", whose hash does not match the slot: the slot is damaged, and its own record cannot be found");
        continue;
      }
      bool present = false;
      s = to->Contains(key, &present);
      if (!s.ok()) return s;
      if (present) {
        skip(where() + ": a second slot of key " + DescribeKey(key) + at(rec) + "; the first one's value was kept");
        continue;
      }
      s = to->Put(key, std::string_view(reinterpret_cast<const char*>(rec.value()), rec.value_size));
      if (!s.ok()) return s;
      ++report->copied;
    }
  }
  return Status::Ok();
}

}  // namespace internal
}  // namespace mapkv
