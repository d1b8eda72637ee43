// json_lines.h: the JSON Lines format of `mapkv dump` and `mapkv load`.
//
// One pair per line: {"key": "...", "value": "..."}, each as a JSON string
// when it is valid UTF-8 and escaping at most triples it, else as
// "key_base64" / "value_base64" holding its standard base64. So a line is at
// most about 3 times its pair's bytes (3 GiB for the largest value), within
// kMaxJsonLine. Writing is by hand (text.h); reading goes through
// JsonFields (json_fields.h: simdjson, or nlohmann-json on Windows).
#ifndef MAPKV_TOOLS_CLI_JSON_LINES_H_
#define MAPKV_TOOLS_CLI_JSON_LINES_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "json_fields.h"

namespace mapkv::cli {

// Appends the line of one pair, with its '\n'.
void AppendJsonLine(std::string* out, std::string_view key, std::string_view value);

// Readable bytes a line given to JsonLineParser::Parse must be followed by
// (simdjson's SIMDJSON_PADDING; their content does not matter).
inline constexpr size_t kJsonLinePadding = 64;

// The longest line load reads: simdjson's limit for one document (4 GiB - 1).
inline constexpr uint64_t kMaxJsonLine = 0xFFFFFFFF;

// Parses lines of the format, strictly: one JSON object per line with exactly
// one of "key"/"key_base64" and one of "value"/"value_base64", all strings,
// and no other field.
class JsonLineParser {
 public:
  JsonLineParser();
  ~JsonLineParser();
  JsonLineParser(const JsonLineParser&) = delete;
  JsonLineParser& operator=(const JsonLineParser&) = delete;

  // Parses `line` (without its '\n'; kJsonLinePadding readable bytes must
  // follow it). On success points *key and *value at the pair (valid until
  // the next Parse) and returns true; else sets *error to what is wrong.
  bool Parse(std::string_view line, std::string_view* key, std::string_view* value, std::string* error);

 private:
  JsonFields parser_;
  std::vector<JsonField> fields_;
  std::string key_bytes_;    // decoded key_base64
  std::string value_bytes_;  // decoded value_base64
};

}  // namespace mapkv::cli

#endif  // MAPKV_TOOLS_CLI_JSON_LINES_H_
