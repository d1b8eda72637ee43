// miss_latency: what one cache miss costs on this machine, for reading the
// benchmark's figures. A random get in a store much larger than the caches
// costs two such misses in a row (the slot, then the record it points to), or
// about one where the CPU's reorder window reaches from one get's second miss
// to the next get's first (bench/README.md, sessions 7 and 17); a put at least
// two. This is the scale against which peer_bench's nanoseconds are read, and
// why the same build gives other figures elsewhere.
#ifndef MAPKV_BENCH_MISS_LATENCY_H_
#define MAPKV_BENCH_MISS_LATENCY_H_

#include <cstdint>

namespace mapkv_bench {

struct MissLatency {
  double small_pages_ns = -1;  // 4 KiB pages: a TLB miss on nearly every load
  double large_pages_ns = -1;  // 2 MiB pages (transparent huge pages); -1 when the kernel gave none
};

// Chases a random cycle of pointers through `bytes` of anonymous memory, once
// with small pages and once asking for large ones; each figure is the median
// of three chases of `steps` loads. Takes about a second per GiB plus
// steps * latency * 6.
MissLatency MeasureMissLatency(uint64_t bytes = uint64_t{256} << 20, uint64_t steps = 2'000'000);

}  // namespace mapkv_bench

#endif  // MAPKV_BENCH_MISS_LATENCY_H_
