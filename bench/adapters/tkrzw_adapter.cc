// tkrzw's HashDBM (libtkrzw, Debian's 1.0.x) on its default file class,
// MemoryMapParallelFile (the whole file mapped), in-place updates, no record
// checksums, no sync, and a bucket array of 2x the expected entries (fixed at
// creation; HashDBM does not grow it by itself).
#include <tkrzw_dbm_hash.h>

#include <algorithm>

#include "adapter.h"

namespace bench {
namespace {

class TkrzwEngine final : public Engine {
 public:
  ~TkrzwEngine() override { Close(); }
  const char* Name() const override { return "tkrzw"; }
  const char* MultiProcessNote() const override {
    return "a writer holds an exclusive file lock; other processes cannot open it meanwhile";
  }

  void Open(const OpenParams& params) override {
    db_ = std::make_unique<tkrzw::HashDBM>();
    tkrzw::HashDBM::TuningParameters tuning;
    tuning.num_buckets = static_cast<int64_t>(std::max<uint64_t>(2 * params.expected, 1024));
    tuning.record_crc_mode = tkrzw::HashDBM::RECORD_CRC_NONE;
    tuning.update_mode = tkrzw::HashDBM::UPDATE_IN_PLACE;
    const int32_t flags = params.create ? tkrzw::File::OPEN_TRUNCATE : tkrzw::File::OPEN_DEFAULT;
    Check(db_->OpenAdvanced(params.dir + "/store.tkh", true, flags, tuning), "open");
  }
  void Close() override {
    if (db_ && db_->IsOpen()) Check(db_->Close(), "close");
    db_.reset();
  }

  void Put(std::string_view key, std::string_view value) override { Check(db_->Set(key, value), "set"); }
  bool Get(std::string_view key, std::string* value) override {
    tkrzw::Status s = db_->Get(key, value);
    if (s == tkrzw::Status::NOT_FOUND_ERROR) return false;
    Check(s, "get");
    return true;
  }
  bool Erase(std::string_view key) override {
    tkrzw::Status s = db_->Remove(key);
    if (s == tkrzw::Status::NOT_FOUND_ERROR) return false;
    Check(s, "remove");
    return true;
  }

 private:
  static void Check(const tkrzw::Status& s, const char* what) {
    if (s != tkrzw::Status::SUCCESS) Fail("tkrzw", what, std::string(s));
  }
  std::unique_ptr<tkrzw::HashDBM> db_;
};

}  // namespace

std::unique_ptr<Engine> MakeTkrzw() { return std::make_unique<TkrzwEngine>(); }

}  // namespace bench
