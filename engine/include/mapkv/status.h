// mapkv/status.h: the one error type of the library.
//
// Every fallible call returns a Status (or fills an out-parameter and returns
// a Status). The engine throws nothing of its own; callers who prefer
// exceptions wrap calls in OrThrow(). Only memory running out reaches the
// caller as std::bad_alloc (from a container or a message the engine builds);
// a write it interrupts is undone first and the lock is given back. See
// docs/DESIGN.md for what is not covered yet.
//
// A Status carries a stable Code (safe to switch on; the CLI maps it to an
// exit code, several codes to one) and a one-line message that names the
// file and the step that failed, e.g.
//   "/var/lib/app/state.mkv: not a mapkv store (no meta page has the mapkv magic)"
#ifndef MAPKV_STATUS_H_
#define MAPKV_STATUS_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace mapkv {

// The codes, each listed once. Functions say which ones they return.
enum class Code : uint8_t {
  kOk = 0,
  kNotFound,          // the key (or file, for open without create) does not exist
  kInvalidArgument,   // bad argument: empty key, key over 64 KiB, value over 1 GiB, a closed handle...
  kCorruption,        // the file is not a valid store, or a structure/checksum check failed
  kVersionTooNew,     // the file's format major version is newer than this library's
  kIoError,           // an operating-system call failed (the message names it and errno text)
  kNoSpace,           // the disk is full or a file-size limit was reached; nothing was changed
  kPermissionDenied,  // the OS refused access, or a write on a read-only handle
  kBusy,              // a lock was not granted within the open's lock timeout
  kTimedOut,          // a wait (WaitForChange) ended without the event
  kWrongType,         // a typed get/increment found a value of the wrong size
  kOutOfRange,        // an increment would overflow; nothing was changed
  kAborted,           // a compare-and-swap saw another value
  kNotSupported,      // the operation is not available for this store or platform
  kUnsafeUse,         // misuse the library refuses: a handle used after fork, etc.
  kRescan,            // a watcher fell behind the change ring; rescan the store
};

// Returns the code's stable name, e.g. "Corruption".
std::string_view CodeName(Code code);

// One pointer wide: OK is a null pointer, so the common path of every call
// (build, move, test, destroy an OK status) costs a register, not a string.
// An error owns its code and message on the heap, except the statuses of
// static storage (KeyNotFound), which are shared and never freed.
class [[nodiscard]] Status {
 public:
  Status() noexcept = default;  // OK
  Status(Code code, std::string message);
  Status(const Status& other) : rep_(other.rep_ == nullptr || other.rep_->is_static ? other.rep_ : Clone(other.rep_)) {}
  Status(Status&& other) noexcept : rep_(other.rep_) { other.rep_ = nullptr; }
  Status& operator=(const Status& other) {
    if (this != &other) *this = Status(other);
    return *this;
  }
  Status& operator=(Status&& other) noexcept {
    std::swap(rep_, other.rep_);
    return *this;
  }
  ~Status() {
    if (rep_ != nullptr && !rep_->is_static) Delete(rep_);
  }

  static Status Ok() noexcept { return Status(); }
  // kNotFound, "key not found": what a lookup of a missing key returns. It
  // allocates nothing (a miss is an ordinary outcome, not a failure).
  static Status KeyNotFound() noexcept;

  bool ok() const noexcept { return rep_ == nullptr; }
  Code code() const noexcept { return rep_ == nullptr ? Code::kOk : rep_->code; }
  // Empty for OK.
  const std::string& message() const noexcept;

  bool IsNotFound() const noexcept { return code() == Code::kNotFound; }
  bool IsCorruption() const noexcept { return code() == Code::kCorruption; }

  // "Corruption: <message>" or "OK".
  std::string ToString() const;

  // Keeps the first error: `s |= Cleanup();` records Cleanup's failure only
  // when s was OK, so the root cause is not hidden by a later error.
  Status& operator|=(Status other) {
    if (ok() && !other.ok()) *this = std::move(other);
    return *this;
  }

  // Explicitly drops a status whose failure cannot be acted on.
  void IgnoreError() const {}

 private:
  struct Rep {
    Code code;
    bool is_static;
    std::string message;
  };
  static Rep* Clone(const Rep* rep);
  static void Delete(Rep* rep) noexcept;

  Rep* rep_ = nullptr;
};

// Thrown by OrThrow for callers who want exceptions.
class Error : public std::runtime_error {
 public:
  explicit Error(Status status) : std::runtime_error(status.ToString()), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

// Throws mapkv::Error when `status` is not OK.
inline void OrThrow(Status status) {
  if (!status.ok()) throw Error(std::move(status));
}

}  // namespace mapkv

#endif  // MAPKV_STATUS_H_
