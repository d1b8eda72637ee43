// json_lines.cc: see json_lines.h.
#include "json_lines.h"

#include "mapkv/store.h"
#include "text.h"

namespace mapkv::cli {

namespace {

// Appends `"name": ` and `s` as a JSON string when it is valid UTF-8 and
// escaping does not make it more than 3 times as long, else `"name_base64": `
// and its base64: text stays readable, and bytes that are mostly control
// characters (6 bytes each as \u00xx) do not make a line of up to 6 GiB,
// which the loader could not read (kMaxJsonLine). The escaped form is
// written, and taken back in the rare case it is too long.
void AppendField(std::string* out, std::string_view name, std::string_view s) {
  const size_t start = out->size();
  if (IsValidUtf8(s)) {
    out->append("\"").append(name).append("\": ");
    const size_t at = out->size();
    AppendJsonString(out, s);
    if (out->size() - at - 2 <= 3 * uint64_t{s.size()}) return;
    out->resize(start);
  }
  out->append("\"").append(name).append("_base64\": \"");
  AppendBase64(out, s);
  out->push_back('"');
}

}  // namespace

void AppendJsonLine(std::string* out, std::string_view key, std::string_view value) {
  out->push_back('{');
  AppendField(out, "key", key);
  out->append(", ");
  AppendField(out, "value", value);
  out->append("}\n");
}

JsonLineParser::JsonLineParser() = default;
JsonLineParser::~JsonLineParser() = default;

bool JsonLineParser::Parse(std::string_view line, std::string_view* key, std::string_view* value, std::string* error) {
  if (line.substr(0, 3) == "\xEF\xBB\xBF") {  // the parsers' own message names no cause
    *error = "starts with a UTF-8 byte order mark, which JSON Lines does not allow (an editor's? remove it)";
    return false;
  }
  if (!parser_.Parse(line, &fields_, error)) return false;
  // Which of the fields were seen: key, key_base64, value, value_base64.
  bool seen[4] = {false, false, false, false};
  static constexpr std::string_view kNames[4] = {"key", "key_base64", "value", "value_base64"};
  std::string_view text[4];
  for (const JsonField& field : fields_) {
    int i = 0;
    while (i < 4 && field.name != kNames[i]) ++i;
    if (i == 4) {
      *error = "unknown field \"" + Escaped(field.name) + "\"";
      return false;
    }
    if (seen[i]) {
      *error = "field \"" + std::string(kNames[i]) + "\" given twice";
      return false;
    }
    text[i] = field.text;
    if (!field.is_string) {
      *error = "field \"" + std::string(kNames[i]) + "\" is not a string";
      return false;
    }
    seen[i] = true;
  }
  for (int k = 0; k < 4; k += 2) {
    const std::string_view what = k == 0 ? "key" : "value";
    if (seen[k] && seen[k + 1]) {
      *error = "both \"" + std::string(what) + "\" and \"" + std::string(what) + "_base64\"";
      return false;
    }
    if (!seen[k] && !seen[k + 1]) {
      *error = "no \"" + std::string(what) + "\" or \"" + std::string(what) + "_base64\"";
      return false;
    }
  }
  if (seen[0]) {
    *key = text[0];
  } else {
    key_bytes_.clear();
    if (!Base64Decode(text[1], &key_bytes_)) {
      *error = "\"key_base64\" is not valid base64";
      return false;
    }
    *key = key_bytes_;
  }
  if (seen[2]) {
    *value = text[2];
  } else {
    value_bytes_.clear();
    if (!Base64Decode(text[3], &value_bytes_)) {
      *error = "\"value_base64\" is not valid base64";
      return false;
    }
    *value = value_bytes_;
  }
  if (key->empty()) {
    *error = "the key is empty";
    return false;
  }
  if (key->size() > kMaxKeySize) {
    *error = "the key has " + std::to_string(key->size()) + " bytes, more than " + std::to_string(kMaxKeySize);
    return false;
  }
  if (value->size() > kMaxValueSize) {
    *error = "the value has " + std::to_string(value->size()) + " bytes, more than " + std::to_string(kMaxValueSize);
    return false;
  }
  return true;
}

}  // namespace mapkv::cli
