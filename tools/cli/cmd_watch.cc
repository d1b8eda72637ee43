// cmd_watch.cc: `mapkv watch FILE [--key K | --prefix P] [--count N] [--timeout SECONDS]`.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>
#include <vector>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

constexpr int kExitTimedOut = 1;     // the timeout passed before N changes
constexpr double kMaxTimeout = 1e9;  // seconds: about 32 years

struct WatchOptions {
  std::string file;
  std::string key;
  std::string prefix;
  uint64_t count = 0;
  double timeout = 0;
  CLI::Option* key_option = nullptr;
  CLI::Option* prefix_option = nullptr;
  CLI::Option* count_option = nullptr;    // count() == 0: no limit
  CLI::Option* timeout_option = nullptr;  // count() == 0: wait forever
};

void AppendChange(std::string* out, const Change& c) {
  char num[32];
  std::snprintf(num, sizeof num, "%" PRIu64, c.seq);
  out->append("{\"seq\": ").append(num);
  out->append(c.op == ChangeOp::kPut ? ", \"op\": \"put\"" : ", \"op\": \"del\"");
  if (IsValidUtf8(c.key)) {
    out->append(", \"key\": ");
    AppendJsonString(out, c.key);
  } else {
    out->append(", \"key_base64\": \"");
    AppendBase64(out, c.key);
    out->push_back('"');
  }
  if (c.key_truncated) {
    // The ring keeps a long key's first bytes, its size and its hash.
    std::snprintf(num, sizeof num, "%" PRIu32, c.key_size);
    out->append(", \"key_truncated\": true, \"key_size\": ").append(num);
    std::snprintf(num, sizeof num, "%016" PRIx64, c.key_hash);
    out->append(", \"key_hash\": \"").append(num).push_back('"');
  }
  out->append("}\n");
}

int RunWatch(const WatchOptions& o) {
  // A key no change can have would wait for ever (or report "no change").
  if (o.key_option->count() > 0 && !CheckKeyArgument(o.file, o.key)) return kExitUsage;
  if (o.prefix_option->count() > 0 && o.prefix.size() > kMaxKeySize) {
    PrintError(o.file, "prefix of " + std::to_string(o.prefix.size()) + " bytes (keys are 1 to " +
                           std::to_string(kMaxKeySize) + " bytes)");
    return kExitUsage;
  }
  Store store;
  Options options;
  options.create_if_missing = false;
  options.checkpoint_on_close = false;  // a watcher changes no data
  // Writable: a waiting watcher counts itself in the store's control page.
  Status s = Store::Open(o.file, options, &store);
  if (!s.ok()) return FailOpen(o.file, s);

  ChangeFilter filter;
  if (o.key_option->count() > 0) filter = ChangeFilter::Key(o.key);
  if (o.prefix_option->count() > 0) filter = ChangeFilter::Prefix(o.prefix);
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> deadline;
  if (o.timeout_option->count() > 0) {
    deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout));
  }
  const bool limited = o.count_option->count() > 0;
  uint64_t printed = 0;
  if (limited && o.count == 0) return kExitOk;

  uint64_t since = store.ChangeSeq();
  std::vector<Change> changes;
  std::string line;
  while (true) {
    uint64_t next = since;
    s = store.ChangesSince(since, filter, &changes, &next);
    if (s.code() == Code::kRescan) {
      PrintError(o.file,
                 s.message() + " (mapkv watch fell behind the change ring; restart it after reading the store)");
      return kExitStore;
    }
    if (!s.ok()) return Fail(o.file, s);
    for (const Change& c : changes) {
      line.clear();
      AppendChange(&line, c);
      // One line as it happens: written and flushed at once.
      if (!WriteStdout(line)) return kExitStore;
      if (limited && ++printed == o.count) return kExitOk;
    }
    since = next;
    // Wait in slices of at most an hour when there is no deadline.
    auto wait = std::chrono::milliseconds(3600 * 1000);
    if (deadline) {
      const auto now = Clock::now();
      if (now >= *deadline) return kExitTimedOut;
      wait = std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(*deadline - now));
    }
    s = store.WaitForChange(since, wait);
    if (s.code() == Code::kTimedOut) {
      if (deadline && Clock::now() >= *deadline) return kExitTimedOut;
      continue;
    }
    if (!s.ok()) return Fail(o.file, s);
  }
}

}  // namespace

Command SetupWatch(CLI::App& app) {
  auto o = std::make_shared<WatchOptions>();
  CLI::App* sub = app.add_subcommand(
      "watch",
      "Print each change made to the store from now on, as it happens, one JSON line each (flushed at once): "
      "{\"seq\": N, \"op\": \"put\"|\"del\", \"key\": \"...\"}. A key that is not valid UTF-8 is written as "
      "\"key_base64\"; a key longer than 40 bytes as its first 40 bytes with \"key_truncated\": true, "
      "\"key_size\" and \"key_hash\". Exit 0 after N changes, 1 when the timeout passes first, 3 on a store "
      "error or when the watcher fell behind the store's change ring (a message says so).");
  sub->add_option("FILE", o->file, "Store file")->required();
  o->key_option = sub->add_option("--key", o->key, "Only changes of key K")->type_name("K");
  o->prefix_option = sub->add_option("--prefix", o->prefix, "Only changes of keys that start with P")->type_name("P");
  o->key_option->excludes(o->prefix_option);
  o->count_option = AddCountArgument(sub, "--count", &o->count, "Exit 0 after N changes");
  o->timeout_option = AddSecondsArgument(sub, "--timeout", &o->timeout, kMaxTimeout,
                                         "Exit 1 when SECONDS pass first (0 to 1e9, fractions allowed)");
  sub->footer(
      "The store is opened writable (a waiting watcher counts itself in the store's control page) but no\n"
      "data is changed. Example: `mapkv watch s.mkv --key config --count 1 --timeout 30 && reload`.");
  return {sub, [o] { return RunWatch(*o); }};
}

}  // namespace mapkv::cli
