// salvage_test.cc: Store::Salvage copies the intact pairs of a damaged store
// into a new one, names what it leaves behind, and changes nothing in the
// damaged store. Each case damages a closed store's file the way a bad disk
// or a stray write would: a record's bytes, a record's size, a table slot,
// the table's page map.
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "format.h"
#include "mapkv/store.h"
#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

using namespace internal::format;  // NOLINT

// A store of `n` keys with unique values, closed (checkpointed); returns them.
Model MakeStore(const std::string& path, int n) {
  Model model;
  Store s = MustOpen(path);
  for (int i = 0; i < n; ++i) {
    const std::string key = "key-" + std::to_string(i);
    model[key] = "value of " + key + " |" + std::string(40 + i % 50, static_cast<char>('a' + i % 26)) + "|";
    REQUIRE(s.Put(key, model[key]).ok());
  }
  REQUIRE(s.Close().ok());
  return model;
}

// The file image of a closed store, with its table reachable by slot index.
struct Image {
  explicit Image(const std::string& path) : bytes(ReadFileBytes(path)) {}
  const ControlPage* ctl() const { return reinterpret_cast<const ControlPage*>(bytes.data() + kControlOffset); }
  uint64_t slots() const { return uint64_t{1} << ctl()->table_shift.load(); }
  uint64_t PagemapEntry(uint64_t page) const { return ctl()->pagemap_offset.load() + page * 4; }
  uint64_t SlotOffset(uint64_t i) const {
    uint32_t phys = 0;
    std::memcpy(&phys, bytes.data() + PagemapEntry(i >> kSlotsPerPageShift), 4);
    return uint64_t{phys} * kPageSize + (i & (kSlotsPerPage - 1)) * 8;
  }
  uint64_t Slot(uint64_t i) const {
    uint64_t slot = 0;
    std::memcpy(&slot, bytes.data() + SlotOffset(i), 8);
    return slot;
  }
  void SetSlot(uint64_t i, uint64_t slot) { std::memcpy(bytes.data() + SlotOffset(i), &slot, 8); }
  // Offset of the record of `key`, whose value is model's (unique in the file).
  size_t RecordOf(const std::string& key, const std::string& value) const {
    const size_t at = bytes.find(key + value);
    REQUIRE(at != std::string::npos);
    REQUIRE(bytes.find(key + value, at + 1) == std::string::npos);
    return at - kRecordHeaderSize;
  }
  // The keys (with empty values) of the entries in table page `page`.
  Model KeysInPage(uint64_t page) const {
    Model keys;
    for (uint64_t i = page * kSlotsPerPage; i < (page + 1) * kSlotsPerPage; ++i) {
      const uint64_t s = Slot(i);
      if (s == 0) continue;
      const char* rec = bytes.data() + SlotGranule(s) * kGranule;
      RecordHeader h;
      std::memcpy(&h, rec, sizeof h);
      keys.emplace(std::string(rec + kRecordHeaderSize, h.key_size_m1 + 1u), "");
    }
    return keys;
  }
  // The first empty slot after slot `i` (wrapping round).
  uint64_t EmptySlotAfter(uint64_t i) const {
    uint64_t j = (i + 1) % slots();
    while (Slot(j) != 0) j = (j + 1) % slots();
    return j;
  }
  // Slot word `slot` pointing at the record at `offset` instead.
  static uint64_t PointedAt(uint64_t slot, size_t offset) { return (slot & ~kOffsetMask) | (offset / kGranule); }
  // Index of the slot that points at the record at `offset`.
  uint64_t SlotOf(size_t offset) const {
    for (uint64_t i = 0; i < slots(); ++i) {
      const uint64_t s = Slot(i);
      if (s != 0 && SlotGranule(s) * kGranule == offset) return i;
    }
    FAIL("no slot points at offset " << offset);
    return 0;
  }
  std::string bytes;
};

// Salvages `from` into `to`, asserting that it ran and that `from` kept
// every byte; returns the report.
SalvageReport MustSalvage(const std::string& from, const std::string& to) {
  const std::string before = ReadFileBytes(from);
  SalvageReport report;
  const Status s = Store::Salvage(from, to, Options{}, &report);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  CHECK(ReadFileBytes(from) == before);
  return report;
}

// The new store is sound, writable, and holds exactly `want`.
void CheckSalvaged(const std::string& to, const Model& want) {
  Store s = MustOpen(to);
  CheckClean(s);
  CHECK(Dump(s) == want);
  REQUIRE(s.Put("after salvage", "a write").ok());
}

bool AnyLineHas(const SalvageReport& report, const std::string& a, const std::string& b) {
  for (const std::string& line : report.problems) {
    if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
  }
  return false;
}

size_t LinesWith(const SalvageReport& report, const std::string& text) {
  size_t n = 0;
  for (const std::string& line : report.problems) n += line.find(text) != std::string::npos;
  return n;
}

std::string Lines(const SalvageReport& report) {
  std::string text;
  for (const std::string& line : report.problems) text += "\n  " + line;
  return text;
}

TEST_CASE("salvage: an undamaged store is copied whole") {
  TempDir dir;
  const Model model = MakeStore(dir.File("from.mkv"), 300);
  const SalvageReport report = MustSalvage(dir.File("from.mkv"), dir.File("to.mkv"));
  CHECK(report.complete());
  CHECK(report.copied == model.size());
  CheckSalvaged(dir.File("to.mkv"), model);
}

// A sound store with everything a walk might mistake for damage: records
// and copied table pages of the current checkpoint epoch, freed records
// and pages awaiting the next checkpoint, erased keys, entries displaced
// across page boundaries, a 65536-byte key and empty values.
TEST_CASE("salvage: a sound store in the middle of an epoch is copied whole, with nothing to name") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  Model model;
  {
    Options keep;
    keep.checkpoint_on_close = false;
    Store s = MustOpen(from, keep);
    for (int i = 0; i < 5000; ++i) model["key-" + std::to_string(i)] = std::string(i % 7 == 0 ? 0 : 20 + i % 90, 'a');
    model[std::string(kMaxKeySize, 'K')] = "the longest key";
    for (const auto& [k, v] : model) REQUIRE(s.Put(k, v).ok());
    REQUIRE(s.Flush(FlushMode::kSync).ok());
    for (int i = 0; i < 5000; i += 3) {
      model["key-" + std::to_string(i)] = "overwritten " + std::to_string(i);
      REQUIRE(s.Put("key-" + std::to_string(i), model["key-" + std::to_string(i)]).ok());
    }
    for (int i = 1; i < 5000; i += 5) {
      model.erase("key-" + std::to_string(i));
      REQUIRE(s.Erase("key-" + std::to_string(i)).ok());
    }
  }
  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.complete(), Lines(report));
  CHECK(report.copied == model.size());
  CheckSalvaged(dir.File("to.mkv"), model);
}

// The records that block every write (a damaged record cannot be replaced,
// erased or moved) are left behind; every other pair is copied.
TEST_CASE("salvage: records that fail their checksum are left behind and named, the rest copied") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  Model model = MakeStore(from, 300);
  Image image(from);
  // key-17: a value byte flipped. key-42: its value size claims 3000 bytes,
  // running over the records after it.
  image.bytes[image.RecordOf("key-17", model["key-17"]) + kRecordHeaderSize + 6 + 3] ^= 0x20;
  const uint32_t claimed = 3000;
  std::memcpy(image.bytes.data() + image.RecordOf("key-42", model["key-42"]), &claimed, 4);
  WriteFileBytes(from, image.bytes);
  {
    Store s = MustOpen(from);
    CHECK(s.Erase("key-42").code() == Code::kCorruption);  // why a salvage is needed
    CheckReport check;
    REQUIRE(s.Check(&check).ok());
    CHECK_FALSE(check.ok());
  }

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.problem_count == 2, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "fails its checksum", "key-17"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "fails its checksum", "key-42"), Lines(report));
  model.erase("key-17");
  model.erase("key-42");
  CHECK(report.copied == model.size());
  CheckSalvaged(dir.File("to.mkv"), model);
}

TEST_CASE("salvage: past 1000 problems the report counts them and keeps the first 1000 lines") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  const Model model = MakeStore(from, 1500);
  Image image(from);
  int damaged = 0;
  for (const auto& [k, v] : model) {
    if (damaged == 1200) break;
    image.bytes[image.RecordOf(k, v) + kRecordHeaderSize + k.size()] ^= 0x01;
    ++damaged;
  }
  WriteFileBytes(from, image.bytes);
  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK(report.problem_count == 1200);
  CHECK(report.problems.size() == 1000);
  CHECK(report.copied == 300);
}

TEST_CASE("salvage: a slot that points at another key's record, and a second slot of one key, are left behind") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  Model model = MakeStore(from, 300);
  Image image(from);
  // key-7's slot is made to point at key-8's record (key-7's own record is
  // then unreachable); key-9's slot is copied into an empty slot.
  const uint64_t slot7 = image.SlotOf(image.RecordOf("key-7", model["key-7"]));
  const uint64_t slot8 = image.SlotOf(image.RecordOf("key-8", model["key-8"]));
  image.SetSlot(slot7, (image.Slot(slot7) & ~kOffsetMask) | SlotGranule(image.Slot(slot8)));
  const uint64_t slot9 = image.SlotOf(image.RecordOf("key-9", model["key-9"]));
  const uint64_t empty = image.EmptySlotAfter(slot9);  // a lookup meets slot9 first
  image.SetSlot(empty, image.Slot(slot9));
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.problem_count == 2, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slot " + std::to_string(slot7) + " points at a record",
                           "of key \"key-8\", whose hash does not match the slot"),
                Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "key \"key-9\"", "which a lookup finds at table slot " + std::to_string(slot9)),
                Lines(report));
  model.erase("key-7");
  CHECK(report.copied == model.size());
  CheckSalvaged(dir.File("to.mkv"), model);
}

TEST_CASE("salvage: a table page out of the file or shared by two table pages is skipped, the rest copied") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  const Model model = MakeStore(from, 2000);
  Image image(from);
  REQUIRE(image.slots() >= 4 * kSlotsPerPage);
  // Page 1's entry points far past the file; page 3's at page 2's page.
  const Model lost1 = image.KeysInPage(1), lost3 = image.KeysInPage(3);
  REQUIRE(!lost1.empty());
  REQUIRE(!lost3.empty());
  const uint32_t far = 0x7fffffff;
  std::memcpy(image.bytes.data() + image.PagemapEntry(1), &far, 4);
  std::memcpy(image.bytes.data() + image.PagemapEntry(3), image.bytes.data() + image.PagemapEntry(2), 4);
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  // Besides the two pages: the pairs whose lookups start in a lost page (an
  // entry displaced across a page boundary) are copied in doubt.
  CHECK_MESSAGE(report.problem_count == 2 + LinesWith(report, "no lookup of it reaches this slot"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slots 512 to 1023", "out of the file"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slots 1536 to 2047", "is table page 2's"), Lines(report));
  Model want = model;
  for (const auto& [k, v] : lost1) want.erase(k);
  for (const auto& [k, v] : lost3) want.erase(k);
  CHECK(report.copied == want.size());
  CheckSalvaged(dir.File("to.mkv"), want);
}

// A store whose key "k" was overwritten after a checkpoint, closed without
// another: the old record is still in the file, intact and marked freed.
// Returns the offsets of the old and the current record.
std::pair<size_t, size_t> MakeStoreWithOldValue(const std::string& path, Model* model) {
  Options keep;
  keep.checkpoint_on_close = false;  // nothing moves or reuses the old record at the close
  Store s = MustOpen(path, keep);
  for (int i = 0; i < 300; ++i) {
    (*model)["key-" + std::to_string(i)] = "value " + std::to_string(i * 7919);
    REQUIRE(s.Put("key-" + std::to_string(i), (*model)["key-" + std::to_string(i)]).ok());
  }
  REQUIRE(s.Put("k", "the old value of k").ok());
  REQUIRE(s.Flush(FlushMode::kSync).ok());  // the old record is checkpointed: it is kept, not rewritten
  REQUIRE(s.Put("k", "the new value of k, longer").ok());
  (*model)["k"] = "the new value of k, longer";
  REQUIRE(s.Close().ok());
  const Image image(path);
  return {image.RecordOf("k", "the old value of k"), image.RecordOf("k", "the new value of k, longer")};
}

TEST_CASE("salvage: of two slots of one key with different values, the one a lookup reaches is copied") {
  // The second slot goes before k's home, where the walk meets it first and
  // a lookup never does: a walk that kept the first slot it met would copy
  // the old value. (An empty slot there depends on k's home, which the
  // store's random hash seed places: a few stores are tried.)
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  Model model;
  uint64_t slot = 0;
  bool placed = false;
  for (int attempt = 0; attempt < 20 && !placed; ++attempt) {
    std::filesystem::remove(from);
    model.clear();
    const auto [old_rec, new_rec] = MakeStoreWithOldValue(from, &model);
    Image image(from);
    slot = image.SlotOf(new_rec);
    const uint64_t home = SlotTag(image.Slot(slot)) >> (kTagBits - image.ctl()->table_shift.load());
    if (home > slot) continue;  // k's probe wraps round the table's end
    for (uint64_t j = 0; j < home && !placed; ++j) {
      if (image.Slot(j) != 0) continue;
      image.SetSlot(j, Image::PointedAt(image.Slot(slot), old_rec));
      WriteFileBytes(from, image.bytes);
      placed = true;
    }
  }
  REQUIRE_MESSAGE(placed, "no store of 20 had an empty slot before k's home");

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.problem_count == 1, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "key \"k\"", "which a lookup finds at table slot " + std::to_string(slot)),
                Lines(report));
  CHECK(report.copied == model.size());
  CheckSalvaged(dir.File("to.mkv"), model);  // the new value of k
}

TEST_CASE("salvage: a value the allocation map does not hold in use is copied in doubt and named") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  Model model;
  const auto [old_rec, new_rec] = MakeStoreWithOldValue(from, &model);
  Image image(from);
  const uint64_t slot = image.SlotOf(new_rec);  // k's only slot, led to the old value
  image.SetSlot(slot, Image::PointedAt(image.Slot(slot), old_rec));
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.problem_count == 1, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "key \"k\"", "the allocation map does not hold its record in use"), Lines(report));
  CHECK(report.copied == model.size());
  model["k"] = "the old value of k";  // all the damaged store had
  CheckSalvaged(dir.File("to.mkv"), model);
}

// k's record has a damaged key byte, and a second slot behind it points at
// k's older value: a lookup of k stops at the damaged record (which may be
// k's), so the second slot's pair is the only k there is, but in doubt.
TEST_CASE("salvage: behind a record whose key bytes are damaged, a second slot of the key is copied in doubt") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  Model model;
  const auto [old_rec, new_rec] = MakeStoreWithOldValue(from, &model);
  Image image(from);
  const uint64_t slot = image.SlotOf(new_rec);
  const uint64_t second = image.EmptySlotAfter(slot);
  image.SetSlot(second, Image::PointedAt(image.Slot(slot), old_rec));
  image.bytes[new_rec + kRecordHeaderSize] ^= 0x01;  // the key "k" becomes "j"
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(AnyLineHas(report, "table slot " + std::to_string(slot) + " ", "left behind"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "key \"k\"", "a lookup of it stops at table slot " + std::to_string(slot) + " "),
                Lines(report));
  CHECK_MESSAGE(LinesWith(report, "do not hash to it") == 1, Lines(report));
  CHECK(report.copied == model.size());
  model["k"] = "the old value of k";  // the only k left
  CheckSalvaged(dir.File("to.mkv"), model);
}

TEST_CASE("salvage: a table page the page map points at another's page loses its own pairs, not the other's") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  const Model model = MakeStore(from, 2000);
  const Image clean(from);
  REQUIRE(clean.slots() >= 4 * kSlotsPerPage);
  const Model lost = clean.KeysInPage(2);  // the pairs in table page 2's slots
  REQUIRE(!lost.empty());
  // Page 2's entry now names page 3's page: walking page 2 first must not
  // take page 3's pairs for page 2's and then drop page 3.
  Image image = clean;
  std::memcpy(image.bytes.data() + image.PagemapEntry(2), image.bytes.data() + image.PagemapEntry(3), 4);
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.problem_count == 1 + LinesWith(report, "no lookup of it reaches this slot"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slots 1024 to 1535", "is table page 3's"), Lines(report));
  Model want = model;
  for (const auto& [k, v] : lost) want.erase(k);
  CHECK(report.copied == want.size());
  CheckSalvaged(dir.File("to.mkv"), want);
}

TEST_CASE("salvage: a cleared slot is counted, and a pair no lookup reaches is copied in doubt") {
  TempDir dir;
  const std::string from = dir.File("from.mkv");
  const Model model = MakeStore(from, 300);
  Image image(from);
  // A slot followed by an entry displaced from its home (at or before this
  // slot): clearing it loses its pair, and the next entry's lookup stops at
  // the hole.
  const uint32_t shift = image.ctl()->table_shift.load();
  uint64_t cleared = image.slots();
  for (uint64_t i = 0; i + 1 < image.slots() && cleared == image.slots(); ++i) {
    const uint64_t next = image.Slot(i + 1);
    if (image.Slot(i) != 0 && next != 0 && (SlotTag(next) >> (kTagBits - shift)) <= i) cleared = i;
  }
  REQUIRE_MESSAGE(cleared < image.slots(), "no displaced entry in the table");
  uint64_t unreachable = 0;  // entries after the hole whose lookups start at or before it
  uint64_t run_end = cleared + 1;
  for (; run_end < image.slots() && image.Slot(run_end) != 0; ++run_end) {
    if ((SlotTag(image.Slot(run_end)) >> (kTagBits - shift)) <= cleared) ++unreachable;
  }
  // And a second slot of the first key after that run (an extra slot must
  // not make up for the cleared one in the count).
  uint64_t other = run_end + 1;
  while (other < image.slots() && image.Slot(other) == 0) ++other;
  REQUIRE(other < image.slots());
  image.SetSlot(image.EmptySlotAfter(other), image.Slot(other));
  image.SetSlot(cleared, 0);
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.problem_count == 2 + unreachable, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "this slot is stray or a second one", "left behind"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "the table holds 299 keys", "the store counts 300"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slot " + std::to_string(cleared + 1), "no lookup of it reaches this slot"),
                Lines(report));
  CHECK(report.copied == 299);
  Store to = MustOpen(dir.File("to.mkv"));
  CheckClean(to);
  const Model got = Dump(to);
  CHECK(got.size() == 299);
  for (const auto& [k, v] : got) CHECK(model.at(k) == v);
}

// The read-only open of FROM already waits for the lock and fails; the
// rule that FROM is locked before TO is created covers a FROM that turns
// busy between the two, which this does not reach.
TEST_CASE("salvage: a source that stays busy creates no target") {
  TempDir dir;
  const std::string from = dir.File("from.mkv"), to = dir.File("to.mkv");
  MakeStore(from, 10);
  Store writer = MustOpen(from);
  std::atomic<bool> inside{false}, release{false};
  std::thread holder([&] {
    writer
        .Update("key-1",
                [&](std::optional<std::string_view>, std::string*) {
                  inside = true;
                  while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                  return Store::UpdateAction::kKeep;
                })
        .IgnoreError();
  });
  while (!inside) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  Options options;
  options.lock_timeout = std::chrono::milliseconds(200);
  SalvageReport report;
  const Status s = Store::Salvage(from, to, options, &report);
  release = true;
  holder.join();
  CHECK_MESSAGE(s.code() == Code::kBusy, s.ToString());
  CHECK_FALSE(report.created);
  CHECK_FALSE(std::filesystem::exists(to));
}

TEST_CASE("salvage: refuses an existing target, and a source that is missing or not a store, changing no file") {
  TempDir dir;
  const std::string from = dir.File("from.mkv"), to = dir.File("to.mkv");
  MakeStore(from, 10);
  WriteFileBytes(to, "not a store, and not to be overwritten");
  const std::string from_bytes = ReadFileBytes(from);
  SalvageReport report;
  Status s = Store::Salvage(from, to, Options{}, &report);
  CHECK(s.code() == Code::kInvalidArgument);
  CHECK_MESSAGE(s.message().find(to) != std::string::npos, s.ToString());
  CHECK(ReadFileBytes(to) == "not a store, and not to be overwritten");
  CHECK(report.copied == 0);
  CHECK_FALSE(report.created);

  s = Store::Salvage(from, from, Options{}, &report);  // the store itself as the target
  CHECK(s.code() == Code::kInvalidArgument);
  CHECK(ReadFileBytes(from) == from_bytes);

  s = Store::Salvage(dir.File("missing.mkv"), dir.File("new.mkv"), Options{}, &report);
  CHECK(s.code() == Code::kNotFound);
  CHECK_MESSAGE(s.message().find("missing.mkv") != std::string::npos, s.ToString());
  CHECK_FALSE(std::filesystem::exists(dir.File("new.mkv")));

  s = Store::Salvage(to, dir.File("new.mkv"), Options{}, &report);  // `to` holds text
  CHECK(s.code() == Code::kCorruption);
  CHECK_FALSE(std::filesystem::exists(dir.File("new.mkv")));
}

}  // namespace
}  // namespace mapkv::test
