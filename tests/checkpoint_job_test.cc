// checkpoint_job_test.cc: the checkpoint example (tools/examples/
// checkpoint_job.cc) SIGKILLed at random moments, 50 times in a row, then
// let finish: its output must be byte for byte that of an uninterrupted run,
// and the offset it commits must never go back.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

int StartJob(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string path = MAPKV_CHECKPOINT_JOB_PATH;
  argv.push_back(path.data());
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Exit code, or 128 + signal.
int Wait(int pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

uint64_t CommittedOffset(const std::string& state) {
  Store store = MustOpen(state);
  uint64_t offset = 0;
  Status s = store.GetValue("job/offset", &offset);
  if (s.IsNotFound()) return 0;
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return offset;
}

}  // namespace

TEST_SUITE("crash") {
  TEST_CASE("crash: the checkpoint job killed 50 times in a row writes what an uninterrupted run writes") {
    TempDir dir;
    const std::string input = dir.File("input.tsv");
    REQUIRE(Wait(StartJob({"generate", "1000000", input})) == 0);
    const std::string every = "5000";

    const auto start = Clock::now();
    REQUIRE(Wait(StartJob({"run", input, dir.File("ref.mkv"), dir.File("ref.out"), "--every", every})) == 0);
    const double reference_seconds = SecondsSince(start);
    const std::string reference = ReadFileBytes(dir.File("ref.out"));
    REQUIRE(reference.size() > 1000);

    // Kill delays up to 1/50 of an uninterrupted run: 50 kills leave the job
    // unfinished, on average about halfway.
    auto max_delay_us = static_cast<uint64_t>(std::max(2000.0, reference_seconds * 1e6 / 50));
    int stalled = 0;
    Rng rng(20261126);
    const std::string state = dir.File("job.mkv");
    const std::string output = dir.File("job.out");
    int streak = 0, restarts = 0, progressed = 0;
    uint64_t last_offset = 0;
    while (streak < 50) {
      const int pid = StartJob({"run", input, state, output, "--every", every});
      ::usleep(static_cast<useconds_t>(1000 + rng.Uniform(max_delay_us)));
      ::kill(pid, SIGKILL);
      const int code = Wait(pid);
      if (code != 128 + SIGKILL) {
        // Finished before the kill: start the streak again on a fresh state.
        REQUIRE(code == 0);
        REQUIRE(++restarts < 5);
        std::remove(state.c_str());
        std::remove(output.c_str());
        streak = 0;
        last_offset = 0;
        continue;
      }
      ++streak;
      const uint64_t offset = CommittedOffset(state);
      CHECK(offset >= last_offset);
      if (offset > last_offset) {
        ++progressed;
        stalled = 0;
      } else if (++stalled == 3) {
        // A loaded machine spends the delay starting the job: allow it longer.
        max_delay_us = max_delay_us * 3 / 2;
        stalled = 0;
      }
      last_offset = offset;
    }
    REQUIRE(Wait(StartJob({"run", input, state, output, "--every", every})) == 0);
    MESSAGE("uninterrupted run " << reference_seconds << " s; 50 kills in a row (" << progressed << " after progress, "
                                 << restarts << " restarts of the streak); "
                                 << "offset before the last run " << last_offset);
    CHECK(progressed >= 10);
    const std::string got = ReadFileBytes(output);
    CHECK(got.size() == reference.size());
    CHECK_MESSAGE(got == reference, "the resumed job's output differs from the uninterrupted run's");
    Store store = MustOpen(state);
    CheckClean(store);
  }
}

}  // namespace mapkv::test
