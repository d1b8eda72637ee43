// win32_platform.cc: the Windows backend of platform.h.
//
// Design notes:
//  - Paths are UTF-8 in the engine and converted to UTF-16 here; every call
//    is the wide-character one, so non-ASCII paths work.
//  - Win32File owns one synchronous HANDLE opened with FILE_SHARE_READ |
//    FILE_SHARE_WRITE | FILE_SHARE_DELETE, so other processes can open,
//    lock, rename and remove the store while it is open, as on POSIX.
//  - Map() creates a file mapping object at the file's current size and a
//    view of min(length, size) bytes: Windows cannot map past the end of a
//    file (a larger mapping object would extend the file). The engine asks
//    again, larger, after every growth (MapSet::Cover) and keeps old views
//    until close. The mapping object's handle is closed right after
//    MapViewOfFile; the view keeps the section alive.
//  - Windows refuses to shorten a file while any view of it exists
//    (ERROR_USER_MAPPED_FILE), and the engine shortens the file (close,
//    compaction) while its own views are still mapped. Truncate() then
//    remembers the length, reports it as the size from then on (a later
//    Reserve uses the bytes still there first), and applies it when the
//    handle is destroyed, after the engine has unmapped everything. If
//    another process mapped the file meanwhile the shortening fails again
//    and the file stays longer than the store says, which the format allows;
//    so it does when the file's real length changed since the Truncate
//    (another handle grew it, and may have written past the length).
//  - Locks: LockFileEx on byte ranges of the handle, released when the
//    handle is closed or its process dies. LockFileEx cannot convert a held
//    lock to the other mode, so a conversion is an unlock and a new lock.
//    Between the two another handle could take the range exclusively; to
//    rule that out every exclusive acquisition and every conversion first
//    takes a "gate" lock on a private range far past any data (kGateBase +
//    offset) and holds it only for the few non-blocking calls that follow.
//    The handle's held ranges are kept in a table (one mutex per handle), so
//    re-locking in the same mode is a no-op as with fcntl.
//  - WaitWord/WakeWord: WaitOnAddress does not reach other processes, so a
//    word is waited on through named manual-reset events, one per (file,
//    offset, value): "Local\mapkv-wait-<volume>-<file index>-<offset>-<value>"
//    (for a named shared store "Local\mapkv-wait-shm-NAME-..."). A waiter
//    creates (or opens) the event for the value it expects, then re-reads
//    the word, then waits on the event. A waker sets the event of the value
//    the word held before its change (OpenEventW fails when nobody waits:
//    nothing to do). A change made after the waiter's re-read therefore
//    finds its event; one made before it is seen by the re-read. An event
//    lives while a handle to it is open, so a waiter that finds its event
//    set by an earlier wake while the word again holds the value resets it
//    and returns (a spurious return, allowed). No polling: an idle waiter
//    sleeps in WaitForSingleObject for its whole timeout.
//  - Named shared stores ("shm:NAME"): a paging-file-backed section
//    "Local\mapkv-NAME" created with SEC_RESERVE at kSharedMax + header
//    bytes; the first 64 KiB (one allocation granule) hold the store's
//    current length, the store bytes follow. Growing commits pages
//    (VirtualAlloc MEM_COMMIT, never decommitted) and raises the length,
//    zeroing what a shortening left ("high" in the header: the most the
//    length ever was); each view commits its own range too, which is a
//    no-op for pages already committed by another process. Locks are LockFileEx locks on a small
//    file "<LocalAppData>\mapkv\shm-NAME-HASH.lock" (a section cannot be
//    locked), the user's local application data folder as the user's profile
//    names it, not %TEMP%, which processes set differently. The section
//    lives while any process has it open.
//  - Every error goes through Win32Status(), which builds
//    "<path>: <call>(<detail>): <system text> (error N)" from GetLastError
//    and FormatMessageW, and maps the error to a Code.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
//
#include <knownfolders.h>
#include <shlobj.h>
#include <synchapi.h>
#include <winternl.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "hash.h"
#include "platform/platform.h"

namespace mapkv::internal {
namespace {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "wait words must be plain 32-bit words");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "wait words must be lock free to be shared");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "the shared length word must be lock free");

// Lock ranges must stay below this; the gate of [offset, offset+length) is
// [kGateBase + offset, kGateBase + offset + length).
constexpr uint64_t kGateBase = uint64_t{1} << 62;
// Named shared stores: the header before the store bytes (one allocation
// granule, so the store's views start at an allowed offset) and the largest
// store (reserved address space and section size; pages are committed only
// as the store grows).
constexpr uint64_t kSharedHeader = 64 * 1024;
constexpr uint64_t kSharedMax = uint64_t{4} << 30;
constexpr uint64_t kPage = 4096;

uint64_t RoundUp(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

// ---- Text -----------------------------------------------------------------

std::wstring Widen(const std::string& s) {
  if (s.empty()) return std::wstring();
  const int n = ::MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), static_cast<int>(s.size()), nullptr, 0);
  if (n <= 0) return std::wstring();
  std::wstring out(static_cast<size_t>(n), L'\0');
  ::MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), static_cast<int>(s.size()), out.data(), n);
  return out;
}

std::string Narrow(const wchar_t* s, size_t len) {
  if (len == 0) return std::string();
  const int n = ::WideCharToMultiByte(CP_UTF8, 0, s, static_cast<int>(len), nullptr, 0, nullptr, nullptr);
  if (n <= 0) return std::string();
  std::string out(static_cast<size_t>(n), '\0');
  ::WideCharToMultiByte(CP_UTF8, 0, s, static_cast<int>(len), out.data(), n, nullptr, nullptr);
  return out;
}

// The system's text for an error, without the trailing period and newline.
std::string ErrorText(DWORD err) {
  wchar_t* buf = nullptr;
  const DWORD n = ::FormatMessageW(
      FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, nullptr, err,
      MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT), reinterpret_cast<wchar_t*>(&buf), 0, nullptr);
  std::string text = n > 0 && buf != nullptr ? Narrow(buf, n) : std::string();
  if (buf != nullptr) ::LocalFree(buf);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ' || text.back() == '.')) {
    text.pop_back();
  }
  if (text.empty()) text = "unknown error";
  return text + " (error " + std::to_string(err) + ")";
}

Code CodeForError(DWORD err) {
  switch (err) {
    case ERROR_DISK_FULL:
    case ERROR_HANDLE_DISK_FULL:
    case ERROR_FILE_TOO_LARGE:
    case ERROR_COMMITMENT_LIMIT:
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
      return Code::kNoSpace;
    case ERROR_ACCESS_DENIED:
    case ERROR_WRITE_PROTECT:
    case ERROR_PRIVILEGE_NOT_HELD:
      return Code::kPermissionDenied;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
      return Code::kNotFound;
    case ERROR_INVALID_NAME:
    case ERROR_DIRECTORY:
    case ERROR_BAD_PATHNAME:
      return Code::kInvalidArgument;
    case ERROR_SHARING_VIOLATION:
    case ERROR_LOCK_VIOLATION:
      return Code::kBusy;
    default:
      return Code::kIoError;
  }
}

// "<path>: <call>(<detail>): <system text> (error N)".
Status Win32Status(const std::string& path, const char* call, const std::string& detail, DWORD err) {
  return Status(CodeForError(err), path + ": " + call + "(" + detail + "): " + ErrorText(err));
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

Status CheckRange(const std::string& path, uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= kGateBase || length > kGateBase - offset) {
    return InvalidArgument(path, "bad lock range (" + Range(offset, length) + ")");
  }
  return Status::Ok();
}

// Owns a kernel handle.
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(HANDLE h) : h_(h == INVALID_HANDLE_VALUE ? nullptr : h) {}
  ~UniqueHandle() { Reset(); }
  UniqueHandle(UniqueHandle&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      h_ = std::exchange(other.h_, nullptr);
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  HANDLE get() const { return h_; }
  bool valid() const { return h_ != nullptr; }
  void Reset() {
    if (h_ != nullptr) ::CloseHandle(h_);
    h_ = nullptr;
  }

 private:
  HANDLE h_ = nullptr;
};

// A view from MapViewOfFile, unmapped unless released to the object that
// will own it. Running out of memory between the two must not leak the
// view: it keeps the file open, and the file's name could not be deleted.
class UniqueView {
 public:
  explicit UniqueView(void* view) : view_(view) {}
  ~UniqueView() {
    if (view_ != nullptr) ::UnmapViewOfFile(view_);
  }
  UniqueView(const UniqueView&) = delete;
  UniqueView& operator=(const UniqueView&) = delete;
  void* get() const { return view_; }
  void* release() { return std::exchange(view_, nullptr); }

 private:
  void* view_;
};

OVERLAPPED At(uint64_t offset) {
  OVERLAPPED ov{};
  ov.Offset = static_cast<DWORD>(offset);
  ov.OffsetHigh = static_cast<DWORD>(offset >> 32);
  return ov;
}

// ---- Wait words ------------------------------------------------------------

// WaitWord/WakeWord of one file or shared store (see the notes above).
class WordEvents {
 public:
  // `prefix` names the store: the events are prefix + "<offset>-<value>".
  void SetPrefix(std::wstring prefix) { prefix_ = std::move(prefix); }

  bool Wait(std::atomic<uint32_t>* word, uint64_t offset, uint32_t expected, std::chrono::microseconds timeout) {
    if (word->load(std::memory_order_acquire) != expected) return true;
    EventName name;
    UniqueHandle event(::CreateEventW(nullptr, TRUE, FALSE, Name(offset, expected, &name)));
    if (!event.valid()) {
      // No event (out of handles?): sleep briefly; the caller re-checks.
      ::Sleep(1);
      return word->load(std::memory_order_acquire) != expected;
    }
    // The event exists before this read: a change after it sets the event.
    if (word->load(std::memory_order_seq_cst) != expected) return true;
    const int64_t us = std::max<int64_t>(timeout.count(), 0);
    const DWORD ms = static_cast<DWORD>(std::min<int64_t>((us + 999) / 1000, INFINITE - 1));
    if (::WaitForSingleObject(event.get(), ms) != WAIT_OBJECT_0) {
      return word->load(std::memory_order_acquire) != expected;
    }
    // Set by a wake for an earlier time the word held this value, or by a
    // wake without a change: clear it for the next waiter of this value.
    if (word->load(std::memory_order_seq_cst) == expected) ::ResetEvent(event.get());
    return true;
  }

  void Wake(uint64_t offset, uint32_t seen) {
    EventName name;
    UniqueHandle event(::OpenEventW(EVENT_MODIFY_STATE, FALSE, Name(offset, seen, &name)));
    if (event.valid()) ::SetEvent(event.get());
  }

 private:
  // Built on the stack: waits and wakes run on paths (unlocks, destructors,
  // the keeper thread) that must not fail for lack of memory. The prefix is
  // at most about 230 characters (a 200-character shm name).
  using EventName = std::array<wchar_t, 320>;
  const wchar_t* Name(uint64_t offset, uint32_t value, EventName* out) const {
    size_t n = std::min(prefix_.size(), out->size() - 48);
    std::copy_n(prefix_.data(), n, out->data());
    auto append = [&](uint64_t v) {
      wchar_t digits[20];
      int k = 0;
      do {
        digits[k++] = static_cast<wchar_t>(L'0' + v % 10);
        v /= 10;
      } while (v != 0);
      while (k > 0) (*out)[n++] = digits[--k];
    };
    append(offset);
    (*out)[n++] = L'-';
    append(value);
    (*out)[n] = L'\0';
    return out->data();
  }

  std::wstring prefix_;
};

// ---- Byte-range locks -----------------------------------------------------

// The LockFileEx locks of one handle, with the bookkeeping described above.
class RangeLocks {
 public:
  RangeLocks(HANDLE h, const std::string* path, bool read_only) : h_(h), path_(path), read_only_(read_only) {}
  ~RangeLocks() { ReleaseAll(); }
  RangeLocks(const RangeLocks&) = delete;
  RangeLocks& operator=(const RangeLocks&) = delete;

  Status TryLock(uint64_t offset, uint64_t length, LockMode mode, bool* acquired) {
    *acquired = false;
    if (mode == LockMode::kExclusive && read_only_) return ReadOnlyHandle(*path_, "exclusive lock");
    if (Status s = CheckRange(*path_, offset, length); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    const auto key = std::make_pair(offset, length);
    auto it = held_.find(key);
    if (it != held_.end() && it->second == mode) {
      *acquired = true;
      return Status::Ok();
    }
    // A new range's entry is made before its lock is taken, and dropped if
    // the lock is not granted: the entry is the one allocation, and memory
    // running out must not leave a lock taken that the table does not know.
    const bool fresh = it == held_.end();
    if (fresh) it = held_.emplace(key, mode).first;
    if (fresh && mode == LockMode::kShared) {
      DWORD err = 0;
      if (!Acquire(offset, length, mode, &err)) {
        held_.erase(it);
        return NotGranted(err, offset, length, mode);
      }
      *acquired = true;
      return Status::Ok();
    }
    // An exclusive acquisition or a conversion: under the gate, given back
    // however this ends.
    if (Status s = Gate(offset, length, true); !s.ok()) {
      if (fresh) held_.erase(it);
      return s;
    }
    struct Ungate {
      RangeLocks* self;
      uint64_t offset, length;
      ~Ungate() { self->Gate(offset, length, false).IgnoreError(); }
    } ungate{this, offset, length};
    DWORD err = 0;
    if (fresh) {
      if (!Acquire(offset, length, mode, &err)) {
        held_.erase(it);
        return NotGranted(err, offset, length, mode);
      }
      *acquired = true;
      return Status::Ok();
    }
    const LockMode old = it->second;
    Release(offset, length);
    if (Acquire(offset, length, mode, &err)) {
      it->second = mode;
      *acquired = true;
      return Status::Ok();
    }
    DWORD back_err = 0;
    // Cannot conflict: any other exclusive acquirer needs the gate we hold.
    if (Acquire(offset, length, old, &back_err)) return NotGranted(err, offset, length, mode);
    held_.erase(it);
    return Win32Status(*path_, "LockFileEx", "restoring the lock after a failed conversion, " + Range(offset, length),
                       back_err);
  }

  // No test-only call in LockFileEx: an exclusive lock taken and given back
  // at once, under the gate like any exclusive acquisition (a read handle
  // may lock too).
  Status LockedByOthers(uint64_t offset, uint64_t length, bool* held) {
    *held = true;
    if (Status s = CheckRange(*path_, offset, length); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    if (Status s = Gate(offset, length, true); !s.ok()) return s;
    DWORD err = 0;
    if (Acquire(offset, length, LockMode::kExclusive, &err)) {
      Release(offset, length);
      *held = false;
    } else if (err != ERROR_LOCK_VIOLATION && err != ERROR_IO_PENDING) {
      Gate(offset, length, false).IgnoreError();
      return Win32Status(*path_, "LockFileEx", "probe, " + Range(offset, length), err);
    }
    return Gate(offset, length, false);
  }

  Status Unlock(uint64_t offset, uint64_t length) {
    if (Status s = CheckRange(*path_, offset, length); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = held_.find(std::make_pair(offset, length));
    if (it == held_.end()) return Status::Ok();  // as fcntl: unlocking nothing is fine
    held_.erase(it);
    if (!Release(offset, length)) {
      return Win32Status(*path_, "UnlockFileEx", Range(offset, length), ::GetLastError());
    }
    return Status::Ok();
  }

  void ReleaseAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [range, mode] : held_) Release(range.first, range.second);
    held_.clear();
  }

 private:
  bool Acquire(uint64_t offset, uint64_t length, LockMode mode, DWORD* err) {
    OVERLAPPED ov = At(offset);
    DWORD flags = LOCKFILE_FAIL_IMMEDIATELY;
    if (mode == LockMode::kExclusive) flags |= LOCKFILE_EXCLUSIVE_LOCK;
    if (::LockFileEx(h_, flags, 0, static_cast<DWORD>(length), static_cast<DWORD>(length >> 32), &ov)) return true;
    *err = ::GetLastError();
    return false;
  }

  bool Release(uint64_t offset, uint64_t length) {
    OVERLAPPED ov = At(offset);
    return ::UnlockFileEx(h_, 0, static_cast<DWORD>(length), static_cast<DWORD>(length >> 32), &ov) != 0;
  }

  // Takes (blocking: its holders never block while holding it) or releases
  // the gate of a range.
  Status Gate(uint64_t offset, uint64_t length, bool take) {
    const uint64_t gate = kGateBase + offset;
    if (!take) {
      if (Release(gate, length)) return Status::Ok();
      return Win32Status(*path_, "UnlockFileEx", "gate, " + Range(gate, length), ::GetLastError());
    }
    OVERLAPPED ov = At(gate);
    // A read-only handle gets here only to probe (LockedByOthers): it is
    // refused exclusive locks (TryLock) and so never converts.
    if (::LockFileEx(h_, LOCKFILE_EXCLUSIVE_LOCK, 0, static_cast<DWORD>(length), static_cast<DWORD>(length >> 32),
                     &ov)) {
      return Status::Ok();
    }
    return Win32Status(*path_, "LockFileEx", "gate, " + Range(gate, length), ::GetLastError());
  }

  Status NotGranted(DWORD err, uint64_t offset, uint64_t length, LockMode mode) const {
    if (err == ERROR_LOCK_VIOLATION || err == ERROR_IO_PENDING) return Status::Ok();
    return Win32Status(*path_, "LockFileEx",
                       std::string(mode == LockMode::kExclusive ? "exclusive, " : "shared, ") + Range(offset, length),
                       err);
  }

  const HANDLE h_;
  const std::string* const path_;
  const bool read_only_;
  std::mutex mu_;
  std::map<std::pair<uint64_t, uint64_t>, LockMode> held_;
};

// ---- Mappings -------------------------------------------------------------

class Win32Mapping final : public Mapping {
 public:
  // `file` is borrowed from the File, which must outlive this mapping; null
  // for a shared-memory store (nothing to write back).
  Win32Mapping(uint8_t* data, uint64_t length, HANDLE file, std::string path)
      : data_(data), length_(length), file_(file), path_(std::move(path)) {}
  ~Win32Mapping() override { ::UnmapViewOfFile(data_); }
  Win32Mapping(const Win32Mapping&) = delete;
  Win32Mapping& operator=(const Win32Mapping&) = delete;

  uint8_t* data() const override { return data_; }
  uint64_t length() const override { return length_; }

  Status Flush(uint64_t offset, uint64_t length, bool sync) override {
    if (offset > length_) {
      return InvalidArgument(path_, "flush past the end of the mapping (" + Range(offset, length) +
                                        ", mapping length " + std::to_string(length_) + ")");
    }
    if (file_ == nullptr) return Status::Ok();  // paging-file section: no storage to reach
    length = std::min(length, length_ - offset);
    if (length == 0) return Status::Ok();
    // FlushViewOfFile starts the writes of the dirty pages and returns; the
    // synchronous level then waits for them with FlushFileBuffers.
    if (!::FlushViewOfFile(data_ + offset, static_cast<SIZE_T>(length))) {
      return Win32Status(path_, "FlushViewOfFile", Range(offset, length), ::GetLastError());
    }
    if (sync && !::FlushFileBuffers(file_)) {
      return Win32Status(path_, "FlushFileBuffers", "", ::GetLastError());
    }
    return Status::Ok();
  }

 private:
  uint8_t* const data_;
  const uint64_t length_;
  const HANDLE file_;
  const std::string path_;
};

// ---- Regular files --------------------------------------------------------

class Win32File final : public File {
 public:
  Win32File(UniqueHandle h, std::string path, bool read_only)
      : h_(std::move(h)), path_(std::move(path)), read_only_(read_only), locks_(h_.get(), &path_, read_only) {}
  ~Win32File() override {
    // See the notes above. Only while the file is as long as when the
    // shortening was put off: another handle that grew it since may have
    // written past the length remembered here. Before the locks go, so
    // no handle that waits for them sees the file change under it.
    uint64_t real = 0;
    if (pending_truncate_ != kNoTruncate && RealSize(&real).ok() && real == pending_from_) {
      SetLength(pending_truncate_).IgnoreError();
    }
    locks_.ReleaseAll();
  }
  Win32File(const Win32File&) = delete;
  Win32File& operator=(const Win32File&) = delete;

  const std::string& path() const override { return path_; }
  bool read_only() const override { return read_only_; }

  // The store's length: the file's, or a shorter one set by a Truncate
  // that could not shorten the file yet (see the notes above).
  Status Size(uint64_t* size) override {
    if (pending_truncate_ != kNoTruncate) {
      *size = pending_truncate_;
      return Status::Ok();
    }
    return RealSize(size);
  }

  Status Reserve(uint64_t size) override {
    if (read_only_) return ReadOnlyHandle(path_, "Reserve");
    uint64_t current = 0;
    if (Status s = Size(&current); !s.ok()) return s;
    if (size <= current) return Status::Ok();
    if (pending_truncate_ != kNoTruncate) {
      // The file is still longer than the store: use what is there first,
      // zeroed, as a file shortened and grown again reads.
      uint64_t real = 0;
      if (Status s = RealSize(&real); !s.ok()) return s;
      if (Status s = WriteZeros(current, std::min(size, real)); !s.ok()) return s;
      if (size <= real) {
        pending_truncate_ = size;
        return Status::Ok();
      }
      pending_truncate_ = kNoTruncate;
      current = real;
    }
    if (size > static_cast<uint64_t>(std::numeric_limits<LONGLONG>::max())) {
      return Status(Code::kNoSpace, path_ + ": size " + std::to_string(size) + " exceeds the largest file offset");
    }
    // Reserve the clusters first, so writes through the mapping cannot fail
    // for lack of space; file systems without allocation control just grow.
    FILE_ALLOCATION_INFO alloc{};
    alloc.AllocationSize.QuadPart = static_cast<LONGLONG>(size);
    if (!::SetFileInformationByHandle(h_.get(), FileAllocationInfo, &alloc, sizeof(alloc))) {
      const DWORD err = ::GetLastError();
      if (CodeForError(err) == Code::kNoSpace) {
        return Win32Status(path_, "SetFileInformationByHandle", "FileAllocationInfo, " + Bytes(size), err);
      }
    }
    if (Status s = SetLength(size); !s.ok()) {
      // Give back what was reserved past the old end.
      alloc.AllocationSize.QuadPart = static_cast<LONGLONG>(current);
      ::SetFileInformationByHandle(h_.get(), FileAllocationInfo, &alloc, sizeof(alloc));
      return s;
    }
    return Status::Ok();
  }

  Status Truncate(uint64_t size) override {
    if (read_only_) return ReadOnlyHandle(path_, "Truncate");
    FILE_END_OF_FILE_INFO eof{};
    eof.EndOfFile.QuadPart = static_cast<LONGLONG>(size);
    if (::SetFileInformationByHandle(h_.get(), FileEndOfFileInfo, &eof, sizeof(eof))) {
      pending_truncate_ = kNoTruncate;
      return Status::Ok();
    }
    const DWORD err = ::GetLastError();
    if (err == ERROR_USER_MAPPED_FILE) {
      // The store's length from now on; the file's once the views are gone.
      if (Status s = RealSize(&pending_from_); !s.ok()) return s;
      pending_truncate_ = size;
      return Status::Ok();
    }
    return Win32Status(path_, "SetFileInformationByHandle", "FileEndOfFileInfo, " + Bytes(size), err);
  }

  void KeepLength() override { pending_truncate_ = kNoTruncate; }

  Status Sync() override {
    if (read_only_) return Status::Ok();  // FlushFileBuffers needs write access; nothing to write back
    if (!::FlushFileBuffers(h_.get())) return Win32Status(path_, "FlushFileBuffers", "", ::GetLastError());
    return Status::Ok();
  }

  Status Map(uint64_t length, bool writable, std::unique_ptr<Mapping>* out) override {
    if (writable && read_only_) return ReadOnlyHandle(path_, "writable Map");
    if (length == 0) return InvalidArgument(path_, "bad mapping length 0");
    uint64_t size = 0;
    if (Status s = Size(&size); !s.ok()) return s;
    // Windows cannot map past the end of a file: map what exists (of the store).
    const uint64_t span = std::min(length, size);
    if (span == 0) return InvalidArgument(path_, "cannot map an empty file");
    if (span > std::numeric_limits<SIZE_T>::max()) return InvalidArgument(path_, "mapping too large");
    UniqueHandle section(
        ::CreateFileMappingW(h_.get(), nullptr, writable ? PAGE_READWRITE : PAGE_READONLY, 0, 0, nullptr));
    if (!section.valid()) {
      return Win32Status(path_, "CreateFileMappingW", writable ? "PAGE_READWRITE" : "PAGE_READONLY", ::GetLastError());
    }
    void* addr = ::MapViewOfFile(section.get(), writable ? FILE_MAP_READ | FILE_MAP_WRITE : FILE_MAP_READ, 0, 0,
                                 static_cast<SIZE_T>(span));
    if (addr == nullptr) {
      return Win32Status(path_, "MapViewOfFile", Bytes(span) + (writable ? ", read-write" : ", read-only"),
                         ::GetLastError());
    }
    UniqueView view(addr);
    *out = std::make_unique<Win32Mapping>(static_cast<uint8_t*>(addr), span, h_.get(), path_);
    view.release();
    return Status::Ok();
  }

  Status TryLock(uint64_t offset, uint64_t length, LockMode mode, bool* acquired) override {
    return locks_.TryLock(offset, length, mode, acquired);
  }

  Status Lock(uint64_t offset, uint64_t length, LockMode mode) override {
    return BlockingLock(&locks_, offset, length, mode);
  }

  Status Unlock(uint64_t offset, uint64_t length) override { return locks_.Unlock(offset, length); }
  Status LockedByOthers(uint64_t offset, uint64_t length, bool* held) override {
    return locks_.LockedByOthers(offset, length, held);
  }

  bool OnNetworkFileSystem() override {
    // Succeeds only for files opened through a network redirector.
    FILE_REMOTE_PROTOCOL_INFO info{};
    return ::GetFileInformationByHandleEx(h_.get(), FileRemoteProtocolInfo, &info, sizeof(info)) != 0;
  }

  Status Identity(std::array<uint64_t, 2>* id) override { return HandleIdentity(h_.get(), path_, id); }

  bool WaitWord(std::atomic<uint32_t>* word, uint64_t offset, uint32_t expected,
                std::chrono::microseconds timeout) override {
    return events_.Wait(word, offset, expected, timeout);
  }
  void WakeWord(std::atomic<uint32_t>*, uint64_t offset, uint32_t seen) override { events_.Wake(offset, seen); }
  WordEvents* events() { return &events_; }

  static Status HandleIdentity(HANDLE h, const std::string& path, std::array<uint64_t, 2>* id) {
    BY_HANDLE_FILE_INFORMATION info{};
    if (!::GetFileInformationByHandle(h, &info)) {
      return Win32Status(path, "GetFileInformationByHandle", "", ::GetLastError());
    }
    *id = {info.dwVolumeSerialNumber, uint64_t{info.nFileIndexHigh} << 32 | info.nFileIndexLow};
    return Status::Ok();
  }

  static Status BlockingLock(RangeLocks* locks, uint64_t offset, uint64_t length, LockMode mode) {
    // LockFileEx without LOCKFILE_FAIL_IMMEDIATELY would wait inside the
    // kernel, but could not go through the gate protocol; poll instead.
    while (true) {
      bool acquired = false;
      if (Status s = locks->TryLock(offset, length, mode, &acquired); !s.ok() || acquired) return s;
      ::Sleep(1);
    }
  }

 private:
  static constexpr uint64_t kNoTruncate = ~uint64_t{0};

  Status RealSize(uint64_t* size) {
    LARGE_INTEGER n{};
    if (!::GetFileSizeEx(h_.get(), &n)) return Win32Status(path_, "GetFileSizeEx", "", ::GetLastError());
    *size = static_cast<uint64_t>(n.QuadPart);
    return Status::Ok();
  }

  // Writes zeros over [from, to) through the handle (coherent with the
  // views, which share the system cache's pages).
  Status WriteZeros(uint64_t from, uint64_t to) {
    static constexpr char kZeros[64 * 1024] = {};
    while (from < to) {
      const DWORD n = static_cast<DWORD>(std::min<uint64_t>(to - from, sizeof kZeros));
      OVERLAPPED at{};
      at.Offset = static_cast<DWORD>(from);
      at.OffsetHigh = static_cast<DWORD>(from >> 32);
      DWORD wrote = 0;
      if (!::WriteFile(h_.get(), kZeros, n, &wrote, &at) || wrote != n) {
        return Win32Status(path_, "WriteFile", "zeros at offset " + std::to_string(from), ::GetLastError());
      }
      from += n;
    }
    return Status::Ok();
  }

  Status SetLength(uint64_t size) {
    FILE_END_OF_FILE_INFO eof{};
    eof.EndOfFile.QuadPart = static_cast<LONGLONG>(size);
    if (!::SetFileInformationByHandle(h_.get(), FileEndOfFileInfo, &eof, sizeof(eof))) {
      return Win32Status(path_, "SetFileInformationByHandle", "FileEndOfFileInfo, " + Bytes(size), ::GetLastError());
    }
    return Status::Ok();
  }

  UniqueHandle h_;
  const std::string path_;
  const bool read_only_;
  RangeLocks locks_;
  WordEvents events_;
  uint64_t pending_truncate_ = kNoTruncate;
  uint64_t pending_from_ = 0;  // the file's real length when the shortening was put off
};

DWORD Disposition(const FileSpec& spec) {
  if (spec.create && spec.exclusive) return CREATE_NEW;
  if (spec.create) return OPEN_ALWAYS;
  return OPEN_EXISTING;
}

std::string DispositionText(const FileSpec& spec) {
  std::string text = spec.read_only ? "GENERIC_READ" : "GENERIC_READ|GENERIC_WRITE";
  if (spec.create && spec.exclusive) return text + ", CREATE_NEW";
  if (spec.create) return text + ", OPEN_ALWAYS";
  return text + ", OPEN_EXISTING";
}

bool IsDirectory(const std::wstring& wpath) {
  const DWORD attrs = ::GetFileAttributesW(wpath.c_str());
  return attrs != INVALID_FILE_ATTRIBUTES && (attrs & FILE_ATTRIBUTE_DIRECTORY) != 0;
}

// Opens a file for the backend: UTF-8 to UTF-16, sharing everything.
Status OpenHandle(const std::string& path, const FileSpec& spec, UniqueHandle* out) {
  if (path.empty() || path.find('\0') != std::string::npos) return InvalidArgument(path, "bad file path");
  const std::wstring wpath = Widen(path);
  if (wpath.empty()) return InvalidArgument(path, "path is not valid UTF-8");
  const DWORD access = spec.read_only ? GENERIC_READ : GENERIC_READ | GENERIC_WRITE;
  UniqueHandle h(::CreateFileW(wpath.c_str(), access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                               Disposition(spec), FILE_ATTRIBUTE_NORMAL, nullptr));
  if (!h.valid()) {
    const DWORD err = ::GetLastError();
    if ((err == ERROR_FILE_EXISTS || err == ERROR_ALREADY_EXISTS) && spec.create && spec.exclusive) {
      return InvalidArgument(path, "already exists");
    }
    if (err == ERROR_ACCESS_DENIED && IsDirectory(wpath)) return InvalidArgument(path, "is a directory");
    return Win32Status(path, "CreateFileW", DispositionText(spec), err);
  }
  if (IsDirectory(wpath)) return InvalidArgument(path, "is a directory");
  if (::GetFileType(h.get()) != FILE_TYPE_DISK) return InvalidArgument(path, "is not a regular file");
  *out = std::move(h);
  return Status::Ok();
}

// ---- Named shared stores --------------------------------------------------

struct SharedHeader {
  std::atomic<uint64_t> length;  // the store's current length in bytes
  // The most bytes the store ever had: a shortening cannot decommit pages,
  // so growth back into [length, high) zeroes what it reuses.
  std::atomic<uint64_t> high;
};

Status CheckSharedName(const std::string& name) {
  if (name.empty() || name.size() > 200 || name.find_first_of("/\\:*?\"<>|") != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return Status(Code::kInvalidArgument, "shm:" + name +
                                              ": bad shared-memory name (must be 1 to 200 characters, without "
                                              "/ \\ : * ? \" < > |)");
  }
  return Status::Ok();
}

std::wstring SectionName(const std::string& name) { return Widen("Local\\mapkv-" + name); }

// Every process that opens "shm:NAME" must lock the same file, so its
// directory comes from the user's profile (SHGetKnownFolderPath reads it
// from the registry), not from the environment: %TEMP% differs between
// processes that set it themselves (MSYS2 and Cygwin shells, build tools),
// and two such processes would each hold "the" write lock. `create_dir`
// creates <LocalAppData>\mapkv when missing (an open; removal does not).
//
// The file is named after NAME and the hash of its exact bytes: section
// names are case-sensitive but NTFS file names are not, and "shm:Foo" and
// "shm:foo" are two stores that must not share a lock. The path carries the
// \\?\ prefix, so a long name under a long profile path is not cut at
// MAX_PATH (260 characters).
Status LockFilePath(const std::string& name, bool create_dir, std::string* out) {
  PWSTR folder = nullptr;
  const HRESULT hr = ::SHGetKnownFolderPath(FOLDERID_LocalAppData, 0, nullptr, &folder);
  if (FAILED(hr)) {
    ::CoTaskMemFree(folder);
    char code[16];
    std::snprintf(code, sizeof code, "0x%08lX", static_cast<unsigned long>(hr));
    return Status(Code::kIoError, "shm:" + name + ": SHGetKnownFolderPath(LocalAppData) failed (HRESULT " + code +
                                      "); the lock file of a named store lives there");
  }
  std::wstring dir = std::wstring(folder) + L"\\mapkv";
  ::CoTaskMemFree(folder);
  // The \\?\ form below turns off Win32's path normalization: normalize
  // first (a profile folder redirected to "D:/x/../Local" is still valid).
  if (const DWORD n = ::GetFullPathNameW(dir.c_str(), 0, nullptr, nullptr); n != 0) {
    std::wstring full(n, L'\0');
    const DWORD got = ::GetFullPathNameW(dir.c_str(), n, full.data(), nullptr);
    if (got != 0 && got < n) {
      full.resize(got);
      dir = std::move(full);
    }
  }
  const std::string dir_narrow = Narrow(dir.data(), dir.size());
  if (create_dir && !::CreateDirectoryW(dir.c_str(), nullptr) && ::GetLastError() != ERROR_ALREADY_EXISTS) {
    return Win32Status("shm:" + name, "CreateDirectoryW", dir_narrow + " (for the lock file)", ::GetLastError());
  }
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(XXH3_64bits(name.data(), name.size())));
  // A drive path takes \\?\, a UNC path (\\server\share) \\?\UNC\.
  const bool unc = dir_narrow.rfind("\\\\", 0) == 0;
  *out = (unc ? "\\\\?\\UNC" + dir_narrow.substr(1) : "\\\\?\\" + dir_narrow) + "\\shm-" + name + "-" + hash + ".lock";
  return Status::Ok();
}

// Opens (creating it, even for a reader) the lock file of a named store.
// A RemoveShared in another process holds it unshared for a moment while it
// checks and removes it: that refusal is waited out, for up to 5 s.
Status OpenLockFile(const std::string& store_path, const std::string& lock_path, UniqueHandle* out) {
  const std::wstring wpath = Widen(lock_path);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    UniqueHandle h(::CreateFileW(wpath.c_str(), GENERIC_READ | GENERIC_WRITE,
                                 FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr, OPEN_ALWAYS,
                                 FILE_ATTRIBUTE_NORMAL, nullptr));
    if (h.valid()) {
      *out = std::move(h);
      return Status::Ok();
    }
    // ERROR_ACCESS_DENIED: also a file being removed (delete pending),
    // unless the path is a directory or a read-only file (for good).
    const DWORD err = ::GetLastError();
    bool passing = err == ERROR_SHARING_VIOLATION;
    if (err == ERROR_ACCESS_DENIED) {
      const DWORD attrs = ::GetFileAttributesW(wpath.c_str());
      passing = attrs == INVALID_FILE_ATTRIBUTES || (attrs & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_READONLY)) == 0;
    }
    if (!passing || std::chrono::steady_clock::now() > give_up) break;
    ::Sleep(1);
  }
  // The same open once more, for its error in OpenHandle's words.
  Status s = OpenHandle(lock_path, FileSpec{.create = true}, out);
  return s.ok() ? s : Status(s.code(), store_path + ": lock file: " + s.message());
}

class Win32SharedFile final : public File {
 public:
  Win32SharedFile(UniqueHandle section, SharedHeader* header, UniqueHandle lock_file, std::string path, bool read_only)
      : section_(std::move(section)),
        header_(header),
        lock_file_(std::move(lock_file)),
        path_(std::move(path)),
        read_only_(read_only),
        locks_(lock_file_.get(), &path_, read_only) {}
  ~Win32SharedFile() override {
    locks_.ReleaseAll();
    ::UnmapViewOfFile(header_);
  }
  Win32SharedFile(const Win32SharedFile&) = delete;
  Win32SharedFile& operator=(const Win32SharedFile&) = delete;

  const std::string& path() const override { return path_; }
  bool read_only() const override { return read_only_; }

  Status Size(uint64_t* size) override {
    *size = header_->length.load(std::memory_order_acquire);
    return Status::Ok();
  }

  Status Reserve(uint64_t size) override {
    if (read_only_) return ReadOnlyHandle(path_, "Reserve");
    if (size <= header_->length.load(std::memory_order_acquire)) return Status::Ok();
    if (size > kSharedMax) {
      return Status(Code::kNoSpace, path_ + ": size " + std::to_string(size) +
                                        " exceeds the largest named shared store on Windows (" +
                                        std::to_string(kSharedMax) + " bytes)");
    }
    // Commit the pages through a temporary view (commits belong to the
    // section), zero what a shortening left behind, then publish the new
    // length. The engine grows and shortens a store only under its write
    // lock, so no other handle writes past the length meanwhile.
    const uint64_t span = RoundUp(size, kPage);
    void* view = nullptr;
    if (Status s = CommitView(span, true, &view); !s.ok()) return s;
    const uint64_t cur = header_->length.load(std::memory_order_acquire);
    const uint64_t reused_end = std::min(size, header_->high.load(std::memory_order_acquire));
    if (reused_end > cur) std::memset(static_cast<uint8_t*>(view) + cur, 0, reused_end - cur);
    ::UnmapViewOfFile(view);
    if (header_->high.load(std::memory_order_relaxed) < size) header_->high.store(size, std::memory_order_release);
    header_->length.store(size, std::memory_order_release);
    return Status::Ok();
  }

  Status Truncate(uint64_t size) override {
    if (read_only_) return ReadOnlyHandle(path_, "Truncate");
    if (size > header_->length.load(std::memory_order_acquire)) return Reserve(size);
    // Committed pages of a SEC_RESERVE section cannot be decommitted; only
    // the length comes down.
    header_->length.store(size, std::memory_order_release);
    return Status::Ok();
  }

  Status Sync() override { return Status::Ok(); }  // no storage behind a paging-file section

  Status Map(uint64_t length, bool writable, std::unique_ptr<Mapping>* out) override {
    if (writable && read_only_) return ReadOnlyHandle(path_, "writable Map");
    if (length == 0) return InvalidArgument(path_, "bad mapping length 0");
    const uint64_t span = std::min(length, header_->length.load(std::memory_order_acquire));
    if (span == 0) return InvalidArgument(path_, "cannot map an empty store");
    void* view = nullptr;
    if (Status s = CommitView(span, writable, &view); !s.ok()) return s;
    UniqueView guard(view);
    *out = std::make_unique<Win32Mapping>(static_cast<uint8_t*>(view), span, nullptr, path_);
    guard.release();
    return Status::Ok();
  }

  Status TryLock(uint64_t offset, uint64_t length, LockMode mode, bool* acquired) override {
    return locks_.TryLock(offset, length, mode, acquired);
  }
  Status Lock(uint64_t offset, uint64_t length, LockMode mode) override {
    return Win32File::BlockingLock(&locks_, offset, length, mode);
  }
  Status Unlock(uint64_t offset, uint64_t length) override { return locks_.Unlock(offset, length); }
  Status LockedByOthers(uint64_t offset, uint64_t length, bool* held) override {
    return locks_.LockedByOthers(offset, length, held);
  }

  bool OnNetworkFileSystem() override { return false; }

  Status Identity(std::array<uint64_t, 2>* id) override {
    return Win32File::HandleIdentity(lock_file_.get(), path_, id);
  }

  bool WaitWord(std::atomic<uint32_t>* word, uint64_t offset, uint32_t expected,
                std::chrono::microseconds timeout) override {
    return events_.Wait(word, offset, expected, timeout);
  }
  void WakeWord(std::atomic<uint32_t>*, uint64_t offset, uint32_t seen) override { events_.Wake(offset, seen); }
  WordEvents* events() { return &events_; }

 private:
  // Maps `span` store bytes (past the header) and commits them in the view.
  Status CommitView(uint64_t span, bool writable, void** out) {
    void* view = ::MapViewOfFile(section_.get(), writable ? FILE_MAP_READ | FILE_MAP_WRITE : FILE_MAP_READ, 0,
                                 static_cast<DWORD>(kSharedHeader), static_cast<SIZE_T>(span));
    if (view == nullptr) return Win32Status(path_, "MapViewOfFile", Bytes(span), ::GetLastError());
    if (::VirtualAlloc(view, static_cast<SIZE_T>(RoundUp(span, kPage)), MEM_COMMIT,
                       writable ? PAGE_READWRITE : PAGE_READONLY) == nullptr) {
      const DWORD err = ::GetLastError();
      ::UnmapViewOfFile(view);
      return Win32Status(path_, "VirtualAlloc", "MEM_COMMIT, " + Bytes(span), err);
    }
    *out = view;
    return Status::Ok();
  }

  UniqueHandle section_;
  SharedHeader* const header_;
  UniqueHandle lock_file_;
  const std::string path_;
  const bool read_only_;
  RangeLocks locks_;
  WordEvents events_;
};

// ---- Boot identity --------------------------------------------------------

struct BootIdOverride {
  std::atomic<bool> active{false};
  std::mutex mu;
  std::array<uint8_t, 16> id{};
};

BootIdOverride& GetBootIdOverride() {
  static BootIdOverride* override_state = new BootIdOverride;  // never destroyed
  return *override_state;
}

// SYSTEM_TIMEOFDAY_INFORMATION as the kernel fills it. The SDK's version
// hides the last fields in a reserved array.
struct TimeOfDayInformation {
  LARGE_INTEGER boot_time;
  LARGE_INTEGER current_time;
  LARGE_INTEGER time_zone_bias;
  ULONG time_zone_id;
  ULONG reserved;
  ULONGLONG boot_time_bias;  // the sum of the clock's steps since boot
  ULONGLONG sleep_time_bias;
};

// The kernel's boot time (100 ns units since 1601), exact and fixed for the
// boot, from NtQuerySystemInformation(SystemTimeOfDayInformation). When the
// clock is stepped (by hand, the time service, a VM's time sync), the kernel
// moves BootTime by the step and adds the step to BootTimeBias: the boot
// time less that bias does not move. When the call is unavailable: the wall
// clock minus the time since boot, in whole seconds.
std::array<uint8_t, 16> ComputeBootId() {
  std::array<uint8_t, 16> id{'m', 'a', 'p', 'k', 'v', 'w', 'i', 'n'};
  uint64_t boot = 0;
  using QueryFn = LONG(WINAPI*)(int, void*, ULONG, ULONG*);
  if (HMODULE ntdll = ::GetModuleHandleW(L"ntdll.dll"); ntdll != nullptr) {
    auto query =
        reinterpret_cast<QueryFn>(reinterpret_cast<void*>(::GetProcAddress(ntdll, "NtQuerySystemInformation")));
    TimeOfDayInformation info{};
    ULONG got = 0;
    if (query != nullptr && query(SystemTimeOfDayInformation, &info, sizeof(info), &got) == 0) {
      boot = static_cast<uint64_t>(info.boot_time.QuadPart);
      if (got >= offsetof(TimeOfDayInformation, sleep_time_bias)) boot -= info.boot_time_bias;
    }
  }
  if (boot == 0) {
    FILETIME now{};
    ::GetSystemTimeAsFileTime(&now);
    const uint64_t now_100ns = uint64_t{now.dwHighDateTime} << 32 | now.dwLowDateTime;
    const uint64_t up_100ns = ::GetTickCount64() * 10000;
    boot = (now_100ns - up_100ns + 5000000) / 10000000 * 10000000;
    id[7] = 'c';  // computed, not the kernel's value
  }
  for (int i = 0; i < 8; ++i) id[8 + i] = static_cast<uint8_t>(boot >> (8 * i));
  return id;
}

}  // namespace

// ---- File -----------------------------------------------------------------

Status File::Open(const std::string& path, const FileSpec& spec, std::unique_ptr<File>* out) {
  UniqueHandle h;
  if (Status s = OpenHandle(path, spec, &h); !s.ok()) return s;
  auto file = std::make_unique<Win32File>(std::move(h), path, spec.read_only);
  std::array<uint64_t, 2> id{};
  if (Status s = file->Identity(&id); !s.ok()) return s;
  file->events()->SetPrefix(L"Local\\mapkv-wait-" + std::to_wstring(id[0]) + L"-" + std::to_wstring(id[1]) + L"-");
  *out = std::move(file);
  return Status::Ok();
}

Status File::OpenShared(const std::string& name, const FileSpec& spec, std::unique_ptr<File>* out) {
  if (Status s = CheckSharedName(name); !s.ok()) return s;
  const std::string path = "shm:" + name;
  const std::wstring section_name = SectionName(name);
  UniqueHandle section;
  if (spec.create && !spec.read_only) {
    const uint64_t total = kSharedHeader + kSharedMax;
    section = UniqueHandle(::CreateFileMappingW(INVALID_HANDLE_VALUE, nullptr, PAGE_READWRITE | SEC_RESERVE,
                                                static_cast<DWORD>(total >> 32), static_cast<DWORD>(total),
                                                section_name.c_str()));
    const DWORD err = ::GetLastError();
    if (!section.valid()) return Win32Status(path, "CreateFileMappingW", "PAGE_READWRITE|SEC_RESERVE", err);
    if (err == ERROR_ALREADY_EXISTS && spec.exclusive) return InvalidArgument(path, "already exists");
  } else {
    section = UniqueHandle(::OpenFileMappingW(spec.read_only ? FILE_MAP_READ : FILE_MAP_READ | FILE_MAP_WRITE, FALSE,
                                              section_name.c_str()));
    if (!section.valid()) return Win32Status(path, "OpenFileMappingW", "", ::GetLastError());
  }
  const DWORD access = spec.read_only ? FILE_MAP_READ : FILE_MAP_READ | FILE_MAP_WRITE;
  void* header = ::MapViewOfFile(section.get(), access, 0, 0, static_cast<SIZE_T>(kSharedHeader));
  if (header == nullptr) return Win32Status(path, "MapViewOfFile", "header", ::GetLastError());
  if (::VirtualAlloc(header, static_cast<SIZE_T>(kPage), MEM_COMMIT, spec.read_only ? PAGE_READONLY : PAGE_READWRITE) ==
      nullptr) {
    const DWORD err = ::GetLastError();
    ::UnmapViewOfFile(header);
    return Win32Status(path, "VirtualAlloc", "MEM_COMMIT, header", err);
  }
  UniqueView header_view(header);
  std::string lock_path;
  Status s = LockFilePath(name, /*create_dir=*/true, &lock_path);
  UniqueHandle lock_file;
  if (s.ok()) s = OpenLockFile(path, lock_path, &lock_file);
  if (!s.ok()) return s;
  auto file = std::make_unique<Win32SharedFile>(std::move(section), static_cast<SharedHeader*>(header),
                                                std::move(lock_file), path, spec.read_only);
  header_view.release();  // the file owns it now
  file->events()->SetPrefix(Widen("Local\\mapkv-wait-shm-" + name + "-"));
  *out = std::move(file);
  return Status::Ok();
}

Status File::SharedLockPath(const std::string& name, std::string* path) {
  if (Status s = CheckSharedName(name); !s.ok()) return s;
  return LockFilePath(name, /*create_dir=*/false, path);
}

// The lock file goes only while no process has the store open, and no
// opener can come between the check and the removal: the file is opened
// with no sharing, which fails while any handle has it open and makes a
// racing opener's open fail (it retries) until it is gone, and the section
// is looked for while that handle is held.
Status File::RemoveShared(const std::string& name) {
  if (Status s = CheckSharedName(name); !s.ok()) return s;
  const std::string path = "shm:" + name;
  const Status busy(Code::kBusy, path +
                                     ": still open in a process; on Windows a named shared store disappears when the "
                                     "last process that has it open closes it");
  std::string lock_path;
  if (Status s = LockFilePath(name, /*create_dir=*/false, &lock_path); !s.ok()) return s;
  UniqueHandle lock_file(::CreateFileW(Widen(lock_path).c_str(), GENERIC_READ | DELETE, 0, nullptr, OPEN_EXISTING,
                                       FILE_ATTRIBUTE_NORMAL, nullptr));
  const DWORD open_err = lock_file.valid() ? ERROR_SUCCESS : ::GetLastError();
  if (open_err == ERROR_SHARING_VIOLATION) return busy;
  if (open_err != ERROR_SUCCESS && open_err != ERROR_FILE_NOT_FOUND && open_err != ERROR_PATH_NOT_FOUND) {
    return Win32Status(path, "CreateFileW", lock_path + " (GENERIC_READ|DELETE, no sharing)", open_err);
  }
  UniqueHandle section(::OpenFileMappingW(FILE_MAP_READ, FALSE, SectionName(name).c_str()));
  const DWORD section_err = section.valid() ? ERROR_SUCCESS : ::GetLastError();
  if (section_err == ERROR_SUCCESS) return busy;  // a process is still opening it
  if (section_err != ERROR_FILE_NOT_FOUND) {
    return Win32Status(path, "OpenFileMappingW", "to see whether the store is open", section_err);
  }
  if (!lock_file.valid()) return Status(Code::kNotFound, path + ": no such named shared store");
  FILE_DISPOSITION_INFO remove{};
  remove.DeleteFile = TRUE;
  if (!::SetFileInformationByHandle(lock_file.get(), FileDispositionInfo, &remove, sizeof remove)) {
    return Win32Status(path, "SetFileInformationByHandle", "FileDispositionInfo, " + lock_path, ::GetLastError());
  }
  return Status::Ok();  // removed as the handle closes
}

// ---- Free functions -------------------------------------------------------

Status RenameFile(const std::string& from, const std::string& to) {
  if (!::MoveFileExW(Widen(from).c_str(), Widen(to).c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
    return Win32Status(from, "MoveFileExW", "to " + to, ::GetLastError());
  }
  return Status::Ok();
}

Status LinkFile(const std::string& from, const std::string& to) {
  if (!::CreateHardLinkW(Widen(to).c_str(), Widen(from).c_str(), nullptr)) {
    const DWORD err = ::GetLastError();
    if (err == ERROR_ALREADY_EXISTS || err == ERROR_FILE_EXISTS) {
      return Status(Code::kInvalidArgument, to + ": already exists");
    }
    return Win32Status(to, "CreateHardLinkW", "from " + from, err);
  }
  return Status::Ok();
}

Status RemoveFile(const std::string& path) {
  if (!::DeleteFileW(Widen(path).c_str())) return Win32Status(path, "DeleteFileW", "", ::GetLastError());
  return Status::Ok();
}

Status SyncDirectoryOf(const std::string&) { return Status::Ok(); }

Status FileIdentity(const std::string& path, std::array<uint64_t, 2>* id) {
  UniqueHandle h(::CreateFileW(Widen(path).c_str(), 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                               OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, nullptr));
  if (!h.valid()) return Win32Status(path, "CreateFileW", "OPEN_EXISTING", ::GetLastError());
  return Win32File::HandleIdentity(h.get(), path, id);
}

// ---- In-process waits --------------------------------------------------------

// WaitOnAddress works between the threads of one process; WakeByAddressAll
// with no waiter stays in user mode.
void WaitInProcess(std::atomic<uint32_t>* word, uint32_t expected) {
  ::WaitOnAddress(reinterpret_cast<volatile void*>(word), &expected, sizeof(expected), INFINITE);
}
void WakeInProcess(std::atomic<uint32_t>* word) { ::WakeByAddressAll(reinterpret_cast<void*>(word)); }

// ---- Boot id, process ------------------------------------------------------

std::array<uint8_t, 16> BootId() {
  BootIdOverride& override_state = GetBootIdOverride();
  if (override_state.active.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(override_state.mu);
    if (override_state.active.load(std::memory_order_relaxed)) return override_state.id;
  }
  static const std::array<uint8_t, 16> boot_id = ComputeBootId();
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

uint64_t ProcessId() { return static_cast<uint64_t>(::GetCurrentProcessId()); }

// Windows has no fork: the generation never changes.
std::atomic<uint64_t> g_fork_generation{0};

}  // namespace mapkv::internal
