// cli_runner.h: runs the built mapkv binary (MAPKV_CLI_PATH) as a child with
// pipes (or, on POSIX, a pseudo-terminal) on its standard streams, binary-safe,
// for the CLI tests.
#ifndef MAPKV_TESTS_CLI_RUNNER_H_
#define MAPKV_TESTS_CLI_RUNNER_H_

#include <string>
#include <vector>

namespace mapkv::test {

struct CliResult {
  int code = -1;    // exit code, or 128 + signal
  std::string out;  // standard output (or what the terminal showed)
  std::string err;  // standard error (or what the terminal showed)
};

// Which standard stream of the child is a pseudo-terminal (else pipes;
// POSIX only).
enum class Tty { kNone, kStdout, kStderr };

// Runs mapkv with `args`, feeding `input` on its standard input, and collects
// its outputs until it exits (a test failure after 60 s).
CliResult RunCli(const std::vector<std::string>& args, const std::string& input = "", Tty tty = Tty::kNone);

#ifndef _WIN32
// As RunCli, but with standard output written to the file `stdout_path`
// (e.g. /dev/full) instead of collected: the result's `out` stays empty.
CliResult RunCliToFile(const std::vector<std::string>& args, const std::string& stdout_path,
                       const std::string& input = "");
#endif

}  // namespace mapkv::test

#endif  // MAPKV_TESTS_CLI_RUNNER_H_
