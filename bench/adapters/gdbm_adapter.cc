// GDBM (libgdbm, Debian's 1.23) with its defaults, which already suit a
// non-durable local store: memory-mapped I/O, no sync per write (no
// GDBM_SYNC), an automatically sized bucket cache. A writer locks the file
// for itself.
#include <gdbm.h>

#include <cerrno>
#include <cstdlib>

#include "adapter.h"

namespace bench {
namespace {

class GdbmEngine final : public Engine {
 public:
  ~GdbmEngine() override { Close(); }
  const char* Name() const override { return "GDBM"; }
  const char* MultiProcessNote() const override {
    return "a writer locks the file for itself; readers of other processes are refused meanwhile";
  }

  void Open(const OpenParams& params) override {
    const std::string path = params.dir + "/store.gdbm";
    db_ = gdbm_open(path.c_str(), 0, params.create ? GDBM_NEWDB : GDBM_WRITER, 0600, nullptr);
    if (db_ == nullptr) Fail("GDBM", "open " + path, gdbm_strerror(gdbm_errno));
  }
  void Close() override {
    if (db_ != nullptr && gdbm_close(db_) != 0) Error("close");
    db_ = nullptr;
  }

  void Put(std::string_view key, std::string_view value) override {
    datum k = Datum(key), v = Datum(value);
    if (gdbm_store(db_, k, v, GDBM_REPLACE) != 0) Error("store");
  }
  bool Get(std::string_view key, std::string* value) override {
    datum v = gdbm_fetch(db_, Datum(key));
    if (v.dptr == nullptr) {
      if (gdbm_last_errno(db_) == GDBM_ITEM_NOT_FOUND) return false;
      Error("fetch");
    }
    value->assign(v.dptr, static_cast<size_t>(v.dsize));
    std::free(v.dptr);  // gdbm_fetch returns malloc'd memory
    return true;
  }
  bool Erase(std::string_view key) override {
    if (gdbm_delete(db_, Datum(key)) == 0) return true;
    if (gdbm_last_errno(db_) == GDBM_ITEM_NOT_FOUND) return false;
    Error("delete");
  }

 private:
  static datum Datum(std::string_view s) { return datum{const_cast<char*>(s.data()), static_cast<int>(s.size())}; }
  [[noreturn]] void Error(const char* what) { Fail("GDBM", what, gdbm_db_strerror(db_)); }
  GDBM_FILE db_ = nullptr;
};

}  // namespace

std::unique_ptr<Engine> MakeGdbm() { return std::make_unique<GdbmEngine>(); }

}  // namespace bench
