// json_fields_nlohmann.cc: JsonFields with nlohmann-json (see json_fields.h),
// for the Windows build. Duplicate names are kept (a multimap-like object
// type), so "given twice" is reported as with simdjson.
#include <nlohmann/json.hpp>

#include "json_fields.h"

namespace mapkv::cli {

struct JsonFields::Impl {
  std::vector<std::pair<std::string, nlohmann::json>> members;
};

JsonFields::JsonFields() : impl_(std::make_unique<Impl>()) {}
JsonFields::~JsonFields() = default;

bool JsonFields::Parse(std::string_view line, std::vector<JsonField>* fields, std::string* error) {
  fields->clear();
  impl_->members.clear();
  // A SAX pass at the top level keeps every member in order, duplicates
  // included (nlohmann::json would keep the last only).
  nlohmann::json doc;
  std::string parse_error;
  int depth = 0;
  std::vector<std::string> keys;
  bool top_is_object = false;
  auto callback = [&](int d, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    depth = d;
    if (event == nlohmann::json::parse_event_t::object_start && d == 0) top_is_object = true;
    if (event == nlohmann::json::parse_event_t::key && d == 1) keys.push_back(parsed.get<std::string>());
    if (event == nlohmann::json::parse_event_t::value && d == 1 && !keys.empty() &&
        impl_->members.size() < keys.size()) {
      impl_->members.emplace_back(keys.back(), parsed);
    }
    if (event == nlohmann::json::parse_event_t::object_end && d == 1 && impl_->members.size() < keys.size()) {
      impl_->members.emplace_back(keys.back(), parsed);
    }
    if (event == nlohmann::json::parse_event_t::array_end && d == 1 && impl_->members.size() < keys.size()) {
      impl_->members.emplace_back(keys.back(), parsed);
    }
    return true;
  };
  try {
    doc = nlohmann::json::parse(line.begin(), line.end(), callback);
  } catch (const nlohmann::json::parse_error& e) {
    *error = std::string("not valid JSON: ") + e.what();
    return false;
  }
  if (!top_is_object || !doc.is_object()) {
    *error = "not a JSON object";
    return false;
  }
  for (const auto& [name, value] : impl_->members) {
    JsonField f;
    f.name = name;
    f.is_string = value.is_string();
    if (f.is_string) f.text = value.get_ref<const std::string&>();
    fields->push_back(f);
  }
  return true;
}

}  // namespace mapkv::cli
