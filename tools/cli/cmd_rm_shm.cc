// cmd_rm_shm.cc: `mapkv rm-shm shm:NAME`.
#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"

namespace mapkv::cli {
namespace {

struct RmShmOptions {
  std::string name;
};

int RunRmShm(const RmShmOptions& o) {
  Status s = Store::RemoveShared(o.name);
  // The engine's message names the store shm:NAME, also when given as NAME.
  if (!s.ok()) return FailOpen(o.name.rfind("shm:", 0) == 0 ? o.name : "shm:" + o.name, s);
  return kExitOk;
}

}  // namespace

Command SetupRmShm(CLI::App& app) {
  auto o = std::make_shared<RmShmOptions>();
  CLI::App* sub = app.add_subcommand(
      "rm-shm",
      "Remove the named shared-memory store shm:NAME (exit 3 when there is none; on Windows also while a "
      "process still has it open, since it disappears with the last one).");
  sub->add_option("NAME", o->name, "shm:NAME (or NAME)")->required();
  return {sub, [o] { return RunRmShm(*o); }};
}

}  // namespace mapkv::cli
