// cmd_del.cc: `mapkv del FILE KEY`.
#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

struct DelOptions {
  std::string file;
  std::string key;
};

int RunDel(const DelOptions& o) {
  if (!CheckKeyArgument(o.file, o.key)) return kExitUsage;  // before the store is opened for writing
  Store store;
  Status s = OpenWritable(o.file, /*create=*/false, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  s = store.Erase(o.key);
  if (s.IsNotFound()) {
    PrintError(o.file, "no key \"" + Escaped(o.key) + "\"");
    return kExitNotFound;
  }
  if (!s.ok()) return Fail(o.file, s);
  return CloseAfterChange(&store, o.file, "the key was erased");
}

}  // namespace

Command SetupDel(CLI::App& app) {
  auto o = std::make_shared<DelOptions>();
  CLI::App* sub = app.add_subcommand("del", "Remove KEY. Exit 1 when KEY does not exist.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("KEY", o->key, "Key; put `--` before a key that starts with '-'")->required();
  return {sub, [o] { return RunDel(*o); }};
}

}  // namespace mapkv::cli
