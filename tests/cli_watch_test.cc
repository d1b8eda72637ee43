// cli_watch_test.cc: `mapkv watch` (tools/cli/cmd_watch.cc), run as the built
// binary while a child process writes: JSON lines, filters, key_base64 and
// long keys, and the exit codes (0 after N changes, 1 on timeout, 2 usage,
// 3 store error and falling behind the ring).
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "format.h"
#include "store_test_helpers.h"

#ifndef MAPKV_CLI_PATH
#error "MAPKV_CLI_PATH (the built mapkv binary) must be defined by the build"
#endif

namespace mapkv::test {
namespace {

using namespace std::chrono_literals;

struct WatchResult {
  int code = -1;
  std::string out;
  std::string err;
};

// Runs `mapkv watch` with `args` to its end, collecting both outputs.
WatchResult RunWatch(const std::vector<std::string>& args) {
  std::vector<std::string> strings = {MAPKV_CLI_PATH, "watch"};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2], err[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  WatchResult r;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    REQUIRE(::poll(fds, 2, 30000) > 0);
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::vector<nlohmann::json> Lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// args: path, then key/value pairs ("-" as value: erase). Waits until a
// watcher is counted in the store's control page, then writes them.
int CliWriterChild(const std::vector<std::string>& args) {
  Store s;
  if (!Store::Open(args[0], {}, &s).ok()) return 3;
  const auto deadline = Clock::now() + 20s;
  // The watcher opens the store and then sleeps in WaitForChange, counted.
  const int fd = ::open(args[0].c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 4;
  internal::format::ControlPage ctl{};
  while (true) {
    if (::pread(fd, &ctl, sizeof ctl, internal::format::kControlOffset) != static_cast<ssize_t>(sizeof ctl)) return 5;
    if (ctl.change_waiters.load() > 0) break;
    if (Clock::now() > deadline) return 6;
    std::this_thread::sleep_for(1ms);
  }
  ::close(fd);
  for (size_t i = 1; i + 1 < args.size(); i += 2) {
    Status st = args[i + 1] == "-" ? s.Erase(args[i]) : s.Put(args[i], args[i + 1]);
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
  const std::string bin("\xff\xfe", 2);
  const std::string long_key = "long/" + std::string(50, 'x');
  const int pid = SpawnChild("watch.cli-writer", {path, "cfg", "1", bin, "b", "cfg", "-", long_key, "v", "other", "v"});
  REQUIRE(pid > 0);
  const WatchResult r = RunWatch({path, "--count", "4", "--timeout", "20"});
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

TEST_CASE("watch: mapkv watch --key and --prefix filter; --timeout exits 1; usage and store errors") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  { REQUIRE(MustOpen(path).Put("start", "").ok()); }
  int pid = SpawnChild("watch.cli-writer", {path, "a/1", "v", "b/1", "v", "config", "v", "a/1", "-"});
  WatchResult r = RunWatch({path, "--prefix", "a/", "--count", "2", "--timeout", "20"});
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
  r = RunWatch({dir.File("missing.mkv"), "--timeout", "1"});
  CHECK(r.code == 3);
  CHECK(r.err.find("missing.mkv") != std::string::npos);
}

}  // namespace
}  // namespace mapkv::test
