// The in-memory bound: absl::flat_hash_map<std::string, std::string> in this
// process's heap, no file, nothing shared. Not reserved up front (it grows as
// it fills, as mapkv's table does).
#include <absl/container/flat_hash_map.h>
#include <absl/strings/string_view.h>

#include "adapter.h"

namespace bench {
namespace {

class AbslEngine final : public Engine {
 public:
  const char* Name() const override { return "absl"; }
  bool Persistent() const override { return false; }
  const char* MultiProcessNote() const override { return "in-process memory only"; }

  void Open(const OpenParams& params) override {
    if (params.create) map_ = {};
  }
  void Close() override {}

  void Put(std::string_view key, std::string_view value) override { map_[View(key)].assign(value); }
  bool Get(std::string_view key, std::string* value) override {
    auto it = map_.find(View(key));
    if (it == map_.end()) return false;
    value->assign(it->second);
    return true;
  }
  bool Erase(std::string_view key) override { return map_.erase(View(key)) != 0; }

 private:
  // Debian's absl has its own string_view type (built for C++17 and earlier).
  static absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }
  absl::flat_hash_map<std::string, std::string> map_;
};

}  // namespace

std::unique_ptr<Engine> MakeAbsl() { return std::make_unique<AbslEngine>(); }

}  // namespace bench
