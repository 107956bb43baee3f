// Tokenizer sources: tokenizer.json as is; a SentencePiece tokenizer.model and GGUF metadata
// turned into the pipeline HF builds for them (transformers' LlamaTokenizer for SentencePiece
// BPE; the original checkpoints' tokenizer.json for GGUF pre-tokenizer names).
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <unordered_map>

#include "tokenizer/pipeline.h"
#include "tokenizer/spec.h"
#include "tokenizer/unicode.h"
#include "util/error.h"
#include "weights/checkpoint.h"

namespace ffspec {

namespace {

const char *kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

std::string token_content(const Json *j) {
  if (!j) return "";
  if (j->is_string()) return j->str();
  if (const Json *c = j->get("content"))
    if (c->is_string()) return c->str();
  return "";
}

bool flag(const Json &config, const char *key, bool dflt) {
  const Json *v = config.get(key);
  return v && v->is_bool() ? v->boolean() : dflt;
}

// The post-processor transformers builds for add_bos_token / add_eos_token.
Json bos_eos_template(const std::string &bos, bool add_bos, const std::string &eos, bool add_eos) {
  auto esc = [](const std::string &s) {
    std::string o;
    for (char c : s) {
      if (c == '"' || c == '\\') o += '\\';
      o += c;
    }
    return o;
  };
  std::string single = "[";
  if (add_bos) single += "{\"SpecialToken\":{\"id\":\"" + esc(bos) + "\",\"type_id\":0}},";
  single += "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}";
  if (add_eos) single += ",{\"SpecialToken\":{\"id\":\"" + esc(eos) + "\",\"type_id\":0}}";
  single += "]";
  return Json::parse("{\"type\":\"TemplateProcessing\",\"single\":" + single + "}", "post-processor template");
}

// Merges for a SentencePiece BPE vocabulary (which has none): every split of every piece into
// two pieces. Without scores (transformers' generate_merges, what LlamaTokenizer builds from
// tokenizer.model): ordered by the piece's id, then by the left part's length. With scores
// (the converter that wrote the original Llama-2 / Mistral tokenizer.json): by score,
// highest first, ties in piece order, splits of one piece by the parts' ids.
std::vector<std::pair<std::string, std::string>> merges_from_pieces(const std::vector<std::string> &pieces,
                                                                    const std::vector<double> *scores) {
  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < pieces.size(); i++) ids.emplace(pieces[i], static_cast<int32_t>(i));
  struct M {
    std::string l, r;
    double score;
  };
  std::vector<M> merges;
  std::vector<M> local;
  for (size_t k = 0; k < pieces.size(); k++) {
    const std::string &p = pieces[k];
    local.clear();
    for (size_t i = 0; i < p.size();) {
      decode_utf8(p, i);
      if (i >= p.size()) break;
      std::string l = p.substr(0, i), r = p.substr(i);
      if (ids.count(l) && ids.count(r)) local.push_back({std::move(l), std::move(r), scores ? (*scores)[k] : 0.0});
    }
    if (scores)
      std::stable_sort(local.begin(), local.end(), [&](const M &x, const M &y) {
        int32_t xl = ids[x.l], yl = ids[y.l];
        return xl != yl ? xl < yl : ids[x.r] < ids[y.r];
      });
    for (M &m : local) merges.push_back(std::move(m));
  }
  if (scores)
    std::stable_sort(merges.begin(), merges.end(), [](const M &x, const M &y) { return x.score > y.score; });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (M &m : merges) out.emplace_back(std::move(m.l), std::move(m.r));
  return out;
}

// ---- protobuf (tokenizer.model) ---------------------------------------------------------

struct Proto {
  const uint8_t *p, *end;
  const std::string &file;
  [[noreturn]] void bad() { fail(FFS_ERR_BAD_CHECKPOINT, file + ": malformed SentencePiece model (protobuf)"); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) bad();
      uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    bad();
  }
  // Calls f(field, wire_type, this) for each field; f must consume the value.
  template <typename F>
  void each(F f) {
    while (p < end) {
      uint64_t key = varint();
      f(static_cast<uint32_t>(key >> 3), static_cast<uint32_t>(key & 7));
    }
  }
  Proto sub() {
    uint64_t n = varint();
    if (static_cast<uint64_t>(end - p) < n) bad();
    Proto s{p, p + n, file};
    p += n;
    return s;
  }
  std::string bytes() {
    Proto s = sub();
    return std::string(reinterpret_cast<const char *>(s.p), s.end - s.p);
  }
  float fixed32() {
    if (end - p < 4) bad();
    float f;
    std::memcpy(&f, p, 4);
    p += 4;
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: if (end - p < 8) bad(); p += 8; break;
      case 2: sub(); break;
      case 5: if (end - p < 4) bad(); p += 4; break;
      default: bad();
    }
  }
};

struct SpPiece {
  std::string piece;
  float score = 0;
  int type = 1;  // NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6
};

// ---- GGUF metadata ----------------------------------------------------------------------

struct GgufMeta {
  std::map<std::string, std::string> strings;
  std::map<std::string, double> numbers;
  std::map<std::string, std::vector<std::string>> string_arrays;
  std::map<std::string, std::vector<double>> number_arrays;
};

GgufMeta read_gguf_meta(const std::string &file) {
  MappedFile mf(file);
  const uint8_t *p = mf.data(), *end = mf.data() + mf.size();
  auto bad = [&]() { fail(FFS_ERR_BAD_CHECKPOINT, file + ": truncated or malformed GGUF"); };
  auto get = [&](void *dst, size_t n) {
    if (static_cast<size_t>(end - p) < n) bad();
    std::memcpy(dst, p, n);
    p += n;
  };
  auto u32 = [&] { uint32_t v; get(&v, 4); return v; };
  auto u64 = [&] { uint64_t v; get(&v, 8); return v; };
  auto str = [&] {
    uint64_t n = u64();
    if (static_cast<uint64_t>(end - p) < n) bad();
    std::string s(reinterpret_cast<const char *>(p), n);
    p += n;
    return s;
  };
  auto scalar = [&](uint32_t t) -> double {
    switch (t) {
      case 0: { uint8_t v; get(&v, 1); return v; }
      case 1: { int8_t v; get(&v, 1); return v; }
      case 2: { uint16_t v; get(&v, 2); return v; }
      case 3: { int16_t v; get(&v, 2); return v; }
      case 4: { uint32_t v; get(&v, 4); return v; }
      case 5: { int32_t v; get(&v, 4); return v; }
      case 6: { float v; get(&v, 4); return v; }
      case 7: { uint8_t v; get(&v, 1); return v; }
      case 10: { uint64_t v; get(&v, 8); return static_cast<double>(v); }
      case 11: { int64_t v; get(&v, 8); return static_cast<double>(v); }
      case 12: { double v; get(&v, 8); return v; }
      default: bad();
    }
    return 0;
  };
  if (mf.size() < 4 || std::memcmp(p, "GGUF", 4) != 0) fail(FFS_ERR_BAD_CHECKPOINT, file + ": not a GGUF file (bad magic)");
  p += 4;
  uint32_t version = u32();
  if (version < 2 || version > 3) fail(FFS_ERR_UNSUPPORTED, file + ": GGUF version " + std::to_string(version));
  u64();  // tensors
  uint64_t n_kv = u64();
  GgufMeta m;
  for (uint64_t i = 0; i < n_kv; i++) {
    std::string key = str();
    uint32_t t = u32();
    if (t == 8) {
      m.strings[key] = str();
    } else if (t == 9) {
      uint32_t at = u32();
      uint64_t n = u64();
      // Every element takes at least one byte: a count beyond the file is corruption.
      if (n > static_cast<uint64_t>(end - p))
        fail(FFS_ERR_BAD_CHECKPOINT, file + ": truncated or malformed GGUF (array " + key + " claims " +
                                         std::to_string(n) + " elements)");
      if (at == 8) {
        auto &v = m.string_arrays[key];
        v.reserve(n);
        for (uint64_t j = 0; j < n; j++) v.push_back(str());
      } else if (at == 9) {
        fail(FFS_ERR_UNSUPPORTED, file + ": nested GGUF arrays in " + key);
      } else {
        auto &v = m.number_arrays[key];
        v.reserve(n);
        for (uint64_t j = 0; j < n; j++) v.push_back(scalar(at));
      }
    } else {
      m.numbers[key] = scalar(t);
    }
  }
  return m;
}

// Pre-tokenizers of the original checkpoints, by GGUF tokenizer.ggml.pre name.
const char *kGpt2ByteLevel = R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";
const char *kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char *kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// DeepSeek LLM's tokenizer.json letter class (Latin, Greek, Cyrillic, ... ranges).
const char *kDeepseekLetters =
    "\\s?[A-Za-z\xC2\xB5\xC3\x80-\xC3\x96\xC3\x98-\xC3\xB6\xC3\xB8-\xC6\xBA\xC6\xBC-\xC6\xBF\xC7\x84-\xCA\x93\xCA\x95-"
    "\xCA\xAF\xCD\xB0-\xCD\xB3\xCD\xB6\xCD\xB7\xCD\xBB-\xCD\xBD\xCD\xBF\xCE\x86\xCE\x88-\xCE\x8A\xCE\x8C\xCE\x8E-\xCE\xA1"
    "\xCE\xA3-\xCF\xB5\xCF\xB7-\xD2\x81\xD2\x8A-\xD4\xAF\xD4\xB1-\xD5\x96\xE1\x82\xA0-\xE1\x83\x85\xE1\x8E\xA0-\xE1\x8F\xB5"
    "\xE1\x8F\xB8-\xE1\x8F\xBD\xE1\xB2\x90-\xE1\xB2\xBA\xE1\xB2\xBD-\xE1\xB2\xBF\xE1\xB4\x80-\xE1\xB4\xAB\xE1\xB5\xAB-"
    "\xE1\xB5\xB7\xE1\xB5\xB9-\xE1\xB6\x9A\xE1\xB8\x80-\xE1\xBC\x95\xE1\xBC\x98-\xE1\xBC\x9D\xE1\xBC\xA0-\xE1\xBD\x85"
    "\xE1\xBD\x88-\xE1\xBD\x8D\xE1\xBD\x90-\xE1\xBD\x97\xE1\xBD\x99\xE1\xBD\x9B\xE1\xBD\x9D\xE1\xBD\x9F-\xE1\xBD\xBD"
    "\xE1\xBE\x80-\xE1\xBE\xB4\xE1\xBE\xB6-\xE1\xBE\xBC\xE1\xBE\xBE\xE1\xBF\x82-\xE1\xBF\x84\xE1\xBF\x86-\xE1\xBF\x8C"
    "\xE1\xBF\x90-\xE1\xBF\x93\xE1\xBF\x96-\xE1\xBF\x9B\xE1\xBF\xA0-\xE1\xBF\xAC\xE1\xBF\xB2-\xE1\xBF\xB4\xE1\xBF\xB6-"
    "\xE1\xBF\xBC\xE2\x84\x82\xE2\x84\x87\xE2\x84\x8A-\xE2\x84\x93\xE2\x84\x95\xE2\x84\x99-\xE2\x84\x9D\xE2\x84\xA4"
    "\xE2\x84\xA6\xE2\x84\xA8\xE2\x84\xAA-\xE2\x84\xAD\xE2\x84\xAF-\xE2\x84\xB4\xE2\x84\xB9\xE2\x84\xBC-\xE2\x84\xBF"
    "\xE2\x85\x85-\xE2\x85\x89\xE2\x85\x8E\xE2\x86\x83\xE2\x86\x84\xE2\xB0\x80-\xE2\xB1\xBB\xE2\xB1\xBE-\xE2\xB3\xA4"
    "\xE2\xB3\xAB-\xE2\xB3\xAE\xE2\xB3\xB2\xE2\xB3\xB3\xEA\x99\x80-\xEA\x99\xAD\xEA\x9A\x80-\xEA\x9A\x9B\xEA\x9C\xA2-"
    "\xEA\x9D\xAF\xEA\x9D\xB1-\xEA\x9E\x87\xEA\x9E\x8B-\xEA\x9E\x8E\xEA\xAD\xB0-\xEA\xAE\xBF\xEF\xAC\x80-\xEF\xAC\x86"
    "\xEF\xAC\x93-\xEF\xAC\x97\xEF\xBC\xA1-\xEF\xBC\xBA\xEF\xBD\x81-\xEF\xBD\x9A\xF0\x90\x90\x80-\xF0\x90\x91\x8F"
    "\xF0\x90\x92\xB0-\xF0\x90\x93\x93\xF0\x90\x93\x98-\xF0\x90\x93\xBB\xF0\x90\xB2\x80-\xF0\x90\xB2\xB2\xF0\x90\xB3\x80-"
    "\xF0\x90\xB3\xB2\xF0\x91\xA2\xA0-\xF0\x91\xA3\x9F\xF0\x9E\xA4\x80-\xF0\x9E\xA5\x83]+";

std::string json_str(const std::string &s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += static_cast<char>(c);
    else if (c == '\n') o += "\\n";
    else if (c == '\r') o += "\\r";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else o += static_cast<char>(c);
  }
  return o + "\"";
}
std::string split_json(const std::string &regex) {
  return R"({"type":"Split","pattern":{"Regex":)" + json_str(regex) + R"(},"behavior":"Isolated","invert":false})";
}
std::string seq_json(const std::vector<std::string> &parts) {
  std::string s = R"({"type":"Sequence","pretokenizers":[)";
  for (size_t i = 0; i < parts.size(); i++) s += (i ? "," : "") + parts[i];
  return s + "]}";
}

// (normalizer, pre_tokenizer) JSON for a GGUF pre-tokenizer name; empty pre = unknown name.
std::pair<std::string, std::string> gguf_pre(const std::string &pre) {
  const std::string bl_noregex = R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false})";
  const std::string digits = R"({"type":"Digits","individual_digits":true})";
  const std::string nfc = R"({"type":"NFC"})";
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2" || pre == "jais" || pre == "olmo")
    return {"", kGpt2ByteLevel};
  if (pre == "mpt" || pre == "gpt-neox") return {nfc, kGpt2ByteLevel};
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "smaug-bpe" || pre == "dbrx")
    return {"", seq_json({split_json(kLlama3Regex), bl_noregex})};
  if (pre == "qwen2" || pre == "stablelm2") return {nfc, seq_json({split_json(kQwen2Regex), bl_noregex})};
  if (pre == "starcoder" || pre == "refact" || pre == "smollm" || pre == "codeshell")
    return {"", seq_json({digits, kGpt2ByteLevel})};
  if (pre == "command-r") return {nfc, seq_json({digits, kGpt2ByteLevel})};
  if (pre == "falcon")
    return {"", seq_json({R"({"type":"Punctuation","behavior":"Contiguous"})", kGpt2ByteLevel,
                          R"({"type":"Digits","individual_digits":false})", split_json("[0-9][0-9][0-9]")})};
  if (pre == "deepseek-llm")
    return {"", seq_json({split_json("[\r\n]"), split_json(kDeepseekLetters),
                          split_json("\\s?[!-/:-~\xEF\xBC\x81-\xEF\xBC\x8F\xEF\xBC\x9A-\xEF\xBD\x9E\xE2\x80\x98-"
                                     "\xE2\x80\x9F\xE3\x80\x80-\xE3\x80\x82]+"),
                          split_json("\\s+$"), split_json("[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+"),
                          split_json("\\p{N}+"), bl_noregex})};
  if (pre == "deepseek-coder")
    return {"", seq_json({split_json("[\r\n]"), split_json("\\s?\\p{L}+"), split_json("\\s?\\p{P}+"),
                          split_json("[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+"),
                          split_json("\\p{N}"), bl_noregex})};
  return {"", ""};
}

}  // namespace

TokenizerSpec spec_from_tokenizer_json(const std::string &file, const Json &config) {
  Json j = Json::parse(read_text_file(file), file);
  TokenizerSpec spec;
  spec.source = file;
  const Json *model = j.get("model");
  if (!model || !model->is_object()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": no 'model' object");
  std::string type = model->get("type") && model->get("type")->is_string() ? model->get("type")->str() : "";
  if (type.empty() && model->get("merges")) type = "BPE";
  if (type != "BPE")
    fail(FFS_ERR_UNSUPPORTED, file + ": model type '" + type + "' is not supported (BPE only)");
  if (const Json *d = model->get("dropout"))
    if (d->is_number() && d->number() > 0) fail(FFS_ERR_UNSUPPORTED, file + ": BPE dropout is not supported");
  const Json *vocab = model->get("vocab");
  if (!vocab || !vocab->is_object()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": model.vocab is not an object");
  for (auto &kv : vocab->object()) {
    if (!kv.second.is_number()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": vocab entry '" + kv.first + "' has no id");
    spec.model.vocab.emplace_back(
        kv.first, static_cast<int32_t>(json_int(kv.second, 0, INT32_MAX, file + ": id of vocab entry '" + kv.first + "'")));
  }
  if (const Json *merges = model->get("merges")) {
    for (const Json &m : merges->array()) {
      if (m.is_string()) {
        size_t sp = m.str().find(' ', 1);
        if (sp == std::string::npos) fail(FFS_ERR_BAD_CHECKPOINT, file + ": bad merge '" + m.str() + "'");
        spec.model.merges.emplace_back(m.str().substr(0, sp), m.str().substr(sp + 1));
      } else if (m.is_array() && m.array().size() == 2 && m.array()[0].is_string() && m.array()[1].is_string()) {
        spec.model.merges.emplace_back(m.array()[0].str(), m.array()[1].str());
      } else {
        fail(FFS_ERR_BAD_CHECKPOINT, file + ": bad merge entry");
      }
    }
  }
  auto mstr = [&](const char *k) {
    const Json *v = model->get(k);
    return v && v->is_string() ? v->str() : std::string();
  };
  auto mbool = [&](const char *k) {
    const Json *v = model->get(k);
    return v && v->is_bool() && v->boolean();
  };
  spec.model.unk_token = mstr("unk_token");
  spec.model.continuing_subword_prefix = mstr("continuing_subword_prefix");
  spec.model.end_of_word_suffix = mstr("end_of_word_suffix");
  spec.model.byte_fallback = mbool("byte_fallback");
  spec.model.fuse_unk = mbool("fuse_unk");
  spec.model.ignore_merges = mbool("ignore_merges");
  if (const Json *added = j.get("added_tokens")) {
    for (const Json &a : added->array()) {
      AddedTokenSpec t;
      if (!a.get("id") || !a.get("content")) fail(FFS_ERR_BAD_CHECKPOINT, file + ": added token without id/content");
      t.id = static_cast<int32_t>(json_int(*a.get("id"), 0, INT32_MAX, file + ": added token id"));
      t.content = a.get("content")->str();
      auto b = [&](const char *k, bool d) { return a.get(k) && a.get(k)->is_bool() ? a.get(k)->boolean() : d; };
      t.special = b("special", false);
      t.single_word = b("single_word", false);
      t.lstrip = b("lstrip", false);
      t.rstrip = b("rstrip", false);
      t.normalized = b("normalized", !t.special);
      spec.added.push_back(std::move(t));
    }
  }
  for (const char *k : {"normalizer", "pre_tokenizer", "post_processor", "decoder"}) {
    const Json *v = j.get(k);
    Json value = v ? *v : Json();
    if (!std::strcmp(k, "normalizer")) spec.normalizer = value;
    else if (!std::strcmp(k, "pre_tokenizer")) spec.pre_tokenizer = value;
    else if (!std::strcmp(k, "post_processor")) spec.post_processor = value;
    else spec.decoder = value;
  }
  spec.bos_token = token_content(config.get("bos_token"));
  spec.eos_token = token_content(config.get("eos_token"));
  return spec;
}

TokenizerSpec spec_from_sentencepiece(const std::string &file, const Json &config) {
  std::string data = read_text_file(file);
  Proto top{reinterpret_cast<const uint8_t *>(data.data()), reinterpret_cast<const uint8_t *>(data.data()) + data.size(), file};
  std::vector<SpPiece> pieces;
  int model_type = 1;  // UNIGRAM by default
  int32_t unk_id = 0, bos_id = 1, eos_id = 2;
  bool add_dummy_prefix = true;
  top.each([&](uint32_t field, uint32_t wire) {
    if (field == 1 && wire == 2) {
      Proto sp = top.sub();
      SpPiece piece;
      sp.each([&](uint32_t f, uint32_t w) {
        if (f == 1 && w == 2) piece.piece = sp.bytes();
        else if (f == 2 && w == 5) piece.score = sp.fixed32();
        else if (f == 3 && w == 0) piece.type = static_cast<int>(sp.varint());
        else sp.skip(w);
      });
      pieces.push_back(std::move(piece));
    } else if (field == 2 && wire == 2) {
      Proto ts = top.sub();
      ts.each([&](uint32_t f, uint32_t w) {
        if (w != 0) return ts.skip(w);
        uint64_t v = ts.varint();
        if (f == 3) model_type = static_cast<int>(v);
        else if (f == 40) unk_id = static_cast<int32_t>(v);
        else if (f == 41) bos_id = static_cast<int32_t>(v);
        else if (f == 42) eos_id = static_cast<int32_t>(v);
      });
    } else if (field == 3 && wire == 2) {
      Proto ns = top.sub();
      ns.each([&](uint32_t f, uint32_t w) {
        if (f == 3 && w == 0) add_dummy_prefix = ns.varint() != 0;
        else ns.skip(w);
      });
    } else {
      top.skip(wire);
    }
  });
  if (pieces.empty()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": no pieces (not a SentencePiece model?)");
  if (model_type != 2)
    fail(FFS_ERR_UNSUPPORTED, file + ": SentencePiece model type " + std::to_string(model_type) +
                                  (model_type == 1 ? " (Unigram)" : "") + " is not supported (BPE only)");
  TokenizerSpec spec;
  spec.source = file;
  std::vector<std::string> names;
  for (size_t i = 0; i < pieces.size(); i++) {
    names.push_back(pieces[i].piece);
    spec.model.vocab.emplace_back(pieces[i].piece, static_cast<int32_t>(i));
    int t = pieces[i].type;
    if (t == 2 || t == 3 || t == 4) {
      AddedTokenSpec a;
      a.id = static_cast<int32_t>(i);
      a.content = pieces[i].piece;
      a.special = t != 4;
      a.normalized = false;
      spec.added.push_back(a);
    }
  }
  spec.model.merges = merges_from_pieces(names, nullptr);
  spec.model.byte_fallback = true;
  spec.model.fuse_unk = true;
  auto name_of = [&](int32_t id) { return id >= 0 && static_cast<size_t>(id) < names.size() ? names[id] : std::string(); };
  spec.bos_token = token_content(config.get("bos_token"));
  spec.eos_token = token_content(config.get("eos_token"));
  if (spec.bos_token.empty()) spec.bos_token = name_of(bos_id);
  if (spec.eos_token.empty()) spec.eos_token = name_of(eos_id);
  (void)unk_id;
  bool prefix = flag(config, "add_prefix_space", add_dummy_prefix);
  spec.pre_tokenizer = Json::parse(std::string(R"({"type":"Metaspace","replacement":")") + kMetaspace +
                                       R"(","prepend_scheme":")" + (prefix ? "first" : "never") + R"(","split":false})",
                                   "metaspace");
  spec.decoder = Json::parse(std::string(R"({"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":")") +
                                 kMetaspace + R"("},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"})" +
                                 (prefix ? R"(,{"type":"Strip","content":" ","start":1,"stop":0})" : "") + "]}",
                             "decoder");
  bool add_bos = flag(config, "add_bos_token", true), add_eos = flag(config, "add_eos_token", false);
  if ((add_bos && !spec.bos_token.empty()) || (add_eos && !spec.eos_token.empty()))
    spec.post_processor = bos_eos_template(spec.bos_token, add_bos && !spec.bos_token.empty(), spec.eos_token,
                                           add_eos && !spec.eos_token.empty());
  return spec;
}

TokenizerSpec spec_from_gguf(const std::string &file) {
  GgufMeta m = read_gguf_meta(file);
  auto sit = m.strings.find("tokenizer.ggml.model");
  if (sit == m.strings.end()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": GGUF has no tokenizer (tokenizer.ggml.model)");
  const std::string kind = sit->second;
  if (kind != "gpt2" && kind != "llama")
    fail(FFS_ERR_UNSUPPORTED, file + ": GGUF tokenizer model '" + kind + "' is not supported (gpt2, llama)");
  auto &tokens = m.string_arrays["tokenizer.ggml.tokens"];
  if (tokens.empty()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": GGUF has no tokenizer.ggml.tokens");
  auto &types = m.number_arrays["tokenizer.ggml.token_type"];
  auto num = [&](const char *k, double d) {
    auto it = m.numbers.find(k);
    return it == m.numbers.end() ? d : it->second;
  };
  TokenizerSpec spec;
  spec.source = file;
  for (size_t i = 0; i < tokens.size(); i++) {
    spec.model.vocab.emplace_back(tokens[i], static_cast<int32_t>(i));
    int t = i < types.size() ? static_cast<int>(types[i]) : 1;
    bool spm = kind == "llama";
    if (t == 3 || t == 4 || (spm && t == 2)) {
      AddedTokenSpec a;
      a.id = static_cast<int32_t>(i);
      a.content = tokens[i];
      a.special = t != 4;
      a.normalized = !a.special && !spm;
      spec.added.push_back(a);
    }
  }
  spec.bos_id = static_cast<int32_t>(num("tokenizer.ggml.bos_token_id", -1));
  spec.eos_id = static_cast<int32_t>(num("tokenizer.ggml.eos_token_id", -1));
  std::string bos = spec.bos_id >= 0 && static_cast<size_t>(spec.bos_id) < tokens.size() ? tokens[spec.bos_id] : "";
  std::string eos = spec.eos_id >= 0 && static_cast<size_t>(spec.eos_id) < tokens.size() ? tokens[spec.eos_id] : "";
  if (kind == "llama") {
    auto &scores = m.number_arrays["tokenizer.ggml.scores"];
    if (scores.size() != tokens.size()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": tokenizer.ggml.scores missing or of the wrong length");
    spec.model.merges = merges_from_pieces(tokens, &scores);
    spec.model.byte_fallback = true;
    spec.model.fuse_unk = true;
    // As the original Llama-2 / Mistral tokenizer.json (what llama.cpp's expected outputs
    // come from): a "\u2581" prepended to each piece of text, spaces replaced.
    bool prefix = num("tokenizer.ggml.add_space_prefix", 1) != 0;
    std::string replace = std::string(R"({"type":"Replace","pattern":{"String":" "},"content":")") + kMetaspace + "\"}";
    std::string norm = R"({"type":"Sequence","normalizers":[)";
    if (prefix) norm += std::string(R"({"type":"Prepend","prepend":")") + kMetaspace + "\"},";
    spec.normalizer = Json::parse(norm + replace + "]}", "normalizer");
    spec.decoder = Json::parse(std::string(R"({"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":")") +
                                   kMetaspace + R"("},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"})" +
                                   (prefix ? R"(,{"type":"Strip","content":" ","start":1,"stop":0})" : "") + "]}",
                               "decoder");
    bool add_bos = num("tokenizer.ggml.add_bos_token", 1) != 0, add_eos = num("tokenizer.ggml.add_eos_token", 0) != 0;
    if ((add_bos && !bos.empty()) || (add_eos && !eos.empty()))
      spec.post_processor = bos_eos_template(bos, add_bos && !bos.empty(), eos, add_eos && !eos.empty());
    return spec;
  }
  auto &merges = m.string_arrays["tokenizer.ggml.merges"];
  for (const std::string &mg : merges) {
    size_t sp = mg.find(' ', 1);
    if (sp == std::string::npos) fail(FFS_ERR_BAD_CHECKPOINT, file + ": bad merge '" + mg + "'");
    spec.model.merges.emplace_back(mg.substr(0, sp), mg.substr(sp + 1));
  }
  std::string pre = m.strings.count("tokenizer.ggml.pre") ? m.strings["tokenizer.ggml.pre"] : "";
  auto np = gguf_pre(pre);
  if (np.second.empty()) fail(FFS_ERR_UNSUPPORTED, file + ": GGUF pre-tokenizer '" + pre + "' is not supported");
  if (!np.first.empty()) spec.normalizer = Json::parse(np.first, "normalizer");
  spec.pre_tokenizer = Json::parse(np.second, "pre-tokenizer for " + pre);
  spec.decoder = Json::parse(R"({"type":"ByteLevel"})", "decoder");
  spec.model.ignore_merges = pre == "llama-bpe" || pre == "llama3";
  bool add_bos = num("tokenizer.ggml.add_bos_token", 0) != 0, add_eos = num("tokenizer.ggml.add_eos_token", 0) != 0;
  if ((add_bos && !bos.empty()) || (add_eos && !eos.empty()))
    spec.post_processor = bos_eos_template(bos, add_bos && !bos.empty(), eos, add_eos && !eos.empty());
  return spec;
}

}  // namespace ffspec
