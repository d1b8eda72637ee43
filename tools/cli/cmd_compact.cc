// cmd_compact.cc: `mapkv compact FILE`.
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
  // The store's own figures: a shm:NAME store has no file to stat.
  Stats before, after;
  s = store.GetStats(&before);
  if (!s.ok()) return Fail(o.file, s);
  s = store.Compact();
  if (!s.ok()) return Fail(o.file, s);
  s = store.GetStats(&after);
  if (!s.ok()) return Fail(o.file, s);
  s = store.Close();
  if (!s.ok()) return Fail(o.file, s);
  // A file's length once closed: Windows shortens a file only when no view
  // maps it, at a close that finds the handle alone.
  const uint64_t after_bytes = FileLength(o.file).value_or(after.file_bytes);
  return WriteStdout(o.file + ": " + std::to_string(before.file_bytes) + " bytes before, " +
                     std::to_string(after_bytes) + " bytes after\n")
             ? kExitOk
             : kExitStore;
}

}  // namespace

Command SetupCompact(CLI::App& app) {
  auto o = std::make_shared<CompactOptions>();
  CLI::App* sub =
      app.add_subcommand("compact",
                         "Rewrite the store with only its live data, reclaiming space; prints its size in bytes (the "
                         "file's, or the shared memory's for shm:NAME) before and after.");
  sub->add_option("FILE", o->file, "Store file")->required();
  return {sub, [o] { return RunCompact(*o); }};
}

}  // namespace mapkv::cli
