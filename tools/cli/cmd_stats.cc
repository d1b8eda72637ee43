// cmd_stats.cc: `mapkv stats FILE [--json]`.
#include <CLI/CLI.hpp>
#include <cmath>
#include <memory>

#include "commands.h"
#include "text.h"

namespace mapkv::cli {
namespace {

struct StatsOptions {
  std::string file;
  bool json = false;
};

std::string Num(uint64_t v) { return std::to_string(v); }

std::string Real(double v, const char* format) {
  if (!std::isfinite(v)) v = 0;
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// "1234567 (1.2 MiB)".
std::string Bytes(uint64_t v) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double x = static_cast<double>(v);
  int u = 0;
  while (x >= 1024 && u < 4) {
    x /= 1024;
    ++u;
  }
  if (u == 0) return Num(v);
  return Num(v) + " (" + Real(x, "%.1f") + " " + kUnits[u] + ")";
}

std::string Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? "-" : Real(100.0 * static_cast<double>(part) / static_cast<double>(whole), "%.1f%%");
}

std::string Human(const std::string& file, const Stats& st) {
  std::string out;
  auto row = [&out](const char* name, const std::string& value) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%-23s", name);
    out += buf;
    out += value;
    out += '\n';
  };
  row("path", Escaped(file));
  row("format version", Num(st.format_major) + "." + Num(st.format_minor));
  row("entries", Num(st.entries));
  row("slots", Num(st.slots));
  row("load factor", Real(st.load_factor, "%.3f"));
  row("file bytes", Bytes(st.file_bytes));
  row("heap bytes", Bytes(st.heap_bytes));
  row("live bytes", Bytes(st.live_bytes) + ", " + Percent(st.live_bytes, st.file_bytes) + " of the file");
  row("garbage bytes", Bytes(st.garbage_bytes));
  row("free bytes", Bytes(st.free_bytes));
  row("table bytes", Bytes(st.table_bytes));
  row("change seq", Num(st.change_seq));
  row("checkpoint generation", Num(st.checkpoint_generation));
  row("max probe", Num(st.max_probe));
  row("mean probe", Real(st.mean_probe, "%.3f"));
  const uint64_t reclaimable = st.garbage_bytes + st.free_bytes;
  if (st.file_bytes > 0 && reclaimable * 2 > st.file_bytes) {
    out += "hint: " + Percent(reclaimable, st.file_bytes) +
           " of the file is garbage or free; `mapkv compact` reclaims it\n";
  }
  return out;
}

std::string Json(const std::string& file, const Stats& st) {
  std::string out = "{\"path\": ";
  AppendJsonString(&out, IsValidUtf8(file) ? file : Escaped(file));
  auto field = [&out](const char* name, const std::string& value) {
    out += ", \"";
    out += name;
    out += "\": ";
    out += value;
  };
  field("format_major", Num(st.format_major));
  field("format_minor", Num(st.format_minor));
  field("entries", Num(st.entries));
  field("slots", Num(st.slots));
  field("load_factor", Real(st.load_factor, "%.6g"));
  field("file_bytes", Num(st.file_bytes));
  field("heap_bytes", Num(st.heap_bytes));
  field("live_bytes", Num(st.live_bytes));
  field("garbage_bytes", Num(st.garbage_bytes));
  field("free_bytes", Num(st.free_bytes));
  field("table_bytes", Num(st.table_bytes));
  field("change_seq", Num(st.change_seq));
  field("checkpoint_generation", Num(st.checkpoint_generation));
  field("max_probe", Num(st.max_probe));
  field("mean_probe", Real(st.mean_probe, "%.6g"));
  out += "}\n";
  return out;
}

int RunStats(const StatsOptions& o) {
  Store store;
  Status s = OpenReadOnly(o.file, &store);
  if (!s.ok()) return FailOpen(o.file, s);
  Stats st;
  s = store.GetStats(&st);
  if (!s.ok()) return Fail(o.file, s);
  const std::string text = o.json ? Json(o.file, st) : Human(o.file, st);
  return WriteStdout(text) ? kExitOk : kExitStore;
}

}  // namespace

Command SetupStats(CLI::App& app) {
  auto o = std::make_shared<StatsOptions>();
  CLI::App* sub = app.add_subcommand(
      "stats",
      "Show the store's figures: format version, entries, slots, load factor, file/heap/live/garbage/"
      "free/table bytes, change sequence, checkpoint generation and probe lengths.");
  sub->add_option("FILE", o->file, "Store file")->required();
  sub->add_flag("--json", o->json, "One JSON object (field names as in mapkv::Stats, plus \"path\")");
  return {sub, [o] { return RunStats(*o); }};
}

}  // namespace mapkv::cli
