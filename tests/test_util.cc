// test_util.cc: implementation of the shared test helpers (see test_util.h).
#include "test_util.h"

#ifdef _WIN32
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#else
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
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
#ifdef _WIN32
  // No mkdtemp: a random name under the temporary directory, created
  // exclusively (create_directory fails on an existing one).
  std::random_device rd;
  const std::filesystem::path base = std::filesystem::temp_directory_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::filesystem::path dir = base / ("mapkv-test." + std::to_string(rd()));
    std::error_code ec;
    if (std::filesystem::create_directory(dir, ec)) {
      path_ = dir.generic_string();
      return;
    }
  }
  throw std::runtime_error("TempDir: cannot create a directory under " + base.string());
#else
  const char* base = std::getenv("TMPDIR");
  std::string templ = (base != nullptr && *base != '\0') ? base : "/tmp";
  templ += "/mapkv-test.XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw std::runtime_error("mkdtemp(" + templ + "): " + std::strerror(errno));
  }
  path_ = buf.data();
#endif
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

#ifdef _WIN32

namespace {

// Child processes by pid, for WaitChild and KillChild.
std::mutex g_children_mu;
std::map<int, HANDLE>& Children() {
  static std::map<int, HANDLE> children;
  return children;
}

HANDLE ChildHandle(int pid) {
  std::lock_guard<std::mutex> lock(g_children_mu);
  const auto it = Children().find(pid);
  return it == Children().end() ? nullptr : it->second;
}

// One argument quoted for CommandLineToArgvW (the C runtime's rules).
std::wstring QuoteArg(const std::wstring& arg) {
  if (!arg.empty() && arg.find_first_of(L" \t\n\v\"") == std::wstring::npos) return arg;
  std::wstring out = L"\"";
  size_t backslashes = 0;
  for (wchar_t c : arg) {
    if (c == L'\\') {
      ++backslashes;
    } else if (c == L'"') {
      out.append(backslashes * 2 + 1, L'\\');
      out.push_back(c);
      backslashes = 0;
    } else {
      out.append(backslashes, L'\\');
      out.push_back(c);
      backslashes = 0;
    }
  }
  out.append(backslashes * 2, L'\\');
  out.push_back(L'"');
  return out;
}

std::wstring WidenArg(const std::string& s) {
  if (s.empty()) return std::wstring();
  const int n = ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), nullptr, 0);
  std::wstring out(static_cast<size_t>(n), L'\0');
  ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), out.data(), n);
  return out;
}

}  // namespace

int SpawnChild(const std::string& name, const std::vector<std::string>& args) {
  wchar_t self[32768];
  const DWORD n = ::GetModuleFileNameW(nullptr, self, 32768);
  if (n == 0 || n >= 32768) {
    std::fprintf(stderr, "SpawnChild(%s): GetModuleFileNameW failed (error %lu)\n", name.c_str(), ::GetLastError());
    return -1;
  }
  std::wstring cmd = QuoteArg(self) + L" " + QuoteArg(WidenArg(kChildFlag)) + L" " + QuoteArg(WidenArg(name));
  for (const std::string& a : args) cmd += L" " + QuoteArg(WidenArg(a));
  STARTUPINFOW si{};
  si.cb = sizeof(si);
  PROCESS_INFORMATION pi{};
  std::fflush(nullptr);
  if (!::CreateProcessW(self, cmd.data(), nullptr, nullptr, FALSE, 0, nullptr, nullptr, &si, &pi)) {
    std::fprintf(stderr, "SpawnChild(%s): CreateProcessW failed (error %lu)\n", name.c_str(), ::GetLastError());
    return -1;
  }
  ::CloseHandle(pi.hThread);
  std::lock_guard<std::mutex> lock(g_children_mu);
  Children()[static_cast<int>(pi.dwProcessId)] = pi.hProcess;
  return static_cast<int>(pi.dwProcessId);
}

int WaitChild(int pid) {
  HANDLE h = ChildHandle(pid);
  if (h == nullptr) {
    std::fprintf(stderr, "WaitChild(%d): not a child of this process\n", pid);
    return -1;
  }
  DWORD code = 0;
  if (::WaitForSingleObject(h, INFINITE) != WAIT_OBJECT_0 || !::GetExitCodeProcess(h, &code)) {
    std::fprintf(stderr, "WaitChild(%d): wait failed (error %lu)\n", pid, ::GetLastError());
    code = static_cast<DWORD>(-1);
  }
  std::lock_guard<std::mutex> lock(g_children_mu);
  Children().erase(pid);
  ::CloseHandle(h);
  return static_cast<int>(code);
}

int64_t ProcessCpuMicros() {
  FILETIME created{}, exited{}, kernel{}, user{};
  if (!::GetProcessTimes(::GetCurrentProcess(), &created, &exited, &kernel, &user)) return -1;
  auto us = [](const FILETIME& t) {
    return static_cast<int64_t>(uint64_t{t.dwHighDateTime} << 32 | t.dwLowDateTime) / 10;
  };
  return us(kernel) + us(user);
}

void KillChild(int pid) {
  HANDLE h = ChildHandle(pid);
  if (h == nullptr || !::TerminateProcess(h, kKilledExitCode)) {
    std::fprintf(stderr, "KillChild(%d): TerminateProcess failed (error %lu)\n", pid, ::GetLastError());
  }
}

#else

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

int64_t ProcessCpuMicros() {
  struct rusage ru {};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return -1;
  auto us = [](const timeval& tv) { return int64_t{tv.tv_sec} * 1000000 + tv.tv_usec; };
  return us(ru.ru_utime) + us(ru.ru_stime);
}

void KillChild(int pid) {
  if (::kill(static_cast<pid_t>(pid), SIGKILL) != 0) {
    std::fprintf(stderr, "KillChild(%d): kill: %s\n", pid, std::strerror(errno));
  }
}

#endif

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

#ifndef _WIN32
int ByteLockableNow(int fd, uint64_t byte) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(byte);
  fl.l_len = 1;
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return -1;
  return fl.l_type == F_UNLCK ? 1 : 0;
}
#endif

}  // namespace mapkv::test
