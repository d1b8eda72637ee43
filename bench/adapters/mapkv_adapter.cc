// mapkv with its default options: no map size, no table size given up front
// (the table grows on demand), every Put atomic and visible to other
// processes once it returns. Nothing is synced during the run; closing the
// last handle checkpoints, as by default. "mapkv-lp" is the same with
// Options::large_pages (2 MiB pages; faster gets, slower overwrites).
#include "adapter.h"
#include "mapkv/store.h"

namespace bench {
namespace {

class MapkvEngine final : public Engine {
 public:
  explicit MapkvEngine(bool large_pages) : large_pages_(large_pages) {}
  const char* Name() const override { return large_pages_ ? "mapkv-lp" : "mapkv"; }
  bool MultiProcess() const override { return true; }
  bool AtomicBatch() const override { return true; }

  void Open(const OpenParams& params) override {
    mapkv::Options options;
    options.create_if_missing = params.create;
    options.large_pages = large_pages_;
    Check(mapkv::Store::Open(params.dir + "/store.mkv", options, &store_), "open");
  }
  void Close() override { Check(store_.Close(), "close"); }

  void Put(std::string_view key, std::string_view value) override { Check(store_.Put(key, value), "put"); }
  bool Get(std::string_view key, std::string* value) override {
    mapkv::Status s = store_.Get(key, value);
    if (s.IsNotFound()) return false;
    Check(s, "get");
    return true;
  }
  bool Erase(std::string_view key) override {
    mapkv::Status s = store_.Erase(key);
    if (s.IsNotFound()) return false;
    Check(s, "erase");
    return true;
  }
  void PutBatch(const std::vector<KeyValue>& kvs) override {
    batch_.Clear();
    for (const auto& kv : kvs) batch_.Put(kv.first, kv.second);
    Check(store_.Write(batch_), "write batch");
  }

 private:
  static void Check(const mapkv::Status& s, const char* what) {
    if (!s.ok()) Fail("mapkv", what, s.ToString());
  }
  const bool large_pages_;
  mapkv::Store store_;
  mapkv::WriteBatch batch_;
};

}  // namespace

std::unique_ptr<Engine> MakeMapkv() { return std::make_unique<MapkvEngine>(false); }
std::unique_ptr<Engine> MakeMapkvLargePages() { return std::make_unique<MapkvEngine>(true); }

}  // namespace bench
