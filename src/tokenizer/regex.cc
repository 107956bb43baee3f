#include "tokenizer/regex.h"

#include <algorithm>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace ffspec {

namespace {

struct ClassItem {
  enum Kind { Range, Category, Space, Word, Digit } kind;
  uint32_t lo = 0, hi = 0;  // Range
  uint32_t mask = 0;        // Category
  bool negated = false;
};

struct CharClass {
  std::vector<ClassItem> items;
  bool negated = false;
  uint64_t ascii[2] = {0, 0};  // precomputed membership below U+0080

  bool test_slow(uint32_t c) const {
    bool in = false;
    for (const ClassItem &it : items) {
      bool m = false;
      switch (it.kind) {
        case ClassItem::Range: m = c >= it.lo && c <= it.hi; break;
        case ClassItem::Category: m = (ucat_mask(c) & it.mask) != 0; break;
        case ClassItem::Space: m = is_white_space(c); break;
        case ClassItem::Word: m = is_word_char(c); break;
        case ClassItem::Digit: m = ucategory(c) == UC_Nd; break;
      }
      if (m != it.negated) {
        in = true;
        break;
      }
    }
    return in != negated;
  }
  void finish() {
    for (uint32_t c = 0; c < 128; c++)
      if (test_slow(c)) ascii[c >> 6] |= uint64_t(1) << (c & 63);
  }
  bool test(uint32_t c) const { return c < 128 ? (ascii[c >> 6] >> (c & 63)) & 1 : test_slow(c); }
};

enum Op : uint8_t { CHAR, CHARSET, CLASS, ANY, SPLIT, JMP, MATCH, BOL, EOL, BOS, EOS, EOS_NL, LOOK, NLOOK, ATOMIC };

struct Inst {
  Op op;
  uint32_t a = 0, b = 0;  // CHAR: a=cp; CLASS/CHARSET/LOOK/ATOMIC: a=index; SPLIT: a=preferred, b=other; JMP: a
};

// AST
struct Node {
  enum Kind { Lit, Class, Any, Alt, Cat, Rep, Assert, Look, Atomic } kind;
  std::vector<uint32_t> lits;  // Lit: alternatives for one code point (case-insensitive)
  int cls = -1;
  std::vector<std::unique_ptr<Node>> kids;
  int min = 0, max = -1;  // Rep; max -1 = unbounded
  bool greedy = true, possessive = false, negated = false;
  Op assert_op = BOL;
};

}  // namespace

struct Regex::Program {
  std::vector<std::vector<Inst>> progs;  // progs[0] is the main program; others for look/atomic
  std::vector<CharClass> classes;
  std::vector<std::vector<uint32_t>> charsets;
};

namespace {

class Parser {
 public:
  Parser(const std::string &pattern, Regex::Program &prog) : pat_(pattern), prog_(prog) {
    for (size_t i = 0; i < pattern.size();) cps_.push_back(decode_utf8(pattern, i));
  }
  std::unique_ptr<Node> parse() {
    auto n = alt(false);
    if (i_ != cps_.size()) bad("unbalanced ')'");
    return n;
  }

 private:
  const std::string &pat_;
  Regex::Program &prog_;
  std::vector<uint32_t> cps_;
  size_t i_ = 0;
  int depth_ = 0;
  static constexpr int kMaxDepth = 200, kMaxRepeat = 100000;

  [[noreturn]] void bad(const std::string &why) {
    fail(FFS_ERR_UNSUPPORTED, "regex pattern " + pat_ + " is not supported: " + why);
  }
  bool more() const { return i_ < cps_.size(); }
  uint32_t peek() const { return cps_[i_]; }

  std::unique_ptr<Node> alt(bool icase) {
    auto a = std::make_unique<Node>();
    a->kind = Node::Alt;
    a->kids.push_back(concat(icase));
    while (more() && peek() == '|') {
      i_++;
      a->kids.push_back(concat(icase));
    }
    if (a->kids.size() == 1) return std::move(a->kids[0]);
    return a;
  }
  std::unique_ptr<Node> concat(bool icase) {
    auto c = std::make_unique<Node>();
    c->kind = Node::Cat;
    while (more() && peek() != '|' && peek() != ')') {
      // Inline flags "(?i)" change the rest of this group.
      if (peek() == '(' && i_ + 3 < cps_.size() && cps_[i_ + 1] == '?' && cps_[i_ + 2] == 'i' && cps_[i_ + 3] == ')') {
        i_ += 4;
        icase = true;
        continue;
      }
      auto atom_node = atom(icase);
      c->kids.push_back(quantified(std::move(atom_node)));
    }
    return c;
  }
  std::unique_ptr<Node> quantified(std::unique_ptr<Node> n) {
    while (more()) {
      int mn, mx;
      uint32_t c = peek();
      size_t save = i_;
      if (c == '*') mn = 0, mx = -1, i_++;
      else if (c == '+') mn = 1, mx = -1, i_++;
      else if (c == '?') mn = 0, mx = 1, i_++;
      else if (c == '{') {
        i_++;
        if (!read_int(&mn)) { i_ = save; return n; }
        mx = mn;
        if (more() && peek() == ',') {
          i_++;
          if (more() && peek() == '}') mx = -1;
          else if (!read_int(&mx)) { i_ = save; return n; }
        }
        if (!more() || peek() != '}') { i_ = save; return n; }
        i_++;
      } else {
        return n;
      }
      auto r = std::make_unique<Node>();
      r->kind = Node::Rep;
      r->min = mn;
      r->max = mx;
      if (more() && peek() == '?') r->greedy = false, i_++;
      else if (more() && peek() == '+') r->possessive = true, i_++;
      r->kids.push_back(std::move(n));
      n = std::move(r);
    }
    return n;
  }
  bool read_int(int *v) {
    size_t s = i_;
    *v = 0;
    while (more() && peek() >= '0' && peek() <= '9') {
      *v = *v * 10 + static_cast<int>(cps_[i_++] - '0');
      if (*v > kMaxRepeat) bad("repeat count above " + std::to_string(kMaxRepeat));
    }
    return i_ > s;
  }
  std::unique_ptr<Node> lit(uint32_t c, bool icase) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Lit;
    n->lits.push_back(c);
    if (icase) {
      auto add = [&](uint32_t x) {
        if (std::find(n->lits.begin(), n->lits.end(), x) == n->lits.end()) n->lits.push_back(x);
      };
      if (c < 128 && c >= 'A' && c <= 'Z') add(c + 32);
      if (c < 128 && c >= 'a' && c <= 'z') add(c - 32);
      uint32_t l = c | 32;
      if (l == 's' && c < 128) add(0x17F);   // LATIN SMALL LETTER LONG S folds to s
      if (l == 'k' && c < 128) add(0x212A);  // KELVIN SIGN folds to k
    }
    return n;
  }
  std::unique_ptr<Node> class_node(CharClass cc) {
    cc.finish();
    prog_.classes.push_back(std::move(cc));
    auto n = std::make_unique<Node>();
    n->kind = Node::Class;
    n->cls = static_cast<int>(prog_.classes.size()) - 1;
    return n;
  }
  uint32_t category_mask(const std::string &name) {
    static const char *names[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
                                  "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
    for (int k = 0; k < UC_COUNT; k++)
      if (name == names[k]) return 1u << k;
    if (name == "L" || name == "Letter") return kCatL;
    if (name == "M" || name == "Mark" || name == "Combining_Mark") return kCatM;
    if (name == "N" || name == "Number") return kCatN;
    if (name == "P" || name == "Punctuation") return kCatP;
    if (name == "S" || name == "Symbol") return kCatS;
    if (name == "Z" || name == "Separator") return kCatZ;
    if (name == "C" || name == "Other") return kCatC;
    bad("unknown property \\p{" + name + "}");
  }
  // After a backslash: fills item (class escapes) or returns a literal code point.
  bool escape(ClassItem *item, uint32_t *lit_cp, bool in_class) {
    if (!more()) bad("trailing backslash");
    uint32_t c = cps_[i_++];
    switch (c) {
      case 'n': *lit_cp = '\n'; return false;
      case 'r': *lit_cp = '\r'; return false;
      case 't': *lit_cp = '\t'; return false;
      case 'f': *lit_cp = '\f'; return false;
      case 'v': *lit_cp = '\v'; return false;
      case 'a': *lit_cp = 7; return false;
      case 'e': *lit_cp = 27; return false;
      case 's': case 'S': item->kind = ClassItem::Space; item->negated = c == 'S'; return true;
      case 'w': case 'W': item->kind = ClassItem::Word; item->negated = c == 'W'; return true;
      case 'd': case 'D': item->kind = ClassItem::Digit; item->negated = c == 'D'; return true;
      case 'p': case 'P': {
        std::string name;
        if (more() && peek() == '{') {
          i_++;
          bool neg = false;
          if (more() && peek() == '^') neg = true, i_++;
          while (more() && peek() != '}') append_utf8(name, cps_[i_++]);
          if (!more()) bad("unterminated \\p{");
          i_++;
          item->negated = (c == 'P') != neg;
        } else {
          if (!more()) bad("bad \\p");
          append_utf8(name, cps_[i_++]);
          item->negated = c == 'P';
        }
        item->kind = ClassItem::Category;
        item->mask = category_mask(name);
        return true;
      }
      case 'x': {
        uint32_t v = 0;
        if (more() && peek() == '{') {
          i_++;
          while (more() && peek() != '}') v = v * 16 + hexval(cps_[i_++]);
          if (!more()) bad("unterminated \\x{");
          i_++;
        } else {
          for (int k = 0; k < 2 && more(); k++) v = v * 16 + hexval(cps_[i_++]);
        }
        *lit_cp = v;
        return false;
      }
      case 'u': {
        uint32_t v = 0;
        for (int k = 0; k < 4 && more(); k++) v = v * 16 + hexval(cps_[i_++]);
        *lit_cp = v;
        return false;
      }
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
          bad(std::string("escape \\") + static_cast<char>(c) + (in_class ? " in a class" : ""));
        *lit_cp = c;
        return false;
    }
  }
  uint32_t hexval(uint32_t h) {
    if (h >= '0' && h <= '9') return h - '0';
    if (h >= 'a' && h <= 'f') return h - 'a' + 10;
    if (h >= 'A' && h <= 'F') return h - 'A' + 10;
    bad("bad hex escape");
  }
  std::unique_ptr<Node> bracket(bool icase) {
    CharClass cc;
    if (more() && peek() == '^') cc.negated = true, i_++;
    bool first = true;
    while (more() && (peek() != ']' || first)) {
      first = false;
      uint32_t c = cps_[i_++];
      ClassItem item{ClassItem::Range};
      uint32_t lo;
      if (c == '[') bad("nested character classes");
      if (c == '&' && more() && peek() == '&') bad("class intersection");
      if (c == '\\') {
        if (escape(&item, &lo, true)) {
          cc.items.push_back(item);
          continue;
        }
      } else {
        lo = c;
      }
      uint32_t hi = lo;
      if (more() && peek() == '-' && i_ + 1 < cps_.size() && cps_[i_ + 1] != ']') {
        i_++;
        uint32_t h = cps_[i_++];
        if (h == '\\') {
          ClassItem it2{ClassItem::Range};
          if (escape(&it2, &h, true)) bad("range ending in a class escape");
        }
        hi = h;
      }
      item.lo = lo;
      item.hi = hi;
      cc.items.push_back(item);
      if (icase) {
        for (uint32_t x = std::max<uint32_t>(lo, 'A'); x <= std::min<uint32_t>(hi, 'Z'); x++)
          cc.items.push_back({ClassItem::Range, x + 32, x + 32});
        for (uint32_t x = std::max<uint32_t>(lo, 'a'); x <= std::min<uint32_t>(hi, 'z'); x++)
          cc.items.push_back({ClassItem::Range, x - 32, x - 32});
      }
    }
    if (!more()) bad("unterminated character class");
    i_++;
    return class_node(std::move(cc));
  }
  std::unique_ptr<Node> atom(bool icase) {
    uint32_t c = cps_[i_++];
    switch (c) {
      case '(': {
        auto wrap = [&](Node::Kind k, bool neg, bool ic) {
          // The parser recurses per group: bound it, or a crafted pattern overflows the stack.
          if (++depth_ > kMaxDepth) bad("groups nested deeper than " + std::to_string(kMaxDepth));
          auto inner = alt(ic);
          depth_--;
          if (!more() || peek() != ')') bad("missing ')'");
          i_++;
          if (k == Node::Cat) return inner;
          auto n = std::make_unique<Node>();
          n->kind = k;
          n->negated = neg;
          n->kids.push_back(std::move(inner));
          return n;
        };
        if (more() && peek() == '?') {
          i_++;
          if (!more()) bad("bad group");
          uint32_t k = cps_[i_++];
          if (k == ':') return wrap(Node::Cat, false, icase);
          if (k == '=') return wrap(Node::Look, false, icase);
          if (k == '!') return wrap(Node::Look, true, icase);
          if (k == '>') return wrap(Node::Atomic, false, icase);
          if (k == 'i' && more() && peek() == ':') {
            i_++;
            return wrap(Node::Cat, false, true);
          }
          if (k == '<' && more() && peek() != '=' && peek() != '!') {  // named group
            while (more() && peek() != '>') i_++;
            if (!more()) bad("bad group name");
            i_++;
            return wrap(Node::Cat, false, icase);
          }
          bad("group syntax (?" + std::string(1, static_cast<char>(k)));
        }
        return wrap(Node::Cat, false, icase);
      }
      case '[': return bracket(icase);
      case '.': {
        auto n = std::make_unique<Node>();
        n->kind = Node::Any;
        return n;
      }
      case '^': case '$': {
        auto n = std::make_unique<Node>();
        n->kind = Node::Assert;
        n->assert_op = c == '^' ? BOL : EOL;
        return n;
      }
      case '\\': {
        if (more() && (peek() == 'A' || peek() == 'z' || peek() == 'Z')) {
          auto n = std::make_unique<Node>();
          n->kind = Node::Assert;
          uint32_t k = cps_[i_++];
          n->assert_op = k == 'A' ? BOS : k == 'z' ? EOS : EOS_NL;
          return n;
        }
        ClassItem item{ClassItem::Range};
        uint32_t lc;
        if (escape(&item, &lc, false)) {
          CharClass cc;
          cc.items.push_back(item);
          return class_node(std::move(cc));
        }
        return lit(lc, icase);
      }
      case '*': case '+': case '?': bad("quantifier without an operand");
      default: return lit(c, icase);
    }
  }
};

class Compiler {
  static constexpr size_t kMaxProgram = 1 << 20;

 public:
  explicit Compiler(Regex::Program &p) : p_(p) {}
  uint32_t compile_sub(const Node &n) {
    std::vector<Inst> code;
    emit(n, code);
    code.push_back({MATCH});
    p_.progs.push_back(std::move(code));
    return static_cast<uint32_t>(p_.progs.size() - 1);
  }

 private:
  Regex::Program &p_;

  void emit(const Node &n, std::vector<Inst> &code) {
    if (code.size() > kMaxProgram)
      fail(FFS_ERR_UNSUPPORTED, "regex pattern is not supported: it compiles to more than " +
                                    std::to_string(kMaxProgram) + " instructions");
    switch (n.kind) {
      case Node::Lit:
        if (n.lits.size() == 1) {
          code.push_back({CHAR, n.lits[0]});
        } else {
          p_.charsets.push_back(n.lits);
          code.push_back({CHARSET, static_cast<uint32_t>(p_.charsets.size() - 1)});
        }
        break;
      case Node::Class: code.push_back({CLASS, static_cast<uint32_t>(n.cls)}); break;
      case Node::Any: code.push_back({ANY}); break;
      case Node::Assert: code.push_back({n.assert_op}); break;
      case Node::Cat:
        for (auto &k : n.kids) emit(*k, code);
        break;
      case Node::Alt: {
        std::vector<size_t> jumps;
        for (size_t k = 0; k < n.kids.size(); k++) {
          size_t split = code.size();
          if (k + 1 < n.kids.size()) code.push_back({SPLIT});
          emit(*n.kids[k], code);
          if (k + 1 < n.kids.size()) {
            jumps.push_back(code.size());
            code.push_back({JMP});
            code[split].a = static_cast<uint32_t>(split + 1);
            code[split].b = static_cast<uint32_t>(code.size());
          }
        }
        for (size_t j : jumps) code[j].a = static_cast<uint32_t>(code.size());
        break;
      }
      case Node::Look: {
        uint32_t sub = compile_sub(*n.kids[0]);
        code.push_back({n.negated ? NLOOK : LOOK, sub});
        break;
      }
      case Node::Atomic: code.push_back({ATOMIC, compile_sub(*n.kids[0])}); break;
      case Node::Rep: {
        if (n.possessive) {
          Node copy;
          copy.kind = Node::Rep;
          copy.min = n.min;
          copy.max = n.max;
          copy.greedy = true;
          // Compile the greedy loop as its own program, run atomically.
          std::vector<Inst> sub;
          emit_rep(*n.kids[0], n.min, n.max, true, sub);
          sub.push_back({MATCH});
          p_.progs.push_back(std::move(sub));
          code.push_back({ATOMIC, static_cast<uint32_t>(p_.progs.size() - 1)});
        } else {
          emit_rep(*n.kids[0], n.min, n.max, n.greedy, code);
        }
        break;
      }
    }
  }
  void split_to(std::vector<Inst> &code, size_t at, size_t body, size_t out, bool greedy) {
    code[at].a = static_cast<uint32_t>(greedy ? body : out);
    code[at].b = static_cast<uint32_t>(greedy ? out : body);
  }
  // Can n match without consuming input?
  static bool nullable(const Node &n) {
    switch (n.kind) {
      case Node::Lit: case Node::Class: case Node::Any: return false;
      case Node::Cat:
        for (const auto &k : n.kids)
          if (!nullable(*k)) return false;
        return true;
      case Node::Alt:
        for (const auto &k : n.kids)
          if (nullable(*k)) return true;
        return false;
      case Node::Rep: return n.min == 0 || nullable(*n.kids[0]);
      case Node::Atomic: return nullable(*n.kids[0]);
      default: return true;  // assertions and lookarounds consume nothing
    }
  }
  void emit_rep(const Node &body, int mn, int mx, bool greedy, std::vector<Inst> &code) {
    // An unbounded loop whose body can match nothing would never stop backtracking; no
    // tokenizer pattern needs one.
    if (mx < 0 && nullable(body))
      fail(FFS_ERR_UNSUPPORTED, "regex pattern is not supported: an unbounded repeat of a part that can match "
                                "the empty string");
    for (int k = 0; k < mn; k++) emit(body, code);
    if (mx < 0) {
      size_t loop = code.size();
      code.push_back({SPLIT});
      emit(body, code);
      code.push_back({JMP, static_cast<uint32_t>(loop)});
      split_to(code, loop, loop + 1, code.size(), greedy);
      return;
    }
    std::vector<size_t> splits;
    for (int k = mn; k < mx; k++) {
      splits.push_back(code.size());
      code.push_back({SPLIT});
      emit(body, code);
    }
    for (size_t s : splits) split_to(code, s, s + 1, code.size(), greedy);
  }
};

struct State {
  uint32_t pc;
  size_t pos;
};

// Runs program `pi` anchored at pos; on success sets *end. Backtracking, leftmost-first.
bool run(const Regex::Program &P, uint32_t pi, const std::vector<uint32_t> &s, size_t pos, size_t *end,
         std::vector<State> &stack) {
  const std::vector<Inst> &code = P.progs[pi];
  size_t base = stack.size();
  stack.push_back({0, pos});
  const size_t n = s.size();
  while (stack.size() > base) {
    State st = stack.back();
    stack.pop_back();
    uint32_t pc = st.pc;
    size_t p = st.pos;
    for (;;) {
      const Inst &in = code[pc];
      bool ok = true;
      switch (in.op) {
        case CHAR: ok = p < n && s[p] == in.a; p++; pc++; break;
        case CHARSET: {
          ok = false;
          if (p < n)
            for (uint32_t c : P.charsets[in.a]) ok |= s[p] == c;
          p++;
          pc++;
          break;
        }
        case CLASS: ok = p < n && P.classes[in.a].test(s[p]); p++; pc++; break;
        case ANY: ok = p < n && s[p] != '\n'; p++; pc++; break;
        case SPLIT: stack.push_back({in.b, p}); pc = in.a; break;
        case JMP: pc = in.a; break;
        case MATCH:
          *end = p;
          stack.resize(base);
          return true;
        case BOL: ok = p == 0 || s[p - 1] == '\n'; pc++; break;
        case EOL: ok = p == n || s[p] == '\n'; pc++; break;
        case BOS: ok = p == 0; pc++; break;
        case EOS: ok = p == n; pc++; break;
        case EOS_NL: ok = p == n || (p + 1 == n && s[p] == '\n'); pc++; break;
        case LOOK: case NLOOK: {
          size_t e;
          bool m = run(P, in.a, s, p, &e, stack);
          ok = m == (in.op == LOOK);
          pc++;
          break;
        }
        case ATOMIC: {
          size_t e;
          ok = run(P, in.a, s, p, &e, stack);
          p = e;
          pc++;
          break;
        }
      }
      if (!ok) break;
    }
  }
  return false;
}

}  // namespace

Regex::Regex(const std::string &pattern) : pattern_(pattern), prog_(std::make_unique<Program>()) {
  Parser parser(pattern, *prog_);
  auto ast = parser.parse();
  prog_->progs.emplace_back();  // slot 0: main program
  Compiler comp(*prog_);
  uint32_t idx = 0;
  try {
    idx = comp.compile_sub(*ast);
  } catch (const Error &e) {
    fail(e.status(), std::string(e.what()) + ": " + pattern);
  }
  std::swap(prog_->progs[0], prog_->progs[idx]);
  prog_->progs.pop_back();
  // Sub-program indices above idx are unaffected; idx itself was the last one.
}

Regex::~Regex() = default;
Regex::Regex(Regex &&) noexcept = default;

std::vector<std::pair<size_t, size_t>> Regex::find_all(const std::vector<uint32_t> &cps) const {
  std::vector<std::pair<size_t, size_t>> out;
  thread_local std::vector<State> stack;
  size_t pos = 0;
  while (pos <= cps.size()) {
    size_t start = pos, end = 0;
    bool found = false;
    for (; start <= cps.size(); start++) {
      if (run(*prog_, 0, cps, start, &end, stack)) {
        found = true;
        break;
      }
    }
    if (!found) break;
    out.emplace_back(start, end);
    pos = end > start ? end : start + 1;
  }
  return out;
}

}  // namespace ffspec
