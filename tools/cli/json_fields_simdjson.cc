// json_fields_simdjson.cc: JsonFields with simdjson (see json_fields.h).
#include <simdjson.h>

#include "json_fields.h"
#include "json_lines.h"

namespace mapkv::cli {

static_assert(kJsonLinePadding == simdjson::SIMDJSON_PADDING, "kJsonLinePadding must match simdjson");

struct JsonFields::Impl {
  simdjson::dom::parser parser;
};

JsonFields::JsonFields() : impl_(std::make_unique<Impl>()) {}
JsonFields::~JsonFields() = default;

bool JsonFields::Parse(std::string_view line, std::vector<JsonField>* fields, std::string* error) {
  fields->clear();
  simdjson::dom::element doc;
  if (auto err = impl_->parser.parse(line.data(), line.size(), /*realloc_if_needed=*/false).get(doc)) {
    if (err == simdjson::MEMALLOC) {
      *error = "out of memory for parsing the line (" + std::to_string(line.size()) + " bytes)";
    } else if (err == simdjson::CAPACITY) {
      *error = "the line has " + std::to_string(line.size()) + " bytes, more than the " + std::to_string(kMaxJsonLine) +
               " a line may have";
    } else {
      *error = std::string("not valid JSON: ") + simdjson::error_message(err);
    }
    return false;
  }
  simdjson::dom::object obj;
  if (doc.get_object().get(obj)) {
    *error = "not a JSON object";
    return false;
  }
  for (auto field : obj) {
    JsonField f;
    f.name = field.key;
    f.is_string = !field.value.get_string().get(f.text);
    fields->push_back(f);
  }
  return true;
}

}  // namespace mapkv::cli
