// cmd_get.cc: `mapkv get FILE KEY`.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <memory>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

struct GetOptions {
  std::string file;
  std::string key;
  std::string as;  // "", "u64", "i64" or "f64"
};

// The value as the number `as` names, printed in decimal (f64: the shortest
// text that reads back as the same double).
std::string AsNumber(const std::string& as, const std::string& value) {
  char buf[64];
  std::to_chars_result r{};
  if (as == "u64") {
    uint64_t v;
    std::memcpy(&v, value.data(), 8);
    r = std::to_chars(buf, buf + sizeof buf, v);
  } else if (as == "i64") {
    int64_t v;
    std::memcpy(&v, value.data(), 8);
    r = std::to_chars(buf, buf + sizeof buf, v);
  } else {
    double v;
    std::memcpy(&v, value.data(), 8);
    r = std::to_chars(buf, buf + sizeof buf, v);
  }
  return std::string(buf, r.ptr) + "\n";
}

int RunGet(const GetOptions& o) {
  if (!CheckKeyArgument(o.file, o.key)) return kExitUsage;
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
  if (!o.as.empty()) {
    if (value.size() != 8) {
      PrintError(o.file, "the value of key \"" + Escaped(o.key) + "\" is " + std::to_string(value.size()) +
                             " bytes, expected 8 for --as " + o.as);
      return kExitStore;
    }
    value = AsNumber(o.as, value);
  } else if (isatty(STDOUT_FILENO)) {
    value.push_back('\n');
  }
  return WriteStdout(value) ? kExitOk : kExitStore;
}

}  // namespace

Command SetupGet(CLI::App& app) {
  auto o = std::make_shared<GetOptions>();
  CLI::App* sub = app.add_subcommand(
      "get",
      "Write the value of KEY to standard output, byte for byte; a newline is added only when standard "
      "output is a terminal. With --as, print the 8-byte little-endian value as a number instead. Exit 1 when "
      "KEY does not exist, 3 when --as finds a value that is not 8 bytes.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("KEY", o->key, "Key; put `--` before a key that starts with '-'")->required();
  sub->add_option("--as", o->as, "Print the value as a number: u64, i64 (as `incr` stores) or f64")
      ->check(CLI::IsMember({"u64", "i64", "f64"}));
  return {sub, [o] { return RunGet(*o); }};
}

}  // namespace mapkv::cli
