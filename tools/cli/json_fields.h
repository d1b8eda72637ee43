// json_fields.h: parses one line of JSON into the fields of its object, for
// json_lines.cc. Two implementations, one per build (tools/cli/CMakeLists.txt):
// simdjson (json_fields_simdjson.cc) natively, and nlohmann-json
// (json_fields_nlohmann.cc) in the Windows cross build, where Debian's
// compiled simdjson library cannot be linked.
#ifndef MAPKV_TOOLS_CLI_JSON_FIELDS_H_
#define MAPKV_TOOLS_CLI_JSON_FIELDS_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mapkv::cli {

struct JsonField {
  std::string_view name;
  bool is_string = false;
  std::string_view text;  // the string's bytes when is_string
};

class JsonFields {
 public:
  JsonFields();
  ~JsonFields();
  JsonFields(const JsonFields&) = delete;
  JsonFields& operator=(const JsonFields&) = delete;

  // Parses `line` (kJsonLinePadding readable bytes must follow it). On
  // success fills *fields, in order, with views valid until the next Parse;
  // else sets *error ("not valid JSON: ...", "not a JSON object").
  bool Parse(std::string_view line, std::vector<JsonField>* fields, std::string* error);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mapkv::cli

#endif  // MAPKV_TOOLS_CLI_JSON_FIELDS_H_
