// shm_test.cc: named shared-memory stores ("shm:NAME"): shm_open on Linux,
// a paging-file-backed section on Windows. Same API, format and locking as a
// file store; what differs is the lifetime (see Store::RemoveShared).
#ifdef _WIN32
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#endif

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store_test_helpers.h"

namespace mapkv::test {
namespace {

using Clock = std::chrono::steady_clock;

std::string UniqueStoreName(const char* tag) {
  static std::atomic<int> counter{0};
  return "shm:mapkv-test-" + std::string(tag) + "-" + std::to_string(internal::ProcessId()) + "-" +
         std::to_string(counter.fetch_add(1));
}

// Removes the store at the end of a test, whatever happened (no-op when it
// is already gone).
struct RemoveAtEnd {
  std::string name;
  ~RemoveAtEnd() { Store::RemoveShared(name).IgnoreError(); }
};

Store OpenShm(const std::string& name, bool create) {
  Options options;
  options.create_if_missing = create;
  Store store;
  Status s = Store::Open(name, options, &store);
  REQUIRE_MESSAGE(s.ok(), name << ": " << s.ToString());
  return store;
}

// args: store name, key. Opens the existing store, checks "parent" = "here",
// writes key = "from child". Exit codes name the failed step.
int ShmChild(const std::vector<std::string>& args) {
  if (args.size() != 2) return 2;
  Options options;
  options.create_if_missing = false;
  Store store;
  Status s = Store::Open(args[0], options, &store);
  if (!s.ok()) {
    std::fprintf(stderr, "shm child: %s\n", s.ToString().c_str());
    return 3;
  }
  std::string v;
  if (!store.Get("parent", &v).ok() || v != "here") return 4;
  if (!store.Put(args[1], "from child").ok()) return 5;
  return store.Close().ok() ? 0 : 6;
}

// args: store name. Writes "holder" (so the parent knows it runs), then
// writes without end, holding the write lock most of the time, until the
// parent kills it.
int ShmHolderChild(const std::vector<std::string>& args) {
  if (args.size() != 1) return 2;
  Options options;
  options.create_if_missing = false;
  Store store;
  if (!Store::Open(args[0], options, &store).ok()) return 3;
  if (!store.Put("holder", "running").ok()) return 4;
  // Keep writing until killed: the write lock is held (sticky) most of the time.
  for (uint64_t i = 0;; ++i) {
    if (!store.Put("k" + std::to_string(i % 1000), std::to_string(i)).ok()) return 5;
  }
}

[[maybe_unused]] const bool kChildrenRegistered = [] {
  bool ok = RegisterChild("shm.child", ShmChild);
  ok &= RegisterChild("shm.holder", ShmHolderChild);
  return ok;
}();

TEST_SUITE("shm") {
  TEST_CASE("shm: a named store is shared by handles and keeps the file format's behaviour") {
    const std::string name = UniqueStoreName("basic");
    RemoveAtEnd cleanup{name};
    Store a = OpenShm(name, true);
    CHECK(a.path() == name);
    REQUIRE(a.Put("alpha", "1").ok());
    Store b = OpenShm(name, false);
    std::string v;
    REQUIRE(b.Get("alpha", &v).ok());
    CHECK(v == "1");
    REQUIRE(b.Put("beta", "2").ok());
    REQUIRE(a.Get("beta", &v).ok());
    CHECK(v == "2");
    CheckClean(a);
    // error_if_exists applies to names as to files.
    Options excl;
    excl.error_if_exists = true;
    Store c;
    CHECK(Store::Open(name, excl, &c).code() == Code::kInvalidArgument);
    // Also without create_if_missing (only creation was exclusive before).
    excl.create_if_missing = false;
    const Status s = Store::Open(name, excl, &c);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find("already exists") != std::string::npos);
    CHECK(!c.is_open());
  }

  TEST_CASE("shm: a missing store without create_if_missing is NotFound") {
    const std::string name = UniqueStoreName("missing");
    Options options;
    options.create_if_missing = false;
    Store store;
    Status s = Store::Open(name, options, &store);
    CHECK(s.code() == Code::kNotFound);
    CHECK(s.message().find(name) != std::string::npos);
    CHECK(Store::RemoveShared(name).code() == Code::kNotFound);
  }

  TEST_CASE("shm: a store grows while two handles use it") {
    const std::string name = UniqueStoreName("grow");
    RemoveAtEnd cleanup{name};
    Store a = OpenShm(name, true);
    Store b = OpenShm(name, false);
    Stats before;
    REQUIRE(a.GetStats(&before).ok());
    const std::string value(300, 'v');
    for (int i = 0; i < 20000; ++i) {
      Store& w = i % 2 ? a : b;
      REQUIRE(w.Put("key" + std::to_string(i), value + std::to_string(i)).ok());
    }
    Stats after;
    REQUIRE(b.GetStats(&after).ok());
    CHECK(after.file_bytes > before.file_bytes);
    CHECK(after.file_bytes >= 20000u * 300u);
    std::string v;
    for (int i = 0; i < 20000; i += 997) {
      REQUIRE(a.Get("key" + std::to_string(i), &v).ok());
      CHECK(v == value + std::to_string(i));
    }
    CheckClean(a);
    CheckClean(b);
  }

  TEST_CASE("shm: another process reads and writes the same named store") {
    const std::string name = UniqueStoreName("proc");
    RemoveAtEnd cleanup{name};
    Store store = OpenShm(name, true);  // held open: on Windows the store lives while a process has it
    REQUIRE(store.Put("parent", "here").ok());
    const int pid = SpawnChild("shm.child", {name, "child-key"});
    REQUIRE(pid > 0);
    CHECK(WaitChild(pid) == 0);
    std::string v;
    REQUIRE(store.Get("child-key", &v).ok());
    CHECK(v == "from child");
    CheckClean(store);
  }

  TEST_CASE("shm: a process killed while writing leaves no lock behind") {
    const std::string name = UniqueStoreName("kill");
    RemoveAtEnd cleanup{name};
    Store store = OpenShm(name, true);
    const int pid = SpawnChild("shm.holder", {name});
    REQUIRE(pid > 0);
    std::string v;
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline && !store.Get("holder", &v).ok()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(v == "running");
    // Let it write for a while: at least its first key, then 50 ms more.
    while (Clock::now() < deadline && !store.Get("k0", &v).ok()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    KillChild(pid);
    CHECK(WaitChild(pid) == kKilledExitCode);
    // The killed writer's lock is gone and its unfinished write is undone.
    const auto start = Clock::now();
    REQUIRE(store.Put("after", "kill").ok());
    CHECK(Clock::now() - start < std::chrono::seconds(5));
    REQUIRE(store.Get("after", &v).ok());
    CHECK(v == "kill");
    CheckClean(store);
    // Every value is one the holder wrote whole: "k<j>" holds some i with
    // i % 1000 == j, nothing torn, nothing half-undone.
    int keys = 0;
    REQUIRE(store
                .ForEach("k",
                         [&](std::string_view k, std::string_view value) {
                           ++keys;
                           CAPTURE(k);
                           CAPTURE(value);
                           const std::string digits(value);
                           REQUIRE((!digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos));
                           CHECK(std::stoull(digits) % 1000 == std::stoull(std::string(k.substr(1))));
                           return true;
                         })
                .ok());
    CHECK(keys > 0);
  }

#ifndef _WIN32
  TEST_CASE("shm: on Linux a store outlives its handles until RemoveShared") {
    const std::string name = UniqueStoreName("life");
    RemoveAtEnd cleanup{name};
    {
      Store store = OpenShm(name, true);
      REQUIRE(store.Put("kept", "yes").ok());
    }
    Store again = OpenShm(name, false);
    std::string v;
    REQUIRE(again.Get("kept", &v).ok());
    CHECK(v == "yes");
    REQUIRE(Store::RemoveShared(name).ok());  // "shm:NAME" or NAME
    // The open handle keeps working; the name is free.
    REQUIRE(again.Put("still", "works").ok());
    Options options;
    options.create_if_missing = false;
    Store gone;
    CHECK(Store::Open(name, options, &gone).code() == Code::kNotFound);
    CHECK(Store::RemoveShared(name.substr(4)).code() == Code::kNotFound);
  }
#else
  TEST_CASE("shm: on Windows a store lives while a process has it open") {
    const std::string name = UniqueStoreName("life");
    RemoveAtEnd cleanup{name};
    Store store = OpenShm(name, true);
    REQUIRE(store.Put("kept", "yes").ok());
    Status busy = Store::RemoveShared(name);
    CHECK(busy.code() == Code::kBusy);
    CHECK(busy.message().find("still open") != std::string::npos);
    REQUIRE(store.Close().ok());
    Options options;
    options.create_if_missing = false;
    Store gone;
    CHECK(Store::Open(name, options, &gone).code() == Code::kNotFound);
    CHECK(Store::RemoveShared(name).ok());  // only the lock file was left
    CHECK(Store::RemoveShared(name.substr(4)).code() == Code::kNotFound);
  }

  // Sets an environment variable of this process for a scope (Win32's copy,
  // which GetTempPathW reads).
  class ScopedEnv {
   public:
    ScopedEnv(const wchar_t* name, const std::string& value) : name_(name) {
      wchar_t old[32768];
      const DWORD n = ::GetEnvironmentVariableW(name, old, 32768);
      had_ = n > 0 && n < 32768;
      if (had_) old_.assign(old, n);
      const std::wstring wide(value.begin(), value.end());  // ASCII test paths
      REQUIRE(::SetEnvironmentVariableW(name, wide.c_str()));
    }
    ~ScopedEnv() { ::SetEnvironmentVariableW(name_, had_ ? old_.c_str() : nullptr); }

   private:
    const wchar_t* name_;
    std::wstring old_;
    bool had_ = false;
  };

  TEST_CASE("shm: on Windows two handles lock the same file whatever their %TEMP%") {
    // The lock file used to be %TEMP%\mapkv-shm-NAME.lock: a process with
    // another TEMP (an MSYS2 shell's) locked another file and wrote while a
    // writer held the lock.
    const std::string name = UniqueStoreName("temp");
    RemoveAtEnd cleanup{name};
    Store writer = OpenShm(name, true);
    REQUIRE(writer.Put("k", "v").ok());
    TempDir elsewhere;
    ScopedEnv tmp(L"TMP", elsewhere.path());
    ScopedEnv temp(L"TEMP", elsewhere.path());
    Status opened;
    REQUIRE(writer
                .Update("k",
                        [&](std::optional<std::string_view>, std::string*) {
                          // The write lock is held here: another handle's open waits for it.
                          Options quick;
                          quick.create_if_missing = false;
                          quick.lock_timeout = std::chrono::milliseconds(50);
                          Store other;
                          opened = Store::Open(name, quick, &other);
                          return Store::UpdateAction::kKeep;
                        })
                .ok());
    CHECK_MESSAGE(opened.code() == Code::kBusy, opened.ToString());
  }
#endif
}

}  // namespace
}  // namespace mapkv::test
