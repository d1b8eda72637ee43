// main.cc: the `mapkv` command-line tool. Wires the subcommands (one per
// cmd_<name>.cc), maps CLI11's parse errors to exit code 2 and keeps every
// exception inside.
#include <CLI/CLI.hpp>
#ifdef _WIN32
#include <windows.h>
// (shellapi.h needs windows.h first)
#include <fcntl.h>
#include <io.h>
#include <shellapi.h>
#endif
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "commands.h"

#ifndef MAPKV_VERSION
#error "MAPKV_VERSION must be defined by the build"
#endif

namespace mapkv::cli {
namespace {

int Main(int argc, char** argv) {
  CLI::App app("Inspect, edit, dump, load, check, compact and salvage a mapkv store.", "mapkv");
  app.set_version_flag("--version", "mapkv " MAPKV_VERSION);
  app.require_subcommand(1);
  // The same syntax everywhere: on Windows CLI11 would otherwise take an
  // argument such as "/data/s.mkv" for a "/option".
  app.allow_windows_style_options(false);
  app.footer(
      "Exit codes: 0 success; 1 key not found (get, del); 2 usage error (bad arguments, malformed load input);\n"
      "3 store error (no such file, not a store, corrupt, newer version, I/O error, permission, disk full,\n"
      "  a value of the wrong size for `get --as` or `incr`; watch: fell behind the change ring).\n"
      "watch: 1 when its --timeout passes before --count changes. salvage: 3 also when it left damaged records\n"
      "  behind or copied pairs in doubt (TO holds what was copied).\n"
      "FILE may also be shm:NAME, a named shared-memory store (no file; see `mapkv rm-shm`).\n"
      "Run `mapkv COMMAND --help` for a command's arguments.");
  std::vector<Command> commands = {SetupCreate(app), SetupPut(app),   SetupGet(app),     SetupIncr(app),
                                   SetupDel(app),    SetupKeys(app),  SetupDump(app),    SetupLoad(app),
                                   SetupStats(app),  SetupCheck(app), SetupCompact(app), SetupSalvage(app),
                                   SetupRmShm(app),  SetupWatch(app)};
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
#ifdef _WIN32
  // Keys and values are bytes: no CRLF translation on standard streams.
  _setmode(_fileno(stdin), _O_BINARY);
  _setmode(_fileno(stdout), _O_BINARY);
  // The arguments as UTF-8 (argv is in the ANSI code page, which cannot
  // hold every path or key); the engine takes UTF-8 paths.
  std::vector<std::string> utf8_args;
  std::vector<char*> utf8_argv;
  int wargc = 0;
  if (wchar_t** wargv = ::CommandLineToArgvW(::GetCommandLineW(), &wargc); wargv != nullptr) {
    for (int i = 0; i < wargc; ++i) {
      const int n = ::WideCharToMultiByte(CP_UTF8, 0, wargv[i], -1, nullptr, 0, nullptr, nullptr);
      std::string arg(n > 0 ? static_cast<size_t>(n - 1) : 0, '\0');
      if (n > 1) ::WideCharToMultiByte(CP_UTF8, 0, wargv[i], -1, arg.data(), n, nullptr, nullptr);
      utf8_args.push_back(std::move(arg));
    }
    ::LocalFree(wargv);
    for (std::string& a : utf8_args) utf8_argv.push_back(a.data());
    utf8_argv.push_back(nullptr);
    argc = wargc;
    argv = utf8_argv.data();
  }
#endif
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
