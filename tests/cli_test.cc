// cli_test.cc: the `mapkv` command-line tool (tools/cli), run as the built
// binary (MAPKV_CLI_PATH) with pipes (or a pseudo-terminal) on its standard
// streams: every command and exit code, binary values through standard input,
// the dump/load round trip, malformed load input, bad files, and that the
// read-only commands never change a store's bytes.
#include <sys/stat.h>
#include <sys/types.h>
#ifndef _WIN32
#include <unistd.h>
#endif

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "format.h"
#include "mapkv/store.h"
#include "store_test_helpers.h"

#ifndef MAPKV_CLI_PATH
#error "MAPKV_CLI_PATH (the built mapkv binary) must be defined by the build"
#endif
#ifndef MAPKV_SAMPLE_PATH
#error "MAPKV_SAMPLE_PATH (data/sample.jsonl) must be defined by the build"
#endif

namespace mapkv::test {
namespace {

#ifndef _WIN32
int ThisProcessId() { return static_cast<int>(::getpid()); }
#endif

size_t CountLines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }

// An error as the CLI must report it: exactly one line on standard error
// that names `file`, nothing on standard output.
void CheckOneLineError(const CliResult& r, const std::string& file) {
  CHECK(CountLines(r.err) == 1);
  CHECK(r.err.back() == '\n');
  CHECK(r.err.find(file) != std::string::npos);
  CHECK(r.out.empty());
}

// Standard error with each "\r\n" as "\n": on Windows the CLI's standard
// error is in text mode (its standard output is binary).
std::string ErrText(const CliResult& r) {
  std::string text;
  for (size_t i = 0; i < r.err.size(); ++i) {
    if (!(r.err[i] == '\r' && i + 1 < r.err.size() && r.err[i + 1] == '\n')) text.push_back(r.err[i]);
  }
  return text;
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Store OpenStore(const std::string& path) {
  Store store;
  const Status s = Store::Open(path, Options{}, &store);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  return store;
}

// Parses each line of `text` as JSON.
std::vector<nlohmann::json> ParseLines(const std::string& text) {
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t nl = text.find('\n', start);
    REQUIRE(nl != std::string::npos);
    lines.push_back(nlohmann::json::parse(text.substr(start, nl - start)));
    start = nl + 1;
  }
  return lines;
}

std::string Base64(std::string_view bytes) {  // reference encoder for the tests
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 63]);
  while (out.size() % 4 != 0) out.push_back('=');
  return out;
}

const char* const kCommands[] = {"create", "put",   "get",   "del",     "keys",   "dump",
                                 "load",   "stats", "check", "compact", "salvage"};

TEST_SUITE("cli") {
  TEST_CASE("cli: version and help exit 0 on stdout") {
    CliResult r = RunCli({"--version"});
    CHECK(r.code == 0);
    CHECK(r.out == "mapkv 0.1.0\n");
    CHECK(r.err.empty());

    r = RunCli({"--help"});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    CHECK(r.out.find("Usage: mapkv") != std::string::npos);
    CHECK(r.out.find("Exit codes") != std::string::npos);
    for (const char* cmd : kCommands) {
      CAPTURE(cmd);
      CHECK(r.out.find(std::string("  ") + cmd + " ") != std::string::npos);
      const CliResult sub = RunCli({cmd, "--help"});
      CHECK(sub.code == 0);
      CHECK(sub.out.find(std::string("Usage: mapkv ") + cmd) != std::string::npos);
      CHECK(sub.err.empty());
    }
    // keys --help says how keys are escaped.
    r = RunCli({"keys", "--help"});
    CHECK(r.out.find("\\xHH") != std::string::npos);
    CHECK(r.out.find("\\n") != std::string::npos);
    CHECK(r.out.find("\\\\") != std::string::npos);
    // load --help says what a malformed line does.
    r = RunCli({"load", "--help"});
    CHECK(r.out.find("exit code 2") != std::string::npos);
  }

  TEST_CASE("cli: usage errors exit 2 with one line on stderr") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    const std::vector<std::vector<std::string>> cases = {
        {},                                // no command
        {"frobnicate", f},                 // unknown command
        {"--no-such-option"},              // unknown option
        {"get", f},                        // missing KEY
        {"get"},                           // missing FILE and KEY
        {"put", f},                        // missing KEY
        {"del", f, "k", "extra"},          // too many arguments
        {"keys", f, "--limit", "-1"},      // negative count
        {"keys", f, "--limit", "ten"},     // not a number
        {"create", f, "--capacity", "x"},  // not a number
        {"stats", f, "--jsn"},             // unknown option of a command
        {"dump", f, "-o"},                 // option without its value
        {"salvage", f},                    // missing TO
    };
    for (const auto& args : cases) {
      std::string joined;
      for (const auto& a : args) joined += a + " ";
      CAPTURE(joined);
      const CliResult r = RunCli(args);
      CHECK(r.code == 2);
      CHECK(CountLines(r.err) == 1);
      CHECK(r.err.rfind("mapkv", 0) == 0);
      CHECK(r.out.empty());
    }
    CHECK_FALSE(FileExists(f));  // no usage error created the store

    // Bad key arguments are usage errors too.
    REQUIRE(RunCli({"put", f, "k", "v"}).code == 0);
    CliResult r = RunCli({"put", f, "", "v"});
    CHECK(r.code == 2);
    CheckOneLineError(r, f);
#ifndef _WIN32  // a Windows command line holds at most 32767 characters
    r = RunCli({"put", f, std::string(kMaxKeySize + 1, 'k'), "v"});
    CHECK(r.code == 2);
    CheckOneLineError(r, f);
#endif
    r = RunCli({"get", f, ""});
    CHECK(r.code == 2);
    CheckOneLineError(r, f);
    CHECK(RunCli({"get", f, "k"}).out == "v");
  }

  TEST_CASE("cli: a usage error in a key, a value or the first line of load creates and changes no store") {
    TempDir dir;
    const std::string f = dir.File("n.mkv");
    const std::string empty_key = "mapkv: " + f + ": empty key (keys are 1 to 65536 bytes)\n";
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"put", f, "", "v"}, {"incr", f, ""}, {"incr", f, "", "5"}, {"get", f, ""}, {"del", f, ""}}) {
      CAPTURE(args[0]);
      const CliResult r = RunCli(args);
      CHECK(r.code == 2);
      CHECK(ErrText(r) == empty_key);
      CHECK(r.out.empty());
      CHECK_FALSE(FileExists(f));
    }
    CliResult r;
#ifndef _WIN32  // a Windows command line holds at most 32767 characters
    r = RunCli({"put", f, std::string(kMaxKeySize + 1, 'k'), "v"});
    CHECK(r.code == 2);
    CHECK(ErrText(r) == "mapkv: " + f + ": key of 65537 bytes (keys are 1 to 65536 bytes)\n");
    CHECK_FALSE(FileExists(f));
#endif

    // A value over 1 GiB on standard input: refused before the store is opened.
    r = RunCli({"put", f, "k"}, std::string(kMaxValueSize + 1, 'v'));
    CHECK(r.code == 2);
    CHECK(ErrText(r) == "mapkv: " + f + ": value of more than 1073741824 bytes on standard input (at most 1 GiB)\n");
    CHECK(r.out.empty());
    CHECK_FALSE(FileExists(f));

    // load: a malformed first line (after blank ones) creates nothing.
    r = RunCli({"load", f}, "\n  \noops\n{\"key\": \"a\", \"value\": \"1\"}\n");
    CHECK(r.code == 2);
    CHECK(r.err.rfind("mapkv: <stdin>:3: ", 0) == 0);
    CHECK(CountLines(r.err) == 1);
    CHECK(r.out == "loaded 0 pairs\n");
    CHECK_FALSE(FileExists(f));
    // An input with no pair still creates the store, as documented.
    r = RunCli({"load", f}, "\n");
    CHECK(r.code == 0);
    CHECK(r.out == "loaded 0 pairs\n");
    CHECK(FileExists(f));

    // On an existing store, none of them changes a byte.
    REQUIRE(RunCli({"put", f, "k", "v"}).code == 0);
    const std::string bytes = ReadFileBytes(f);
    CHECK(RunCli({"put", f, "", "v"}).code == 2);
    CHECK(RunCli({"incr", f, ""}).code == 2);
    CHECK(RunCli({"del", f, ""}).code == 2);
    CHECK(RunCli({"load", f}, "{\"key\": \"\", \"value\": \"1\"}\n").code == 2);
    CHECK(ReadFileBytes(f) == bytes);
  }

  TEST_CASE("cli: every error names its file, even one whose name is part of the message") {
    TempDir dir;
    // Short relative names, which occur inside the messages: run in the directory.
    const std::filesystem::path cwd = std::filesystem::current_path();
    std::filesystem::current_path(dir.path());
    struct Restore {
      std::filesystem::path cwd;
      ~Restore() { std::filesystem::current_path(cwd); }
    } restore{cwd};

    REQUIRE(std::filesystem::create_directory("d"));
    CliResult r = RunCli({"load", "x.mkv", "d"});  // "d" is in "is a directory"
    CHECK(r.code == 3);
    CHECK(r.err.rfind("mapkv: d: ", 0) == 0);
#ifndef _WIN32  // (Windows refuses to open a directory: "cannot open: ...")
    CHECK(ErrText(r) == "mapkv: d: is a directory\n");
#endif
    CHECK_FALSE(FileExists("x.mkv"));

    REQUIRE(RunCli({"put", "e", "k", "v"}).code == 0);  // "e" is in "no key"
    r = RunCli({"get", "e", "nokey"});
    CHECK(r.code == 1);
    CHECK(ErrText(r) == "mapkv: e: no key \"nokey\"\n");
    r = RunCli({"del", "e", "nokey"});
    CHECK(r.code == 1);
    CHECK(ErrText(r) == "mapkv: e: no key \"nokey\"\n");
    // A key that is the path itself.
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"put", f, "k", "v"}).code == 0);
    r = RunCli({"get", f, f});
    CHECK(r.code == 1);
    CHECK(ErrText(r) == "mapkv: " + f + ": no key \"" + f + "\"\n");

    // The engine's messages start with the path: not prefixed twice.
    r = RunCli({"create", "e"});
    CHECK(r.code == 3);
    CHECK(r.err.rfind("mapkv: e: ", 0) == 0);
    CHECK(r.err.find("e: e:") == std::string::npos);
    CHECK(CountLines(r.err) == 1);
    WriteFileBytes("junk", std::string(8192, 'j'));
    r = RunCli({"get", "junk", "k"});
    CHECK(r.code == 3);
    CHECK(r.err.rfind("mapkv: junk: ", 0) == 0);
    CHECK(r.err.find("junk: junk:") == std::string::npos);
    // rm-shm NAME: the store is shm:NAME, named once.
    const std::string name = "mapkv-cli-test-no-such-store";
    r = RunCli({"rm-shm", name});
    CHECK(r.code == 3);
    CHECK(r.err.rfind("mapkv: shm:" + name + ": ", 0) == 0);
    CHECK(r.err.find(name + ": shm:") == std::string::npos);
  }

  TEST_CASE("cli: create with and without capacity and on an existing file") {
    TempDir dir;
    const std::string f = dir.File("new.mkv");
    CliResult r = RunCli({"create", f});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    REQUIRE(FileExists(f));
    r = RunCli({"stats", f, "--json"});
    REQUIRE(r.code == 0);
    const auto small = nlohmann::json::parse(r.out);
    CHECK(small["entries"] == 0);

    const std::string bytes = ReadFileBytes(f);
    r = RunCli({"create", f});
    CHECK(r.code == 3);
    CheckOneLineError(r, f);
    CHECK(ReadFileBytes(f) == bytes);  // the failed create changed nothing

    const std::string big = dir.File("big.mkv");
    REQUIRE(RunCli({"create", big, "--capacity", "100000"}).code == 0);
    r = RunCli({"stats", big, "--json"});
    REQUIRE(r.code == 0);
    const auto sized = nlohmann::json::parse(r.out);
    // Room for 100,000 entries within the maximum load.
    CHECK(sized["slots"].get<uint64_t>() * internal::format::kMaxLoadNum / internal::format::kMaxLoadDen >= 100000);
    CHECK(sized["slots"].get<uint64_t>() > small["slots"].get<uint64_t>());

    // A file in a directory that does not exist: a store error.
    r = RunCli({"create", dir.File("no/such/dir.mkv")});
    CHECK(r.code == 3);
    CheckOneLineError(r, dir.File("no/such/dir.mkv"));
  }

  TEST_CASE("cli: put get del and their exit codes") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    CHECK_FALSE(FileExists(f));
    CliResult r = RunCli({"put", f, "user:1", "alice"});  // creates the file
    CHECK(r.code == 0);
    CHECK(r.out.empty());
    CHECK(r.err.empty());
    r = RunCli({"get", f, "user:1"});
    CHECK(r.code == 0);
    CHECK(r.out == "alice");  // no newline: stdout is not a terminal
    CHECK(r.err.empty());

    REQUIRE(RunCli({"put", f, "user:1", "bob"}).code == 0);  // replace
    CHECK(RunCli({"get", f, "user:1"}).out == "bob");
    REQUIRE(RunCli({"put", f, "--", "-dash", "v"}).code == 0);  // a key starting with '-'
    CHECK(RunCli({"get", f, "--", "-dash"}).out == "v");
    REQUIRE(RunCli({"put", f, "empty", ""}).code == 0);  // an empty value argument, not stdin
    r = RunCli({"get", f, "empty"});
    CHECK(r.code == 0);
    CHECK(r.out.empty());

    r = RunCli({"get", f, "user:2"});
    CHECK(r.code == 1);
    CheckOneLineError(r, f);
    CHECK(r.err.find("user:2") != std::string::npos);

    r = RunCli({"del", f, "user:1"});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    CHECK(RunCli({"get", f, "user:1"}).code == 1);
    r = RunCli({"del", f, "user:1"});
    CHECK(r.code == 1);
    CheckOneLineError(r, f);

    // del and get never create a missing store.
    const std::string missing = dir.File("missing.mkv");
    r = RunCli({"del", missing, "k"});
    CHECK(r.code == 3);
    CheckOneLineError(r, missing);
    CHECK_FALSE(FileExists(missing));
  }

  TEST_CASE("cli: incr counts and get --as prints numbers") {
    TempDir dir;
    const std::string f = dir.File("c.mkv");
    CliResult r = RunCli({"incr", f, "hits"});  // creates the file and the counter
    CHECK(r.code == 0);
    CHECK(r.out == "1\n");
    CHECK(r.err.empty());
    CHECK(RunCli({"incr", f, "hits", "41"}).out == "42\n");
    CHECK(RunCli({"incr", f, "hits", "-50"}).out == "-8\n");  // a negative delta needs no `--`
    r = RunCli({"get", f, "hits", "--as", "i64"});
    CHECK(r.code == 0);
    CHECK(r.out == "-8\n");
    CHECK(RunCli({"get", f, "hits", "--as", "u64"}).out == "18446744073709551608\n");
    r = RunCli({"get", f, "hits"});  // the raw bytes, little-endian
    CHECK(r.out == std::string("\xf8\xff\xff\xff\xff\xff\xff\xff", 8));
    {
      Store store = MustOpen(f);
      REQUIRE(store.PutValue("ratio", 0.1).ok());
      REQUIRE(store.PutValue<int64_t>("max", INT64_MAX).ok());
    }
    CHECK(RunCli({"get", f, "ratio", "--as", "f64"}).out == "0.1\n");
    // Overflow: exit 3, value unchanged.
    r = RunCli({"incr", f, "max"});
    CHECK(r.code == 3);
    CheckOneLineError(r, f);
    CHECK(r.err.find("overflow") != std::string::npos);
    CHECK(RunCli({"get", f, "max", "--as", "i64"}).out == "9223372036854775807\n");
    // A value of the wrong size: exit 3 naming the key and the size, for get --as and incr.
    REQUIRE(RunCli({"put", f, "name", "alice"}).code == 0);
    r = RunCli({"get", f, "name", "--as", "u64"});
    CHECK(r.code == 3);
    CheckOneLineError(r, f);
    CHECK(r.err.find("\"name\"") != std::string::npos);
    CHECK(r.err.find("5 bytes") != std::string::npos);
    CHECK(r.out.empty());
    r = RunCli({"incr", f, "name", "2"});
    CHECK(r.code == 3);
    CHECK(r.err.find("5 bytes") != std::string::npos);
    CHECK(RunCli({"get", f, "name"}).out == "alice");
    // Missing key for get --as: exit 1. Usage errors: exit 2.
    CHECK(RunCli({"get", f, "nope", "--as", "i64"}).code == 1);
    CHECK(RunCli({"get", f, "hits", "--as", "u32"}).code == 2);
    CHECK(RunCli({"incr", f, "hits", "ten"}).code == 2);
    CHECK(RunCli({"incr", f}).code == 2);
  }

  TEST_CASE("cli: numeric arguments are decimal, complete and in range, else a usage error naming them") {
    TempDir dir;
    const std::string f = dir.File("n.mkv");
    // Leading zeros are decimal; the extremes of the type are accepted.
    CliResult r = RunCli({"incr", f, "a", "010"});
    CHECK(r.code == 0);
    CHECK(r.out == "10\n");
    CHECK(RunCli({"incr", f, "min", "-9223372036854775808"}).out == "-9223372036854775808\n");
    CHECK(RunCli({"incr", f, "max", "9223372036854775807"}).out == "9223372036854775807\n");
    CHECK(RunCli({"incr", f, "a", "-0"}).out == "10\n");
    const std::string before = ReadFileBytes(f);

    // Each rejected text: exit 2, one line naming the argument and quoting the text.
    const std::string not_integer = "\" is not an integer in decimal (see `mapkv incr --help`)\n";
    for (const std::string delta : {"0x10", "", "+5", " 5", "5 ", "1e3", "5.0", "-", "0b1", "ten"}) {
      CAPTURE(delta);
      r = RunCli({"incr", f, "b", delta});
      CHECK(r.code == 2);
      CHECK(ErrText(r) == "mapkv incr: DELTA: \"" + delta + not_integer);
      CHECK(r.out.empty());
    }
    r = RunCli({"incr", f, "b", "99999999999999999999"});
    CHECK(r.code == 2);
    CHECK(ErrText(r) ==
          "mapkv incr: DELTA: \"99999999999999999999\" is out of range (-9223372036854775808 to 9223372036854775807) "
          "(see `mapkv incr --help`)\n");
    r = RunCli({"incr", f, "b", "-9223372036854775809"});
    CHECK(r.code == 2);
    CHECK(r.err.find("DELTA: \"-9223372036854775809\" is out of range") != std::string::npos);
    CHECK(ReadFileBytes(f) == before);  // nothing was added

    // keys --limit: 12 keys, a limit of "010" lists 10.
    const std::string k = dir.File("k.mkv");
    {
      Store store = OpenStore(k);
      for (int i = 10; i < 22; ++i) REQUIRE(store.Put("k" + std::to_string(i), "v").ok());
    }
    r = RunCli({"keys", k, "--limit", "010"});
    CHECK(r.code == 0);
    CHECK(CountLines(r.out) == 10);
    r = RunCli({"keys", k, "--limit", "18446744073709551615"});
    CHECK(r.code == 0);
    CHECK(CountLines(r.out) == 12);
    for (const std::string limit : {"0x10", "", "-1", "+1", "1.5", "1e1"}) {
      CAPTURE(limit);
      r = RunCli({"keys", k, "--limit", limit});
      CHECK(r.code == 2);
      CHECK(ErrText(r) ==
            "mapkv keys: --limit: \"" + limit + "\" is not a whole number in decimal (see `mapkv keys --help`)\n");
      CHECK(r.out.empty());
    }
    r = RunCli({"keys", k, "--limit", "18446744073709551616"});
    CHECK(r.code == 2);
    CHECK(ErrText(r) ==
          "mapkv keys: --limit: \"18446744073709551616\" is out of range (0 to 18446744073709551615) "
          "(see `mapkv keys --help`)\n");

    // create --capacity: rejected before anything is created.
    const std::string c = dir.File("c.mkv");
    for (const std::string capacity : {"0x10", "", "99999999999999999999"}) {
      CAPTURE(capacity);
      r = RunCli({"create", c, "--capacity", capacity});
      CHECK(r.code == 2);
      CHECK(r.err.rfind("mapkv create: --capacity: \"" + capacity + "\" is ", 0) == 0);
      CHECK_FALSE(FileExists(c));
    }

    // watch --count and --timeout: rejected before the store is opened.
    r = RunCli({"watch", k, "--count", "99999999999999999999", "--timeout", "0.1"});
    CHECK(r.code == 2);
    CHECK(ErrText(r) ==
          "mapkv watch: --count: \"99999999999999999999\" is out of range (0 to 18446744073709551615) "
          "(see `mapkv watch --help`)\n");
    r = RunCli({"watch", k, "--count", "010x", "--timeout", "0.1"});
    CHECK(r.code == 2);
    CHECK(r.err.find("--count: \"010x\" is not a whole number in decimal") != std::string::npos);
    const std::string not_seconds =
        "\" is not a number of seconds (digits, optionally a '.' and more digits) (see `mapkv watch --help`)\n";
    for (const std::string timeout : {"", "1e3", "0x10", "-1", ".5", "5.", "inf", "nan", " 1", "1,5"}) {
      CAPTURE(timeout);
      r = RunCli({"watch", k, "--timeout", timeout});
      CHECK(r.code == 2);
      CHECK(ErrText(r) == "mapkv watch: --timeout: \"" + timeout + not_seconds);
    }
    r = RunCli({"watch", k, "--timeout", "1000000000.5"});
    CHECK(r.code == 2);
    CHECK(ErrText(r) ==
          "mapkv watch: --timeout: \"1000000000.5\" is out of range (0 to 1000000000 seconds) "
          "(see `mapkv watch --help`)\n");
    r = RunCli({"watch", k, "--count", "1", "--timeout", "000.10"});
    CHECK(r.code == 1);  // a valid timeout passes with no change
    CHECK(r.err.empty());
  }

  TEST_CASE("cli: put reads binary values from stdin and get returns them byte for byte") {
    TempDir dir;
    const std::string f = dir.File("bin.mkv");
    std::string all;
    for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
    all += std::string("\0\0tail\0", 7);
    CliResult r = RunCli({"put", f, "bytes"}, all);
    REQUIRE(r.code == 0);
    r = RunCli({"get", f, "bytes"});
    CHECK(r.code == 0);
    CHECK(r.out.size() == all.size());
    CHECK(r.out == all);

    Rng rng(7);
    const std::string big = rng.Bytes(3 << 20);  // larger than any pipe buffer
    REQUIRE(RunCli({"put", f, "big"}, big).code == 0);
    r = RunCli({"get", f, "big"});
    CHECK(r.code == 0);
    CHECK(r.out == big);

    // Empty standard input: an empty value.
    REQUIRE(RunCli({"put", f, "nothing"}, "").code == 0);
    r = RunCli({"get", f, "nothing"});
    CHECK(r.code == 0);
    CHECK(r.out.empty());

    // The engine sees the same bytes.
    Store store = OpenStore(f);
    std::string v;
    REQUIRE(store.Get("bytes", &v).ok());
    CHECK(v == all);
  }

#ifndef _WIN32  // a pseudo-terminal (listed in tests/CMakeLists.txt)
  TEST_CASE("cli: get adds a newline only when stdout is a terminal") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"put", f, "k", "value"}).code == 0);
    CHECK(RunCli({"get", f, "k"}).out == "value");
    const CliResult r = RunCli({"get", f, "k"}, "", Tty::kStdout);
    CHECK(r.code == 0);
    // The terminal turns "\n" into "\r\n".
    CHECK((r.out == "value\r\n" || r.out == "value\n"));
  }

#endif

  TEST_CASE("cli: keys lists sorted keys with prefix and limit and escaping") {
    TempDir dir;
    const std::string f = dir.File("k.mkv");
    {
      Store store = OpenStore(f);
      for (const char* k : {"b:2", "a:1", "b:1", "c", "b:3"}) REQUIRE(store.Put(k, "v").ok());
      REQUIRE(store.Put(std::string("x\nnl"), "v").ok());
      REQUIRE(store.Put(std::string("x\tt\\b\x01\x7f", 7), "v").ok());
      REQUIRE(store.Put(std::string("x\xff\xc3(", 4), "v").ok());                    // invalid UTF-8
      REQUIRE(store.Put(std::string("x\xc2\x85|\xc3\xa9|\xe2\x82\xac"), "v").ok());  // C1 control, é, €
      REQUIRE(store.Put(std::string("y\0z", 3), "v").ok());
    }
    CliResult r = RunCli({"keys", f});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    const std::string expected =
        "a:1\n"
        "b:1\n"
        "b:2\n"
        "b:3\n"
        "c\n"
        "x\\t"
        "t\\\\b\\x01\\x7f\n"                   // "x\tt\\b\x01\x7f"
        "x\\nnl\n"                             // "x\nnl"
        "x\\xc2\\x85|\xc3\xa9|\xe2\x82\xac\n"  // C1 escaped, é and € as is
        "x\\xff\\xc3(\n"                       // invalid UTF-8 bytes escaped
        "y\\x00z\n";
    CHECK(r.out == expected);

    r = RunCli({"keys", f, "--prefix", "b:"});
    CHECK(r.code == 0);
    CHECK(r.out == "b:1\nb:2\nb:3\n");
    r = RunCli({"keys", f, "--prefix", "b:", "--limit", "2"});
    CHECK(r.out == "b:1\nb:2\n");
    r = RunCli({"keys", f, "--limit", "0"});
    CHECK(r.code == 0);
    CHECK(r.out.empty());
    r = RunCli({"keys", f, "--prefix", "nothing"});
    CHECK(r.code == 0);
    CHECK(r.out.empty());
  }

  TEST_CASE("cli: dump writes sorted JSON Lines with base64 for non-UTF-8 and to an output file") {
    TempDir dir;
    const std::string f = dir.File("d.mkv");
    {
      Store store = OpenStore(f);
      REQUIRE(store.Put("plain", "hello").ok());
      REQUIRE(store.Put("quote\"back\\slash", "tab\tnl\ncr\rbs\bff\f\x01\x1f\x7f/").ok());
      REQUIRE(store.Put("utf8:\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\xe6\x9d\xb1\xe4\xba\xac").ok());
      REQUIRE(store.Put(std::string("bin\xff", 4), std::string("\x00\x01\x02", 3)).ok());
      REQUIRE(store.Put("binval", std::string("\x80", 1)).ok());
      REQUIRE(store.Put("empty", "").ok());
      REQUIRE(store.Put("surrogate", "\xed\xa0\x80").ok());  // encoded surrogate: not valid UTF-8
      REQUIRE(store.Put("b64len1", std::string("\xfe", 1)).ok());
      REQUIRE(store.Put("b64len2", std::string("\xfe\xff", 2)).ok());
      REQUIRE(store.Put("b64len3", std::string("\xfe\xff\x00", 3)).ok());
      REQUIRE(store.Put("b64len4", std::string("\xfe\xff\x00\x01", 4)).ok());
    }
    const CliResult r = RunCli({"dump", f});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    const std::vector<std::string> want = {
        "{\"key\": \"b64len1\", \"value_base64\": \"/g==\"}",
        "{\"key\": \"b64len2\", \"value_base64\": \"/v8=\"}",
        "{\"key\": \"b64len3\", \"value_base64\": \"/v8A\"}",
        "{\"key\": \"b64len4\", \"value_base64\": \"/v8AAQ==\"}",
        "{\"key\": \"binval\", \"value_base64\": \"gA==\"}",  // 'v' sorts before 0xff
        // Control characters are UTF-8, but escaped 6 bytes each (more than 3
        // times their size) they go in base64.
        "{\"key_base64\": \"" + Base64(std::string("bin\xff", 4)) + "\", \"value_base64\": \"AAEC\"}",
        "{\"key\": \"empty\", \"value\": \"\"}",
        "{\"key\": \"plain\", \"value\": \"hello\"}",
        "{\"key\": \"quote\\\"back\\\\slash\", \"value\": \"tab\\tnl\\ncr\\rbs\\bff\\f\\u0001\\u001f\x7f/\"}",
        "{\"key\": \"surrogate\", \"value_base64\": \"7aCA\"}",
        "{\"key\": \"utf8:\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\", \"value\": \"\xe6\x9d\xb1\xe4\xba\xac\"}",
    };
    std::string want_text;
    for (const auto& line : want) want_text += line + "\n";
    CHECK(r.out == want_text);
    CHECK(Base64(std::string("bin\xff", 4)) == "Ymlu/w==");

    // Every line is JSON that a library reads back to the same bytes.
    const auto lines = ParseLines(r.out);
    REQUIRE(lines.size() == want.size());
    CHECK(lines[8]["key"] == "quote\"back\\slash");
    CHECK(lines[8]["value"] == "tab\tnl\ncr\rbs\bff\f\x01\x1f\x7f/");
    CHECK(lines[10]["value"] == "\xe6\x9d\xb1\xe4\xba\xac");

    // Each character that needs escaping, at every offset of a longer string
    // (the escaper skips 8 bytes at a time), reads back as the same string.
    const std::string g = dir.File("escapes.mkv");
    std::vector<std::string> values;
    {
      Store store = OpenStore(g);
      for (char special : {'"', '\\', '\n', '\x01', '\x1f', '\0'}) {
        for (size_t at = 0; at < 20; ++at) {
          std::string v = "0123456789abcdefghijklmnopqrstuv";
          v[at] = special;
          values.push_back(v);
          REQUIRE(store.Put("k" + std::to_string(values.size() + 100), v).ok());
        }
      }
    }
    const CliResult esc = RunCli({"dump", g});
    REQUIRE(esc.code == 0);
    const auto esc_lines = ParseLines(esc.out);
    REQUIRE(esc_lines.size() == values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      CAPTURE(i);
      CHECK(esc_lines[i]["value"].get<std::string>() == values[i]);
    }

    // UTF-8 with control characters stays a JSON string while escaping at
    // most triples it ("\x01ab": 8 bytes escaped for 3), else it is base64
    // ("\x01a": 7 for 2), so that no value makes a line longer than about 3
    // times its size (a 1 GiB value of control bytes would be 6 GiB escaped,
    // past what load can parse).
    const std::string h = dir.File("controls.mkv");
    {
      Store store = OpenStore(h);
      REQUIRE(store
                  .Put("a",
                       "\x01"
                       "ab")
                  .ok());
      REQUIRE(store.Put("b", "\x01a").ok());
      REQUIRE(store.Put("c", std::string(1 << 20, '\x02')).ok());
    }
    const CliResult ctl = RunCli({"dump", h});
    REQUIRE(ctl.code == 0);
    const auto ctl_lines = ParseLines(ctl.out);
    REQUIRE(ctl_lines.size() == 3);
    CHECK(ctl_lines[0]["value"] ==
          "\x01"
          "ab");
    CHECK(ctl_lines[1]["value_base64"] == Base64("\x01a"));
    CHECK(ctl_lines[2]["value_base64"] == Base64(std::string(1 << 20, '\x02')));
    CHECK(ctl.out.size() < (1 << 20) / 3 * 4 + 200);

    // -o - is standard output (as load's INPUT -); an empty OUT is a usage
    // error, not standard output.
    const CliResult dash = RunCli({"dump", f, "-o", "-"});
    CHECK(dash.code == 0);
    CHECK(dash.out == r.out);
    CHECK_FALSE(std::filesystem::exists("-"));
    const CliResult empty_out = RunCli({"dump", f, "-o", ""});
    CHECK(empty_out.code == 2);
    CHECK(empty_out.err.find("OUT is empty") != std::string::npos);
    CHECK(empty_out.out.empty());

    // -o OUT writes the same bytes to a file, nothing to stdout.
    const std::string out = dir.File("out.jsonl");
    const CliResult o = RunCli({"dump", f, "-o", out});
    CHECK(o.code == 0);
    CHECK(o.out.empty());
    CHECK(ReadFileBytes(out) == r.out);
    // An OUT that cannot be written: a one-line error, exit 3.
    const std::string bad_out = dir.File("no/dir/out.jsonl");
    const CliResult b = RunCli({"dump", f, "--output", bad_out});
    CHECK(b.code == 3);
    CheckOneLineError(b, bad_out);
    // An empty store dumps nothing.
    const std::string e = dir.File("empty.mkv");
    REQUIRE(RunCli({"create", e}).code == 0);
    const CliResult d = RunCli({"dump", e});
    CHECK(d.code == 0);
    CHECK(d.out.empty());
  }

  TEST_CASE("cli: dump -o and load INPUT refuse the store file itself and change nothing") {
    TempDir dir;
    const std::string f = dir.File("o.mkv");
    REQUIRE(RunCli({"put", f, "k", "v"}).code == 0);
    const std::string bytes = ReadFileBytes(f);
    // The same path, another spelling of it, and (POSIX) a hard and a symbolic link.
    std::vector<std::string> names = {f, dir.File(".") + "/o.mkv"};
#ifndef _WIN32
    const std::string hard = dir.File("hard.jsonl");
    REQUIRE(::link(f.c_str(), hard.c_str()) == 0);
    const std::string soft = dir.File("soft.jsonl");
    std::filesystem::create_symlink(f, soft);
    names.push_back(hard);
    names.push_back(soft);
#endif
    for (const std::string& name : names) {
      CAPTURE(name);
      CliResult r = RunCli({"dump", f, "-o", name});
      CHECK(r.code == 2);
      CHECK(ErrText(r) ==
            "mapkv: " + name + ": the output is the store file " + f + " itself (dump would overwrite it with JSON)\n");
      CHECK(r.out.empty());
      CHECK(ReadFileBytes(f) == bytes);
      r = RunCli({"load", f, name});
      CHECK(r.code == 2);
      CHECK(ErrText(r) ==
            "mapkv: " + name + ": the input is the store file " + f + " itself (load reads JSON Lines)\n");
      CHECK(r.out.empty());
      CHECK(ReadFileBytes(f) == bytes);
    }
    CHECK(RunCli({"check", f}).out == "ok\n");
    // Another file is written as before.
    const CliResult r = RunCli({"dump", f, "-o", dir.File("other.jsonl")});
    CHECK(r.code == 0);
    CHECK(ReadFileBytes(dir.File("other.jsonl")) == "{\"key\": \"k\", \"value\": \"v\"}\n");
  }

  TEST_CASE("cli: dump sizes its buffer within the file, whatever the control page's live_bytes says") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"put", f, "k", "v"}).code == 0);
    REQUIRE(RunCli({"put", f, "k2", "v2"}).code == 0);
    const CliResult good = RunCli({"dump", f});
    REQUIRE(good.code == 0);
    REQUIRE(CountLines(good.out) == 2);
    const std::string bytes = ReadFileBytes(f);
    // The control page is not checksummed: a damaged live_bytes counter
    // (more than memory, more than a string can hold) is what the store reports.
    for (const uint64_t huge : {uint64_t{1} << 62, UINT64_MAX}) {
      CAPTURE(huge);
      std::string damaged = bytes;
      const size_t at = internal::format::kControlOffset + offsetof(internal::format::ControlPage, live_bytes);
      std::memcpy(&damaged[at], &huge, sizeof huge);
      WriteFileBytes(f, damaged);
      const CliResult stats = RunCli({"stats", f, "--json"});
      REQUIRE(stats.code == 0);
      REQUIRE(nlohmann::json::parse(stats.out)["live_bytes"].get<uint64_t>() == huge);
      const CliResult r = RunCli({"dump", f});
      CHECK(r.code == 0);
      CHECK(r.err.empty());
      CHECK(r.out == good.out);
    }
  }

  TEST_CASE("cli: dump then load into a new file then dump gives identical output on random binary pairs") {
    TempDir dir;
    const std::string src = dir.File("src.mkv");
    std::map<std::string, std::string> pairs;
    Rng rng(2024);
    {
      Store store = OpenStore(src);
      for (int i = 0; i < 1500; ++i) {
        std::string key, value;
        switch (rng.Uniform(4)) {
          case 0:
            key = rng.Bytes(1 + rng.Uniform(40));
            break;  // random bytes
          case 1:
            key = "text:" + std::to_string(rng.Next());
            break;  // ASCII
          case 2:
            key = "utf8:\xc3\xa9\xe2\x82\xac" + std::to_string(i);
            break;
          default:
            key = std::string("nul\0", 4) + std::to_string(i);
            break;  // valid UTF-8 with NUL
        }
        switch (rng.Uniform(4)) {
          case 0:
            value = rng.Bytes(rng.Uniform(300));
            break;
          case 1:
            value = "json-ish {\"n\": " + std::to_string(i) + ", \"s\": \"a\\tb\"}\n";
            break;
          case 2:
            value = "";
            break;
          default:
            value = rng.Bytes(rng.Uniform(5000));
            break;
        }
        REQUIRE(store.Put(key, value).ok());
        pairs[key] = value;
      }
    }
    const CliResult first = RunCli({"dump", src});
    REQUIRE(first.code == 0);
    CHECK(CountLines(first.out) == pairs.size());
    CHECK(first.out.find("key_base64") != std::string::npos);
    CHECK(first.out.find("value_base64") != std::string::npos);

    const std::string copy = dir.File("copy.mkv");
    const CliResult load = RunCli({"load", copy}, first.out);  // from standard input
    CHECK(load.code == 0);
    CHECK(load.out == "loaded " + std::to_string(pairs.size()) + " pairs\n");
    CHECK(load.err.empty());

    const CliResult second = RunCli({"dump", copy});
    REQUIRE(second.code == 0);
    CHECK(second.out == first.out);

    // And the copy holds exactly the original bytes.
    Store store = OpenStore(copy);
    CHECK(store.size() == pairs.size());
    size_t same = 0;
    for (const auto& [k, v] : pairs) {
      std::string got;
      if (store.Get(k, &got).ok() && got == v) ++same;
    }
    CHECK(same == pairs.size());
  }

  TEST_CASE("cli: the sample data set loads and dumps back byte for byte") {
    TempDir dir;
    const std::string sample = ReadFileBytes(MAPKV_SAMPLE_PATH);
    REQUIRE(CountLines(sample) >= 2000);
    CHECK(sample.size() < (1u << 20));
    const std::string f = dir.File("sample.mkv");
    const CliResult load = RunCli({"load", f, MAPKV_SAMPLE_PATH});
    REQUIRE(load.code == 0);
    CHECK(load.out == "loaded " + std::to_string(CountLines(sample)) + " pairs\n");
    const CliResult dump = RunCli({"dump", f});
    REQUIRE(dump.code == 0);
    CHECK(dump.out == sample);
    const CliResult stats = RunCli({"stats", f, "--json"});
    REQUIRE(stats.code == 0);
    CHECK(nlohmann::json::parse(stats.out)["entries"] == CountLines(sample));
    const CliResult keys = RunCli({"keys", f, "--prefix", "config:service/http/"});
    CHECK(keys.code == 0);
    CHECK(keys.out.find("config:service/http/port\n") != std::string::npos);
    CHECK(RunCli({"get", f, "config:service/http/port"}).out == "8080");
    CHECK(RunCli({"check", f}).out == "ok\n");
  }

  TEST_CASE("cli: load reports a malformed line with its number and keeps only the lines before it") {
    TempDir dir;
    const std::string input = dir.File("in.jsonl");
    WriteFileBytes(input,
                   "{\"key\": \"a\", \"value\": \"1\"}\n"
                   "\n"  // blank lines are skipped
                   "{\"key_base64\": \"YgBj\", \"value_base64\": \"AAE=\"}\n"
                   "{\"key\": \"c\", \"value\": \"3\"}\n"
                   "{\"key\": \"d\", \"value\": 4}\n"  // line 5: value is not a string
                   "{\"key\": \"e\", \"value\": \"5\"}\n");
    const std::string f = dir.File("s.mkv");
    CliResult r = RunCli({"load", f, input});
    CHECK(r.code == 2);
    CHECK(CountLines(r.err) == 1);
    CHECK(r.err.find(input + ":5: ") != std::string::npos);
    CHECK(r.out == "loaded 3 pairs\n");
    {
      Store store = OpenStore(f);
      std::string v;
      CHECK(store.Get("a", &v).ok());
      CHECK(store.Get(std::string("b\0c", 3), &v).ok());
      CHECK(v == std::string("\0\1", 2));
      CHECK(store.Get("c", &v).ok());
      CHECK(store.Get("d", &v).IsNotFound());
      CHECK(store.Get("e", &v).IsNotFound());
      CHECK(store.size() == 3);
    }

    // Each kind of malformed line, on line 2 of standard input.
    const std::vector<std::string> bad = {
        "{\"key\": \"x\", \"value\": \"y\"",                   // not valid JSON
        "[\"key\", \"value\"]",                                // not an object
        "{\"key\": \"x\"}",                                    // no value
        "{\"value\": \"y\"}",                                  // no key
        "{\"key\": \"\", \"value\": \"y\"}",                   // empty key
        "{\"key\": \"x\", \"value\": \"y\", \"extra\": 1}",    // unknown field
        "{\"key\": \"x\", \"key\": \"z\", \"value\": \"y\"}",  // duplicate field
        "{\"key\": \"x\", \"key_base64\": \"eA==\", \"value\": \"y\"}",
        "{\"key_base64\": \"eA=\", \"value\": \"y\"}",   // bad base64 length
        "{\"key\": \"x\", \"value_base64\": \"e!==\"}",  // bad base64 character
        "{\"key\": \"x\", \"value_base64\": \"eB==\"}",  // non-zero unused bits
        "{\"key\": \"x\", \"value\": \"y\"} trailing",
        "{\"key\": \"x\", \"value\": \"\xff\"}",  // invalid UTF-8 in a JSON string
        "{\"key\": \"" + std::string(kMaxKeySize + 1, 'k') + "\", \"value\": \"y\"}",
        "\xEF\xBB\xBF{\"key\": \"x\", \"value\": \"y\"}",  // a byte order mark
    };
    for (const std::string& line : bad) {
      CAPTURE(line.substr(0, 80));
      const std::string g = dir.File("g.mkv");
      ::unlink(g.c_str());
      r = RunCli({"load", g},
                 "{\"key\": \"first\", \"value\": \"1\"}\n" + line + "\n{\"key\": \"third\", \"value\": \"3\"}\n");
      CHECK(r.code == 2);
      CHECK(CountLines(r.err) == 1);
      CHECK(r.err.find("<stdin>:2: ") != std::string::npos);
      CHECK(r.out == "loaded 1 pairs\n");
      CHECK(RunCli({"get", g, "first"}).out == "1");
      CHECK(RunCli({"get", g, "third"}).code == 1);
    }
    r = RunCli({"load", dir.File("bom.mkv")}, "\xEF\xBB\xBF{\"key\": \"x\", \"value\": \"y\"}\n");
    CHECK(r.code == 2);
    CHECK(r.err.find("<stdin>:1: starts with a UTF-8 byte order mark") != std::string::npos);
    // An empty INPUT is a usage error, not standard input.
    r = RunCli({"load", dir.File("empty-input.mkv"), ""}, "{\"key\": \"x\", \"value\": \"y\"}\n");
    CHECK(r.code == 2);
    CHECK(r.err.find("INPUT is empty") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.File("empty-input.mkv")));
  }

  TEST_CASE("cli: load keeps every batch before a malformed line (more than one batch)") {
    TempDir dir;
    std::string input;
    const int good = 2345;  // several batches plus a partial one
    for (int i = 0; i < good; ++i) input += "{\"key\": \"k" + std::to_string(i) + "\", \"value\": \"v\"}\n";
    input += "oops\n";
    for (int i = 0; i < 100; ++i) input += "{\"key\": \"late" + std::to_string(i) + "\", \"value\": \"v\"}\n";
    const std::string f = dir.File("s.mkv");
    const CliResult r = RunCli({"load", f, "-"}, input);
    CHECK(r.code == 2);
    CHECK(r.err.find("<stdin>:" + std::to_string(good + 1) + ": ") != std::string::npos);
    CHECK(r.out == "loaded " + std::to_string(good) + " pairs\n");
    Store store = OpenStore(f);
    CHECK(store.size() == static_cast<uint64_t>(good));
    std::string v;
    CHECK(store.Get("k" + std::to_string(good - 1), &v).ok());
    CHECK(store.Get("late0", &v).IsNotFound());
  }

  TEST_CASE("cli: load replaces existing keys and reads a last line without newline and fails cleanly") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"put", f, "k", "old"}).code == 0);
    CliResult r = RunCli({"load", f}, "{\"key\": \"k\", \"value\": \"new\"}\r\n{\"key\": \"z\", \"value\": \"last\"}");
    CHECK(r.code == 0);
    CHECK(r.out == "loaded 2 pairs\n");
    CHECK(RunCli({"get", f, "k"}).out == "new");
    CHECK(RunCli({"get", f, "z"}).out == "last");

    // A missing INPUT is a store-side error (exit 3) and creates no store.
    const std::string g = dir.File("g.mkv");
    r = RunCli({"load", g, dir.File("missing.jsonl")});
    CHECK(r.code == 3);
    CheckOneLineError(r, dir.File("missing.jsonl"));
    CHECK_FALSE(FileExists(g));
  }

#ifndef _WIN32  // a pseudo-terminal (listed in tests/CMakeLists.txt)
  TEST_CASE("cli: load shows progress on stderr only when it is a terminal") {
    TempDir dir;
    std::string input;
    for (int i = 0; i < 3000; ++i) input += "{\"key\": \"k" + std::to_string(i) + "\", \"value\": \"v\"}\n";
    const std::string file = dir.File("in.jsonl");
    WriteFileBytes(file, input);
    CliResult r = RunCli({"load", dir.File("a.mkv"), file}, "", Tty::kStderr);
    CHECK(r.code == 0);
    CHECK(r.out == "loaded 3000 pairs\n");
    CHECK(r.err.find("pairs/s") != std::string::npos);
    CHECK(r.err.find("ETA") != std::string::npos);
    r = RunCli({"load", dir.File("b.mkv"), file});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
  }

#endif

  TEST_CASE("cli: stats shows every field human readable and as JSON") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"load", f}, "{\"key\": \"a\", \"value\": \"1\"}\n{\"key\": \"b\", \"value\": \"2\"}\n").code == 0);
    CliResult r = RunCli({"stats", f});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    for (const char* field : {"format version", "entries", "slots", "load factor", "file bytes", "heap bytes",
                              "live bytes", "garbage bytes", "free bytes", "table bytes", "change seq",
                              "checkpoint generation", "max probe", "mean probe"}) {
      CAPTURE(field);
      CHECK(r.out.find(std::string("\n") + field + " ") != std::string::npos);
    }
    CHECK(r.out.rfind("path", 0) == 0);
    CHECK(r.out.find(f) != std::string::npos);
    CHECK(r.out.find("\nentries                2\n") != std::string::npos);

    r = RunCli({"stats", f, "--json"});
    CHECK(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j["path"] == f);
    CHECK(j["entries"] == 2);
    CHECK(j["format_major"].get<int>() >= 1);
    for (const char* field :
         {"format_minor", "slots", "load_factor", "file_bytes", "heap_bytes", "live_bytes", "garbage_bytes",
          "free_bytes", "table_bytes", "change_seq", "checkpoint_generation", "max_probe", "mean_probe"}) {
      CAPTURE(field);
      CHECK(j.contains(field));
    }
    CHECK(j["file_bytes"].get<uint64_t>() == ReadFileBytes(f).size());
    CHECK(j.size() == 16);
  }

  TEST_CASE("cli: check prints ok or each problem and exits 3") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    const std::string marker = "MARKER-0123456789-MARKER";
    REQUIRE(RunCli({"put", f, "k1", marker}).code == 0);
    REQUIRE(RunCli({"put", f, "k2", "other"}).code == 0);
    CliResult r = RunCli({"check", f});
    CHECK(r.code == 0);
    CHECK(r.out == "ok\n");
    CHECK(r.err.empty());

    // Damage the record's value bytes: its checksum no longer matches.
    std::string bytes = ReadFileBytes(f);
    const size_t at = bytes.find(marker);
    REQUIRE(at != std::string::npos);
    bytes[at] ^= 1;
    WriteFileBytes(f, bytes);
    r = RunCli({"check", f});
    CHECK(r.code == 3);
    CHECK(r.out != "ok\n");
    CHECK(CountLines(r.out) >= 1);
    CHECK(CountLines(r.err) == 1);
    CHECK(r.err.find(f) != std::string::npos);
    CHECK(ReadFileBytes(f) == bytes);  // check did not repair or touch it
  }

  TEST_CASE("cli: salvage copies the intact pairs into a new store and lists what it left behind") {
    TempDir dir;
    const std::string from = dir.File("from.mkv"), to = dir.File("to.mkv"), again = dir.File("again.mkv");
    const std::string marker = "MARKER-0123456789-MARKER";
    REQUIRE(RunCli({"put", from, "damaged", marker}).code == 0);
    for (int i = 0; i < 50; ++i)
      REQUIRE(RunCli({"put", from, "k" + std::to_string(i), "v" + std::to_string(i)}).code == 0);
    CliResult r = RunCli({"salvage", from, to});
    CHECK(r.code == 0);
    CHECK(r.out == "51 pair(s) salvaged into " + to + "\n");
    CHECK(r.err.empty());

    std::string bytes = ReadFileBytes(from);
    const size_t at = bytes.find(marker);
    REQUIRE(at != std::string::npos);
    bytes[at] ^= 1;
    WriteFileBytes(from, bytes);
    r = RunCli({"salvage", from, again});
    CHECK(r.code == 3);
    CHECK(CountLines(r.out) == 1);
    CHECK(r.out.find("fails its checksum") != std::string::npos);
    CHECK(r.out.find("\"damaged\"") != std::string::npos);
    CHECK(ErrText(r) == "mapkv: " + from + ": 1 record(s), slot(s) or table page(s) left behind or copied in doubt; " +
                            "50 pair(s) salvaged into " + again + "\n");
    CHECK(ReadFileBytes(from) == bytes);  // salvage reads FROM only
    CHECK(RunCli({"get", again, "k49"}).out == "v49");
    CHECK(RunCli({"get", again, "damaged"}).code == 1);
    CHECK(RunCli({"check", again}).out == "ok\n");

    // Past 1000 problems the lines stop and a last one counts the rest.
    const std::string many = dir.File("many.mkv");
    {
      Store s = OpenStore(many);
      for (int i = 0; i < 1010; ++i) REQUIRE(s.Put("key" + std::to_string(i), "v|" + std::to_string(i) + "|").ok());
    }
    std::string image = ReadFileBytes(many);
    for (int i = 0; i < 1010; ++i) {
      const size_t v = image.find("v|" + std::to_string(i) + "|");
      REQUIRE(v != std::string::npos);
      image[v] ^= 1;
    }
    WriteFileBytes(many, image);
    r = RunCli({"salvage", many, dir.File("few.mkv")});
    CHECK(r.code == 3);
    CHECK(CountLines(r.out) == 1001);
    CHECK(r.out.find("\n... and 10 more\n") != std::string::npos);
    CHECK(r.err.find("1010 record(s)") != std::string::npos);

    // TO exists: refused, naming it, and nothing changes.
    const std::string to_bytes = ReadFileBytes(to);
    r = RunCli({"salvage", from, to});
    CHECK(r.code == 3);
    CheckOneLineError(r, to);
    CHECK(ReadFileBytes(to) == to_bytes);
    r = RunCli({"salvage", dir.File("missing.mkv"), dir.File("new.mkv")});
    CHECK(r.code == 3);
    CheckOneLineError(r, dir.File("missing.mkv"));
    CHECK_FALSE(FileExists(dir.File("new.mkv")));
  }

#ifndef _WIN32  // on Windows a named store ends with its last process: one CLI call each
  TEST_CASE("cli: shm:NAME works wherever FILE does and rm-shm removes it") {
    const std::string name = "shm:mapkv-cli-test-" + std::to_string(ThisProcessId());
    RunCli({"rm-shm", name});  // left over by an earlier failed run, if any
    REQUIRE(RunCli({"create", name}).code == 0);
    CHECK(RunCli({"put", name, "k", "in memory"}).code == 0);
    CHECK(RunCli({"get", name, "k"}).out == "in memory");
    CHECK(RunCli({"keys", name}).out == "k\n");
    CHECK(RunCli({"check", name}).out == "ok\n");
    CliResult r = RunCli({"create", name});
    CHECK(r.code == 3);  // exists
    CheckOneLineError(r, name);
    CHECK(RunCli({"rm-shm", name}).code == 0);
    r = RunCli({"get", name, "k"});
    CHECK(r.code == 3);
    CheckOneLineError(r, name);
    r = RunCli({"rm-shm", name});
    CHECK(r.code == 3);
    CheckOneLineError(r, name);
  }
#endif

  TEST_CASE("cli: compact prints the size before and after and keeps the data") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    std::string input;
    for (int i = 0; i < 3000; ++i) {
      input += "{\"key\": \"k" + std::to_string(i) + "\", \"value\": \"" + std::string(200, 'v') + "\"}\n";
    }
    REQUIRE(RunCli({"load", f}, input).code == 0);
    {
      Store store = OpenStore(f);
      for (int i = 0; i < 3000; ++i) {
        if (i % 10 != 0) REQUIRE(store.Erase("k" + std::to_string(i)).ok());
      }
    }
    const uint64_t before = ReadFileBytes(f).size();
    CliResult r = RunCli({"compact", f});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    const uint64_t after = ReadFileBytes(f).size();
    CHECK(after < before);
    CHECK(r.out == f + ": " + std::to_string(before) + " bytes before, " + std::to_string(after) + " bytes after\n");
    CHECK(RunCli({"get", f, "k10"}).out == std::string(200, 'v'));
    CHECK(RunCli({"get", f, "k11"}).code == 1);
    CHECK(RunCli({"check", f}).out == "ok\n");

    r = RunCli({"compact", dir.File("missing.mkv")});
    CHECK(r.code == 3);
    CheckOneLineError(r, dir.File("missing.mkv"));
  }

#ifndef _WIN32  // on Windows a named store ends with its last process: one CLI call each
  TEST_CASE("cli: compact works on a shm:NAME store and prints its sizes from the store's figures") {
    const std::string name = "shm:mapkv-cli-compact-" + std::to_string(ThisProcessId());
    RunCli({"rm-shm", name});  // left over by an earlier failed run, if any
    std::string input, erase;
    for (int i = 0; i < 3000; ++i) {
      input += "{\"key\": \"k" + std::to_string(i) + "\", \"value\": \"" + std::string(200, 'v') + "\"}\n";
    }
    REQUIRE(RunCli({"load", name}, input).code == 0);
    {
      Store store = OpenStore(name);
      for (int i = 0; i < 3000; ++i) {
        if (i % 10 != 0) REQUIRE(store.Erase("k" + std::to_string(i)).ok());
      }
    }
    auto file_bytes = [&name] {
      const CliResult stats = RunCli({"stats", name, "--json"});
      REQUIRE(stats.code == 0);
      return nlohmann::json::parse(stats.out)["file_bytes"].get<uint64_t>();
    };
    const uint64_t before = file_bytes();
    const CliResult r = RunCli({"compact", name});
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    const uint64_t after = file_bytes();
    CHECK(after < before);
    CHECK(r.out == name + ": " + std::to_string(before) + " bytes before, " + std::to_string(after) + " bytes after\n");
    CHECK(RunCli({"get", name, "k10"}).out == std::string(200, 'v'));
    CHECK(RunCli({"check", name}).out == "ok\n");
    CHECK(RunCli({"rm-shm", name}).code == 0);
  }
#endif

#ifdef __linux__  // /dev/full
  TEST_CASE("cli: every command that prints reports a write error on standard output with exit 3") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"put", f, "k", "v"}).code == 0);
    REQUIRE(RunCli({"incr", f, "n", "0"}).code == 0);
    const std::string full = "/dev/full";
    const std::string write_failed = "mapkv: <stdout>: write failed: " + std::string(std::strerror(ENOSPC)) + "\n";
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{{"check", f},
                                                                                      {"compact", f},
                                                                                      {"get", f, "k"},
                                                                                      {"get", f, "n", "--as", "i64"},
                                                                                      {"keys", f},
                                                                                      {"dump", f},
                                                                                      {"stats", f},
                                                                                      {"stats", f, "--json"}}) {
      CAPTURE(args[0]);
      const CliResult r = RunCliToFile(args, full);
      CHECK(r.code == 3);
      CHECK(ErrText(r) == write_failed);
    }
    // incr says that the increment was made all the same (a retry would add
    // twice).
    CliResult r = RunCliToFile({"incr", f, "n", "5"}, full);
    CHECK(r.code == 3);
    CHECK(ErrText(r) == write_failed + "mapkv: " + f +
                            ": the increment was applied (the counter is now 5); only printing it failed\n");
    CHECK(RunCli({"incr", f, "n", "0"}).out == "5\n");
    r = RunCliToFile({"load", f}, full, "{\"key\": \"a\", \"value\": \"1\"}\n");
    CHECK(r.code == 3);
    CHECK(ErrText(r) == write_failed);
    CHECK(RunCli({"get", f, "a"}).out == "1");  // loaded all the same
    // Commands that print nothing succeed.
    r = RunCliToFile({"put", f, "x", "y"}, full);
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    // check's list of problems cannot be written either: the write error is reported.
    const std::string marker = "MARKER-0123456789-MARKER";
    REQUIRE(RunCli({"put", f, "m", marker}).code == 0);
    std::string bytes = ReadFileBytes(f);
    const size_t at = bytes.find(marker);
    REQUIRE(at != std::string::npos);
    bytes[at] ^= 1;
    WriteFileBytes(f, bytes);
    REQUIRE(RunCli({"check", f}).code == 3);
    r = RunCliToFile({"check", f}, full);
    CHECK(r.code == 3);
    CHECK(ErrText(r) == write_failed);
  }
#endif

  // The close of a put's or del's store compacts the file's tail and can
  // find a damaged record there: exit 3 with that error, and a line that
  // says the change itself was made (a script retrying it would not find
  // the key to delete, or would count twice).
  TEST_CASE("cli: put and del say their change was made when only the close fails") {
    // 15,000 erased records under the damaged one make over 1 MiB of holes
    // below it, enough for both closes to compact the tail (compact.cc's
    // threshold); were it not, the closes would exit 0 and the test fail.
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    const std::string marker = "unique marker 7a91c3 ";
    {
      Options keep;
      keep.checkpoint_on_close = false;
      Store store;
      REQUIRE(Store::Open(f, keep, &store).ok());
      for (int i = 0; i < 20000; ++i) {
        REQUIRE(store.Put("k" + std::to_string(i), std::string(100, 'x')).ok());
        if (i == 17000) REQUIRE(store.Put("damaged", marker + std::string(100, 'd')).ok());
      }
      for (int i = 0; i < 15000; ++i) REQUIRE(store.Erase("k" + std::to_string(i)).ok());
      REQUIRE(store.Flush(FlushMode::kSync).ok());
      REQUIRE(store.Close().ok());
    }
    FlipByteOf(f, marker, 30, 0x01);
    CliResult r = RunCli({"put", f, "new", "value"});
    CHECK(r.code == 3);
    CHECK(r.err.find("fails its checksum") != std::string::npos);
    CHECK(r.err.find("the put was applied; only the close failed") != std::string::npos);
    CHECK(RunCli({"get", f, "new"}).out == "value");
    r = RunCli({"del", f, "new"});
    CHECK(r.code == 3);
    CHECK(r.err.find("the key was erased; only the close failed") != std::string::npos);
    CHECK(RunCli({"get", f, "new"}).code == 1);
  }

  TEST_CASE("cli: bad files through get keys dump stats check exit 3 with one line and unchanged bytes") {
    // An empty FILE argument: the engine's message, not one prefixed by ": ".
    const CliResult no_path = RunCli({"get", "", "k"});
    CHECK(no_path.code == 3);
    CHECK(ErrText(no_path) == "mapkv: store path is empty\n");

    TempDir dir;
    const std::string empty = dir.File("empty.mkv");
    WriteFileBytes(empty, "");
    const std::string random = dir.File("random.mkv");
    Rng rng(99);
    WriteFileBytes(random, rng.Bytes(64 * 1024));
    const std::string truncated = dir.File("truncated.mkv");
    {
      const std::string good = dir.File("good.mkv");
      REQUIRE(RunCli({"put", good, "k", "v"}).code == 0);
      WriteFileBytes(truncated, ReadFileBytes(good).substr(0, 100));
    }
    const std::string directory = dir.File("dir.mkv");
    REQUIRE(std::filesystem::create_directory(directory));
    const std::string missing = dir.File("missing.mkv");

    for (const std::string& f : {empty, random, truncated, directory, missing}) {
      const bool is_file = f != directory && f != missing;
      const std::string bytes = is_file ? ReadFileBytes(f) : "";
      for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
               {"get", f, "k"}, {"stats", f}, {"stats", f, "--json"}, {"check", f}, {"keys", f}, {"dump", f}}) {
        CAPTURE(f);
        CAPTURE(args[0]);
        const CliResult r = RunCli(args);
        CHECK(r.code == 3);
        CheckOneLineError(r, f);
        CHECK(r.err.rfind("mapkv: ", 0) == 0);
      }
      if (is_file) CHECK(ReadFileBytes(f) == bytes);
    }
    CHECK_FALSE(FileExists(missing));  // read-only commands never create
  }

  TEST_CASE("cli: read-only commands never change the store's bytes") {
    TempDir dir;
    const std::string f = dir.File("s.mkv");
    REQUIRE(RunCli({"load", f}, "{\"key\": \"a\", \"value\": \"1\"}\n{\"key\": \"b\", \"value\": \"2\"}\n").code == 0);
    REQUIRE(RunCli({"del", f, "a"}).code == 0);  // leave some garbage behind
    REQUIRE(RunCli({"put", f, "c", "3"}).code == 0);
    const std::string bytes = ReadFileBytes(f);
    struct stat before {};
    REQUIRE(::stat(f.c_str(), &before) == 0);
    for (const std::vector<std::string>& args :
         std::vector<std::vector<std::string>>{{"get", f, "b"},
                                               {"get", f, "a"},
                                               {"keys", f},
                                               {"keys", f, "--prefix", "b"},
                                               {"dump", f},
                                               {"stats", f},
                                               {"stats", f, "--json"},
                                               {"check", f},
                                               {"salvage", f, dir.File("c.mkv")}}) {
      CAPTURE(args[0]);
      const CliResult r = RunCli(args);
      CHECK(r.code == (args[0] == "get" && args[2] == "a" ? 1 : 0));
      CHECK(ReadFileBytes(f) == bytes);
    }
    struct stat after {};
    REQUIRE(::stat(f.c_str(), &after) == 0);
    CHECK(after.st_size == before.st_size);
#ifndef _WIN32
    CHECK(after.st_mtim.tv_sec == before.st_mtim.tv_sec);
    CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);

    // A read-only file can still be read by them (they open it read-only),
    // and a put is refused.
    REQUIRE(::chmod(f.c_str(), 0400) == 0);
    if (::geteuid() != 0) {
      CHECK(RunCli({"put", f, "x", "y"}).code == 3);
      CHECK(RunCli({"get", f, "b"}).out == "2");
      CHECK(RunCli({"check", f}).out == "ok\n");
    } else {
      // Root ignores permission bits: the same as the file's owner, nobody.
      MESSAGE("running as root, where permissions do not apply: the commands run as uid/gid 65534");
      REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
      REQUIRE(::chown(f.c_str(), 65534, 65534) == 0);
      std::fflush(nullptr);
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0 || ::access(f.c_str(), R_OK) != 0) _exit(10);
        if (RunCli({"put", f, "x", "y"}).code != 3) _exit(2);
        if (RunCli({"get", f, "b"}).out != "2") _exit(3);
        if (RunCli({"check", f}).out != "ok\n") _exit(4);
        _exit(0);
      }
      const int rc = WaitChild(pid);
      if (rc == 10) {
        MESSAGE("SKIPPED: cannot test a read-only file here: the child could not become uid 65534 or read " << f);
        return;
      }
      const std::string what = rc == 2 ? "the put was not refused" : rc == 3 ? "get b did not print 2" : "check failed";
      CHECK_MESSAGE(rc == 0, "as uid 65534: " << what << " (exit " << rc << ")");
    }
#else
    CHECK(after.st_mtime == before.st_mtime);
    CHECK(RunCli({"get", f, "b"}).out == "2");
    CHECK(RunCli({"check", f}).out == "ok\n");
#endif
    CHECK(ReadFileBytes(f) == bytes);
  }

}  // TEST_SUITE("cli")

}  // namespace
}  // namespace mapkv::test
