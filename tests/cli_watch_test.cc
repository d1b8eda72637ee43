// cli_watch_test.cc: `mapkv watch` (tools/cli/cmd_watch.cc), run as the built
// binary while a child process writes: JSON lines, filters, key_base64 and
// long keys, and the exit codes (0 after N changes, 1 on timeout, 2 usage,
// 3 store error and falling behind the ring).
#include <algorithm>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_runner.h"
#include "format.h"
#include "platform/platform.h"
#include "store_test_helpers.h"

#ifndef MAPKV_CLI_PATH
#error "MAPKV_CLI_PATH (the built mapkv binary) must be defined by the build"
#endif

namespace mapkv::test {
namespace {

using namespace std::chrono_literals;

// Runs `mapkv watch` with `args` to its end, collecting both outputs.
CliResult RunWatch(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"watch"};
  all.insert(all.end(), args.begin(), args.end());
  return RunCli(all);
}

std::vector<nlohmann::json> Lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// A key given as "hex:HEX" (command lines are not binary-safe on Windows).
std::string DecodeKey(const std::string& arg) {
  if (arg.rfind("hex:", 0) != 0) return arg;
  std::string out;
  for (size_t i = 4; i + 1 < arg.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(arg.substr(i, 2), nullptr, 16)));
  return out;
}

// args: path, then key/value pairs ("-" as value: erase; keys may be "hex:...";
// "@batch" N: one atomic batch of N puts). Waits until a watcher is counted
// in the store's control page, then writes them.
int CliWriterChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], {}, &s).ok()) return 3;
  const auto deadline = Clock::now() + 20s;
  // The watcher opens the store and then sleeps in WaitForChange, counted.
  std::unique_ptr<internal::File> file;
  std::unique_ptr<internal::Mapping> map;
  if (!internal::File::Open(args[0], internal::FileSpec{.read_only = true}, &file).ok()) return 4;
  if (!file->Map(internal::format::kControlOffset + 4096, false, &map).ok()) return 5;
  const auto* ctl =
      reinterpret_cast<const internal::format::ControlPage*>(map->data() + internal::format::kControlOffset);
  while (ctl->change_waiters.load() == 0) {
    if (Clock::now() > deadline) return 6;
    std::this_thread::sleep_for(1ms);
  }
  for (size_t i = 1; i + 1 < args.size(); i += 2) {
    Status st;
    if (args[i] == "@batch") {
      WriteBatch batch;
      for (int k = 0; k < std::stoi(args[i + 1]); ++k) batch.Put("batch/" + std::to_string(k), "v");
      st = s.Write(batch);
    } else {
      const std::string key = DecodeKey(args[i]);
      st = args[i + 1] == "-" ? s.Erase(key) : s.Put(key, args[i + 1]);
    }
    if (!st.ok()) return 7;
  }
  return 0;
}

const bool registered = RegisterChild("watch.cli-writer", CliWriterChild);

TEST_CASE("watch: mapkv watch prints one JSON line per change and exits 0 after --count") {
  REQUIRE(registered);
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  { REQUIRE(MustOpen(path).Put("old", "before the watch").ok()); }
  const std::string long_key = "long/" + std::string(50, 'x');
  const int pid =
      SpawnChild("watch.cli-writer", {path, "cfg", "1", "hex:fffe", "b", "cfg", "-", long_key, "v", "other", "v"});
  REQUIRE(pid > 0);
  const CliResult r = RunWatch({path, "--count", "4", "--timeout", "20"});
  CHECK(WaitChild(pid) == 0);
  CHECK(r.code == 0);
  CHECK(r.err.empty());
  const auto lines = Lines(r.out);
  REQUIRE(lines.size() == 4);  // the fifth change came after --count
  CHECK(lines[0] == nlohmann::json::parse(R"({"seq": 2, "op": "put", "key": "cfg"})"));
  CHECK(lines[1] == nlohmann::json::parse(R"({"seq": 3, "op": "put", "key_base64": "//4="})"));
  CHECK(lines[2] == nlohmann::json::parse(R"({"seq": 4, "op": "del", "key": "cfg"})"));
  CHECK(lines[3]["seq"] == 5);
  CHECK(lines[3]["key"] == long_key.substr(0, kChangeKeyBytes));
  CHECK(lines[3]["key_truncated"] == true);
  CHECK(lines[3]["key_size"] == long_key.size());
  CHECK(r.out.find("{\"seq\": 2, \"op\": \"put\", \"key\": \"cfg\"}\n") == 0);  // the documented spelling
}

// More changes at once than the store's ring holds: the watcher cannot tell
// what it missed, says so, and exits 3 (a script then reads the store afresh).
TEST_CASE("watch: mapkv watch that falls behind the change ring exits 3 and says so") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  {
    Options small_ring;
    small_ring.change_ring_capacity = 64;  // made by the first write, with this size
    REQUIRE(MustOpen(path, small_ring).Put("start", "").ok());
  }
  const int pid = SpawnChild("watch.cli-writer", {path, "@batch", "100"});
  REQUIRE(pid > 0);
  const CliResult r = RunWatch({path, "--count", "1", "--timeout", "20"});
  CHECK(WaitChild(pid) == 0);
  CHECK(r.code == 3);
  CHECK(r.out.empty());
  CHECK(r.err.find("100 changes since, the ring holds 64") != std::string::npos);
  CHECK(r.err.find("fell behind the change ring") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  Store s = MustOpen(path);
  CHECK(s.size() == 101);  // the batch is whole
}

TEST_CASE("watch: mapkv watch --key and --prefix filter; --timeout exits 1; usage and store errors") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  { REQUIRE(MustOpen(path).Put("start", "").ok()); }
  int pid = SpawnChild("watch.cli-writer", {path, "a/1", "v", "b/1", "v", "config", "v", "a/1", "-"});
  CliResult r = RunWatch({path, "--prefix", "a/", "--count", "2", "--timeout", "20"});
  CHECK(WaitChild(pid) == 0);
  CHECK(r.code == 0);
  auto lines = Lines(r.out);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["key"] == "a/1");
  CHECK(lines[1]["key"] == "a/1");
  CHECK(lines[1]["op"] == "del");

  pid = SpawnChild("watch.cli-writer", {path, "configx", "v", "config", "v2"});
  r = RunWatch({path, "--key", "config", "--count", "1", "--timeout", "20"});
  CHECK(WaitChild(pid) == 0);
  CHECK(r.code == 0);
  lines = Lines(r.out);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["key"] == "config");

  // Nothing changes: exit 1 after the timeout, no output.
  const auto t0 = Clock::now();
  r = RunWatch({path, "--key", "config", "--timeout", "0.3"});
  CHECK(r.code == 1);
  CHECK(r.out.empty());
  CHECK(SecondsSince(t0) >= 0.29);

  r = RunWatch({path, "--key", "a", "--prefix", "b"});
  CHECK(r.code == 2);
  CHECK(r.err.find("excludes") != std::string::npos);
  r = RunWatch({path, "--count", "x"});
  CHECK(r.code == 2);
  // A key no change can have: refused at once, not waited for.
  r = RunWatch({path, "--key", "", "--count", "1"});
  CHECK(r.code == 2);
  CHECK(r.err.find("empty key") != std::string::npos);
  r = RunWatch({path, "--key", std::string(65537, 'k'), "--timeout", "5"});
  CHECK(r.code == 2);
  CHECK(r.err.find("key of 65537 bytes") != std::string::npos);
  r = RunWatch({path, "--prefix", std::string(65537, 'k'), "--timeout", "5"});
  CHECK(r.code == 2);
  CHECK(r.err.find("prefix of 65537 bytes") != std::string::npos);
  // Timeouts past a double's range: too large is out of range, too small a
  // timeout of zero (both were "not a number of seconds").
  r = RunWatch({path, "--timeout", std::string(400, '9')});
  CHECK(r.code == 2);
  CHECK(r.err.find("is out of range") != std::string::npos);
  r = RunWatch({path, "--timeout", "0." + std::string(400, '0') + "1"});
  CHECK(r.code == 1);  // timed out at once
  CHECK(r.err.empty());
  r = RunWatch({dir.File("missing.mkv"), "--timeout", "1"});
  CHECK(r.code == 3);
  CHECK(r.err.find("missing.mkv") != std::string::npos);
}

}  // namespace
}  // namespace mapkv::test
