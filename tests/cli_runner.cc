// cli_runner.cc: see cli_runner.h.
#include "cli_runner.h"

#ifdef _WIN32
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>

#include <thread>
#else
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cerrno>

#include "test_util.h"

#ifndef MAPKV_CLI_PATH
#error "MAPKV_CLI_PATH (the built mapkv binary) must be defined by the build"
#endif

namespace mapkv::test {

#ifdef _WIN32
namespace {
// One argument quoted for the C runtime's command-line parser.
std::string QuoteArg(const std::string& arg) {
  if (!arg.empty() && arg.find_first_of(" \t\n\v\"") == std::string::npos) return arg;
  std::string out = "\"";
  size_t backslashes = 0;
  for (char c : arg) {
    if (c == '\\') {
      ++backslashes;
      continue;
    }
    out.append(c == '"' ? backslashes * 2 + 1 : backslashes, '\\');
    backslashes = 0;
    out.push_back(c);
  }
  out.append(backslashes * 2, '\\');
  out.push_back('"');
  return out;
}
}  // namespace

// Windows: CreateProcess with three pipes; a thread per pipe so that a
// child blocked on a full pipe cannot deadlock us. No terminal variant.
CliResult RunCli(const std::vector<std::string>& args, const std::string& input, Tty tty) {
  REQUIRE_MESSAGE(tty == Tty::kNone, "terminal tests are not built for Windows");
  std::string cmd = QuoteArg(MAPKV_CLI_PATH);
  for (const std::string& a : args) cmd += " " + QuoteArg(a);
  SECURITY_ATTRIBUTES inherit{sizeof(SECURITY_ATTRIBUTES), nullptr, TRUE};
  HANDLE in_r, in_w, out_r, out_w, err_r, err_w;
  REQUIRE(::CreatePipe(&in_r, &in_w, &inherit, 0));
  REQUIRE(::CreatePipe(&out_r, &out_w, &inherit, 0));
  REQUIRE(::CreatePipe(&err_r, &err_w, &inherit, 0));
  // Our ends are not inherited.
  ::SetHandleInformation(in_w, HANDLE_FLAG_INHERIT, 0);
  ::SetHandleInformation(out_r, HANDLE_FLAG_INHERIT, 0);
  ::SetHandleInformation(err_r, HANDLE_FLAG_INHERIT, 0);
  STARTUPINFOA si{};
  si.cb = sizeof(si);
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = in_r;
  si.hStdOutput = out_w;
  si.hStdError = err_w;
  PROCESS_INFORMATION pi{};
  const BOOL started = ::CreateProcessA(nullptr, cmd.data(), nullptr, nullptr, TRUE, 0, nullptr, nullptr, &si, &pi);
  ::CloseHandle(in_r);
  ::CloseHandle(out_w);
  ::CloseHandle(err_w);
  REQUIRE_MESSAGE(started, "CreateProcessA(" << cmd << ") failed, error " << ::GetLastError());
  CliResult r;
  auto drain = [](HANDLE h, std::string* sink) {
    char buf[1 << 16];
    DWORD got = 0;
    while (::ReadFile(h, buf, sizeof buf, &got, nullptr) && got > 0) sink->append(buf, got);
    ::CloseHandle(h);
  };
  std::thread out_thread(drain, out_r, &r.out);
  std::thread err_thread(drain, err_r, &r.err);
  size_t written = 0;
  while (written < input.size()) {
    DWORD w = 0;
    const DWORD chunk = static_cast<DWORD>(std::min<size_t>(input.size() - written, 1 << 16));
    if (!::WriteFile(in_w, input.data() + written, chunk, &w, nullptr)) break;  // the child stopped reading
    written += w;
  }
  ::CloseHandle(in_w);
  const DWORD waited = ::WaitForSingleObject(pi.hProcess, 60000);
  if (waited != WAIT_OBJECT_0) ::TerminateProcess(pi.hProcess, kKilledExitCode);
  out_thread.join();
  err_thread.join();
  DWORD code = 0;
  ::GetExitCodeProcess(pi.hProcess, &code);
  ::CloseHandle(pi.hProcess);
  ::CloseHandle(pi.hThread);
  REQUIRE_MESSAGE(waited == WAIT_OBJECT_0, "mapkv did not finish within 60 s");
  r.code = static_cast<int>(code);
  return r;
}
#else
namespace {
// Runs the mapkv binary with `args`, feeding `input` on its standard input
// and collecting its outputs, binary-safe; standard output goes to the file
// `stdout_path` instead when it is not empty.
CliResult Run(const std::vector<std::string>& args, const std::string& input, Tty tty, const std::string& stdout_path) {
  std::vector<std::string> argv_store;
  argv_store.emplace_back(MAPKV_CLI_PATH);
  argv_store.insert(argv_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);

  int in[2], out[2], err[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  int master = -1, slave = -1;
  if (tty != Tty::kNone) {
    master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    REQUIRE(master >= 0);
    REQUIRE(::grantpt(master) == 0);
    REQUIRE(::unlockpt(master) == 0);
    slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
    REQUIRE(slave >= 0);
  }
  int out_file = -1;
  if (!stdout_path.empty()) {
    out_file = ::open(stdout_path.c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE_MESSAGE(out_file >= 0, "cannot open " << stdout_path);
  }
  // A child that exits without reading its input must not kill us by SIGPIPE.
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);

  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // only async-signal-safe calls until exec
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(in[0], STDIN_FILENO);
    ::dup2(out_file >= 0 ? out_file : tty == Tty::kStdout ? slave : out[1], STDOUT_FILENO);
    ::dup2(tty == Tty::kStderr ? slave : err[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  if (slave >= 0) ::close(slave);
  if (out_file >= 0) ::close(out_file);

  CliResult r;
  std::string* tty_sink = tty == Tty::kStdout ? &r.out : &r.err;
  int in_fd = in[1];
  size_t written = 0;
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  }
  int out_fd = out[0], err_fd = err[0], tty_fd = master;
  while (in_fd >= 0 || out_fd >= 0 || err_fd >= 0 || tty_fd >= 0) {
    pollfd fds[4];
    int n = 0;
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    if (out_fd >= 0) fds[n++] = {out_fd, POLLIN, 0};
    if (err_fd >= 0) fds[n++] = {err_fd, POLLIN, 0};
    if (tty_fd >= 0) fds[n++] = {tty_fd, POLLIN, 0};
    if (::poll(fds, static_cast<nfds_t>(n), 60000) <= 0) {
      if (errno == EINTR) continue;
      ::kill(pid, SIGKILL);
      FAIL("mapkv did not finish within 60 s");
    }
    for (int i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      const int fd = fds[i].fd;
      if (fd == in_fd) {
        const ssize_t w = ::write(fd, input.data() + written, std::min<size_t>(input.size() - written, 1 << 16));
        if (w > 0) written += static_cast<size_t>(w);
        if (w < 0 || written == input.size()) {
          ::close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      char buf[1 << 16];
      const ssize_t got = ::read(fd, buf, sizeof buf);
      if (got > 0) {
        std::string* sink = fd == out_fd ? &r.out : fd == err_fd ? &r.err : tty_sink;
        sink->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {  // EOF; a terminal ends with EIO
        ::close(fd);
        (fd == out_fd ? out_fd : fd == err_fd ? err_fd : tty_fd) = -1;
      }
    }
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  ::sigaction(SIGPIPE, &old, nullptr);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}
}  // namespace

CliResult RunCli(const std::vector<std::string>& args, const std::string& input, Tty tty) {
  return Run(args, input, tty, "");
}

CliResult RunCliToFile(const std::vector<std::string>& args, const std::string& stdout_path, const std::string& input) {
  return Run(args, input, Tty::kNone, stdout_path);
}
#endif

}  // namespace mapkv::test
