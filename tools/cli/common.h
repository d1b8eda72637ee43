// common.h: what every subcommand of the mapkv CLI shares: the exit codes,
// the one-line error reporting, opening a store, and writing output.
#ifndef MAPKV_TOOLS_CLI_COMMON_H_
#define MAPKV_TOOLS_CLI_COMMON_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mapkv/status.h"
#include "mapkv/store.h"

namespace CLI {
class App;
class Validator;
class Option;
}  // namespace CLI

namespace mapkv::cli {

// Exit codes; scripts rely on them (see `mapkv --help`).
inline constexpr int kExitOk = 0;
inline constexpr int kExitNotFound = 1;  // get, del: the key does not exist
inline constexpr int kExitUsage = 2;     // bad arguments or malformed input data
inline constexpr int kExitStore = 3;     // no such file, not a store, corrupt, I/O...

// The exit code of an operation on an open store that returned `code`. A
// failed open is always kExitStore (see FailOpen), whatever its code.
constexpr int ExitCodeFor(Code code) {
  switch (code) {
    case Code::kOk:
      return kExitOk;
    case Code::kNotFound:
      return kExitNotFound;
    case Code::kInvalidArgument:
      return kExitUsage;  // empty or oversized key/value
    case Code::kCorruption:
    case Code::kVersionTooNew:
    case Code::kIoError:
    case Code::kNoSpace:
    case Code::kPermissionDenied:
    case Code::kBusy:
    case Code::kTimedOut:
    case Code::kWrongType:
    case Code::kOutOfRange:
    case Code::kAborted:
    case Code::kNotSupported:
    case Code::kUnsafeUse:
    case Code::kRescan:
      return kExitStore;
  }
  return kExitStore;
}

// A CLI11 check that refuses an empty argument: "NAME is empty: give WANT".
CLI::Validator NotEmpty(const std::string& name, const std::string& want);

// A subcommand: its CLI11 node and what runs it once arguments are parsed.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// Prints "mapkv: FILE: MESSAGE" as one line on stderr (a MESSAGE that starts
// with "FILE:", as the engine's do, or an empty FILE, is not prefixed; newlines
// in it become spaces).
void PrintError(std::string_view file, std::string_view message);
// PrintError(file, status.message()); returns ExitCodeFor(status.code()).
int Fail(std::string_view file, const Status& status);
// Closes `store` after a change that is made (`applied` says what, e.g.
// "the put was applied"): kExitOk, or, when the close fails (a damaged
// record its compaction found, a failed checkpoint), its error, then
// "APPLIED; only the close failed", and kExitStore, so that a script does
// not take exit 3 for a change not made.
int CloseAfterChange(Store* store, std::string_view file, const std::string& applied);
// For a failed Store::Open: prints it and returns kExitStore.
int FailOpen(std::string_view file, const Status& status);

// Checks a key given on the command line before the store is opened, so that
// a usage error never creates or touches a file: false after printing what
// is wrong in the engine's words ("FILE: empty key (keys are 1 to 65536
// bytes)"); the caller then exits kExitUsage.
bool CheckKeyArgument(std::string_view file, std::string_view key);

// True when `path` is the file of the store `file`: the same path, or both
// exist and are one file (a link, another spelling), by device and inode
// (by volume and file index on Windows). A shm:NAME store has no file.
bool IsStoreFile(const std::string& file, const std::string& path);
// The length of the store file `file`; nullopt for a shm:NAME store or a
// file that cannot be stat'ed.
std::optional<uint64_t> FileLength(const std::string& file);

// Opens for a command that only reads: read_only, never creates.
Status OpenReadOnly(const std::string& file, Store* store);
// Opens for writing, creating the file when `create`.
Status OpenWritable(const std::string& file, bool create, Store* store);

// Each item on a line of its own (a newline inside one becomes a space), as
// check and salvage print what they found.
std::string OneLineEach(const std::vector<std::string>& items);

// Writes `text` to standard output and flushes it. On a write error (say a
// full disk, or /dev/full) prints "<stdout>: write failed: ..." and returns
// false; the caller then exits kExitStore.
bool WriteStdout(std::string_view text);

// Buffered, checked output to a FILE*.
class Output {
 public:
  explicit Output(std::FILE* f) : f_(f) { buf_.reserve(kFlushAt + 4096); }
  std::string* buffer() { return &buf_; }
  // Writes the buffer out when it holds enough; returns false on a write error.
  bool MaybeFlush() { return buf_.size() < kFlushAt || Flush(); }
  bool Flush();

 private:
  static constexpr size_t kFlushAt = 1 << 20;
  std::FILE* f_;
  std::string buf_;
};

// Numeric arguments, parsed strictly in decimal (not by CLI11, whose
// conversions take "010" as octal, "0x10" as hexadecimal and "" as 0, and
// clamp a number out of range). Each adds to `app` the argument `name` (one
// option name such as "--limit", or a positional such as "DELTA") and sets
// *value when it is given; any other text is a usage error (exit 2) naming
// the argument and the text.
//
// A whole number: ASCII digits only (leading zeros allowed; no sign, space,
// base prefix, fraction or exponent), at most 18446744073709551615.
CLI::Option* AddCountArgument(CLI::App* app, const std::string& name, uint64_t* value, const std::string& description);
// An integer: ASCII digits after an optional '-', from INT64_MIN to INT64_MAX.
CLI::Option* AddIntegerArgument(CLI::App* app, const std::string& name, int64_t* value, const std::string& description);
// A number of seconds from 0 to `max`: ASCII digits, optionally followed by
// '.' and more digits.
CLI::Option* AddSecondsArgument(CLI::App* app, const std::string& name, double* value, double max,
                                const std::string& description);

// strerror(errno) as a string.
std::string ErrnoText(int err);

}  // namespace mapkv::cli

#endif  // MAPKV_TOOLS_CLI_COMMON_H_
