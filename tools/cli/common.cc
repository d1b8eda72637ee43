// common.cc: see common.h.
#include "common.h"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <system_error>
#include <type_traits>

#include "text.h"

namespace mapkv::cli {

void PrintError(std::string_view file, std::string_view message) {
  std::string line = "mapkv: ";
  // An empty FILE (an empty argument) names nothing: no ": " for it.
  const bool named = file.empty() || (message.size() > file.size() && message.substr(0, file.size()) == file &&
                                      message[file.size()] == ':');
  if (!named) {
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

int CloseAfterChange(Store* store, std::string_view file, const std::string& applied) {
  const Status s = store->Close();
  if (s.ok()) return kExitOk;
  Fail(file, s);
  PrintError(file, applied + "; only the close failed");
  return kExitStore;  // whatever the close's code: not 1 ("no such key") or 2
}

int FailOpen(std::string_view file, const Status& status) {
  Fail(file, status);
  return kExitStore;
}

bool CheckKeyArgument(std::string_view file, std::string_view key) {
  if (!key.empty() && key.size() <= kMaxKeySize) return true;
  const std::string limits = " (keys are 1 to " + std::to_string(kMaxKeySize) + " bytes)";
  PrintError(file, key.empty() ? "empty key" + limits : "key of " + std::to_string(key.size()) + " bytes" + limits);
  return false;
}

namespace {

// A path given on the command line (UTF-8 on Windows, see main.cc).
std::filesystem::path PathOf(const std::string& arg) {
#ifdef _WIN32
  return std::filesystem::path(std::u8string(arg.begin(), arg.end()));
#else
  return std::filesystem::path(arg);
#endif
}

}  // namespace

bool IsStoreFile(const std::string& file, const std::string& path) {
  if (file.rfind("shm:", 0) == 0) return false;
  if (file == path) return true;
  std::error_code ec;  // set (and false returned) when either does not exist
  return std::filesystem::equivalent(PathOf(file), PathOf(path), ec) && !ec;
}

std::optional<uint64_t> FileLength(const std::string& file) {
  if (file.rfind("shm:", 0) == 0) return std::nullopt;
  std::error_code ec;
  const uintmax_t n = std::filesystem::file_size(PathOf(file), ec);
  if (ec) return std::nullopt;
  return static_cast<uint64_t>(n);
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

std::string OneLineEach(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) {
    for (char c : item) text.push_back(c == '\n' ? ' ' : c);
    text.push_back('\n');
  }
  return text;
}

bool WriteStdout(std::string_view text) {
  if (std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0) return true;
  PrintError("<stdout>", "write failed: " + ErrnoText(errno));
  return false;
}

bool Output::Flush() {
  if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size()) return false;
  buf_.clear();
  return std::fflush(f_) == 0;
}

namespace {

bool AllDigits(std::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
}

std::string Quoted(std::string_view text) { return "\"" + Escaped(text) + "\""; }

// "" after setting *out to the decimal integer `text`, else what is wrong.
// std::from_chars in base 10 takes no '+', space or base prefix, and a '-'
// only for a signed T; the whole text must be the number.
template <typename T>
std::string ParseDecimal(const std::string& text, const char* what, T* out) {
  const bool negative = std::is_signed_v<T> && !text.empty() && text[0] == '-';
  if (!AllDigits(std::string_view(text).substr(negative ? 1 : 0))) return Quoted(text) + " is not " + what;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), *out);
  if (err == std::errc::result_out_of_range) {
    return Quoted(text) + " is out of range (" + std::to_string(std::numeric_limits<T>::min()) + " to " +
           std::to_string(std::numeric_limits<T>::max()) + ")";
  }
  if (err != std::errc() || end != text.data() + text.size()) return Quoted(text) + " is not " + what;
  return "";
}

std::string ParseSeconds(const std::string& text, double max, double* out) {
  const size_t dot = text.find('.');
  const std::string_view whole = std::string_view(text).substr(0, dot);
  const bool ok = AllDigits(whole) && (dot == std::string::npos || AllDigits(std::string_view(text).substr(dot + 1)));
  const char* const what = " is not a number of seconds (digits, optionally a '.' and more digits)";
  if (!ok) return Quoted(text) + what;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), *out, std::chars_format::fixed);
  if (end != text.data() + text.size()) return Quoted(text) + what;
  if (err == std::errc::result_out_of_range) {
    // Too small for a double is a zero timeout; too large is past `max`.
    *out = whole.find_first_not_of('0') == std::string_view::npos ? 0.0 : max * 2 + 1;
  } else if (err != std::errc()) {
    return Quoted(text) + what;
  }
  if (*out > max) {
    char limit[32];
    std::snprintf(limit, sizeof limit, "%.0f", max);
    return Quoted(text) + " is out of range (0 to " + limit + " seconds)";
  }
  return "";
}

// Adds `name` as a string argument that `parse(text, &v)` converts into
// *value, or rejects with a message (thrown as CLI11's ValidationError,
// which main.cc reports as a usage error).
template <typename T, typename Parse>
CLI::Option* AddParsed(CLI::App* app, const std::string& name, T* value, Parse parse, const std::string& description) {
  return app->add_option_function<std::string>(
      name,
      [name, value, parse](const std::string& text) {
        T v{};
        const std::string problem = parse(text, &v);
        if (!problem.empty()) throw CLI::ValidationError(name, problem);
        *value = v;
      },
      description);
}

}  // namespace

CLI::Option* AddCountArgument(CLI::App* app, const std::string& name, uint64_t* value, const std::string& description) {
  auto parse = [](const std::string& text, uint64_t* v) { return ParseDecimal(text, "a whole number in decimal", v); };
  return AddParsed(app, name, value, parse, description)->type_name("N");
}

CLI::Option* AddIntegerArgument(CLI::App* app, const std::string& name, int64_t* value,
                                const std::string& description) {
  auto parse = [](const std::string& text, int64_t* v) { return ParseDecimal(text, "an integer in decimal", v); };
  return AddParsed(app, name, value, parse, description)->type_name("INT");
}

CLI::Option* AddSecondsArgument(CLI::App* app, const std::string& name, double* value, double max,
                                const std::string& description) {
  auto parse = [max](const std::string& text, double* v) { return ParseSeconds(text, max, v); };
  return AddParsed(app, name, value, parse, description)->type_name("SECONDS");
}

std::string ErrnoText(int err) { return std::strerror(err); }

CLI::Validator NotEmpty(const std::string& name, const std::string& want) {
  return CLI::Validator(
      [name, want](std::string& value) { return value.empty() ? name + " is empty: give " + want : std::string(); }, "",
      "NotEmpty");
}

}  // namespace mapkv::cli
