// common.cc: see common.h.
#include "common.h"

#include <cstring>

namespace mapkv::cli {

void PrintError(std::string_view file, std::string_view message) {
  std::string line = "mapkv: ";
  if (message.find(file) == std::string_view::npos) {
    line.append(file);
    line.append(": ");
  }
  for (char c : message) line.push_back(c == '\n' || c == '\r' ? ' ' : c);
  line.push_back('\n');
  std::fflush(stdout);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

int Fail(std::string_view file, const Status& status) {
  PrintError(file, status.message().empty() ? std::string(CodeName(status.code())) : status.message());
  return ExitCodeFor(status.code());
}

int FailOpen(std::string_view file, const Status& status) {
  Fail(file, status);
  return kExitStore;
}

Status OpenReadOnly(const std::string& file, Store* store) {
  Options options;
  options.read_only = true;
  options.create_if_missing = false;
  options.verify_checksums = true;  // a person reading a value wants to know it is intact
  return Store::Open(file, options, store);
}

Status OpenWritable(const std::string& file, bool create, Store* store) {
  Options options;
  options.create_if_missing = create;
  return Store::Open(file, options, store);
}

bool Output::Flush() {
  if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size()) return false;
  buf_.clear();
  return std::fflush(f_) == 0;
}

std::string CheckCount(std::string& text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    return "\"" + text + "\" is not a whole number >= 0";
  }
  return "";
}

std::string ErrnoText(int err) { return std::strerror(err); }

}  // namespace mapkv::cli
