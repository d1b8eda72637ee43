// run_self.h: runs this program again as a new process (fork, then exec of
// /proc/self/exe with the given arguments) and returns what it printed on
// stdout. For benchmarks that time something in a process that has just
// started (open_bench, peer_bench's fresh opens). Linux only, like the
// benchmarks.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace bench {

// Empty `error` on success: the child exited with 0 and `*out` holds its
// stdout. Otherwise `error` says what failed (the child's own message went
// to stderr, which it shares with this process).
inline std::string RunSelf(const std::vector<std::string>& args, std::string* out) {
  std::error_code ec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) return "cannot find this program (/proc/self/exe): " + ec.message();
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(self.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return "fork failed";
  }
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execv(self.c_str(), argv.data());
    std::_Exit(127);
  }
  ::close(fds[1]);
  out->clear();
  char buf[256];
  ssize_t got;
  while ((got = ::read(fds[0], buf, sizeof(buf))) > 0) out->append(buf, static_cast<size_t>(got));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "the child process failed (its error is above); it printed '" + *out + "'";
  }
  return "";
}

}  // namespace bench
