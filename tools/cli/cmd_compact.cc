// cmd_compact.cc: `mapkv compact FILE`.
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"

namespace mapkv::cli {
namespace {

struct CompactOptions {
  std::string file;
};

int RunCompact(const CompactOptions& o) {
  Store store;
  Status s = OpenWritable(o.file, /*create=*/false, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  struct stat st {};
  if (::stat(o.file.c_str(), &st) != 0) {
    PrintError(o.file, "stat failed: " + ErrnoText(errno));
    return kExitStore;
  }
  const auto before = static_cast<unsigned long long>(st.st_size);
  s = store.Compact();
  if (!s.ok()) return Fail(o.file, s);
  s = store.Close();
  if (!s.ok()) return Fail(o.file, s);
  if (::stat(o.file.c_str(), &st) != 0) {
    PrintError(o.file, "stat failed: " + ErrnoText(errno));
    return kExitStore;
  }
  std::printf("%s: %llu bytes before, %llu bytes after\n", o.file.c_str(), before,
              static_cast<unsigned long long>(st.st_size));
  return kExitOk;
}

}  // namespace

Command SetupCompact(CLI::App& app) {
  auto o = std::make_shared<CompactOptions>();
  CLI::App* sub =
      app.add_subcommand("compact",
                         "Rewrite the store with only its live data, reclaiming space; prints the file size in bytes "
                         "before and after.");
  sub->add_option("FILE", o->file, "Store file")->required();
  return {sub, [o] { return RunCompact(*o); }};
}

}  // namespace mapkv::cli
