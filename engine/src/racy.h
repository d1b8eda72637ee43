// racy.h: reads that race with writers on purpose.
//
// Optimistic readers (store.cc, table.cc) read the mapping while a writer may
// be changing it, and let the seqlock decide afterwards whether what they read
// counts. Those reads are data races by design. Under ThreadSanitizer they are
// compiled as plain byte loops in functions TSan does not instrument, so that
// TSan keeps reporting every other race; otherwise they are memcpy/memcmp.
#ifndef MAPKV_RACY_H_
#define MAPKV_RACY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SANITIZE_THREAD__)
#define MAPKV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MAPKV_TSAN 1
#endif
#endif

#if defined(MAPKV_TSAN)
#define MAPKV_OPTIMISTIC __attribute__((no_sanitize("thread")))
#else
#define MAPKV_OPTIMISTIC
#endif

namespace mapkv::internal {

// The seqlock's fences. ThreadSanitizer does not model atomic_thread_fence,
// so under it the writer's begin is an acquire-release increment and the
// reader's fence a compiler barrier (TSan builds check races, not the memory
// model of weaker CPUs).
inline void SeqlockWriteBegin(std::atomic<uint64_t>& seq) {
#if defined(MAPKV_TSAN)
  seq.fetch_add(1, std::memory_order_acq_rel);
#else
  seq.store(seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

// Stores `value` into a per-record sequence word (a record being rewritten)
// so that it is seen before any later store of this thread.
inline void SeqlockMarkWriting(std::atomic_ref<uint64_t> word, uint64_t value) {
#if defined(MAPKV_TSAN)
  word.exchange(value, std::memory_order_acq_rel);
#else
  word.store(value, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

inline void SeqlockReadFence() {
#if defined(MAPKV_TSAN)
  std::atomic_signal_fence(std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

// A word a writer may be storing at the same time (relaxed atomic load).
template <typename T>
MAPKV_OPTIMISTIC inline T RacyLoad(const T* p) {
#if defined(MAPKV_TSAN)
  return *static_cast<const volatile T*>(p);
#else
  return std::atomic_ref<const T>(*p).load(std::memory_order_relaxed);
#endif
}

MAPKV_OPTIMISTIC inline void RacyCopy(void* dst, const void* src, size_t n) {
#if defined(MAPKV_TSAN)
  auto* d = static_cast<volatile uint8_t*>(dst);
  auto* s = static_cast<const volatile uint8_t*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
#else
  std::memcpy(dst, src, n);
#endif
}

MAPKV_OPTIMISTIC inline bool RacyEqual(const void* a, const void* b, size_t n) {
#if defined(MAPKV_TSAN)
  auto* x = static_cast<const volatile uint8_t*>(a);
  auto* y = static_cast<const volatile uint8_t*>(b);
  for (size_t i = 0; i < n; ++i) {
    if (x[i] != y[i]) return false;
  }
  return true;
#else
  return std::memcmp(a, b, n) == 0;
#endif
}

}  // namespace mapkv::internal

#endif  // MAPKV_RACY_H_
