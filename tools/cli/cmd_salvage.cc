// cmd_salvage.cc: `mapkv salvage FROM TO`.
#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"

namespace mapkv::cli {
namespace {

struct SalvageOptions {
  std::string from;
  std::string to;
};

int RunSalvage(const SalvageOptions& o) {
#ifdef _WIN32
  // A named store lives while a process has it open: this one's would end
  // with the command.
  if (o.to.rfind("shm:", 0) == 0) {
    PrintError(o.to,
               "a shared-memory store made by this command would disappear when it exits (on Windows); "
               "salvage into a file");
    return kExitUsage;
  }
#endif
  SalvageReport report;
  const Status s = Store::Salvage(o.from, o.to, Options{}, &report);
  if (!s.ok()) {
    // The engine's message names the store it is about, FROM or TO.
    PrintError("", s.message());
    if (report.created) {
      PrintError(o.to, "was created and keeps the " + std::to_string(report.copied) +
                           " pair(s) copied before the error; remove it before salvaging again");
    }
    return kExitStore;  // as for every failed open (`create` on an existing file too)
  }
  const std::string copied = std::to_string(report.copied) + " pair(s) salvaged into " + o.to;
  if (report.complete()) return WriteStdout(copied + "\n") ? kExitOk : kExitStore;
  std::string text = OneLineEach(report.problems);
  if (report.problem_count > report.problems.size()) {
    text += "... and " + std::to_string(report.problem_count - report.problems.size()) + " more\n";
  }
  if (!WriteStdout(text)) return kExitStore;
  PrintError(o.from, std::to_string(report.problem_count) +
                         " record(s), slot(s) or table page(s) left behind or copied in doubt; " + copied);
  return kExitStore;
}

}  // namespace

Command SetupSalvage(CLI::App& app) {
  auto o = std::make_shared<SalvageOptions>();
  CLI::App* sub = app.add_subcommand(
      "salvage",
      "Copy every pair of FROM whose record is intact into TO, a new store, for a store that `check` finds damaged "
      "(writes and compact refuse a damaged record). FROM is opened read-only and not changed; TO must not exist. "
      "Prints \"N pair(s) salvaged into TO\" and exits 0 when there was nothing to name; otherwise prints each record, "
      "slot or table page left behind, or pair copied in doubt (it may be an older value), on its own line "
      "(standard output) and exits 3.");
  sub->add_option("FROM", o->from, "Damaged store file")->required();
  sub->add_option("TO", o->to, "New store file (must not exist)")->required();
  return {sub, [o] { return RunSalvage(*o); }};
}

}  // namespace mapkv::cli
