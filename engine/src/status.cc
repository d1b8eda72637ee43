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

Status::Status(Code code, std::string message)
    : rep_(code == Code::kOk ? nullptr : new Rep{code, false, std::move(message)}) {}

Status::Rep* Status::Clone(const Rep* rep) { return new Rep{rep->code, false, rep->message}; }

void Status::Delete(Rep* rep) noexcept { delete rep; }

Status Status::KeyNotFound() noexcept {
  static const Rep kRep{Code::kNotFound, true, "key not found"};
  Status s;
  s.rep_ = const_cast<Rep*>(&kRep);
  return s;
}

const std::string& Status::message() const noexcept {
  static const std::string kEmpty;
  return rep_ == nullptr ? kEmpty : rep_->message;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(CodeName(rep_->code));
  if (!rep_->message.empty()) {
    s += ": ";
    s += rep_->message;
  }
  return s;
}

}  // namespace mapkv
