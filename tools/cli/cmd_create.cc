// cmd_create.cc: `mapkv create FILE [--capacity N]`.
#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"

namespace mapkv::cli {
namespace {

struct CreateOptions {
  std::string file;
  uint64_t capacity = 0;
};

int RunCreate(const CreateOptions& o) {
  Options options;
  options.create_if_missing = true;
  options.error_if_exists = true;
  options.initial_capacity = o.capacity;
  Store store;
  Status s = Store::Open(o.file, options, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  s = store.Close();
  if (!s.ok()) return Fail(o.file, s);
  return kExitOk;
}

}  // namespace

Command SetupCreate(CLI::App& app) {
  auto o = std::make_shared<CreateOptions>();
  CLI::App* sub = app.add_subcommand("create", "Create a new empty store; fails (exit 3) if FILE exists.");
  sub->add_option("FILE", o->file, "Path of the new store")->required();
  AddCountArgument(sub, "--capacity", &o->capacity, "Size the hash table for N entries up front (0: small, grows)");
  return {sub, [o] { return RunCreate(*o); }};
}

}  // namespace mapkv::cli
