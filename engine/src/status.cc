// status.cc: code names and printing of Status.
#include "mapkv/status.h"

namespace mapkv {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "OK";
    case Code::kNotFound:
      return "NotFound";
    case Code::kInvalidArgument:
      return "InvalidArgument";
    case Code::kCorruption:
      return "Corruption";
    case Code::kVersionTooNew:
      return "VersionTooNew";
    case Code::kIoError:
      return "IoError";
    case Code::kNoSpace:
      return "NoSpace";
    case Code::kPermissionDenied:
      return "PermissionDenied";
    case Code::kBusy:
      return "Busy";
    case Code::kTimedOut:
      return "TimedOut";
    case Code::kWrongType:
      return "WrongType";
    case Code::kOutOfRange:
      return "OutOfRange";
    case Code::kAborted:
      return "Aborted";
    case Code::kNotSupported:
      return "NotSupported";
    case Code::kUnsafeUse:
      return "UnsafeUse";
    case Code::kRescan:
      return "Rescan";
  }
  return "Unknown";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(CodeName(code_));
  if (!message_.empty()) {
    s += ": ";
    s += message_;
  }
  return s;
}

}  // namespace mapkv
