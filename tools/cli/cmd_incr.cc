// cmd_incr.cc: `mapkv incr FILE KEY [DELTA]`.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

struct IncrOptions {
  std::string file;
  std::string key;
  int64_t delta = 1;
};

int RunIncr(const IncrOptions& o) {
  if (!CheckKeyArgument(o.file, o.key)) return kExitUsage;  // before the store is created
  Store store;
  Status s = OpenWritable(o.file, /*create=*/true, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  int64_t now = 0;
  s = store.Increment(o.key, o.delta, &now);
  if (!s.ok()) return Fail(o.file, s);
  // From here on the increment is applied: a failure to close or to print
  // says so, so that a script that retries on exit 3 does not add twice.
  const std::string applied = "the increment was applied (the counter is now " + std::to_string(now) + ")";
  if (const int rc = CloseAfterChange(&store, o.file, applied); rc != kExitOk) return rc;
  if (!WriteStdout(std::to_string(now) + "\n")) {
    PrintError(o.file, applied + "; only printing it failed");
    return kExitStore;
  }
  return kExitOk;
}

}  // namespace

Command SetupIncr(CLI::App& app) {
  auto o = std::make_shared<IncrOptions>();
  CLI::App* sub = app.add_subcommand(
      "incr",
      "Add DELTA (default 1, may be negative) to the 64-bit signed counter at KEY (8 bytes, little-endian) and "
      "print the new value. A missing KEY counts as 0; FILE is created if missing. A value that is not 8 bytes, "
      "or a sum that overflows, is an error (exit 3) and changes nothing. When the increment is made but closing "
      "the store or printing fails, the exit is 3 too and a message says the increment was applied.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("KEY", o->key, "Key; put `--` before a key that starts with '-'")->required();
  AddIntegerArgument(sub, "DELTA", &o->delta, "Amount to add (default 1), in decimal");
  return {sub, [o] { return RunIncr(*o); }};
}

}  // namespace mapkv::cli
