// cmd_keys.cc: `mapkv keys FILE [--prefix P] [--limit N]`.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <memory>
#include <vector>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

struct KeysOptions {
  std::string file;
  std::string prefix;
  uint64_t limit = 0;
  CLI::Option* limit_option = nullptr;  // count() == 0: no limit
};

int RunKeys(const KeysOptions& o) {
  Store store;
  Status s = OpenReadOnly(o.file, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  std::vector<std::string> keys;
  s = store.ForEach(o.prefix, [&](std::string_view key, std::string_view) {
    keys.emplace_back(key);
    return true;
  });
  if (!s.ok()) return Fail(o.file, s);
  size_t n = keys.size();
  if (o.limit_option->count() > 0 && o.limit < n) {
    n = static_cast<size_t>(o.limit);
    std::partial_sort(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(n), keys.end());
  } else {
    std::sort(keys.begin(), keys.end());
  }
  Output out(stdout);
  for (size_t i = 0; i < n; ++i) {
    AppendEscaped(out.buffer(), keys[i]);
    out.buffer()->push_back('\n');
    if (!out.MaybeFlush()) break;
  }
  if (!out.Flush()) {
    PrintError("<stdout>", "write failed: " + ErrnoText(errno));
    return kExitStore;
  }
  return kExitOk;
}

}  // namespace

Command SetupKeys(CLI::App& app) {
  auto o = std::make_shared<KeysOptions>();
  CLI::App* sub = app.add_subcommand("keys", "List keys, one per line, sorted by their bytes.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("--prefix", o->prefix, "Only keys that start with P")->type_name("P");
  o->limit_option = AddCountArgument(sub, "--limit", &o->limit, "At most N keys (the first N in sorted order)");
  sub->footer(
      "Escaping: a key is printed as is when it is printable UTF-8. Otherwise, and always for these\n"
      "characters, a backslash is printed as \\\\, a newline as \\n, a tab as \\t, a carriage return as\n"
      "\\r, and every other control character (U+0000-U+001F, U+007F, U+0080-U+009F) and every byte\n"
      "that is not part of valid UTF-8 as \\xHH (two lowercase hex digits per byte). So each output\n"
      "line is exactly one key. Use `mapkv dump` to get keys in a machine-readable form.");
  return {sub, [o] { return RunKeys(*o); }};
}

}  // namespace mapkv::cli
