// platform.h: the only operating-system interface the engine sees.
//
// The core includes no OS header and never tests _WIN32: everything it needs
// from the system is declared here and implemented once per backend
// (platform/posix/, platform/win32/), of which CMake compiles exactly one.
//
// What the core needs:
//  - a file (or named shared-memory object) it can size, grow with reserved
//    disk space, map shared, flush and lock;
//  - byte-range locks owned by the open handle, released by the OS when the
//    handle is closed or its process dies (OFD locks on Linux, LockFileEx on
//    Windows). Process-owned fcntl locks are not used: they drop when any
//    descriptor of the file in the process is closed, so opening the same
//    store twice in one process would silently lose the first handle's locks;
//  - a wait/wake on a 32-bit word of a shared mapping that works across
//    processes (a futex on Linux, named events on Windows);
//  - the boot identity, to tell a crash of a process (page cache intact)
//    from a crash of the machine (page cache lost);
//  - a fork counter, to refuse handles used in a forked child.
//
// Errors: each call returns a Status whose message names the path, the
// system call and the system's text, e.g.
//   "/data/s.mkv: posix_fallocate(1048576 bytes): No space left on device".
// errno/GetLastError is converted here and never seen by the core.
#ifndef MAPKV_PLATFORM_PLATFORM_H_
#define MAPKV_PLATFORM_PLATFORM_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "mapkv/status.h"

namespace mapkv::internal {

// A shared read or read-write mapping of a file. Unmapped on destruction.
// The File it came from must outlive it (a synchronous Flush uses its
// descriptor).
class Mapping {
 public:
  virtual ~Mapping() = default;
  virtual uint8_t* data() const = 0;
  virtual uint64_t length() const = 0;
  // Writes back [offset, offset+length) of the mapping: asynchronously
  // (schedule) or synchronously (returns once on stable storage, file size
  // metadata included).
  virtual Status Flush(uint64_t offset, uint64_t length, bool sync) = 0;
  // A hint for the pages of [offset, offset+length): large (2 MiB where the
  // kernel and file system can) or small. Only the page cache the mapping
  // creates from now on follows it. Not every system has it: then nothing.
  enum class PageHint : uint8_t { kLarge, kSmall };
  virtual void Advise(uint64_t offset, uint64_t length, PageHint size) { (void)offset, (void)length, (void)size; }
  // Sets [offset, offset+length) of a writable mapping up for writing now,
  // in one call, where the first write to each page would otherwise take a
  // page fault of its own. A hint, like Advise: a system without the call,
  // or one that refuses it, leaves the pages to fault as usual. Changes no
  // byte of the file, and may run on another thread than the writer's.
  virtual void Prefault(uint64_t offset, uint64_t length) { (void)offset, (void)length; }
  // Whether Prefault does anything here (worth a thread to run it).
  virtual bool CanPrefault() const { return false; }
  // [offset, length()) stops mapping the file and reads as zeros (writes to
  // it fault); Restore(offset, end) maps the file at [offset, end) again.
  // So a mapping need not show the file past its end, where a read would
  // take SIGBUS: a file cut shorter is first withdrawn from its mappings,
  // and a reader that raced the cut finds zeros. Offsets are rounded out to
  // whole pages of the system (the page that holds the file's end reads
  // zeros past it, without a fault). A system whose mappings never reach
  // past the file (Win32, where File::Truncate waits for the last view)
  // needs neither: both do nothing.
  virtual Status Withdraw(uint64_t offset) { return (void)offset, Status::Ok(); }
  virtual Status Restore(uint64_t offset, uint64_t end) { return (void)offset, (void)end, Status::Ok(); }
};

enum class LockMode : uint8_t { kShared, kExclusive };

struct FileSpec {
  bool create = false;     // create when missing
  bool exclusive = false;  // with create: fail when it exists (kInvalidArgument)
  bool read_only = false;
  uint32_t mode = 0600;  // permission bits for a new file
};

class File {
 public:
  virtual ~File() = default;

  // Opens a regular file. A missing file without spec.create is kNotFound; a
  // directory or other non-regular file is kInvalidArgument.
  static Status Open(const std::string& path, const FileSpec& spec, std::unique_ptr<File>* out);

  // Opens a named shared-memory object (no file behind it; it does not
  // survive a reboot). `name` is the part after "shm:".
  static Status OpenShared(const std::string& name, const FileSpec& spec, std::unique_ptr<File>* out);

  // Removes a named shared-memory object. kNotFound when it does not exist.
  static Status RemoveShared(const std::string& name);
#ifdef _WIN32
  // The file whose byte-range locks guard named store `name` (a section
  // cannot be locked); RemoveShared removes it.
  static Status SharedLockPath(const std::string& name, std::string* path);
#endif

  virtual const std::string& path() const = 0;
  virtual bool read_only() const = 0;

  virtual Status Size(uint64_t* size) = 0;

  // Makes the file at least `size` bytes long with the disk space reserved
  // (posix_fallocate), so writes through the mapping cannot fault for lack of
  // space. The bytes it adds read as zeros, also where a Truncate shortened
  // the file before. A full disk or a file-size limit (RLIMIT_FSIZE, checked first so
  // no SIGXFSZ is raised) gives kNoSpace and leaves the length unchanged.
  virtual Status Reserve(uint64_t size) = 0;

  // Sets the exact length. Only safe while no other handle maps the file.
  virtual Status Truncate(uint64_t size) = 0;
  // Gives up a shortening that Truncate could not do yet and put off to this
  // handle's end (Windows: the handle's own views map the file): the file
  // keeps its length. For a handle that stops being alone: another handle
  // may then use the bytes past the store's length, and this one must
  // follow its growth. Nothing to do where Truncate never puts off (POSIX).
  virtual void KeepLength() {}

  // fdatasync / FlushFileBuffers.
  virtual Status Sync() = 0;

  // Maps the first `length` bytes shared. `length` may exceed the file's
  // size on POSIX (pages past the end must not be touched until the file has
  // grown); backends that cannot (Win32) map min(length, size) and report
  // it through Mapping::length().
  virtual Status Map(uint64_t length, bool writable, std::unique_ptr<Mapping>* out) = 0;

  // Byte-range locks owned by this open handle. Two handles conflict even in
  // one process. Converting a held range to the other mode is allowed.
  virtual Status TryLock(uint64_t offset, uint64_t length, LockMode mode, bool* acquired) = 0;
  // Blocks until granted.
  virtual Status Lock(uint64_t offset, uint64_t length, LockMode mode) = 0;
  virtual Status Unlock(uint64_t offset, uint64_t length) = 0;
  // Whether another handle holds a lock on any byte of the range now. Takes
  // nothing, and works on a read-only handle too; the range must not be
  // held by this handle.
  virtual Status LockedByOthers(uint64_t offset, uint64_t length, bool* held) = 0;

  // True when the file lives on a network file system (NFS, SMB/CIFS...),
  // where shared mappings and locks are not coherent between machines.
  virtual bool OnNetworkFileSystem() = 0;

  // The file's identity (device and inode), to tell whether `path` still
  // names the file this handle has open (after a compaction renamed over it).
  virtual Status Identity(std::array<uint64_t, 2>* id) = 0;

  // Wait and wake on a 32-bit word of this file's shared mapping, across
  // processes: `word` is its address in a mapping of this file, `offset` its
  // offset in the file.
  //
  // WaitWord blocks while *word == expected, for at most `timeout`, or until
  // woken; it returns at once when the word differs. It may return early
  // (spuriously): callers re-check. True when woken or changed, false on
  // timeout.
  //
  // WakeWord wakes every waiter that went to sleep while the word held
  // `seen`: after a change, the value before it (what fetch_add returned);
  // to wake without a change, the current value.
  //
  // Linux: a shared futex on the address (offset and seen unused). Windows,
  // where WaitOnAddress does not cross processes: a named manual-reset event
  // per (file, offset, seen), created by the waiter before it re-checks the
  // word and set by the waker, so a change after the waiter's check always
  // finds the event (see win32_platform.cc).
  virtual bool WaitWord(std::atomic<uint32_t>* word, uint64_t offset, uint32_t expected,
                        std::chrono::microseconds timeout) = 0;
  virtual void WakeWord(std::atomic<uint32_t>* word, uint64_t offset, uint32_t seen) = 0;
};

// What differs between the systems beyond File, as constants (here, so
// that the core itself never tests _WIN32).
#ifdef _WIN32
inline constexpr const char* kPathSeparators = "/\\";
#else
inline constexpr const char* kPathSeparators = "/";
#endif
// Whether Mapping::Advise(kLarge) can give a file mapping 2 MiB pages
// (Options::large_pages does nothing where it cannot).
#ifdef __linux__
inline constexpr bool kLargePageMappings = true;
#else
inline constexpr bool kLargePageMappings = false;
#endif

// Atomically replaces `to` with `from` (rename(2) / MoveFileEx).
Status RenameFile(const std::string& from, const std::string& to);
// Gives the file at `from` the second name `to`, failing with kInvalidArgument
// ("already exists") when `to` exists: an atomic create-if-absent (link(2)).
Status LinkFile(const std::string& from, const std::string& to);
Status RemoveFile(const std::string& path);
// Makes the directory entries of the directory holding `path` durable
// (fsync of the directory), so that a name just made survives a power cut.
// A directory this process cannot read is left as it is (OK). Windows:
// nothing to do (NTFS logs its directory changes).
Status SyncDirectoryOf(const std::string& path);
// Identity of the file now at `path` (kNotFound when none).
Status FileIdentity(const std::string& path, std::array<uint64_t, 2>* id);

// Blocks the calling thread while *word == expected, until another thread of
// this process calls WakeInProcess on it; spurious returns are allowed. For
// words that only this process's threads share (the handle's RwLock). A
// wake when nobody waits costs no system call. (Not std::atomic::wait:
// libstdc++ 12 without a native wait (mingw-w64) lost wake-ups, a hang seen
// under Wine.)
void WaitInProcess(std::atomic<uint32_t>* word, uint32_t expected);
void WakeInProcess(std::atomic<uint32_t>* word);

// 16 bytes that change at every boot of the machine.
std::array<uint8_t, 16> BootId();
// Test seam: makes BootId() return `id` (to simulate a reboot) until reset
// with ResetBootIdForTesting().
void SetBootIdForTesting(const std::array<uint8_t, 16>& id);
void ResetBootIdForTesting();

uint64_t ProcessId();

// A counter advanced in the child at every fork() (never on Windows); a handle
// remembers the value it was opened under and refuses to run under another.
// Inline, a plain load: every get checks it.
extern std::atomic<uint64_t> g_fork_generation;
inline uint64_t ForkGeneration() { return g_fork_generation.load(std::memory_order_relaxed); }

// In a forked child: keeps `state` (what the parent's threads used, copied
// by the fork as they left it: mutexes, condition variables, std::threads)
// reachable and never destroyed, for the life of the process. Destroying a
// condition variable that had a waiter waits for it forever, and a thread
// that was not copied cannot be joined. Safe to call from several threads.
inline void KeepForkedCopy(std::shared_ptr<void> state) {
  static auto* mu = new std::mutex;
  static auto* kept = new std::vector<std::shared_ptr<void>>;
  std::lock_guard<std::mutex> lock(*mu);
  kept->push_back(std::move(state));
}

}  // namespace mapkv::internal

#endif  // MAPKV_PLATFORM_PLATFORM_H_
