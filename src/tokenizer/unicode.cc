#include "tokenizer/unicode.h"

#include <algorithm>
#include <memory>
#include <vector>

namespace ffspec {

namespace ud = unicode_data;

namespace {

// One byte per code point (1.1 MB), filled once from the run table: O(1) lookups in the
// pre-tokenizer's inner loops.
const uint8_t *category_table() {
  static const std::unique_ptr<uint8_t[]> table = [] {
    std::unique_ptr<uint8_t[]> t(new uint8_t[0x110000]);
    for (size_t r = 0; r < ud::kCategoryRuns_size; r++) {
      uint32_t end = r + 1 < ud::kCategoryRuns_size ? ud::kCategoryRuns[r + 1].start : 0x110000;
      std::fill(t.get() + ud::kCategoryRuns[r].start, t.get() + end, ud::kCategoryRuns[r].cat);
    }
    return t;
  }();
  return table.get();
}

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

const ud::Decomposition *find_decomposition(uint32_t cp) {
  const ud::Decomposition *b = ud::kDecompositions, *e = b + ud::kDecompositions_size;
  auto it = std::lower_bound(b, e, cp, [](const ud::Decomposition &d, uint32_t c) { return d.cp < c; });
  return it != e && it->cp == cp ? it : nullptr;
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const ud::Composition *lo = ud::kCompositions, *hi = lo + ud::kCompositions_size;
  auto it = std::lower_bound(lo, hi, std::make_pair(a, b), [](const ud::Composition &c, std::pair<uint32_t, uint32_t> k) {
    return c.first < k.first || (c.first == k.first && c.second < k.second);
  });
  return it != hi && it->first == a && it->second == b ? it->composite : 0;
}

void decompose_into(uint32_t cp, bool compat, std::vector<uint32_t> &out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (const ud::Decomposition *d = cp >= 0xA0 ? find_decomposition(cp) : nullptr) {
    const uint32_t *data = ud::kDecompositionData + d->offset;
    if (compat && d->compat_len) {
      out.insert(out.end(), data + d->canonical_len, data + d->canonical_len + d->compat_len);
      return;
    }
    if (d->canonical_len) {
      out.insert(out.end(), data, data + d->canonical_len);
      return;
    }
  }
  out.push_back(cp);
}

}  // namespace

UCat ucategory(uint32_t cp) { return cp < 0x110000 ? static_cast<UCat>(category_table()[cp]) : UC_Cn; }

bool is_white_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_word_char(uint32_t cp) {
  return (ucat_mask(cp) & (kCatL | kCatM | ucat_bit(UC_Nd) | ucat_bit(UC_Pc))) || cp == 0x200C || cp == 0x200D;
}

int combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const ud::CodePointValue *b = ud::kCombiningClasses, *e = b + ud::kCombiningClasses_size;
  auto it = std::lower_bound(b, e, cp, [](const ud::CodePointValue &v, uint32_t c) { return v.cp < c; });
  return it != e && it->cp == cp ? it->value : 0;
}

uint32_t decode_utf8(std::string_view s, size_t &i) {
  uint8_t c = static_cast<uint8_t>(s[i]);
  if (c < 0x80) {
    i++;
    return c;
  }
  // Invalid input: one U+FFFD per maximal ill-formed subpart (what Rust's from_utf8_lossy and
  // Python's errors="replace" do).
  int n;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 1;
  else if (c >= 0xE0 && c <= 0xEF) n = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) n = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else {
    i++;
    return 0xFFFD;
  }
  uint32_t cp = c & (0x3F >> n);
  for (int k = 1; k <= n; k++) {
    if (i + k >= s.size()) {
      i += k;
      return 0xFFFD;
    }
    uint8_t x = static_cast<uint8_t>(s[i + k]);
    if (x < (k == 1 ? lo : 0x80) || x > (k == 1 ? hi : 0xBF)) {
      i += k;
      return 0xFFFD;
    }
    cp = (cp << 6) | (x & 0x3F);
  }
  i += n + 1;
  return cp;
}

void append_utf8(std::string &out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) { i++; continue; }
    size_t start = i;
    uint32_t cp = decode_utf8(s, i);
    if (cp == 0xFFFD && !(i - start == 3 && s.compare(start, 3, "\xEF\xBF\xBD") == 0)) return false;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  if (is_valid_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) append_utf8(out, decode_utf8(s, i));
  return out;
}

std::string normalize(std::string_view s, NormForm form) {
  bool compose = form == NormForm::NFC || form == NormForm::NFKC;
  bool compat = form == NormForm::NFKC || form == NormForm::NFKD;
  // Below U+0300 every character is already NFC (and nothing composes with it there).
  if (form == NormForm::NFC) {
    bool simple = true;
    for (size_t i = 0; i < s.size() && simple;) simple = decode_utf8(s, i) < 0x300;
    if (simple) return std::string(s);
  }
  std::vector<uint32_t> buf;
  buf.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose_into(decode_utf8(s, i), compat, buf);
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < buf.size();) {
    if (combining_class(buf[i]) == 0) { i++; continue; }
    size_t j = i;
    while (j < buf.size() && combining_class(buf[j]) != 0) j++;
    std::stable_sort(buf.begin() + i, buf.begin() + j,
                     [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  if (compose && !buf.empty()) {
    std::vector<uint32_t> out;
    out.reserve(buf.size());
    long starter = -1;
    int last_cc = 0;
    for (uint32_t ch : buf) {
      int cc = combining_class(ch);
      if (starter >= 0) {
        bool adjacent = static_cast<long>(out.size()) - 1 == starter;
        if (adjacent || (last_cc != 0 && last_cc < cc)) {
          if (uint32_t c = compose_pair(out[starter], ch)) {
            out[starter] = c;
            continue;
          }
        }
      }
      if (cc == 0) starter = static_cast<long>(out.size());
      last_cc = cc;
      out.push_back(ch);
    }
    buf.swap(out);
  }
  std::string res;
  res.reserve(s.size());
  for (uint32_t cp : buf) append_utf8(res, cp);
  return res;
}

std::string to_lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
      i++;
      continue;
    }
    uint32_t cp = decode_utf8(s, i);
    const ud::CaseMapping *b = ud::kLowercase, *e = b + ud::kLowercase_size;
    auto it = std::lower_bound(b, e, cp, [](const ud::CaseMapping &m, uint32_t x) { return m.cp < x; });
    if (it != e && it->cp == cp) {
      for (uint32_t k = 0; k < it->len; k++) append_utf8(out, ud::kLowercaseData[it->offset + k]);
    } else {
      append_utf8(out, cp);
    }
  }
  return out;
}

}  // namespace ffspec
