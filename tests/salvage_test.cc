// salvage_test.cc: Store::Salvage copies the intact pairs of a damaged store
// into a new one, names what it leaves behind, and changes nothing in the
// damaged store. Each case damages a closed store's file the way a bad disk
// or a stray write would: a record's bytes, a record's size, a table slot,
// the table's page map.
#include <cstring>
#include <string>

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
  for (const std::string& line : report.skipped) {
    if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
  }
  return false;
}

std::string Lines(const SalvageReport& report) {
  std::string text;
  for (const std::string& line : report.skipped) text += "\n  " + line;
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
  image = Image(from);  // as the writable open above left it (it changes no record)

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.skipped.size() == 2, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "fails its checksum", "key-17"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "fails its checksum", "key-42"), Lines(report));
  model.erase("key-17");
  model.erase("key-42");
  CHECK(report.copied == model.size());
  CheckSalvaged(dir.File("to.mkv"), model);
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
  uint64_t empty = 0;
  while (image.Slot(empty) != 0) ++empty;
  image.SetSlot(empty, image.Slot(slot9));
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.skipped.size() == 2, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slot " + std::to_string(slot7) + " points at the record of key \"key-8\"",
                           "its own record cannot be found"),
                Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "a second slot of key \"key-9\"", "the first one's value was kept"), Lines(report));
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
  auto keys_in_page = [&](uint64_t page) {
    Model in;
    for (uint64_t i = page * kSlotsPerPage; i < (page + 1) * kSlotsPerPage; ++i) {
      const uint64_t s = image.Slot(i);
      if (s == 0) continue;
      const char* rec = image.bytes.data() + SlotGranule(s) * kGranule;
      RecordHeader h;
      std::memcpy(&h, rec, sizeof h);
      in.emplace(std::string(rec + kRecordHeaderSize, h.key_size_m1 + 1u), "");
    }
    return in;
  };
  const Model lost1 = keys_in_page(1), lost3 = keys_in_page(3);
  REQUIRE(!lost1.empty());
  REQUIRE(!lost3.empty());
  const uint32_t far = 0x7fffffff;
  std::memcpy(image.bytes.data() + image.PagemapEntry(1), &far, 4);
  std::memcpy(image.bytes.data() + image.PagemapEntry(3), image.bytes.data() + image.PagemapEntry(2), 4);
  WriteFileBytes(from, image.bytes);

  const SalvageReport report = MustSalvage(from, dir.File("to.mkv"));
  CHECK_MESSAGE(report.skipped.size() == 2, Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slots 512 to 1023", "out of the file"), Lines(report));
  CHECK_MESSAGE(AnyLineHas(report, "table slots 1536 to 2047", "is another table page's too"), Lines(report));
  Model want = model;
  for (const auto& [k, v] : lost1) want.erase(k);
  for (const auto& [k, v] : lost3) want.erase(k);
  CHECK(report.copied == want.size());
  CheckSalvaged(dir.File("to.mkv"), want);
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
