// cmd_put.cc: `mapkv put FILE KEY [VALUE]`.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <memory>

#include "commands.h"

namespace mapkv::cli {
namespace {

struct PutOptions {
  std::string file;
  std::string key;
  std::string value;
  CLI::Option* value_option = nullptr;  // count() == 0: read standard input
};

// Reads standard input, byte for byte, to its end or until it has read more
// than `limit` bytes (then *out holds limit + 1 of them).
bool ReadStdin(std::string* out, size_t limit, int* err) {
  char buf[1 << 16];
  for (;;) {
    const size_t want = std::min(sizeof buf, limit + 1 - out->size());
    if (want == 0) return true;
    const ssize_t n = ::read(STDIN_FILENO, buf, want);
    if (n == 0) return true;
    if (n < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return false;
    }
    out->append(buf, static_cast<size_t>(n));
  }
}

int RunPut(PutOptions& o) {
  // Everything is checked before the store is opened (and maybe created).
  if (!CheckKeyArgument(o.file, o.key)) return kExitUsage;
  if (o.value_option->count() == 0) {
    int err = 0;
    if (!ReadStdin(&o.value, kMaxValueSize, &err)) {
      PrintError("<stdin>", "cannot read the value: " + ErrnoText(err));
      return kExitStore;
    }
    // (A VALUE argument needs no such check: no command line holds 1 GiB.)
    if (o.value.size() > kMaxValueSize) {
      PrintError(o.file,
                 "value of more than " + std::to_string(kMaxValueSize) + " bytes on standard input (at most 1 GiB)");
      return kExitUsage;
    }
  }
  Store store;
  Status s = OpenWritable(o.file, /*create=*/true, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  s = store.Put(o.key, o.value);
  if (!s.ok()) return Fail(o.file, s);
  return CloseAfterChange(&store, o.file, "the put was applied");
}

}  // namespace

Command SetupPut(CLI::App& app) {
  auto o = std::make_shared<PutOptions>();
  CLI::App* sub =
      app.add_subcommand("put",
                         "Insert or replace KEY. Without VALUE the value is read from standard input, byte for byte "
                         "(binary-safe). Creates FILE if missing.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("KEY", o->key, "Key (1 byte to 64 KiB); put `--` before a key that starts with '-'")->required();
  o->value_option = sub->add_option("VALUE", o->value, "Value (default: standard input)");
  return {sub, [o] { return RunPut(*o); }};
}

}  // namespace mapkv::cli
