#include "tokenizer/pipeline.h"

#include <climits>
#include <cmath>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace ffspec {

int64_t json_int(const Json &j, int64_t lo, int64_t hi, const std::string &what) {
  const double v = j.is_number() ? j.number() : std::nan("");
  if (!(v >= static_cast<double>(lo) && v <= static_cast<double>(hi)) || v != std::floor(v))
    fail(FFS_ERR_BAD_CHECKPOINT, what + " must be a whole number in [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "]");
  return static_cast<int64_t>(v);
}

namespace {

std::string type_of(const Json &j) {
  const Json *t = j.get("type");
  return t && t->is_string() ? t->str() : "";
}
bool bool_or(const Json &j, const char *key, bool dflt) {
  const Json *v = j.get(key);
  return v && v->is_bool() ? v->boolean() : dflt;
}
std::string str_or(const Json &j, const char *key, const std::string &dflt) {
  const Json *v = j.get(key);
  return v && v->is_string() ? v->str() : dflt;
}
[[noreturn]] void unsupported(const std::string &what, const std::string &stage, const std::string &type) {
  fail(FFS_ERR_UNSUPPORTED, what + ": " + stage + " type '" + type + "' is not supported");
}

std::vector<uint32_t> to_cps(const std::string &s, std::vector<size_t> *byte_offsets) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  if (byte_offsets) byte_offsets->clear();
  for (size_t i = 0; i < s.size();) {
    if (byte_offsets) byte_offsets->push_back(i);
    cps.push_back(decode_utf8(s, i));
  }
  if (byte_offsets) byte_offsets->push_back(s.size());
  return cps;
}

// A pattern of Split / Replace: a literal string or a regex.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;

  Pattern(const Json &j, const std::string &what) {
    const Json *p = j.get("pattern");
    if (p && p->get("String") && p->get("String")->is_string()) {
      literal = p->get("String")->str();
      if (literal.empty()) fail(FFS_ERR_BAD_CHECKPOINT, what + ": empty String pattern");
    } else if (p && p->get("Regex") && p->get("Regex")->is_string()) {
      regex = std::make_unique<Regex>(p->get("Regex")->str());
    } else {
      fail(FFS_ERR_BAD_CHECKPOINT, what + ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
  }
  // Byte ranges of the non-overlapping matches.
  std::vector<std::pair<size_t, size_t>> find(const std::string &s) const {
    std::vector<std::pair<size_t, size_t>> out;
    if (!regex) {
      for (size_t at = s.find(literal); at != std::string::npos; at = s.find(literal, at + literal.size()))
        out.emplace_back(at, at + literal.size());
      return out;
    }
    std::vector<size_t> offs;
    std::vector<uint32_t> cps = to_cps(s, &offs);
    for (auto &m : regex->find_all(cps)) out.emplace_back(offs[m.first], offs[m.second]);
    return out;
  }
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behavior_of(const Json &j, const std::string &what, Behavior dflt) {
  std::string b = str_or(j, "behavior", "");
  if (b.empty()) return dflt;
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  fail(FFS_ERR_UNSUPPORTED, what + ": split behavior '" + b + "' is not supported");
}

// Cuts one split at the given matches (byte ranges) the way HF's NormalizedString::split does.
void split_at(const PreSplit &in, const std::vector<std::pair<size_t, size_t>> &matches, Behavior behavior,
              bool invert, std::vector<PreSplit> &out) {
  struct Part {
    size_t a, b;
    bool m;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (auto &m : matches) {
    if (m.first > prev) parts.push_back({prev, m.first, false});
    parts.push_back({m.first, m.second, true});
    prev = m.second;
  }
  if (prev < in.text.size()) parts.push_back({prev, in.text.size(), false});
  if (invert)
    for (Part &p : parts) p.m = !p.m;
  std::vector<std::pair<size_t, size_t>> keep;
  switch (behavior) {
    case Behavior::Removed:
      for (Part &p : parts)
        if (!p.m) keep.emplace_back(p.a, p.b);
      break;
    case Behavior::Isolated:
      for (Part &p : parts) keep.emplace_back(p.a, p.b);
      break;
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (Part &p : parts) {
        if (p.m && !prev_match && !keep.empty()) keep.back().second = p.b;
        else keep.emplace_back(p.a, p.b);
        prev_match = p.m;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      std::vector<std::pair<size_t, size_t>> rev;
      for (size_t k = parts.size(); k-- > 0;) {
        Part &p = parts[k];
        if (p.m && !prev_match && !rev.empty()) rev.back().first = p.a;
        else rev.emplace_back(p.a, p.b);
        prev_match = p.m;
      }
      keep.assign(rev.rbegin(), rev.rend());
      break;
    }
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (Part &p : parts) {
        if (p.m == prev_match && !keep.empty()) keep.back().second = p.b;
        else keep.emplace_back(p.a, p.b);
        prev_match = p.m;
      }
      break;
    }
  }
  for (auto &k : keep)
    if (k.second > k.first) out.push_back({in.text.substr(k.first, k.second - k.first), in.at_origin && k.first == 0});
}

// Matches of single characters satisfying pred, as byte ranges.
template <typename Pred>
std::vector<std::pair<size_t, size_t>> char_matches(const std::string &s, Pred pred) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0; i < s.size();) {
    size_t a = i;
    uint32_t c = decode_utf8(s, i);
    if (pred(c)) out.emplace_back(a, i);
  }
  return out;
}

bool is_punctuation(uint32_t c) {
  if (c < 128) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  return ucat_mask(c) & kCatP;
}

// ---- normalizers ------------------------------------------------------------------------

struct NormalizerSeq : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  std::string apply(const std::string &s) const override {
    std::string t = s;
    for (auto &p : parts) t = p->apply(t);
    return t;
  }
};
struct UnicodeNorm : Normalizer {
  NormForm form;
  explicit UnicodeNorm(NormForm f) : form(f) {}
  std::string apply(const std::string &s) const override { return normalize(s, form); }
};
struct Lowercase : Normalizer {
  std::string apply(const std::string &s) const override { return to_lower(s); }
};
struct ReplaceNorm : Normalizer {
  Pattern pattern;
  std::string content;
  ReplaceNorm(const Json &j, const std::string &what) : pattern(j, what), content(str_or(j, "content", "")) {}
  std::string apply(const std::string &s) const override {
    std::string out;
    size_t prev = 0;
    for (auto &m : pattern.find(s)) {
      out.append(s, prev, m.first - prev);
      out += content;
      prev = m.second;
    }
    out.append(s, prev, std::string::npos);
    return out;
  }
};
struct Prepend : Normalizer {
  std::string prefix;
  std::string apply(const std::string &s) const override { return s.empty() ? s : prefix + s; }
};
struct StripNorm : Normalizer {
  bool left, right;
  std::string apply(const std::string &s) const override {
    std::vector<size_t> offs;
    std::vector<uint32_t> cps = to_cps(s, &offs);
    size_t a = 0, b = cps.size();
    if (left)
      while (a < b && is_white_space(cps[a])) a++;
    if (right)
      while (b > a && is_white_space(cps[b - 1])) b--;
    return s.substr(offs[a], offs[b] - offs[a]);
  }
};
struct StripAccents : Normalizer {
  std::string apply(const std::string &s) const override {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      uint32_t c = decode_utf8(s, i);
      if (ucategory(c) != UC_Mn) append_utf8(out, c);
    }
    return out;
  }
};

// ---- pre-tokenizers ---------------------------------------------------------------------

struct PreSeq : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void apply(std::vector<PreSplit> &splits) const override {
    for (auto &p : parts) p->apply(splits);
  }
};

// Splits each piece with a function giving the matches.
template <typename F>
void split_each(std::vector<PreSplit> &splits, Behavior b, bool invert, F matches) {
  std::vector<PreSplit> out;
  out.reserve(splits.size() * 2);
  for (const PreSplit &s : splits) split_at(s, matches(s.text), b, invert, out);
  splits.swap(out);
}

const char *kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct ByteLevelPre : PreTokenizer {
  bool add_prefix_space, use_regex;
  Regex gpt2{kGpt2Pattern};
  void apply(std::vector<PreSplit> &splits) const override {
    if (add_prefix_space)
      for (PreSplit &s : splits)
        if (s.text.empty() || s.text[0] != ' ') s.text.insert(0, " ");
    if (use_regex) {
      split_each(splits, Behavior::Isolated, false, [&](const std::string &t) {
        std::vector<size_t> offs;
        std::vector<uint32_t> cps = to_cps(t, &offs);
        std::vector<std::pair<size_t, size_t>> out;
        for (auto &m : gpt2.find_all(cps)) out.emplace_back(offs[m.first], offs[m.second]);
        return out;
      });
    }
    for (PreSplit &s : splits) s.text = byte_level_encode(s.text);
  }
};
struct SplitPre : PreTokenizer {
  Pattern pattern;
  Behavior behavior;
  bool invert;
  SplitPre(const Json &j, const std::string &what)
      : pattern(j, what), behavior(behavior_of(j, what, Behavior::Isolated)), invert(bool_or(j, "invert", false)) {}
  void apply(std::vector<PreSplit> &splits) const override {
    split_each(splits, behavior, invert, [&](const std::string &t) { return pattern.find(t); });
  }
};
struct DigitsPre : PreTokenizer {
  bool individual;
  void apply(std::vector<PreSplit> &splits) const override {
    split_each(splits, individual ? Behavior::Isolated : Behavior::Contiguous, false,
               [](const std::string &t) { return char_matches(t, is_numeric); });
  }
};
struct PunctuationPre : PreTokenizer {
  Behavior behavior;
  void apply(std::vector<PreSplit> &splits) const override {
    split_each(splits, behavior, false, [](const std::string &t) { return char_matches(t, is_punctuation); });
  }
};
struct WhitespaceSplitPre : PreTokenizer {
  void apply(std::vector<PreSplit> &splits) const override {
    split_each(splits, Behavior::Removed, false, [](const std::string &t) { return char_matches(t, is_white_space); });
  }
};
struct WhitespacePre : PreTokenizer {
  Regex re{"\\w+|[^\\w\\s]+"};
  void apply(std::vector<PreSplit> &splits) const override {
    split_each(splits, Behavior::Removed, true, [&](const std::string &t) {
      std::vector<size_t> offs;
      std::vector<uint32_t> cps = to_cps(t, &offs);
      std::vector<std::pair<size_t, size_t>> out;
      for (auto &m : re.find_all(cps)) out.emplace_back(offs[m.first], offs[m.second]);
      return out;
    });
  }
};
struct MetaspacePre : PreTokenizer {
  std::string replacement;
  std::string scheme;  // always | first | never
  bool split;
  void apply(std::vector<PreSplit> &splits) const override {
    for (PreSplit &s : splits) {
      std::string t;
      for (char c : s.text) {
        if (c == ' ') t += replacement;
        else t += c;
      }
      bool starts = t.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (scheme == "always" || (scheme == "first" && s.at_origin))) t.insert(0, replacement);
      s.text = std::move(t);
    }
    if (split) {
      split_each(splits, Behavior::MergedWithNext, false, [&](const std::string &t) {
        std::vector<std::pair<size_t, size_t>> out;
        for (size_t at = t.find(replacement); at != std::string::npos; at = t.find(replacement, at + replacement.size()))
          out.emplace_back(at, at + replacement.size());
        return out;
      });
    }
  }
};

// ---- decoders ---------------------------------------------------------------------------

struct DecoderSeq : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void apply(std::vector<std::string> &t) const override {
    for (auto &p : parts) p->apply(t);
  }
};
struct ByteLevelDec : Decoder {
  void apply(std::vector<std::string> &toks) const override {
    std::string bytes;
    for (const std::string &t : toks) {
      size_t start = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t.size();) {
        int b = byte_from_unicode(decode_utf8(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes += static_cast<char>(b);
      }
      if (!ok) {
        bytes.resize(start);
        bytes += t;
      }
    }
    toks.assign(1, utf8_lossy(bytes));
  }
};
struct ReplaceDec : Decoder {
  Pattern pattern;
  std::string content;
  ReplaceDec(const Json &j, const std::string &what) : pattern(j, what), content(str_or(j, "content", "")) {}
  void apply(std::vector<std::string> &toks) const override {
    for (std::string &s : toks) {
      auto ms = pattern.find(s);
      if (ms.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (auto &m : ms) {
        out.append(s, prev, m.first - prev);
        out += content;
        prev = m.second;
      }
      out.append(s, prev, std::string::npos);
      s.swap(out);
    }
  }
};
int byte_token_value(const std::string &t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; k++) {
    char h = t[k];
    v <<= 4;
    if (h >= '0' && h <= '9') v |= h - '0';
    else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
    else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
    else return -1;
  }
  return v;
}
struct ByteFallbackDec : Decoder {
  void apply(std::vector<std::string> &toks) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_n = 0;
    auto flush = [&] {
      if (!pending_n) return;
      if (is_valid_utf8(pending)) out.push_back(pending);
      else
        for (size_t k = 0; k < pending_n; k++) out.push_back("\xEF\xBF\xBD");
      pending.clear();
      pending_n = 0;
    };
    for (std::string &t : toks) {
      int v = byte_token_value(t);
      if (v >= 0) {
        pending += static_cast<char>(v);
        pending_n++;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    toks.swap(out);
  }
};
struct FuseDec : Decoder {
  void apply(std::vector<std::string> &toks) const override {
    std::string all;
    for (auto &t : toks) all += t;
    toks.assign(1, all);
  }
};
struct StripDec : Decoder {
  uint32_t content;
  size_t start, stop;
  void apply(std::vector<std::string> &toks) const override {
    for (std::string &t : toks) {
      std::vector<size_t> offs;
      std::vector<uint32_t> cps = to_cps(t, &offs);
      size_t a = 0, b = cps.size();
      while (a < start && a < b && cps[a] == content) a++;
      size_t cut = 0;
      while (cut < stop && b > a && cps[b - 1] == content) b--, cut++;
      t = t.substr(offs[a], offs[b] - offs[a]);
    }
  }
};
struct MetaspaceDec : Decoder {
  uint32_t replacement;
  bool strip_first;
  void apply(std::vector<std::string> &toks) const override {
    for (size_t i = 0; i < toks.size(); i++) {
      std::string out;
      const std::string &t = toks[i];
      for (size_t k = 0; k < t.size();) {
        uint32_t c = decode_utf8(t, k);
        if (c == replacement) {
          if (!(i == 0 && strip_first)) out += ' ';
        } else {
          append_utf8(out, c);
        }
      }
      toks[i] = std::move(out);
    }
  }
};
struct BpeSuffixDec : Decoder {
  std::string suffix;
  void apply(std::vector<std::string> &toks) const override {
    for (size_t i = 0; i < toks.size(); i++) {
      std::string &t = toks[i];
      std::string rep = i + 1 == toks.size() ? "" : " ";
      std::string out;
      size_t prev = 0;
      for (size_t at = t.find(suffix); at != std::string::npos; at = t.find(suffix, at + suffix.size())) {
        out.append(t, prev, at - prev);
        out += rep;
        prev = at + suffix.size();
      }
      out.append(t, prev, std::string::npos);
      t.swap(out);
    }
  }
};

// ---- post-processors --------------------------------------------------------------------

struct AddAround : PostProcessor {
  std::vector<int32_t> before, after;
  void apply(std::vector<int32_t> &ids) const override {
    ids.insert(ids.begin(), before.begin(), before.end());
    ids.insert(ids.end(), after.begin(), after.end());
  }
};
struct PostSeq : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> parts;
  void apply(std::vector<int32_t> &ids) const override {
    for (auto &p : parts) p->apply(ids);
  }
};

uint32_t single_char(const std::string &s, const std::string &what) {
  size_t i = 0;
  if (s.empty()) fail(FFS_ERR_BAD_CHECKPOINT, what + ": empty replacement character");
  return decode_utf8(s, i);
}

}  // namespace

const std::vector<uint32_t> &byte_to_unicode() {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; b++) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; b++) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; b++) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) t[b] = direct[b] ? b : 256 + n++;
    return t;
  }();
  return table;
}

int byte_from_unicode(uint32_t cp) {
  static const std::vector<int> inv = [] {
    std::vector<int> v(512, -1);
    const auto &t = byte_to_unicode();
    for (int b = 0; b < 256; b++) v[t[b]] = b;
    return v;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

std::string byte_level_encode(const std::string &s) {
  static const std::vector<std::string> enc = [] {
    std::vector<std::string> e(256);
    for (int b = 0; b < 256; b++) append_utf8(e[b], byte_to_unicode()[b]);
    return e;
  }();
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) out += enc[c];
  return out;
}

std::unique_ptr<Normalizer> make_normalizer(const Json &j, const std::string &what) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j);
  if (t == "Sequence") {
    auto s = std::make_unique<NormalizerSeq>();
    if (const Json *ns = j.get("normalizers"))
      for (const Json &n : ns->array())
        if (auto p = make_normalizer(n, what)) s->parts.push_back(std::move(p));
    return s;
  }
  if (t == "NFC") return std::make_unique<UnicodeNorm>(NormForm::NFC);
  if (t == "NFD") return std::make_unique<UnicodeNorm>(NormForm::NFD);
  if (t == "NFKC") return std::make_unique<UnicodeNorm>(NormForm::NFKC);
  if (t == "NFKD") return std::make_unique<UnicodeNorm>(NormForm::NFKD);
  if (t == "Lowercase") return std::make_unique<Lowercase>();
  if (t == "Replace") return std::make_unique<ReplaceNorm>(j, what);
  if (t == "StripAccents") return std::make_unique<StripAccents>();
  if (t == "Prepend") {
    auto p = std::make_unique<Prepend>();
    p->prefix = str_or(j, "prepend", "");
    return p;
  }
  if (t == "Strip") {
    auto p = std::make_unique<StripNorm>();
    p->left = bool_or(j, "strip_left", false);
    p->right = bool_or(j, "strip_right", false);
    return p;
  }
  if (t == "Precompiled") {
    const Json *m = j.get("precompiled_charsmap");
    if (!m || m->is_null() || (m->is_string() && m->str().empty()) || (m->is_array() && m->array().empty()))
      return nullptr;
  }
  unsupported(what, "normalizer", t);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json &j, const std::string &what) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j);
  if (t == "Sequence") {
    auto s = std::make_unique<PreSeq>();
    if (const Json *ps = j.get("pretokenizers"))
      for (const Json &p : ps->array())
        if (auto x = make_pre_tokenizer(p, what)) s->parts.push_back(std::move(x));
    return s;
  }
  if (t == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPre>();
    p->add_prefix_space = bool_or(j, "add_prefix_space", true);
    p->use_regex = bool_or(j, "use_regex", true);
    return p;
  }
  if (t == "Split") return std::make_unique<SplitPre>(j, what);
  if (t == "Digits") {
    auto p = std::make_unique<DigitsPre>();
    p->individual = bool_or(j, "individual_digits", false);
    return p;
  }
  if (t == "Punctuation") {
    auto p = std::make_unique<PunctuationPre>();
    p->behavior = behavior_of(j, what, Behavior::Isolated);
    return p;
  }
  if (t == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
  if (t == "Whitespace") return std::make_unique<WhitespacePre>();
  if (t == "Metaspace") {
    auto p = std::make_unique<MetaspacePre>();
    p->replacement = str_or(j, "replacement", "\xE2\x96\x81");
    p->split = bool_or(j, "split", true);
    if (j.get("prepend_scheme")) p->scheme = str_or(j, "prepend_scheme", "always");
    else p->scheme = bool_or(j, "add_prefix_space", true) ? "always" : "never";
    if (p->scheme != "always" && p->scheme != "first" && p->scheme != "never")
      fail(FFS_ERR_BAD_CHECKPOINT, what + ": Metaspace prepend_scheme '" + p->scheme + "'");
    return p;
  }
  unsupported(what, "pre_tokenizer", t);
}

std::unique_ptr<Decoder> make_decoder(const Json &j, const std::string &what) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j);
  if (t == "Sequence") {
    auto s = std::make_unique<DecoderSeq>();
    if (const Json *ds = j.get("decoders"))
      for (const Json &d : ds->array())
        if (auto x = make_decoder(d, what)) s->parts.push_back(std::move(x));
    return s;
  }
  if (t == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (t == "Replace") return std::make_unique<ReplaceDec>(j, what);
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (t == "Fuse") return std::make_unique<FuseDec>();
  if (t == "Strip") {
    auto d = std::make_unique<StripDec>();
    d->content = single_char(str_or(j, "content", " "), what);
    d->start = static_cast<size_t>(j.get("start") ? json_int(*j.get("start"), 0, 1 << 20, what + ": Strip start") : 0);
    d->stop = static_cast<size_t>(j.get("stop") ? json_int(*j.get("stop"), 0, 1 << 20, what + ": Strip stop") : 0);
    return d;
  }
  if (t == "Metaspace") {
    auto d = std::make_unique<MetaspaceDec>();
    d->replacement = single_char(str_or(j, "replacement", "\xE2\x96\x81"), what);
    if (j.get("prepend_scheme")) d->strip_first = str_or(j, "prepend_scheme", "always") != "never";
    else d->strip_first = bool_or(j, "add_prefix_space", true);
    return d;
  }
  if (t == "BPEDecoder") {
    auto d = std::make_unique<BpeSuffixDec>();
    d->suffix = str_or(j, "suffix", "</w>");
    return d;
  }
  unsupported(what, "decoder", t);
}

std::unique_ptr<PostProcessor> make_post_processor(const Json &j, const std::string &what, TokenLookup lookup,
                                                   const void *ctx) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j);
  auto id_of = [&](const std::string &tok) {
    int32_t id = lookup(ctx, tok);
    if (id < 0) fail(FFS_ERR_BAD_CHECKPOINT, what + ": post_processor token '" + tok + "' is not in the vocabulary");
    return id;
  };
  if (t == "Sequence") {
    auto s = std::make_unique<PostSeq>();
    if (const Json *ps = j.get("processors"))
      for (const Json &p : ps->array())
        if (auto x = make_post_processor(p, what, lookup, ctx)) s->parts.push_back(std::move(x));
    return s;
  }
  if (t == "ByteLevel") return nullptr;  // offsets only
  if (t == "TemplateProcessing") {
    auto p = std::make_unique<AddAround>();
    const Json *single = j.get("single");
    const Json *specials = j.get("special_tokens");
    bool seen_a = false;
    if (!single || !single->is_array()) fail(FFS_ERR_BAD_CHECKPOINT, what + ": TemplateProcessing without 'single'");
    for (const Json &piece : single->array()) {
      if (piece.get("Sequence")) {
        seen_a = true;
        continue;
      }
      const Json *st = piece.get("SpecialToken");
      if (!st) fail(FFS_ERR_BAD_CHECKPOINT, what + ": bad TemplateProcessing piece");
      std::string name = str_or(*st, "id", "");
      std::vector<int32_t> ids;
      const Json *spec = specials ? specials->get(name) : nullptr;
      if (spec && spec->get("ids")) {
        for (const Json &x : spec->get("ids")->array())
          ids.push_back(static_cast<int32_t>(json_int(x, 0, INT32_MAX, what + ": special token id")));
      } else {
        ids.push_back(id_of(name));
      }
      auto &dst = seen_a ? p->after : p->before;
      dst.insert(dst.end(), ids.begin(), ids.end());
    }
    return p;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto p = std::make_unique<AddAround>();
    const Json *cls = j.get("cls"), *sep = j.get("sep");
    if (!cls || !sep || cls->array().size() != 2 || sep->array().size() != 2)
      fail(FFS_ERR_BAD_CHECKPOINT, what + ": " + t + " needs cls and sep");
    p->before.push_back(static_cast<int32_t>(json_int(cls->array()[1], 0, INT32_MAX, what + ": cls id")));
    p->after.push_back(static_cast<int32_t>(json_int(sep->array()[1], 0, INT32_MAX, what + ": sep id")));
    return p;
  }
  unsupported(what, "post_processor", t);
}

}  // namespace ffspec
