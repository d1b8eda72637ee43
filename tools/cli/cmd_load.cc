// cmd_load.cc: `mapkv load FILE [INPUT]`.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0  // Windows: handles are not inherited unless asked
#endif
#ifndef O_BINARY
#define O_BINARY 0  // POSIX: no text mode
#endif

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "commands.h"
#include "json_lines.h"

namespace mapkv::cli {
namespace {

struct LoadOptions {
  std::string file;
  std::string input;  // empty or "-": standard input
};

// Splits a file descriptor into lines, each followed in memory by at least
// kJsonLinePadding readable bytes (for simdjson), without copying them.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) { Allocate(kInitialCapacity); }

  // Sets *line to the next line without its '\n' and returns true; returns
  // false at the end of input or on a read error (then error() != 0).
  bool Next(std::string_view* line) {
    for (;;) {
      if (scan_ < end_) {
        const void* nl = std::memchr(buf_.get() + scan_, '\n', end_ - scan_);
        if (nl != nullptr) {
          const size_t at = static_cast<size_t>(static_cast<const char*>(nl) - buf_.get());
          *line = std::string_view(buf_.get() + begin_, at - begin_);
          consumed_ += at + 1 - begin_;
          begin_ = scan_ = at + 1;
          return true;
        }
        scan_ = end_;
      }
      if (eof_) {
        if (begin_ == end_) return false;
        *line = std::string_view(buf_.get() + begin_, end_ - begin_);  // last line, no '\n'
        consumed_ += end_ - begin_;
        begin_ = scan_ = end_;
        return true;
      }
      if (begin_ > 0) {  // keep only the partial line, at the front
        std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
        end_ -= begin_;
        scan_ -= begin_;
        begin_ = 0;
      }
      if (end_ == capacity_) {           // one line fills the buffer: grow it
        if (capacity_ > kMaxJsonLine) {  // no JSON parser here reads it
          too_long_ = true;
          return false;
        }
        std::unique_ptr<char[]> old = std::move(buf_);
        Allocate(capacity_ * 2);
        std::memcpy(buf_.get(), old.get(), end_);
      }
      // At most 1 GiB a call: the Windows CRT refuses counts past INT_MAX.
      const ssize_t n = ::read(fd_, buf_.get() + end_, std::min<size_t>(capacity_ - end_, size_t{1} << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      if (n == 0) eof_ = true;
      end_ += static_cast<size_t>(n);
    }
  }
  int error() const { return error_; }
  // Next returned false at a line longer than kMaxJsonLine bytes.
  bool too_long() const { return too_long_; }
  uint64_t consumed() const { return consumed_; }  // bytes of the lines returned so far

 private:
  static constexpr size_t kInitialCapacity = 4 << 20;
  void Allocate(size_t capacity) {
    capacity_ = capacity;
    buf_ = std::make_unique<char[]>(capacity + kJsonLinePadding);
  }

  int fd_;
  std::unique_ptr<char[]> buf_;
  size_t capacity_ = 0;
  size_t begin_ = 0;  // start of the next line
  size_t scan_ = 0;   // searched for '\n' up to here
  size_t end_ = 0;    // bytes read
  bool eof_ = false;
  bool too_long_ = false;
  int error_ = 0;
  uint64_t consumed_ = 0;
};

// A progress bar with rate and ETA on standard error, drawn only when it is
// a terminal: at the first update, then at most 10 times a second.
class Progress {
 public:
  explicit Progress(uint64_t total_bytes) : enabled_(isatty(STDERR_FILENO) != 0), total_(total_bytes) {}
  void Update(uint64_t pairs, uint64_t bytes) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? static_cast<double>(pairs) / secs : 0;
    char line[200];
    if (total_ > 0) {
      const double frac = std::min(1.0, static_cast<double>(bytes) / static_cast<double>(total_));
      const int filled = static_cast<int>(frac * 30);
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(30, '.');
      const double eta = frac > 0 ? secs * (1 - frac) / frac : 0;
      std::snprintf(line, sizeof line, "\r[%s] %3.0f%%  %llu pairs  %.0f pairs/s  ETA %.0fs\033[K", bar.c_str(),
                    frac * 100, static_cast<unsigned long long>(pairs), rate, eta);
    } else {
      std::snprintf(line, sizeof line, "\r%llu pairs  %.0f pairs/s\033[K", static_cast<unsigned long long>(pairs),
                    rate);
    }
    std::fputs(line, stderr);
    drawn_ = true;
  }
  void Finish() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_;
  bool drawn_ = false;
  uint64_t total_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_ = start_ - std::chrono::seconds(1);
};

// Pairs waiting to be written, written as WriteBatch chunks of chunk() pairs,
// or fewer when their bytes reach kChunkBytes (large values).
class Loader {
 public:
  explicit Loader(Store* store) : store_(store) {}
  // Time to write the pairs held.
  bool Full() const { return pairs_.size() >= chunk_ || arena_.size() >= kChunkBytes; }
  uint64_t loaded() const { return loaded_; }

  void Add(std::string_view key, std::string_view value) {
    pairs_.push_back({arena_.size(), static_cast<uint32_t>(key.size()), value.size()});
    arena_.append(key);
    arena_.append(value);
  }

  Status Flush() {
    Status s = WriteRange(0, pairs_.size());
    pairs_.clear();
    arena_.clear();
    return s;
  }

 private:
  struct Pair {
    size_t offset;
    uint32_t key_size;
    size_t value_size;
  };
  std::string_view Key(const Pair& p) const { return std::string_view(arena_.data() + p.offset, p.key_size); }
  std::string_view Value(const Pair& p) const {
    return std::string_view(arena_.data() + p.offset + p.key_size, p.value_size);
  }

  Status WriteRange(size_t lo, size_t hi) {
    if (lo == hi) return Status::Ok();
    batch_.Clear();
    for (size_t i = lo; i < hi; ++i) batch_.Put(Key(pairs_[i]), Value(pairs_[i]));
    Status s = store_->Write(batch_);
    if (s.ok()) loaded_ += hi - lo;
    return s;
  }

  Store* store_;
  std::string arena_;
  std::vector<Pair> pairs_;
  WriteBatch batch_;
  size_t chunk_ = 512;  // pairs per batch: amortizes the lock
  // Bytes per batch: bounds the memory held (the pairs, and their copy in the
  // batch) when values are large.
  static constexpr size_t kChunkBytes = size_t{64} << 20;
  uint64_t loaded_ = 0;
};

bool IsBlank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

int RunLoad(const LoadOptions& o) {
  const bool from_stdin = o.input.empty() || o.input == "-";
  const std::string input_name = from_stdin ? "<stdin>" : o.input;
  if (!from_stdin && IsStoreFile(o.file, o.input)) {
    PrintError(o.input, "the input is the store file " + o.file + " itself (load reads JSON Lines)");
    return kExitUsage;
  }
  int fd = STDIN_FILENO;
  if (!from_stdin) {
    fd = ::open(o.input.c_str(), O_RDONLY | O_BINARY | O_CLOEXEC);
    if (fd < 0) {
      PrintError(o.input, "cannot open: " + ErrnoText(errno));
      return kExitStore;
    }
  }
  struct FdCloser {
    int fd;
    ~FdCloser() {
      if (fd != STDIN_FILENO) ::close(fd);
    }
  } closer{fd};
  struct stat st {};
  uint64_t total = 0;
  if (::fstat(fd, &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      PrintError(input_name, "is a directory");
      return kExitStore;
    }
    if (S_ISREG(st.st_mode)) total = static_cast<uint64_t>(st.st_size);
  }

  // The store is opened (and created if missing) once the first pair has
  // parsed, or at the end of an input that holds none: input malformed from
  // its first line, or that cannot be read, creates or changes nothing.
  Store store;
  Status s;
  LineReader reader(fd);
  JsonLineParser parser;
  Loader loader(&store);
  Progress progress(total);
  std::string_view line, key, value;
  std::string error;
  uint64_t line_no = 0;
  int rc = kExitOk;
  while (reader.Next(&line)) {
    ++line_no;
    if (IsBlank(line)) continue;
    if (!parser.Parse(line, &key, &value, &error)) {
      s = loader.Flush();  // the lines before it stay loaded
      progress.Finish();
      if (!s.ok()) {
        rc = Fail(o.file, s);
      } else {
        PrintError(input_name + ":" + std::to_string(line_no), error);
        rc = kExitUsage;
      }
      break;
    }
    if (!store.is_open()) {
      s = OpenWritable(o.file, /*create=*/true, &store);
      if (!s.ok()) {
        progress.Finish();
        return FailOpen(o.file, s);
      }
    }
    loader.Add(key, value);
    if (loader.Full()) {
      s = loader.Flush();
      if (!s.ok()) {
        progress.Finish();
        rc = Fail(o.file, s);
        break;
      }
      progress.Update(loader.loaded(), reader.consumed());
    }
  }
  if (rc == kExitOk) {
    if (reader.too_long()) {
      s = loader.Flush();  // the lines before it stay loaded
      progress.Finish();
      if (!s.ok()) {
        rc = Fail(o.file, s);
      } else {
        PrintError(input_name + ":" + std::to_string(line_no + 1),
                   "longer than " + std::to_string(kMaxJsonLine) +
                       " bytes, the most a line may have (no line that dump writes is)");
        rc = kExitUsage;
      }
    } else if (reader.error() != 0) {
      s = loader.Flush();
      progress.Finish();
      PrintError(input_name, "read failed after line " + std::to_string(line_no) + ": " + ErrnoText(reader.error()));
      rc = kExitStore;
    } else {
      s = loader.Flush();
      progress.Finish();
      if (!s.ok()) rc = Fail(o.file, s);
    }
  }
  if (rc == kExitOk && !store.is_open()) {  // no pair: the store is still created
    s = OpenWritable(o.file, /*create=*/true, &store);
    if (!s.ok()) return FailOpen(o.file, s);
  }
  s = store.Close();
  if (!s.ok() && rc == kExitOk) rc = Fail(o.file, s);
  if (!WriteStdout("loaded " + std::to_string(loader.loaded()) + " pairs\n") && rc == kExitOk) rc = kExitStore;
  return rc;
}

}  // namespace

Command SetupLoad(CLI::App& app) {
  auto o = std::make_shared<LoadOptions>();
  CLI::App* sub = app.add_subcommand(
      "load",
      "Load JSON Lines (the format of `mapkv dump`) from INPUT or standard input into FILE, which is created if "
      "missing; existing keys are replaced. Each line is one object with \"key\" or \"key_base64\" and \"value\" "
      "or \"value_base64\" (strings; no other field); blank lines are skipped. A malformed line is reported as "
      "INPUT:LINE: what is wrong, with exit code 2; the lines before it stay loaded and nothing after it is (when it "
      "is the first non-blank line, FILE is neither created nor changed). Prints \"loaded N pairs\"; shows progress "
      "on standard error when it is a terminal.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_option("INPUT", o->input, "JSON Lines file (default or '-': standard input)")
      ->check(NotEmpty("INPUT", "a file name, or - (or nothing) for standard input"));
  return {sub, [o] { return RunLoad(*o); }};
}

}  // namespace mapkv::cli
