// mapkv/options.h: what a caller can choose when opening a store.
//
// Each field says its default and whether it is stored in the file (used only
// when the file is created) or read at every open.
#ifndef MAPKV_OPTIONS_H_
#define MAPKV_OPTIONS_H_

#include <chrono>
#include <cstdint>

namespace mapkv {

struct Options {
  // Every open. Create the file when it does not exist. Default: true.
  bool create_if_missing = true;

  // Every open. Fail with kInvalidArgument when the file already exists.
  // Default: false.
  bool error_if_exists = false;

  // Every open. Map the file read-only and refuse writes with
  // kPermissionDenied. A read-only open never changes a byte of the file:
  // when the file needs recovery (a writer was killed mid-write, or the
  // machine restarted before the last changes were checkpointed) it fails
  // with kBusy, saying so; a writable open recovers it. Default: false.
  bool read_only = false;

  // At creation only. Number of entries to size the hash table for, so a
  // store whose size is known up front never rehashes. 0 picks a small
  // table that grows on demand. At most 3 * 2^36 (a 2 TiB table; a store is
  // at most 4 TiB): more is kInvalidArgument, at every open. Default: 0.
  uint64_t initial_capacity = 0;

  // At creation only. Permission bits of a new file (before the umask).
  // Default: 0600, owner only.
  uint32_t file_mode = 0600;

  // Every open. How long an operation waits for another process's lock
  // before failing with kBusy (the message names the holder's pid).
  // Default: 10 seconds.
  std::chrono::milliseconds lock_timeout{10000};

  // Every open. Get and ForEach (and a ReadGuard's) verify the checksum of
  // each record they read (XXH3 of key and value) and return kCorruption
  // for a damaged record instead of its bytes; ForEach verifies every
  // record of the table, whatever the prefix. Off by default for speed: measured here it adds
  // about a quarter to a random get of a 100-byte value (1.06 us against
  // 0.83 us), though the hash itself takes 12 ns. Whatever it says, Check
  // verifies every record, CompareAndSwap, Increment and Update the record
  // they read (a value computed from damaged bytes would be stored with a
  // good checksum), and Compact every record before it moves any. The CLI
  // turns it on. Default: false.
  bool verify_checksums = false;

  // Every open. On the close of the last handle of a writable store,
  // checkpoint it (a synchronous flush), so the file on disk is complete
  // and a later power cut cannot take back what this process wrote.
  // Off, the close changes no data: the last handle's close moves no
  // record down (that is left to a later close that checkpoints) and only
  // cuts free space at the file's end.
  // Default: true. Turn off for short-lived handles that must close fast.
  bool checkpoint_on_close = true;

  // When the store gets its change ring: at the first write by an engine
  // that keeps one (a new store's first put). Entries of the ring of recent
  // changes that Store::ChangesSince reads (64 bytes each, rounded up to a
  // multiple of 64 entries; at most 2^24). A watcher that falls more than
  // this many changes behind gets kRescan. 0 keeps no ring (ChangeSeq and
  // WaitForChange still work). Default: 16384 (1 MiB of file).
  uint64_t change_ring_capacity = 16384;

  // Every open; Linux only (elsewhere ignored). Ask the kernel to map the
  // store with 2 MiB pages (madvise MADV_HUGEPAGE) past its first 2 MiB, and
  // grow a file of 4 MiB or more in whole 2 MiB steps. Where the page cache
  // of the file system has large folios (ext4 and XFS on Linux 6.x) a random
  // lookup then misses the TLB far less. Measured here on a 1M-key store,
  // against the same build without: get 16% faster (366 against 441 ns),
  // but an overwrite after a reopen 20% slower (866 against 725 ns: each
  // new 2 MiB page of the file is zero-filled whole) and a Flush after 100
  // puts 60% slower (4.4 against 2.6 ms: write-back writes a changed 2 MiB
  // page whole). The allocation map, changed at random places by every
  // overwrite, stays in small pages. A lookup in a store not yet cached
  // reads 2 MiB from disk. So: for stores read far more than written.
  // Every process that opens the store should choose the same; the pages
  // are the size the first one to touch them asked for. Default: false.
  bool large_pages = false;
};

// Per call: how Store::Write commits a batch.
struct WriteOptions {
  // Checkpoint the store before Write returns (as Flush(kSync) right after
  // the batch), so the batch survives a power cut. Costs one msync of the
  // changed pages and two fdatasyncs. Default: false (the batch survives a
  // killed process at once, a power cut after the next checkpoint).
  bool sync = false;
};

// How far Store::Flush pushes the data.
enum class FlushMode : uint8_t {
  // Schedules write-back of dirty pages and returns (msync MS_ASYNC /
  // FlushViewOfFile). A process crash never needed this; a power cut may
  // still lose writes made since the last kSync flush.
  kAsync,
  // Checkpoint: every write made before the call is on stable storage when
  // it returns, and survives a power cut at any later moment.
  kSync,
};

}  // namespace mapkv

#endif  // MAPKV_OPTIONS_H_
