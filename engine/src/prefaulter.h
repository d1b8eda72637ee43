// prefaulter.h: sets pages of a mapping up for writing on a thread of its
// own, ahead of the writer that will write them.
//
// The first write to a page of a shared file mapping takes a fault that maps
// that one 4 KiB page, and the kernel's work behind it (a page-cache page,
// zero-filled, and the file system's page_mkwrite) is most of the system
// time of a put that writes into new pages. Heap::Allocate keeps asking for
// the 256 KiB after its last allocation; this class does the work
// (Mapping::Prefault) on another core, so that it leaves the put's path.
// Prefaulting changes no byte of the file, so a request that comes late, is
// replaced by a newer one before it starts, or fails costs only the faults
// the writer then takes itself.
//
// The thread starts at the first request and ends with the object. A forked
// child has the object but not the thread: it asks the thread for nothing and
// does not wait for it.
#ifndef MAPKV_PREFAULTER_H_
#define MAPKV_PREFAULTER_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "platform/platform.h"

namespace mapkv::internal {

class Prefaulter {
 public:
  Prefaulter() = default;
  Prefaulter(const Prefaulter&) = delete;
  Prefaulter& operator=(const Prefaulter&) = delete;
  ~Prefaulter();  // waits for the prefault running, if any

  // Asks for [offset, offset + length) of `mapping` to be set up for
  // writing. `mapping` must outlive this object and say CanPrefault(). A
  // request that has not started yet is replaced. Called by one thread at a
  // time (the writer's).
  void Request(Mapping* mapping, uint64_t offset, uint64_t length);

  // For tests: the thread is running and waits for a request.
  bool WaitingForTesting() const;

 private:
  // What the thread and the requests share. On the heap, so that a forked
  // child can leave it as the fork copied it (see the destructor).
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    Mapping* mapping = nullptr;  // the pending request; nullptr: none
    uint64_t offset = 0;
    uint64_t length = 0;
    bool stop = false;
    bool waiting = false;  // the thread is in cv.wait (WaitingForTesting)
  };
  static void Run(Shared* shared);

  std::unique_ptr<Shared> shared_ = std::make_unique<Shared>();
  std::thread thread_;
  uint64_t fork_generation_ = 0;  // of the process that started thread_
  bool no_thread_ = false;        // the thread could not be started: requests do nothing
};

}  // namespace mapkv::internal

#endif  // MAPKV_PREFAULTER_H_
