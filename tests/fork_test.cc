// A store's locks must die with the process that holds them, even when it
// forked a child that lives on (the child's copies of the descriptor would
// otherwise keep the open file description, and so the lock, alive).
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "mapkv/store.h"
#include "store_test_helpers.h"
#include "test_util.h"

namespace mapkv::test {
namespace {

TEST_CASE("fork: a writer that dies leaves no lock behind in the child it forked") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  {
    Store s = MustOpen(path);
    REQUIRE(s.Put("k", "v0").ok());
  }
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  const pid_t writer = fork();
  REQUIRE(writer >= 0);
  if (writer == 0) {
    // The writer: inside an Update, which holds the write lock until its
    // callback returns (a sticky lock after a put could already be given
    // back), forks a long sleeper, tells the parent the sleeper's pid, and
    // waits there to be killed.
    Store s;
    if (!Store::Open(path, {}, &s).ok()) _exit(10);
    (void)s.Update("k", [&](std::optional<std::string_view>, std::string*) {
      const pid_t sleeper = fork();
      if (sleeper == 0) {
        sleep(20);
        _exit(0);
      }
      if (write(ready[1], &sleeper, sizeof sleeper) != sizeof sleeper) _exit(11);
      pause();  // killed by the parent while holding the lock
      _exit(12);
      return Store::UpdateAction::kKeep;
    });
    _exit(13);
  }
  close(ready[1]);
  pid_t sleeper = 0;
  REQUIRE(read(ready[0], &sleeper, sizeof sleeper) == sizeof sleeper);
  close(ready[0]);
  kill(writer, SIGKILL);
  int status = 0;
  REQUIRE(waitpid(writer, &status, 0) == writer);
  REQUIRE(WIFSIGNALED(status));    // killed in its callback, not ended by an error (exit 10-13)
  REQUIRE(kill(sleeper, 0) == 0);  // the child still lives

  Options options;
  options.lock_timeout = std::chrono::milliseconds(2000);
  Store s = MustOpen(path, options);
  const auto start = std::chrono::steady_clock::now();
  Status put = s.Put("k", "v2");
  const auto waited = std::chrono::steady_clock::now() - start;
  kill(sleeper, SIGKILL);  // not our child: reaped by init
  CHECK_MESSAGE(put.ok(), put.ToString());
  CHECK(waited < std::chrono::milliseconds(500));
  std::string v;
  CHECK(s.Get("k", &v).ok());
  CHECK(v == "v2");
}

// The fork handler points a child's store descriptors at /dev/null. It used
// to open /dev/null in the child, and a child at its limit of open files
// kept them, and with them the parent's locks. /dev/null is now opened once
// beforehand.
TEST_CASE("fork: a child at its limit of open files still lets go of the store's descriptors") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  { REQUIRE(MustOpen(path).Put("k", "v").ok()); }
  std::fflush(nullptr);
  const pid_t helper = fork();  // sets its own limit, not the test's
  REQUIRE(helper >= 0);
  if (helper == 0) {
    alarm(20);
    Store s;
    if (!Store::Open(path, {}, &s).ok()) _exit(10);
    int store_fd = -1;
    char link[4096];
    for (int fd = 0; fd < 1024 && store_fd < 0; ++fd) {
      const ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
      if (n > 0 && std::string(link, static_cast<size_t>(n)) == path) store_fd = fd;
    }
    if (store_fd < 0) _exit(11);
    // Every descriptor below the lowest free one is in use: with the limit
    // there, no open can succeed.
    const int lowest_free = ::fcntl(0, F_DUPFD, 0);
    if (lowest_free < 0) _exit(12);
    ::close(lowest_free);
    const rlimit limit{static_cast<rlim_t>(lowest_free), static_cast<rlim_t>(lowest_free)};
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) _exit(12);
    const pid_t child = fork();
    if (child < 0) _exit(13);
    if (child == 0) {
      if (::open("/dev/null", O_RDONLY | O_CLOEXEC) >= 0 || errno != EMFILE) _exit(14);  // the limit holds
      const ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(store_fd)).c_str(), link, sizeof link - 1);
      _exit(n > 0 && std::string(link, static_cast<size_t>(n)) == "/dev/null" ? 0 : 1);
    }
    int status = 0;
    if (::waitpid(child, &status, 0) != child || !WIFEXITED(status)) _exit(15);
    _exit(WEXITSTATUS(status));
  }
  const int code = WaitChild(helper);
  CHECK_MESSAGE(code == 0, "exit " << code << " (1: the child kept the store's descriptor; 10-15: the setup failed)");
}

TEST_CASE("fork: a handle used in the child is refused while the parent handle still works") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  REQUIRE(s.Put("a", "1").ok());
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::string v;
    const bool refused = s.Get("a", &v).code() == Code::kUnsafeUse && s.Put("b", "2").code() == Code::kUnsafeUse;
    _exit(refused ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(s.Put("c", "3").ok());
  std::string v;
  CHECK(s.Get("a", &v).ok());
  CHECK(v == "1");
}

TEST_CASE("fork: a child closes its copy of a handle that wrote, with the handle's threads waiting, without hanging") {
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  Store s = MustOpen(path);
  // Enough writes for the prefault thread to start (it is asked at every
  // 256 KiB of new records), then a pause: the lock keeper gives the lock
  // back after about a millisecond, and both threads wait on their condition
  // variables. A child's copies of those count the parent's threads as
  // waiters, and destroying them as they are would wait forever.
  const std::string value(100, 'v');
  for (int i = 0; i < 5000; ++i) REQUIRE(s.Put("key" + std::to_string(i), value).ok());
  WaitUntilThreadsWait(s);
  std::fflush(nullptr);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(10);  // a hang ends the child with SIGALRM
    _exit(s.Close().ok() ? 0 : 1);
  }
  CHECK(WaitChild(child) == 0);
  REQUIRE(s.Put("after", "fork").ok());
  std::string v;
  CHECK(s.Get("key4999", &v).ok());
  CHECK(v == value);
  CHECK(s.Get("after", &v).ok());
  CHECK(v == "fork");
}

TEST_CASE("fork: a process that cannot start threads still writes, and keeps no lock it could not give back") {
  // A write keeps the file lock after it (sticky) only while the keeper
  // thread is there to give it back; the prefault thread is optional too.
  // The child opens the store, then becomes a user at its process limit, so
  // that every thread creation fails (root is exempt from the limit).
  TempDir dir;
  const std::string path = dir.File("s.mkv");
  {
    Store s = MustOpen(path);
    REQUIRE(s.Put("k", "v0").ok());
  }
  std::fflush(nullptr);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(20);  // a put that hangs on a lock its own process kept ends the child with SIGALRM
    Store s;
    if (!Store::Open(path, {}, &s).ok()) _exit(10);
    const int probe = ::open(path.c_str(), O_RDWR | O_CLOEXEC);  // another open file description
    if (probe < 0) _exit(10);
    if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(11);
    const rlimit one{1, 1};
    if (setrlimit(RLIMIT_NPROC, &one) != 0) _exit(11);
    try {
      std::thread t([] {});
      t.join();
      _exit(12);  // threads still start: the test would prove nothing
    } catch (const std::system_error&) {
    }
    const std::string value(100, 'v');
    for (int i = 0; i < 3000; ++i) {  // past the 128 KiB that asks the prefault thread
      try {
        if (!s.Put("key" + std::to_string(i), value).ok()) _exit(13);
      } catch (...) {
        _exit(14);  // the failed thread creation escaped the put
      }
      const int lockable = ByteLockableNow(probe, 0);
      if (lockable < 0) _exit(15);
      if (lockable == 0) _exit(16);  // the lock was kept with no keeper to give it back
    }
    std::string v;
    if (!s.Get("key2999", &v).ok() || v != value) _exit(17);
    _exit(s.Close().ok() ? 0 : 18);
  }
  const int code = WaitChild(child);
  if (code == 11) FAIL("this test needs root to drop to uid 65534, or a user whose process limit can be set to 1");
  CHECK_MESSAGE(code == 0, "child exit " << code
                                         << " (12: threads still started; 13/14: a put failed or threw; "
                                            "16: the file lock was kept; 128+14: a put hung)");
  Store s = MustOpen(path);
  std::string v;
  CHECK(s.Get("key2999", &v).ok());
  CHECK(v == std::string(100, 'v'));
  CHECK(s.Get("k", &v).ok());
  CHECK(v == "v0");
}

}  // namespace
}  // namespace mapkv::test
