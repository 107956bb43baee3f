// A small JSON reader for config.json, generation_config.json, safetensors headers and
// index files. Parse errors throw ffspec::Error(FFS_ERR_BAD_CHECKPOINT) naming the offset.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ffspec {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string &text, const std::string &what);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  bool is_bool() const { return type_ == Type::Bool; }

  double number() const { return num_; }
  bool boolean() const { return b_; }
  const std::string &str() const { return s_; }
  const std::vector<Json> &array() const { return arr_; }
  const std::map<std::string, Json> &object() const { return obj_; }

  bool has(const std::string &key) const { return type_ == Type::Object && obj_.count(key); }
  // nullptr when absent or not an object
  const Json *get(const std::string &key) const;

 private:
  Type type_ = Type::Null;
  double num_ = 0;
  bool b_ = false;
  std::string s_;
  std::vector<Json> arr_;
  std::map<std::string, Json> obj_;
  friend class JsonParser;
};

std::string read_text_file(const std::string &path);

}  // namespace ffspec
