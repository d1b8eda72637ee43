// cmd_dump.cc: `mapkv dump FILE [-o OUT]`.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

#include "commands.h"
#include "json_lines.h"

namespace mapkv::cli {
namespace {

struct DumpOptions {
  std::string file;
  std::string out;  // empty: standard output
};

// One pair, copied out of the store during the walk: key bytes then value
// bytes at `offset` in the arena. `prefix` holds the key's first 16 bytes
// (zero-padded, big-endian) so that most comparisons of the sort do not
// touch the arena.
struct Pair {
  uint64_t prefix[2];
  uint64_t offset;
  uint64_t value_size;
  uint32_t key_size;
};

uint64_t BigEndian8(std::string_view s, size_t from) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) {
    v = (v << 8) | (from + i < s.size() ? static_cast<uint8_t>(s[from + i]) : 0);
  }
  return v;
}

int RunDump(const DumpOptions& o) {
  const bool to_stdout = o.out.empty() || o.out == "-";
  if (!to_stdout && IsStoreFile(o.file, o.out)) {
    PrintError(o.out, "the output is the store file " + o.file + " itself (dump would overwrite it with JSON)");
    return kExitUsage;
  }
  Store store;
  Status s = OpenReadOnly(o.file, &store);
  if (!s.ok()) return FailOpen(o.file, s);

  // One walk under one read lock: a consistent snapshot, then sorted.
  Stats stats;
  std::string arena;
  std::vector<Pair> pairs;
  if (store.GetStats(&stats).ok()) {
    // live_bytes is a control-page counter that opening does not verify:
    // a damaged one must not make us ask for more than the file holds.
    // (GetStats has checked entries: fewer than the table's slots.)
    arena.reserve(static_cast<size_t>(std::min(stats.live_bytes, stats.file_bytes)));
    pairs.reserve(stats.entries);
  }
  s = store.ForEach("", [&](std::string_view key, std::string_view value) {
    pairs.push_back(
        {{BigEndian8(key, 0), BigEndian8(key, 8)}, arena.size(), value.size(), static_cast<uint32_t>(key.size())});
    arena.append(key);
    arena.append(value);
    return true;
  });
  if (!s.ok()) return Fail(o.file, s);
  s = store.Close();
  if (!s.ok()) return Fail(o.file, s);

  const char* base = arena.data();
  std::sort(pairs.begin(), pairs.end(), [base](const Pair& a, const Pair& b) {
    if (a.prefix[0] != b.prefix[0]) return a.prefix[0] < b.prefix[0];
    if (a.prefix[1] != b.prefix[1]) return a.prefix[1] < b.prefix[1];
    return std::string_view(base + a.offset, a.key_size) < std::string_view(base + b.offset, b.key_size);
  });

  const std::string out_name = to_stdout ? "<stdout>" : o.out;
  std::FILE* f = stdout;
  if (!to_stdout) {
    f = std::fopen(o.out.c_str(), "wb");
    if (f == nullptr) {
      PrintError(o.out, "cannot open for writing: " + ErrnoText(errno));
      return kExitStore;
    }
  }
  Output out(f);
  bool ok = true;
  for (const Pair& p : pairs) {
    AppendJsonLine(out.buffer(), std::string_view(base + p.offset, p.key_size),
                   std::string_view(base + p.offset + p.key_size, p.value_size));
    if (!out.MaybeFlush()) {
      ok = false;
      break;
    }
  }
  ok = ok && out.Flush();
  int err = ok ? 0 : errno;
  if (f != stdout && std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    PrintError(out_name, "write failed: " + ErrnoText(err));
    return kExitStore;
  }
  return kExitOk;
}

}  // namespace

Command SetupDump(CLI::App& app) {
  auto o = std::make_shared<DumpOptions>();
  CLI::App* sub = app.add_subcommand(
      "dump",
      "Write every pair as JSON Lines, sorted by key bytes: {\"key\": \"...\", \"value\": \"...\"}. A key or "
      "value that is not valid UTF-8, or that escaping would make more than 3 times as long (mostly control "
      "characters), is written as \"key_base64\" / \"value_base64\" (standard base64) instead. `mapkv load` "
      "reads this format back.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("-o,--output", o->out,
                  "Write to OUT instead of standard output ('-': standard output; not FILE itself)")
      ->type_name("OUT")
      ->check(NotEmpty("OUT", "a file name, or - for standard output"));
  return {sub, [o] { return RunDump(*o); }};
}

}  // namespace mapkv::cli
