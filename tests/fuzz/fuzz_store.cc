// fuzz_store.cc: see fuzz_store.h.
#include "fuzz_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>

#include "format.h"
#include "mapkv/store.h"
#include "platform/platform.h"

namespace mapkv::fuzz {
namespace {

bool WriteWhole(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return done == size;
}

// Keys the seed corpus uses ("key<i>"), and one that is never there.
constexpr const char* kProbeKeys[] = {"key0", "key1", "key7", "key42", "key199", "key1999", "absent-key"};

// Reads everything reachable; returns how many bytes of keys and values were seen.
uint64_t ReadAll(const Store& store) {
  uint64_t seen = 0;
  std::string v;
  for (const char* k : kProbeKeys) {
    if (store.Get(k, &v).ok()) seen += v.size();
    bool found = false;
    store.Contains(k, &found).IgnoreError();
  }
  uint64_t visits = 0;
  store
      .ForEach({},
               [&](std::string_view key, std::string_view value) {
                 // Touch the first and last byte of each view: an out-of-bounds
                 // view faults here (or is reported by AddressSanitizer).
                 if (!key.empty()) seen += static_cast<uint8_t>(key.front()) + static_cast<uint8_t>(key.back());
                 if (!value.empty()) seen += static_cast<uint8_t>(value.front()) + static_cast<uint8_t>(value.back());
                 return ++visits < 100000;
               })
      .IgnoreError();
  store.ForEach("key1", [&](std::string_view, std::string_view value) { return (seen += value.size()) != 0; })
      .IgnoreError();
  ReadGuard guard;
  if (guard.Lock(store).ok()) {
    std::string_view view;
    if (guard.Get("key1", &view).ok() && !view.empty()) seen += static_cast<uint8_t>(view.back());
  }
  guard.Unlock();
  Stats stats;
  store.GetStats(&stats).IgnoreError();
  return seen + stats.entries;
}

// Check; true when it ran and found nothing.
bool Sound(const Store& store) {
  CheckReport report;
  return store.Check(&report).ok() && report.ok();
}

Options FuzzOptions(bool read_only) {
  Options o;
  o.create_if_missing = false;
  o.read_only = read_only;
  // A damaged control page may claim a lock holder or waiters; never wait long.
  o.lock_timeout = std::chrono::milliseconds(20);
  return o;
}

void RunOne(const std::string& path, FuzzResult* result) {
  volatile uint64_t sink = 0;
  {
    Store store;
    if (Store::Open(path, FuzzOptions(true), &store).ok()) {
      ++result->opened_read_only;
      sink = sink + ReadAll(store);
      if (Sound(store)) ++result->checked_sound;
      store.Close().IgnoreError();
    }
  }
  Store store;
  if (!Store::Open(path, FuzzOptions(false), &store).ok()) return;
  ++result->opened_writable;
  sink = sink + ReadAll(store);
  const bool sound = Sound(store);
  if (sound) ++result->checked_sound;
  // Writes. On a store Check called sound, each write that returns OK must be
  // readable at once, and the store must stay sound.
  bool wrote = true;
  auto put = [&](const std::string& k, const std::string& v) {
    if (!store.Put(k, v).ok()) {
      wrote = false;
      return;
    }
    std::string got;
    if (sound && result->violation.empty() && (!store.Get(k, &got).ok() || got != v)) {
      result->violation = "a Put of " + k + " returned OK on a sound store but Get does not return its value";
    }
  };
  put("fuzz:a", "first value");
  put("key1", std::string(300, 'x'));
  put("fuzz:big", std::string(70000, 'b'));
  Status erased = store.Erase("key7");
  wrote &= erased.ok() || erased.IsNotFound();
  WriteBatch batch;
  for (int i = 0; i < 40; ++i)
    batch.Put("fuzz:batch" + std::to_string(i), std::string(static_cast<size_t>(i * 3), 'c'));
  batch.Erase("key0");
  wrote &= store.Write(batch).ok();
  wrote &= store.Erase("fuzz:big").ok();
  wrote &= store.Compact().ok();
  put("fuzz:after-compact", "z");
  wrote &= store.Flush(FlushMode::kSync).ok();
  sink = sink + ReadAll(store);
  if (sound && wrote && result->violation.empty()) {
    CheckReport report;
    if (!store.Check(&report).ok() || !report.ok()) {
      result->violation = "Check found problems after the library's own writes to a store it had called sound: " +
                          (report.problems.empty() ? std::string("(check failed)") : report.problems[0]);
    } else {
      std::string got;
      if (!store.Get("fuzz:a", &got).ok() || got != "first value" || !store.Get("fuzz:batch39", &got).ok() ||
          got.size() != 117 || store.Get("key0", &got).code() != Code::kNotFound) {
        result->violation = "writes acknowledged on a sound store are not all readable after Compact and Flush";
      }
    }
  }
  store.Close().IgnoreError();
}

}  // namespace

FuzzResult RunStoreBytes(const uint8_t* data, size_t size, const std::string& path) {
  FuzzResult result;
  if (WriteWhole(path, data, size)) RunOne(path, &result);
  // The same bytes with the control page stamped as written in this boot, so
  // the engine trusts it (and its undo log) instead of rebuilding it.
  constexpr size_t kBootAt = internal::format::kControlOffset + offsetof(internal::format::ControlPage, boot_id);
  if (size >= kBootAt + 16) {
    std::string copy(reinterpret_cast<const char*>(data), size);
    const std::array<uint8_t, 16> boot = internal::BootId();
    std::memcpy(copy.data() + kBootAt, boot.data(), boot.size());
    if (WriteWhole(path, reinterpret_cast<const uint8_t*>(copy.data()), copy.size())) RunOne(path, &result);
  }
  ::unlink(path.c_str());
  return result;
}

}  // namespace mapkv::fuzz
