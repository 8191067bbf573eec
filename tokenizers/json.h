// A small JSON reader and writer: enough for tokenizer.json,
// tokenizer_config.json and writing tokenizer.json back out. Recursive
// descent with a depth limit, so hostile input gives an error, never a
// stack overflow.
#ifndef TOKENIZERS_JSON_H_
#define TOKENIZERS_JSON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizers/result.h"

namespace tokenizers {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Json() = default;
  static Json Bool(bool b);
  static Json Number(double d);
  static Json String(std::string s);
  static Json Array();
  static Json Object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  bool bool_value() const { return b_; }
  double number() const { return num_; }
  // The number as an integer, or false if it is not integral or too big.
  bool AsInt64(int64_t* out) const;
  const std::string& str() const { return str_; }
  const std::vector<Json>& items() const { return items_; }
  std::vector<Json>& items() { return items_; }
  // Object members in file order (tokenizer.json order matters to nobody,
  // but writing them back in order keeps diffs readable).
  const std::vector<std::pair<std::string, Json>>& members() const { return members_; }

  // Member lookup; nullptr if absent or this is not an object. Linear for
  // small objects; big ones (a vocab) are iterated, not looked up.
  const Json* Find(std::string_view key) const;
  // Convenience: member that must be a string / bool / int, or default.
  std::string GetString(std::string_view key, std::string def = "") const;
  bool GetBool(std::string_view key, bool def) const;

  void Push(Json v) { items_.push_back(std::move(v)); }
  void Set(std::string key, Json v) { members_.emplace_back(std::move(key), std::move(v)); }

  // Compact serialisation; strings are escaped so that the output is valid
  // JSON even when a string holds invalid UTF-8 (bytes become U+FFFD).
  void Write(std::string* out) const;
  std::string Dump() const {
    std::string s;
    Write(&s);
    return s;
  }

 private:
  Type type_ = Type::kNull;
  bool b_ = false;
  double num_ = 0;
  std::string str_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

// Parses a whole document. Errors carry the byte offset.
Result<Json> ParseJson(std::string_view text);

// Appends `s` as a JSON string literal (with quotes).
void WriteJsonString(std::string_view s, std::string* out);

}  // namespace tokenizers

#endif  // TOKENIZERS_JSON_H_
