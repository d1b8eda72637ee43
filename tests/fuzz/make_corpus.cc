// make_corpus.cc: writes the fuzzer's seed corpus, small valid stores in
// several states, into the directory given (data/fuzz-corpus in the tree):
//
//   empty.mkv            a new store, closed
//   few-keys.mkv         ten keys, closed (checkpointed)
//   grown.mkv            1200 keys and a few large values: the table doubled
//                        twice and the file grew, closed
//   erased.mkv           half the keys erased, closed
//   uncheckpointed.mkv   changes after the last checkpoint, closed without one
//                        (dirty control page, pending and fresh space)
//   compacted.mkv        after Compact
//   killed-writer.mkv    a writer SIGKILLed in the middle of a batch: the undo
//                        log holds entries and the seqlock may be odd
//
// Keys are "key<i>" (the fuzz body probes some of them). Regenerate with
//   cmake --preset ci && cmake --build --preset ci --target mapkv_make_corpus
//   build/ci/tests/fuzz/mapkv_make_corpus data/fuzz-corpus
// The files differ at each run (random hash seeds, the kill moment).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "format.h"
#include "mapkv/store.h"

namespace {

using mapkv::Options;
using mapkv::Status;
using mapkv::Store;

[[noreturn]] void Die(const std::string& what, const Status& s) {
  std::fprintf(stderr, "make_corpus: %s: %s\n", what.c_str(), s.ToString().c_str());
  std::exit(1);
}

void Must(const std::string& what, const Status& s) {
  if (!s.ok()) Die(what, s);
}

std::string Key(int i) { return "key" + std::to_string(i); }
std::string Value(int i) { return "value" + std::to_string(i) + std::string(static_cast<size_t>(i % 37), '.'); }

Store Open(const std::string& path, bool checkpoint_on_close = true) {
  Options o;
  o.checkpoint_on_close = checkpoint_on_close;
  Store s;
  Must("open " + path, Store::Open(path, o, &s));
  return s;
}

void Fill(Store& s, int n) {
  for (int i = 0; i < n; ++i) Must("put", s.Put(Key(i), Value(i)));
}

uint64_t UndoCount(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  using mapkv::internal::format::ControlPage;
  constexpr size_t at = mapkv::internal::format::kControlOffset + offsetof(ControlPage, undo_count);
  uint64_t v = 0;
  if (bytes.size() >= at + 8) std::memcpy(&v, bytes.data() + at, 8);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  auto path = [&](const char* name) {
    const std::string p = dir + "/" + name;
    std::remove(p.c_str());
    return p;
  };
  { Store s = Open(path("empty.mkv")); }
  {
    Store s = Open(path("few-keys.mkv"));
    Fill(s, 10);
  }
  {
    Store s = Open(path("grown.mkv"));
    Fill(s, 1200);
    for (int i = 0; i < 4; ++i) Must("big put", s.Put("big" + std::to_string(i), std::string(30000, 'g')));
  }
  {
    Store s = Open(path("erased.mkv"));
    Fill(s, 200);
    for (int i = 0; i < 200; i += 2) Must("erase", s.Erase(Key(i)));
  }
  {
    Store s = Open(path("uncheckpointed.mkv"), false);
    Fill(s, 100);
    Must("flush", s.Flush(mapkv::FlushMode::kSync));
    for (int i = 0; i < 100; i += 3) Must("overwrite", s.Put(Key(i), "new" + Value(i)));
    for (int i = 1; i < 100; i += 5) Must("erase", s.Erase(Key(i)));
  }
  {
    Store s = Open(path("compacted.mkv"));
    Fill(s, 300);
    for (int i = 0; i < 300; i += 3) Must("erase", s.Erase(Key(i)));
    Must("compact", s.Compact());
  }
  // A writer killed in the middle of a batch: retried until the file shows
  // undo entries (the writer spends most of its time inside batches).
  const std::string killed = path("killed-writer.mkv");
  for (int attempt = 0;; ++attempt) {
    if (attempt == 200) {
      std::fprintf(stderr, "make_corpus: no kill landed inside a batch in 200 attempts\n");
      return 1;
    }
    std::remove(killed.c_str());
    {
      Store s = Open(killed);
      Fill(s, 50);
    }
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
      Store s;
      if (!Store::Open(killed, {}, &s).ok()) _exit(3);
      for (int round = 0;; ++round) {
        mapkv::WriteBatch b;
        for (int i = 0; i < 150; ++i) b.Put(Key(i), Value(i + round) + std::string(200, 'k'));
        b.Erase(Key(round % 150));
        if (!s.Write(b).ok()) _exit(4);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + attempt % 30));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (UndoCount(killed) > 0) break;
  }
  std::printf("make_corpus: wrote 7 stores to %s (killed writer left %llu undo entries)\n", dir.c_str(),
              static_cast<unsigned long long>(UndoCount(killed)));
  return 0;
}
