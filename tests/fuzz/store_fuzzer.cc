// store_fuzzer.cc: libFuzzer target. Each input is the bytes of a store file;
// see fuzz_store.h for what is run on it. A broken promise (fuzz_store.h) is
// reported and aborts, like a crash. Build with the `fuzz` preset; run as in
// .ci/run (seed corpus: data/fuzz-corpus, saved crashes: data/fuzz-regressions).
#include <stdlib.h>

#include <cstdio>
#include <string>

#include "fuzz_store.h"

namespace {

std::string* g_path = nullptr;

void RemoveDir() {
  if (g_path == nullptr) return;
  const std::string dir = g_path->substr(0, g_path->rfind('/'));
  ::remove(g_path->c_str());
  ::remove(dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* base = getenv("TMPDIR");
  std::string templ = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/mapkv-fuzz.XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    std::perror("store_fuzzer: mkdtemp");
    abort();
  }
  g_path = new std::string(templ + "/input.mkv");
  atexit(RemoveDir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const mapkv::fuzz::FuzzResult r = mapkv::fuzz::RunStoreBytes(data, size, *g_path);
  if (!r.violation.empty()) {
    std::fprintf(stderr, "store_fuzzer: %s\n", r.violation.c_str());
    abort();
  }
  return 0;
}
