// cmd_put.cc: `mapkv put FILE KEY [VALUE]`.
#include <unistd.h>

#include <CLI/CLI.hpp>
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

// Reads all of standard input, byte for byte.
bool ReadStdin(std::string* out, int* err) {
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
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
  if (o.value_option->count() == 0) {
    int err = 0;
    if (!ReadStdin(&o.value, &err)) {
      PrintError("<stdin>", "cannot read the value: " + ErrnoText(err));
      return kExitStore;
    }
  }
  Store store;
  Status s = OpenWritable(o.file, /*create=*/true, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  s = store.Put(o.key, o.value);
  if (!s.ok()) return Fail(o.file, s);
  s = store.Close();
  if (!s.ok()) return Fail(o.file, s);
  return kExitOk;
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
