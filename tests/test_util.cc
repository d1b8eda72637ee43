// test_util.cc: implementation of the shared test helpers (see test_util.h).
#include "test_util.h"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace mapkv::test {
namespace {

std::map<std::string, ChildMain>& ChildRegistry() {
  static std::map<std::string, ChildMain> registry;
  return registry;
}

constexpr const char kChildFlag[] = "--mapkv-child";

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = (base != nullptr && *base != '\0') ? base : "/tmp";
  templ += "/mapkv-test.XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw std::runtime_error("mkdtemp(" + templ + "): " + std::strerror(errno));
  }
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) {
    std::fprintf(stderr, "TempDir: cannot remove %s: %s\n", path_.c_str(), ec.message().c_str());
  }
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("ReadFileBytes: cannot open " + path);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw std::runtime_error("ReadFileBytes: cannot read " + path);
  return std::move(bytes).str();
}

void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("WriteFileBytes: cannot open " + path);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) throw std::runtime_error("WriteFileBytes: cannot write " + path);
}

bool RegisterChild(const std::string& name, ChildMain fn) {
  const bool inserted = ChildRegistry().emplace(name, std::move(fn)).second;
  if (!inserted) std::fprintf(stderr, "RegisterChild: duplicate child name '%s'\n", name.c_str());
  return inserted;
}

int SpawnChild(const std::string& name, const std::vector<std::string>& args) {
  // Build argv before fork: the child only calls async-signal-safe functions.
  std::vector<std::string> strings = {"/proc/self/exe", kChildFlag, name};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  argv.reserve(strings.size() + 1);
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  if (pid < 0) {
    std::fprintf(stderr, "SpawnChild(%s): fork: %s\n", name.c_str(), std::strerror(errno));
  }
  return static_cast<int>(pid);
}

int WaitChild(int pid) {
  int status = 0;
  while (::waitpid(static_cast<pid_t>(pid), &status, 0) < 0) {
    if (errno != EINTR) {
      std::fprintf(stderr, "WaitChild(%d): waitpid: %s\n", pid, std::strerror(errno));
      return -1;
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

bool MaybeRunChild(int argc, char** argv, int* exit_code) {
  if (argc < 2 || std::strcmp(argv[1], kChildFlag) != 0) return false;
  if (argc < 3) {
    std::fprintf(stderr, "%s: missing child name\n", kChildFlag);
    *exit_code = 99;
    return true;
  }
  const auto it = ChildRegistry().find(argv[2]);
  if (it == ChildRegistry().end()) {
    std::fprintf(stderr, "%s: unknown child '%s'\n", kChildFlag, argv[2]);
    *exit_code = 99;
    return true;
  }
  const std::vector<std::string> args(argv + 3, argv + argc);
  *exit_code = it->second(args);
  return true;
}

std::string Rng::Bytes(size_t n) {
  std::string out;
  out.reserve(n + 8);
  while (out.size() < n) {
    uint64_t v = Next();
    for (int i = 0; i < 8 && out.size() < n; ++i, v >>= 8) {
      out.push_back(static_cast<char>(v & 0xff));
    }
  }
  return out;
}

}  // namespace mapkv::test
