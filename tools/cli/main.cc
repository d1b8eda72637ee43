// main.cc: the `mapkv` command-line tool. Wires the subcommands (one per
// cmd_<name>.cc), maps CLI11's parse errors to exit code 2 and keeps every
// exception inside.
#include <CLI/CLI.hpp>
#include <exception>
#include <new>
#include <vector>

#include "commands.h"

#ifndef MAPKV_VERSION
#error "MAPKV_VERSION must be defined by the build"
#endif

namespace mapkv::cli {
namespace {

int Main(int argc, char** argv) {
  CLI::App app("Inspect, edit, dump, load, check and compact a mapkv store.", "mapkv");
  app.set_version_flag("--version", "mapkv " MAPKV_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 success; 1 key not found (get, del); 2 usage error (bad arguments, malformed load input);\n"
      "3 store error (no such file, not a store, corrupt, newer version, I/O error, permission, disk full,\n"
      "  a value of the wrong size for `get --as` or `incr`; watch: fell behind the change ring).\n"
      "watch: 1 when its --timeout passes before --count changes.\n"
      "Run `mapkv COMMAND --help` for a command's arguments.");
  std::vector<Command> commands = {SetupCreate(app), SetupPut(app),   SetupGet(app),   SetupIncr(app),
                                   SetupDel(app),    SetupKeys(app),  SetupDump(app),  SetupLoad(app),
                                   SetupStats(app),  SetupCheck(app), SetupCompact(app), SetupWatch(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);  // help on standard output, exit 0
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string where = "mapkv";
    for (const CLI::App* sub : app.get_subcommands()) where += " " + sub->get_name();
    std::string what = e.what();
    if (app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-') {
      what = std::string("unknown command \"") + argv[1] + "\"";
    }
    std::fprintf(stderr, "%s: %s (see `%s --help`)\n", where.c_str(), what.c_str(), where.c_str());
    return kExitUsage;
  }
  for (const Command& c : commands) {
    if (c.app->parsed()) return c.run();
  }
  return kExitUsage;
}

}  // namespace
}  // namespace mapkv::cli

int main(int argc, char** argv) {
  try {
    return mapkv::cli::Main(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mapkv: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mapkv: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "mapkv: internal error\n");
  }
  return mapkv::cli::kExitStore;
}
