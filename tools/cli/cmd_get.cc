// cmd_get.cc: `mapkv get FILE KEY`.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

struct GetOptions {
  std::string file;
  std::string key;
};

int RunGet(const GetOptions& o) {
  Store store;
  Status s = OpenReadOnly(o.file, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  std::string value;
  s = store.Get(o.key, &value);
  if (s.IsNotFound()) {
    PrintError(o.file, "no key \"" + Escaped(o.key) + "\"");
    return kExitNotFound;
  }
  if (!s.ok()) return Fail(o.file, s);
  if (isatty(STDOUT_FILENO)) value.push_back('\n');
  if (std::fwrite(value.data(), 1, value.size(), stdout) != value.size() || std::fflush(stdout) != 0) {
    PrintError("<stdout>", "write failed: " + ErrnoText(errno));
    return kExitStore;
  }
  return kExitOk;
}

}  // namespace

Command SetupGet(CLI::App& app) {
  auto o = std::make_shared<GetOptions>();
  CLI::App* sub = app.add_subcommand(
      "get",
      "Write the value of KEY to standard output, byte for byte; a newline is added only when standard "
      "output is a terminal. Exit 1 when KEY does not exist.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("KEY", o->key, "Key; put `--` before a key that starts with '-'")->required();
  return {sub, [o] { return RunGet(*o); }};
}

}  // namespace mapkv::cli
