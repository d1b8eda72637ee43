// posix_platform.cc: the POSIX (Linux) backend of platform.h.
//
// Design notes:
//  - PosixFile owns one descriptor (opened O_CLOEXEC) and closes it on
//    destruction. Regular files and shm_open objects share the class; only
//    path() differs ("shm:<name>" for the latter).
//  - Locks are open-file-description locks (F_OFD_SETLK/F_OFD_SETLKW): they
//    belong to this descriptor's open file description, so two PosixFiles on
//    one file conflict even inside a process, and the kernel drops them when
//    the descriptor is closed or the process dies.
//  - Reserve() checks RLIMIT_FSIZE before growing the file, because the
//    kernel raises SIGXFSZ (default action: kill) when a write, fallocate or
//    ftruncate crosses the soft limit. The same check guards Truncate().
//  - PosixMapping keeps the raw descriptor of the PosixFile it came from, for
//    the fdatasync of a synchronous Flush(). The caller keeps the File alive
//    while any of its Mappings exist (the engine destroys mappings first).
//  - WaitWord/WakeWord use the futex syscall without FUTEX_PRIVATE_FLAG: the
//    word lives in a MAP_SHARED file mapping and the waiters are in other
//    processes, which a private futex would not reach.
//  - Every error goes through ErrnoStatus(), which builds
//    "<path>: <syscall>(<detail>): <strerror>" and maps errno to a Code.
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "platform/platform.h"

namespace mapkv::internal {
namespace {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex words must be plain 32-bit words");
static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "futex words must be lock free to be shared between processes");

constexpr uint64_t kMaxOffset = static_cast<uint64_t>(std::numeric_limits<off_t>::max());

// File system magic numbers (statfs f_type) of network file systems.
// FUSE (0x65735546) is deliberately absent: it covers local file systems too.
constexpr uint64_t kNetworkFsMagics[] = {
    0x6969,      // NFS
    0x517B,      // SMB
    0xFF534D42,  // CIFS
    0xFE534D42,  // SMB2
    0x73757245,  // CODA
    0x5346414F,  // AFS
    0x01021997,  // 9P (v9fs)
    0x00C36400,  // CEPH
};

std::string ErrorText(int err) {
  char buf[256];
  // GNU strerror_r (g++ defines _GNU_SOURCE): returns the text, maybe not in buf.
  return strerror_r(err, buf, sizeof(buf));
}

Code CodeForErrno(int err) {
  switch (err) {
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return Code::kNoSpace;
    case EACCES:
    case EPERM:
    case EROFS:
      return Code::kPermissionDenied;
    case ENOENT:
      return Code::kNotFound;
    case EISDIR:
      return Code::kInvalidArgument;
    default:
      return Code::kIoError;
  }
}

// "<path>: <syscall>(<detail>): <strerror>".
Status ErrnoStatus(const std::string& path, const char* syscall, const std::string& detail, int err) {
  return Status(CodeForErrno(err), path + ": " + syscall + "(" + detail + "): " + ErrorText(err));
}

std::string Bytes(uint64_t n) { return std::to_string(n) + " bytes"; }

std::string Range(uint64_t offset, uint64_t length) {
  return "offset " + std::to_string(offset) + ", length " + std::to_string(length);
}

Status InvalidArgument(const std::string& path, const std::string& what) {
  return Status(Code::kInvalidArgument, path + ": " + what);
}

Status ReadOnlyHandle(const std::string& path, const char* operation) {
  return Status(Code::kPermissionDenied, path + ": " + operation + " on a handle opened read-only");
}

// Refuses sizes the kernel would answer with SIGXFSZ (RLIMIT_FSIZE) or that
// do not fit off_t.
Status CheckFileSizeLimit(const std::string& path, uint64_t size) {
  if (size > kMaxOffset) {
    return Status(Code::kNoSpace, path + ": size " + std::to_string(size) + " exceeds the largest file offset");
  }
  struct rlimit limit {};
  if (getrlimit(RLIMIT_FSIZE, &limit) != 0) {
    return ErrnoStatus(path, "getrlimit", "RLIMIT_FSIZE", errno);
  }
  if (limit.rlim_cur != RLIM_INFINITY && size > limit.rlim_cur) {
    return Status(Code::kNoSpace, path + ": size " + std::to_string(size) +
                                      " exceeds the file size limit (RLIMIT_FSIZE soft limit " +
                                      std::to_string(limit.rlim_cur) + " bytes)");
  }
  return Status::Ok();
}

Status CheckRange(const std::string& path, uint64_t offset, uint64_t length) {
  if (length == 0 || offset > kMaxOffset || length > kMaxOffset - offset) {
    return InvalidArgument(path, "bad lock range (" + Range(offset, length) + ")");
  }
  return Status::Ok();
}

uint64_t PageSize() {
  static const uint64_t page_size = [] {
    long n = sysconf(_SC_PAGESIZE);
    return n > 0 ? static_cast<uint64_t>(n) : uint64_t{4096};
  }();
  return page_size;
}

// Owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up the descriptor without closing it.
  int Release() { return std::exchange(fd_, -1); }

 private:
  void Reset() {
    // close(2) errors on a descriptor that was only read/mapped/synced carry
    // nothing actionable; Sync() is the durability point.
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  int fd_ = -1;
};

class PosixMapping final : public Mapping {
 public:
  // `fd` is borrowed from the PosixFile, which must outlive this mapping.
  PosixMapping(uint8_t* data, uint64_t length, bool writable, int fd, std::string path)
      : data_(data),
        length_(length),
        writable_(writable),
        fd_(fd),
        path_(std::move(path)),
        fork_generation_(ForkGeneration()) {}
  // Mapped MADV_DONTFORK, the range is not there in a forked child, where it
  // may hold something else by now: only the process that mapped it unmaps it.
  ~PosixMapping() override {
    if (ForkGeneration() == fork_generation_) ::munmap(data_, static_cast<size_t>(length_));
  }
  PosixMapping(const PosixMapping&) = delete;
  PosixMapping& operator=(const PosixMapping&) = delete;

  uint8_t* data() const override { return data_; }
  uint64_t length() const override { return length_; }

  Status Flush(uint64_t offset, uint64_t length, bool sync) override {
    if (offset > length_) {
      return InvalidArgument(path_, "flush past the end of the mapping (" + Range(offset, length) +
                                        ", mapping length " + std::to_string(length_) + ")");
    }
    length = std::min(length, length_ - offset);
    const uint64_t start = offset & ~(PageSize() - 1);
    const uint64_t span = length + (offset - start);
    if (::msync(data_ + start, static_cast<size_t>(span), sync ? MS_SYNC : MS_ASYNC) != 0) {
      return ErrnoStatus(path_, "msync", Range(start, span), errno);
    }
    if (sync && ::fdatasync(fd_) != 0) {
      return ErrnoStatus(path_, "fdatasync", "", errno);
    }
    return Status::Ok();
  }

  void Advise(uint64_t offset, uint64_t length, PageHint size) override {
#if defined(MADV_HUGEPAGE)
    if (offset >= length_) return;
    const uint64_t begin = RoundUpToPage(offset);
    const uint64_t end = std::min(length_, offset + length) & ~(PageSize() - 1);
    if (begin >= end) return;
    // Hints: a kernel without transparent huge pages refuses them (EINVAL),
    // and the mapping works the same. A small range also reads no further
    // than the page a fault needs (MADV_RANDOM): read-ahead from it would
    // fill the file past it with small pages before the large range's own
    // faults could ask for 2 MiB ones.
    const auto n = static_cast<size_t>(end - begin);
    if (size == PageHint::kLarge) {
      (void)::madvise(data_ + begin, n, MADV_HUGEPAGE);
    } else {
      (void)::madvise(data_ + begin, n, MADV_NOHUGEPAGE);
      (void)::madvise(data_ + begin, n, MADV_RANDOM);
    }
#else
    (void)offset, (void)length, (void)size;
#endif
  }

  void Prefault(uint64_t offset, uint64_t length) override {
    if (offset >= length_ || !CanPrefault()) return;
#if defined(MADV_POPULATE_WRITE)
    const uint64_t begin = offset & ~(PageSize() - 1);
    const uint64_t end = std::min(length_, offset + length);
    if (begin >= end) return;
    // Pages past the end of the file are not set up (EFAULT), and no signal.
    (void)::madvise(data_ + begin, static_cast<size_t>(end - begin), MADV_POPULATE_WRITE);
#else
    (void)length;
#endif
  }

  // Both replace the range in one mmap(MAP_FIXED): a reader at any moment
  // finds either the old pages or the new, never a hole.
  Status Withdraw(uint64_t offset) override {
    return Replace(RoundUpToPage(offset), length_, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                   "anonymous, read-only");
  }
  Status Restore(uint64_t offset, uint64_t end) override {
    return Replace(offset & ~(PageSize() - 1), std::min(RoundUpToPage(end), length_),
                   writable_ ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd_, "the file");
  }

  bool CanPrefault() const override {
#if defined(MADV_POPULATE_WRITE)
    // Linux 5.14 and later. The kernel checks the advice before the range,
    // so a call over no bytes answers (EINVAL before 5.14) and does nothing.
    static const bool kernel_has_it = ::madvise(data_, 0, MADV_POPULATE_WRITE) == 0;
    return kernel_has_it;
#else
    return false;
#endif
  }

 private:
  static uint64_t RoundUpToPage(uint64_t x) { return (x + PageSize() - 1) & ~(PageSize() - 1); }

  Status Replace(uint64_t begin, uint64_t end, int prot, int flags, int fd, const char* what) {
    if (begin >= end) return Status::Ok();
    const auto n = static_cast<size_t>(end - begin);
    if (::mmap(data_ + begin, n, prot, flags | MAP_FIXED, fd, fd < 0 ? 0 : static_cast<off_t>(begin)) == MAP_FAILED) {
      return ErrnoStatus(path_, "mmap", Range(begin, n) + " of the mapping, " + what, errno);
    }
    ::madvise(data_ + begin, n, MADV_DONTFORK);  // a new range does not inherit it (see Map)
    return Status::Ok();
  }

  uint8_t* const data_;
  const uint64_t length_;
  const bool writable_;
  const int fd_;
  const std::string path_;
  const uint64_t fork_generation_;
};

// ---- Descriptors a forked child must not keep --------------------------------
//
// OFD locks live as long as any descriptor of the open file description, and
// fork() copies descriptors. A child that keeps them (it cannot use the
// handle: ForkGeneration refuses it) would keep its parent's locks alive after
// the parent died. So the fork handler points every store descriptor of the
// child at /dev/null (dup2 keeps the number valid for the handle's eventual
// close). A fixed table of atomics: the handler runs in the child, where a
// mutex another thread held at fork would never be released. Not covered: a
// fork by another thread while a descriptor is between open and TrackFd or
// between UntrackFd and close, or a mapping between mmap and madvise. A
// fence that held forks back over those windows was tried and removed: it
// could deadlock a fork (other fork handlers using a store, a lease-blocked
// open, a fork from a signal handler), which is worse than the window.
constexpr int kFdSlots = 1024;
std::atomic<int> g_store_fds[kFdSlots];  // fd + 1; 0 is a free slot (so static zero-init is right)

void TrackFd(int fd) {
  for (auto& slot : g_store_fds) {
    int expected = 0;
    if (slot.compare_exchange_strong(expected, fd + 1, std::memory_order_acq_rel)) return;
  }
  // More than kFdSlots open stores: this one is not detached in children.
}

void UntrackFd(int fd) {
  for (auto& slot : g_store_fds) {
    int expected = fd + 1;
    if (slot.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) return;
  }
}

// /dev/null, opened once before any store (RegisterAtFork), for a child that
// cannot open it (at its limit of open files, or in a sandbox without it).
// High, so that a program closing its low descriptors rarely meets it; the
// child checks it is still /dev/null before use (the program may have
// closed it and reused the number).
int g_spare_null = -1;
dev_t g_null_rdev = 0;

void OpenSpareNull() {
  const int fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st {};
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 200);
  if (high >= 0) {
    ::close(fd);
    g_spare_null = high;
  } else {
    g_spare_null = fd;
  }
  if (::fstat(g_spare_null, &st) == 0 && S_ISCHR(st.st_mode)) g_null_rdev = st.st_rdev;
}

// In the child: a descriptor of /dev/null, or -1. Async-signal-safe calls only.
int ChildNullFd(bool* spare) {
  *spare = false;
  const int fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd >= 0) return fd;
  struct stat st {};
  if (g_spare_null >= 0 && ::fstat(g_spare_null, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == g_null_rdev) {
    *spare = true;
    return g_spare_null;
  }
  return -1;
}

void DetachFdsInChild() {
  bool spare = false;
  const int null_fd = ChildNullFd(&spare);
  for (auto& slot : g_store_fds) {
    const int fd = slot.load(std::memory_order_acquire) - 1;
    if (fd < 0) continue;
    // dup2 keeps the number valid for the handle's eventual close; with no
    // /dev/null to be had, closing it is still better than keeping the locks.
    if (null_fd < 0 || ::dup2(null_fd, fd) < 0) ::close(fd);
  }
  if (null_fd >= 0 && !spare) ::close(null_fd);
}

// Shared (not FUTEX_PRIVATE_FLAG) futex: waiters and wakers may be in
// different processes.
bool FutexWait(std::atomic<uint32_t>* word, uint32_t expected, std::chrono::microseconds timeout) {
  const int64_t us = std::max<int64_t>(timeout.count(), 0);
  struct timespec ts {};
  ts.tv_sec = static_cast<time_t>(us / 1000000);
  ts.tv_nsec = static_cast<long>(us % 1000000 * 1000);
  const long rc = ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
  // 0: woken (or spurious). EAGAIN: the word differs from `expected`.
  // EINTR: a signal; the caller re-checks like any early return.
  return !(rc != 0 && errno == ETIMEDOUT);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

class PosixFile final : public File {
 public:
  PosixFile(UniqueFd fd, std::string path, bool read_only)
      : fd_(std::move(fd)), path_(std::move(path)), read_only_(read_only) {
    TrackFd(fd_.get());
  }
  ~PosixFile() override { UntrackFd(fd_.get()); }

  const std::string& path() const override { return path_; }
  bool read_only() const override { return read_only_; }

  Status Size(uint64_t* size) override {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) return ErrnoStatus(path_, "fstat", "", errno);
    *size = static_cast<uint64_t>(st.st_size);
    return Status::Ok();
  }

  Status Reserve(uint64_t size) override {
    if (read_only_) return ReadOnlyHandle(path_, "Reserve");
    uint64_t current = 0;
    if (Status s = Size(&current); !s.ok()) return s;
    if (size <= current) return Status::Ok();
    if (Status s = CheckFileSizeLimit(path_, size); !s.ok()) return s;

    const off_t old_size = static_cast<off_t>(current);
    const off_t grow = static_cast<off_t>(size - current);
    // posix_fallocate returns the error number; it does not set errno.
    int err = ::posix_fallocate(fd_.get(), old_size, grow);
    if (err == 0) return Status::Ok();
    Status status = ErrnoStatus(path_, "posix_fallocate", Bytes(size - current), err);
    if (err == EOPNOTSUPP || err == EINVAL) {
      // No fallocate on this file system: grow without reserving the blocks.
      if (::ftruncate(fd_.get(), static_cast<off_t>(size)) == 0) return Status::Ok();
      status = ErrnoStatus(path_, "ftruncate", Bytes(size), errno);
    }
    // A partial allocation may have moved the end of file: put it back.
    uint64_t after = current;
    if (Size(&after).ok() && after != current) {
      if (::ftruncate(fd_.get(), old_size) != 0) {
        status = Status(status.code(), status.message() + " (and restoring the length: " + ErrorText(errno) + ")");
      }
    }
    return status;
  }

  Status Truncate(uint64_t size) override {
    if (read_only_) return ReadOnlyHandle(path_, "Truncate");
    if (Status s = CheckFileSizeLimit(path_, size); !s.ok()) return s;
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
      return ErrnoStatus(path_, "ftruncate", Bytes(size), errno);
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (::fdatasync(fd_.get()) != 0) return ErrnoStatus(path_, "fdatasync", "", errno);
    return Status::Ok();
  }

  Status Map(uint64_t length, bool writable, std::unique_ptr<Mapping>* out) override {
    if (writable && read_only_) return ReadOnlyHandle(path_, "writable Map");
    if (length == 0 || length > std::numeric_limits<size_t>::max() || length > kMaxOffset) {
      return InvalidArgument(path_, "bad mapping length " + std::to_string(length));
    }
    const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void* addr = ::mmap(nullptr, static_cast<size_t>(length), prot, MAP_SHARED, fd_.get(), 0);
    if (addr == MAP_FAILED) {
      return ErrnoStatus(path_, "mmap", Bytes(length) + (writable ? ", read-write" : ", read-only"), errno);
    }
    // A mapping holds its open file description, and with it the OFD locks:
    // inherited by a forked child, it would keep a dead parent's locks alive.
    // The child cannot use the handle anyway (ForkGeneration), so it does not
    // get the mapping at all.
    ::madvise(addr, static_cast<size_t>(length), MADV_DONTFORK);
    *out = std::make_unique<PosixMapping>(static_cast<uint8_t*>(addr), length, writable, fd_.get(), path_);
    return Status::Ok();
  }

  Status TryLock(uint64_t offset, uint64_t length, LockMode mode, bool* acquired) override {
    *acquired = false;
    if (Status s = CheckLockable(offset, length, mode); !s.ok()) return s;
    struct flock fl = MakeFlock(offset, length, mode == LockMode::kExclusive ? F_WRLCK : F_RDLCK);
    if (::fcntl(fd_.get(), F_OFD_SETLK, &fl) == 0) {
      *acquired = true;
      return Status::Ok();
    }
    const int err = errno;
    if (err == EAGAIN || err == EACCES) return Status::Ok();
    return LockError("F_OFD_SETLK", offset, length, mode, err);
  }

  Status Lock(uint64_t offset, uint64_t length, LockMode mode) override {
    if (Status s = CheckLockable(offset, length, mode); !s.ok()) return s;
    struct flock fl = MakeFlock(offset, length, mode == LockMode::kExclusive ? F_WRLCK : F_RDLCK);
    while (::fcntl(fd_.get(), F_OFD_SETLKW, &fl) != 0) {
      const int err = errno;
      if (err != EINTR) return LockError("F_OFD_SETLKW", offset, length, mode, err);
    }
    return Status::Ok();
  }

  Status Unlock(uint64_t offset, uint64_t length) override {
    if (Status s = CheckRange(path_, offset, length); !s.ok()) return s;
    struct flock fl = MakeFlock(offset, length, F_UNLCK);
    if (::fcntl(fd_.get(), F_OFD_SETLK, &fl) != 0) {
      return ErrnoStatus(path_, "fcntl", "F_OFD_SETLK F_UNLCK, " + Range(offset, length), errno);
    }
    return Status::Ok();
  }

  Status LockedByOthers(uint64_t offset, uint64_t length, bool* held) override {
    *held = true;
    if (Status s = CheckRange(path_, offset, length); !s.ok()) return s;
    // F_OFD_GETLK asks without taking, and needs no write access for F_WRLCK.
    struct flock fl = MakeFlock(offset, length, F_WRLCK);
    if (::fcntl(fd_.get(), F_OFD_GETLK, &fl) != 0) {
      return ErrnoStatus(path_, "fcntl", "F_OFD_GETLK, " + Range(offset, length), errno);
    }
    *held = fl.l_type != F_UNLCK;
    return Status::Ok();
  }

  bool OnNetworkFileSystem() override {
    struct statfs sfs {};
    if (::fstatfs(fd_.get(), &sfs) != 0) return false;  // cannot tell; assume local
    const auto type = static_cast<uint64_t>(static_cast<uint32_t>(sfs.f_type));
    for (uint64_t magic : kNetworkFsMagics) {
      if (type == magic) return true;
    }
    return false;
  }

  Status Identity(std::array<uint64_t, 2>* id) override {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) return ErrnoStatus(path_, "fstat", "", errno);
    *id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
    return Status::Ok();
  }

  bool WaitWord(std::atomic<uint32_t>* word, uint64_t /*offset*/, uint32_t expected,
                std::chrono::microseconds timeout) override {
    return FutexWait(word, expected, timeout);
  }
  void WakeWord(std::atomic<uint32_t>* word, uint64_t /*offset*/, uint32_t /*seen*/) override { FutexWakeAll(word); }

 private:
  static struct flock MakeFlock(uint64_t offset, uint64_t length, short type) {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = static_cast<off_t>(offset);
    fl.l_len = static_cast<off_t>(length);
    fl.l_pid = 0;  // required by F_OFD_* commands
    return fl;
  }

  Status CheckLockable(uint64_t offset, uint64_t length, LockMode mode) const {
    if (mode == LockMode::kExclusive && read_only_) {
      return ReadOnlyHandle(path_, "exclusive lock");
    }
    return CheckRange(path_, offset, length);
  }

  Status LockError(const char* command, uint64_t offset, uint64_t length, LockMode mode, int err) const {
    const std::string detail =
        std::string(command) + (mode == LockMode::kExclusive ? " F_WRLCK, " : " F_RDLCK, ") + Range(offset, length);
    if (err == EBADF) {
      // The descriptor's access mode does not allow this lock type.
      return Status(Code::kPermissionDenied, path_ + ": fcntl(" + detail + "): descriptor not open for this lock mode");
    }
    return ErrnoStatus(path_, "fcntl", detail, err);
  }

  UniqueFd fd_;
  const std::string path_;
  const bool read_only_;
};

// Wraps a freshly opened descriptor after checking it names a regular file.
// A descriptor of 0 to 2 means that standard input, output or error was
// closed: the program's next print to it, or a child's, would be written
// into the store. The store moves above them, and /dev/null takes the slot
// (one dup2, so no other thread can get the slot in between).
Status MoveAboveStandardFds(const std::string& path, UniqueFd* fd) {
  if (fd->get() > 2) return Status::Ok();
  UniqueFd high(::fcntl(fd->get(), F_DUPFD_CLOEXEC, 3));
  if (!high.valid()) return ErrnoStatus(path, "fcntl", "F_DUPFD_CLOEXEC", errno);
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    if (::dup2(null_fd, fd->get()) >= 0) fd->Release();  // dup2 clears O_CLOEXEC, as for a standard stream
    ::close(null_fd);
  }
  *fd = std::move(high);  // closes the low descriptor if it still is the store's
  return Status::Ok();
}

Status Adopt(UniqueFd fd, std::string path, bool read_only, std::unique_ptr<File>* out) {
  if (Status s = MoveAboveStandardFds(path, &fd); !s.ok()) return s;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(path, "fstat", "", errno);
  if (S_ISDIR(st.st_mode)) return InvalidArgument(path, "is a directory");
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path, "is not a regular file");
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags == -1) return ErrnoStatus(path, "fcntl", "F_GETFL", errno);
  if ((flags & O_NONBLOCK) != 0 && ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) == -1) {
    return ErrnoStatus(path, "fcntl", "F_SETFL", errno);
  }
  *out = std::make_unique<PosixFile>(std::move(fd), std::move(path), read_only);
  return Status::Ok();
}

int OpenFlags(const FileSpec& spec) {
  int flags = O_CLOEXEC | (spec.read_only ? O_RDONLY : O_RDWR);
  if (spec.create) flags |= O_CREAT;
  if (spec.create && spec.exclusive) flags |= O_EXCL;
  return flags;
}

std::string FlagsText(const FileSpec& spec) {
  std::string text = spec.read_only ? "O_RDONLY" : "O_RDWR";
  if (spec.create) text += "|O_CREAT";
  if (spec.create && spec.exclusive) text += "|O_EXCL";
  return text;
}

Status CheckShmName(const std::string& name) {
  if (name.empty() || name.size() > 200 || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return Status(Code::kInvalidArgument,
                  "shm:" + name + ": bad shared-memory name (must be 1 to 200 characters, without '/')");
  }
  return Status::Ok();
}

std::string ShmObjectName(const std::string& name) { return "/mapkv." + name; }

// ---- Boot identity --------------------------------------------------------

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Parses the kernel's random boot UUID ("xxxxxxxx-xxxx-...").
std::optional<std::array<uint8_t, 16>> ReadKernelBootId() {
  UniqueFd fd(::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  char text[64];
  ssize_t n;
  do {
    n = ::read(fd.get(), text, sizeof(text));
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;
  std::array<uint8_t, 16> id{};
  int digits = 0;
  for (ssize_t i = 0; i < n && digits < 32; ++i) {
    if (text[i] == '-') continue;
    const int v = HexValue(text[i]);
    if (v < 0) break;
    id[digits / 2] = static_cast<uint8_t>(id[digits / 2] << 4 | v);
    ++digits;
  }
  if (digits != 32) return std::nullopt;
  return id;
}

// Fallback: the boot time in whole seconds (wall clock minus time since
// boot), tagged so it cannot collide with a kernel UUID by accident.
std::array<uint8_t, 16> BootTimeId() {
  struct timespec real {};
  struct timespec boot {};
  ::clock_gettime(CLOCK_REALTIME, &real);
  ::clock_gettime(CLOCK_BOOTTIME, &boot);
  const int64_t real_ns = int64_t{real.tv_sec} * 1000000000 + real.tv_nsec;
  const int64_t boot_ns = int64_t{boot.tv_sec} * 1000000000 + boot.tv_nsec;
  const int64_t boot_time_s = (real_ns - boot_ns + 500000000) / 1000000000;
  std::array<uint8_t, 16> id{'m', 'a', 'p', 'k', 'v', 'b', 'o', 'o', 't'};
  for (int i = 0; i < 7; ++i) {
    id[9 + i] = static_cast<uint8_t>(static_cast<uint64_t>(boot_time_s) >> (8 * i));
  }
  return id;
}

struct BootIdOverride {
  std::atomic<bool> active{false};
  std::mutex mu;
  std::array<uint8_t, 16> id{};
};

BootIdOverride& GetBootIdOverride() {
  static BootIdOverride* override_state = new BootIdOverride;  // never destroyed
  return *override_state;
}

// ---- Fork generation ------------------------------------------------------

std::once_flag g_atfork_once;

void OnForkChild() {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
  DetachFdsInChild();
}

void RegisterAtFork() {
  std::call_once(g_atfork_once, [] {
    OpenSpareNull();
    ::pthread_atfork(nullptr, nullptr, &OnForkChild);
  });
}

// Registers the handler at load time, before any fork that matters.
[[maybe_unused]] const bool g_atfork_registered = (RegisterAtFork(), true);

}  // namespace

// ---- File -----------------------------------------------------------------

Status File::Open(const std::string& path, const FileSpec& spec, std::unique_ptr<File>* out) {
  RegisterAtFork();
  if (path.empty() || path.find('\0') != std::string::npos) {
    return InvalidArgument(path, "bad file path");
  }
  // O_NONBLOCK: the open of a FIFO (or a device) must not wait for a peer
  // before Adopt can refuse it as not a regular file (Adopt clears it).
  UniqueFd fd(::open(path.c_str(), OpenFlags(spec) | O_NONBLOCK, static_cast<mode_t>(spec.mode)));
  if (!fd.valid() && errno == EWOULDBLOCK) {
    // A lease on the file (Samba's oplocks, an NFS server's delegation):
    // without O_NONBLOCK the open waits for the lease to be broken.
    fd = UniqueFd(::open(path.c_str(), OpenFlags(spec), static_cast<mode_t>(spec.mode)));
  }
  if (!fd.valid()) {
    const int err = errno;
    if (err == EEXIST && spec.create && spec.exclusive) {
      return InvalidArgument(path, "already exists");
    }
    return ErrnoStatus(path, "open", FlagsText(spec) + "|O_NONBLOCK", err);
  }
  return Adopt(std::move(fd), path, spec.read_only, out);
}

Status File::OpenShared(const std::string& name, const FileSpec& spec, std::unique_ptr<File>* out) {
  RegisterAtFork();
  if (Status s = CheckShmName(name); !s.ok()) return s;
  const std::string path = "shm:" + name;
  UniqueFd fd(::shm_open(ShmObjectName(name).c_str(), OpenFlags(spec), static_cast<mode_t>(spec.mode)));
  if (!fd.valid()) {
    const int err = errno;
    if (err == EEXIST && spec.create && spec.exclusive) {
      return InvalidArgument(path, "already exists");
    }
    return ErrnoStatus(path, "shm_open", FlagsText(spec), err);
  }
  return Adopt(std::move(fd), path, spec.read_only, out);
}

Status File::RemoveShared(const std::string& name) {
  if (Status s = CheckShmName(name); !s.ok()) return s;
  if (::shm_unlink(ShmObjectName(name).c_str()) != 0) {
    return ErrnoStatus("shm:" + name, "shm_unlink", ShmObjectName(name), errno);
  }
  return Status::Ok();
}

// ---- Free functions -------------------------------------------------------

Status RenameFile(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return ErrnoStatus(from, "rename", "to " + to, errno);
  }
  return Status::Ok();
}

Status LinkFile(const std::string& from, const std::string& to) {
  if (::link(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST) return Status(Code::kInvalidArgument, to + ": already exists");
    return ErrnoStatus(to, "link", "from " + from, errno);
  }
  return Status::Ok();
}

Status RemoveFile(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return ErrnoStatus(path, "unlink", "", errno);
  return Status::Ok();
}

Status SyncDirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  // A directory the process may write but not read (a drop box, mode -wx)
  // cannot be opened to sync it: the store is made, and that is not an error.
  if (fd.get() < 0 && (errno == EACCES || errno == EPERM)) return Status::Ok();
  if (fd.get() < 0) return ErrnoStatus(dir, "open", "the directory, to sync it", errno);
  // Some file systems cannot sync a directory (EINVAL): theirs is not ours to make durable.
  if (::fsync(fd.get()) != 0 && errno != EINVAL) return ErrnoStatus(dir, "fsync", "the directory", errno);
  return Status::Ok();
}

Status FileIdentity(const std::string& path, std::array<uint64_t, 2>* id) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(path, "stat", "", errno);
  *id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  return Status::Ok();
}

// ---- In-process waits --------------------------------------------------------

// libstdc++ on Linux waits on a private futex and counts its waiters, so a
// notify with nobody waiting makes no system call.
void WaitInProcess(std::atomic<uint32_t>* word, uint32_t expected) { word->wait(expected, std::memory_order_relaxed); }
void WakeInProcess(std::atomic<uint32_t>* word) { word->notify_all(); }

// ---- Boot id, process ------------------------------------------------------

std::array<uint8_t, 16> BootId() {
  BootIdOverride& override_state = GetBootIdOverride();
  if (override_state.active.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(override_state.mu);
    if (override_state.active.load(std::memory_order_relaxed)) return override_state.id;
  }
  static const std::array<uint8_t, 16> boot_id = [] {
    std::optional<std::array<uint8_t, 16>> id = ReadKernelBootId();
    return id ? *id : BootTimeId();
  }();
  return boot_id;
}

void SetBootIdForTesting(const std::array<uint8_t, 16>& id) {
  BootIdOverride& override_state = GetBootIdOverride();
  std::lock_guard<std::mutex> lock(override_state.mu);
  override_state.id = id;
  override_state.active.store(true, std::memory_order_release);
}

void ResetBootIdForTesting() {
  BootIdOverride& override_state = GetBootIdOverride();
  std::lock_guard<std::mutex> lock(override_state.mu);
  override_state.active.store(false, std::memory_order_release);
}

uint64_t ProcessId() { return static_cast<uint64_t>(::getpid()); }

// Advanced by OnForkChild, which File::Open and File::OpenShared register
// before any store exists; ForkGeneration reads it with a plain load.
std::atomic<uint64_t> g_fork_generation{0};

}  // namespace mapkv::internal
