// lock.cc: in-process and cross-process locks of a handle. See lock.h.
#include "lock.h"

#include <algorithm>
#include <string>
#include <thread>

namespace mapkv::internal {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto kRecheck = std::chrono::milliseconds(5);     // a dead holder never wakes us
constexpr auto kReaderHoldBack = std::chrono::milliseconds(50);
}  // namespace

// ---------------------------------------------------------------- RwLock

void RwLock::Lock() {
  std::unique_lock<std::mutex> lock(mu_);
  ++writers_waiting_;
  cv_.wait(lock, [&] { return !writer_ && readers_ == 0; });
  --writers_waiting_;
  writer_ = true;
}

void RwLock::Unlock() {
  std::lock_guard<std::mutex> lock(mu_);
  writer_ = false;
  cv_.notify_all();
}

void RwLock::LockShared() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !writer_ && writers_waiting_ == 0; });
  ++readers_;
}

bool RwLock::TryLockShared() {
  std::lock_guard<std::mutex> lock(mu_);
  if (writer_ || writers_waiting_ > 0) return false;
  ++readers_;
  return true;
}

void RwLock::UnlockShared() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--readers_ == 0) cv_.notify_all();
}

// ---------------------------------------------------------------- LockManager

Status LockManager::BusyError(LockMode mode) const {
  std::string holder;
  if (ctl_ != nullptr) {
    uint64_t pid = ctl_->writer_pid.load(std::memory_order_relaxed);
    holder = pid != 0 ? " by process " + std::to_string(pid) + " (writer)" : " by readers";
  }
  return Status(Code::kBusy, file_->path() + ": " + (mode == LockMode::kExclusive ? "write" : "read") +
                                 " lock not granted within " + std::to_string(timeout_.count()) +
                                 " ms; the store is held" + holder);
}

Status LockManager::AcquireFile(LockMode mode) {
  bool acquired = false;
  Status s = file_->TryLock(kRwLockByte, 1, mode, &acquired);
  if (!s.ok() || acquired) return s;

  const auto deadline = Clock::now() + timeout_;
  const bool counters = ctl_ != nullptr && ctl_writable_;
  if (counters) {
    ctl_->lock_waiters.fetch_add(1, std::memory_order_acq_rel);
    if (mode == LockMode::kExclusive) ctl_->writers_waiting.fetch_add(1, std::memory_order_acq_rel);
  }
  while (true) {
    uint32_t seen = ctl_ != nullptr ? ctl_->lock_released.load(std::memory_order_acquire) : 0;
    s = file_->TryLock(kRwLockByte, 1, mode, &acquired);
    if (!s.ok() || acquired) break;
    auto now = Clock::now();
    if (now >= deadline) {
      s = BusyError(mode);
      break;
    }
    auto wait = std::min<Clock::duration>(deadline - now, kRecheck);
    if (ctl_ != nullptr) {
      WaitWord(&ctl_->lock_released, seen, std::chrono::duration_cast<std::chrono::microseconds>(wait));
    } else {
      std::this_thread::sleep_for(std::min<Clock::duration>(wait, std::chrono::milliseconds(1)));
    }
  }
  if (counters) {
    if (mode == LockMode::kExclusive) ctl_->writers_waiting.fetch_sub(1, std::memory_order_acq_rel);
    ctl_->lock_waiters.fetch_sub(1, std::memory_order_acq_rel);
  }
  return s;
}

void LockManager::ReleaseFile() {
  file_->Unlock(kRwLockByte, 1).IgnoreError();  // fails only for a closed descriptor
  if (ctl_ != nullptr && ctl_writable_) {
    ctl_->lock_released.fetch_add(1, std::memory_order_acq_rel);
    if (ctl_->lock_waiters.load(std::memory_order_acquire) > 0) WakeWord(&ctl_->lock_released);
  }
}

Status LockManager::LockWrite() {
  rw_.Lock();
  Status s = AcquireFile(LockMode::kExclusive);
  if (!s.ok()) {
    rw_.Unlock();
    return s;
  }
  if (ctl_ != nullptr && ctl_writable_) ctl_->writer_pid.store(ProcessId(), std::memory_order_relaxed);
  return Status::Ok();
}

void LockManager::UnlockWrite() {
  if (ctl_ != nullptr && ctl_writable_) ctl_->writer_pid.store(0, std::memory_order_relaxed);
  ReleaseFile();
  rw_.Unlock();
}

Status LockManager::LockRead() {
  rw_.LockShared();
  std::lock_guard<std::mutex> lock(file_mu_);
  if (shared_holders_ == 0) {
    // Let a waiting writer of another process go first, for a bounded time.
    if (ctl_ != nullptr) {
      const auto until = Clock::now() + kReaderHoldBack;
      while (ctl_->writers_waiting.load(std::memory_order_acquire) > 0 && Clock::now() < until) {
        uint32_t seen = ctl_->lock_released.load(std::memory_order_acquire);
        WaitWord(&ctl_->lock_released, seen, std::chrono::milliseconds(1));
      }
    }
    Status s = AcquireFile(LockMode::kShared);
    if (!s.ok()) {
      rw_.UnlockShared();
      return s;
    }
  }
  ++shared_holders_;
  return Status::Ok();
}

bool LockManager::TryLockRead() {
  if (!rw_.TryLockShared()) return false;
  std::lock_guard<std::mutex> lock(file_mu_);
  if (shared_holders_ == 0) {
    bool acquired = false;
    if (!file_->TryLock(kRwLockByte, 1, LockMode::kShared, &acquired).ok() || !acquired) {
      rw_.UnlockShared();
      return false;
    }
  }
  ++shared_holders_;
  return true;
}

void LockManager::UnlockRead() {
  {
    std::lock_guard<std::mutex> lock(file_mu_);
    if (--shared_holders_ == 0) ReleaseFile();
  }
  rw_.UnlockShared();
}

Status LockManager::JoinPresence() {
  const auto deadline = Clock::now() + timeout_;
  while (true) {
    bool acquired = false;
    Status s = file_->TryLock(kPresenceByte, 1, LockMode::kShared, &acquired);
    if (!s.ok() || acquired) return s;
    if (Clock::now() >= deadline) {
      return Status(Code::kBusy, file_->path() + ": another handle is closing the store and did not finish within " +
                                     std::to_string(timeout_.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool LockManager::TryBecomeAlone() {
  bool acquired = false;
  return file_->TryLock(kPresenceByte, 1, LockMode::kExclusive, &acquired).ok() && acquired;
}

void LockManager::EndAlone() {
  bool acquired = false;
  file_->TryLock(kPresenceByte, 1, LockMode::kShared, &acquired).IgnoreError();  // a downgrade cannot conflict
}

}  // namespace mapkv::internal
