// hash.h: xxHash for the engine, compiled in (XXH_INLINE_ALL) rather than
// called in the shared library: the hash of a 16-byte key is a few
// instructions, and inlined it costs less than the call. One header so every
// file of the engine hashes the same way.
#ifndef MAPKV_HASH_H_
#define MAPKV_HASH_H_

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>

#endif  // MAPKV_HASH_H_
