// prefaulter.cc: the prefault thread (prefaulter.h).
#include "prefaulter.h"

#include <system_error>
#include <utility>

namespace mapkv::internal {

Prefaulter::~Prefaulter() {
  if (!thread_.joinable()) return;
  if (ForkGeneration() != fork_generation_) {
    // A forked child: the parent's thread is not here, but its mutex and
    // condition variable were copied as it left them.
    KeepForkedCopy(
        std::make_shared<std::pair<std::unique_ptr<Shared>, std::thread>>(std::move(shared_), std::move(thread_)));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->stop = true;
  }
  shared_->cv.notify_one();
  thread_.join();
}

void Prefaulter::Request(Mapping* mapping, uint64_t offset, uint64_t length) {
  if (no_thread_ || (thread_.joinable() && ForkGeneration() != fork_generation_)) return;
  Shared& shared = *shared_;
  {
    std::lock_guard<std::mutex> lock(shared.mu);
    shared.mapping = mapping;
    shared.offset = offset;
    shared.length = length;
    if (!thread_.joinable()) {
      fork_generation_ = ForkGeneration();
      try {
        thread_ = std::thread(Run, &shared);
      } catch (...) {
        // No thread to be had (a process or memory limit): the writer takes
        // its page faults as it would without prefaulting.
        no_thread_ = true;
        shared.mapping = nullptr;
        return;
      }
    }
  }
  shared.cv.notify_one();
}

bool Prefaulter::WaitingForTesting() const {
  if (!thread_.joinable()) return false;
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->waiting;
}

void Prefaulter::Run(Shared* shared) {
  std::unique_lock<std::mutex> lock(shared->mu);
  for (;;) {
    shared->waiting = true;
    shared->cv.wait(lock, [shared] { return shared->stop || shared->mapping != nullptr; });
    shared->waiting = false;
    if (shared->stop) return;
    Mapping* const mapping = shared->mapping;
    const uint64_t offset = shared->offset;
    const uint64_t length = shared->length;
    shared->mapping = nullptr;
    lock.unlock();
    mapping->Prefault(offset, length);
    lock.lock();
  }
}

}  // namespace mapkv::internal
