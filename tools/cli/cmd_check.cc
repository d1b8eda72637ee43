// cmd_check.cc: `mapkv check FILE`.
#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"

namespace mapkv::cli {
namespace {

struct CheckOptions {
  std::string file;
};

int RunCheck(const CheckOptions& o) {
  Store store;
  Status s = OpenReadOnly(o.file, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  CheckReport report;
  s = store.Check(&report);
  if (!s.ok()) return FailOpen(o.file, s);  // the walk itself failed: a store error
  if (report.ok()) return WriteStdout("ok\n") ? kExitOk : kExitStore;
  if (!WriteStdout(OneLineEach(report.problems))) return kExitStore;
  PrintError(o.file, std::to_string(report.problems.size()) + " problem(s) found");
  return kExitStore;
}

}  // namespace

Command SetupCheck(CLI::App& app) {
  auto o = std::make_shared<CheckOptions>();
  CLI::App* sub = app.add_subcommand(
      "check",
      "Verify every structure and checksum. Prints \"ok\" and exits 0, or prints each problem on its own "
      "line (standard output) and exits 3.");
  sub->add_option("FILE", o->file, "Store file")->required();
  return {sub, [o] { return RunCheck(*o); }};
}

}  // namespace mapkv::cli
