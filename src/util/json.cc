#include "util/json.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace ffspec {

class JsonParser {
 public:
  JsonParser(const std::string &t, const std::string &what) : t_(t), what_(what) {}

  Json parse_document() {
    Json v = value(0);
    skip_ws();
    if (i_ != t_.size()) error("trailing characters");
    return v;
  }

 private:
  const std::string &t_;
  const std::string &what_;
  size_t i_ = 0;

  [[noreturn]] void error(const std::string &m) {
    fail(FFS_ERR_BAD_CHECKPOINT, what_ + ": invalid JSON at offset " + std::to_string(i_) + ": " + m);
  }
  void skip_ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) i_++;
  }
  bool eat(const char *lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (t_.compare(i_, n, lit) == 0) {
      i_ += n;
      return true;
    }
    return false;
  }
  Json value(int depth) {
    if (depth > 256) error("nesting too deep");
    skip_ws();
    if (i_ >= t_.size()) error("unexpected end");
    Json v;
    char c = t_[i_];
    if (c == '{') {
      v.type_ = Json::Type::Object;
      i_++;
      skip_ws();
      if (i_ < t_.size() && t_[i_] == '}') {
        i_++;
        return v;
      }
      for (;;) {
        skip_ws();
        if (i_ >= t_.size() || t_[i_] != '"') error("expected a key");
        std::string key = string();
        skip_ws();
        if (i_ >= t_.size() || t_[i_] != ':') error("expected ':'");
        i_++;
        v.obj_[key] = value(depth + 1);
        skip_ws();
        if (i_ < t_.size() && t_[i_] == ',') { i_++; continue; }
        if (i_ < t_.size() && t_[i_] == '}') { i_++; break; }
        error("expected ',' or '}'");
      }
    } else if (c == '[') {
      v.type_ = Json::Type::Array;
      i_++;
      skip_ws();
      if (i_ < t_.size() && t_[i_] == ']') {
        i_++;
        return v;
      }
      for (;;) {
        v.arr_.push_back(value(depth + 1));
        skip_ws();
        if (i_ < t_.size() && t_[i_] == ',') { i_++; continue; }
        if (i_ < t_.size() && t_[i_] == ']') { i_++; break; }
        error("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.type_ = Json::Type::String;
      v.s_ = string();
    } else if (eat("true")) {
      v.type_ = Json::Type::Bool;
      v.b_ = true;
    } else if (eat("false")) {
      v.type_ = Json::Type::Bool;
    } else if (eat("null")) {
    } else if (eat("NaN")) {
      v.type_ = Json::Type::Number;
      v.num_ = std::strtod("nan", nullptr);
    } else if (eat("Infinity")) {
      v.type_ = Json::Type::Number;
      v.num_ = 1e308 * 10;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      if (t_.compare(i_, 9, "-Infinity") == 0) {
        i_ += 9;
        v.type_ = Json::Type::Number;
        v.num_ = -1e308 * 10;
        return v;
      }
      const char *start = t_.c_str() + i_;
      char *end = nullptr;
      v.num_ = std::strtod(start, &end);
      if (end == start) error("bad number");
      i_ += end - start;
      v.type_ = Json::Type::Number;
    } else {
      error(std::string("unexpected character '") + c + "'");
    }
    return v;
  }
  static void put_utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) out += char(cp);
    else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
    else { out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
  }
  uint32_t hex4() {
    if (i_ + 4 > t_.size()) error("bad \\u escape");
    uint32_t cp = 0;
    for (int k = 0; k < 4; k++) {
      char h = t_[i_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= h - '0';
      else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
      else error("bad \\u escape");
    }
    return cp;
  }
  std::string string() {
    i_++;  // opening quote
    std::string out;
    while (i_ < t_.size() && t_[i_] != '"') {
      char c = t_[i_++];
      if (c != '\\') { out += c; continue; }
      if (i_ >= t_.size()) error("bad escape");
      char e = t_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && t_.compare(i_, 2, "\\u") == 0) {
            size_t save = i_;
            i_ += 2;
            uint32_t lo = hex4();
            if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else i_ = save;  // not a pair: the next escape stands alone
          }
          // A lone surrogate has no UTF-8 form: U+FFFD keeps the text valid.
          if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
          put_utf8(out, cp);
          break;
        }
        default: error("bad escape");
      }
    }
    if (i_ >= t_.size()) error("unterminated string");
    i_++;
    return out;
  }
};

Json Json::parse(const std::string &text, const std::string &what) {
  return JsonParser(text, what).parse_document();
}

const Json *Json::get(const std::string &key) const {
  if (type_ != Type::Object) return nullptr;
  auto it = obj_.find(key);
  return it == obj_.end() ? nullptr : &it->second;
}

std::string read_text_file(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(FFS_ERR_NOT_FOUND, "cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace ffspec
