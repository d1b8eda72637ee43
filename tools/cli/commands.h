// commands.h: one Setup function per subcommand (cmd_<name>.cc). Each adds
// its CLI11 subcommand to `app` and returns how to run it.
#ifndef MAPKV_TOOLS_CLI_COMMANDS_H_
#define MAPKV_TOOLS_CLI_COMMANDS_H_

#include "common.h"

namespace mapkv::cli {

Command SetupCreate(CLI::App& app);
Command SetupPut(CLI::App& app);
Command SetupGet(CLI::App& app);
Command SetupIncr(CLI::App& app);
Command SetupDel(CLI::App& app);
Command SetupKeys(CLI::App& app);
Command SetupDump(CLI::App& app);
Command SetupLoad(CLI::App& app);
Command SetupStats(CLI::App& app);
Command SetupCheck(CLI::App& app);
Command SetupCompact(CLI::App& app);
Command SetupSalvage(CLI::App& app);
Command SetupRmShm(CLI::App& app);
Command SetupWatch(CLI::App& app);

}  // namespace mapkv::cli

#endif  // MAPKV_TOOLS_CLI_COMMANDS_H_
