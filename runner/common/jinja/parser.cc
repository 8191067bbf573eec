#include "runner/common/jinja/parser.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {
namespace {

class Parser {
 public:
  Parser(std::vector<Token> tokens, const Lexer& lexer, const KnownNames& names)
      : toks_(std::move(tokens)), lexer_(lexer), names_(names) {}

  Body ParseTemplate() {
    std::string end;
    Body body = ParseBody({}, &end);
    if (!hard_unknowns_.empty()) {
      lexer_.Error(hard_unknowns_[0].first, hard_unknowns_[0].second);
    }
    return body;
  }

 private:
  static constexpr int kMaxDepth = 200;

  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(size_t ahead = 1) const {
    return toks_[std::min(pos_ + ahead, toks_.size() - 1)];
  }
  void Next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  int Line() const {
    int line, col;
    lexer_.LineCol(Cur().pos, &line, &col);
    return line;
  }
  [[noreturn]] void Error(const std::string& msg) const { lexer_.Error(Cur().pos, msg); }
  std::string Describe(const Token& t) const {
    switch (t.type) {
      case Tok::kEof:
        return "end of template";
      case Tok::kBlockEnd:
        return "end of statement block";
      case Tok::kVarEnd:
        return "end of print statement";
      case Tok::kName:
        return "'" + t.value + "'";
      case Tok::kOp:
        return "'" + t.value + "'";
      case Tok::kString:
        return "string";
      default:
        return "token";
    }
  }
  bool IsOp(const char* op) const { return Cur().type == Tok::kOp && Cur().value == op; }
  bool IsName(const char* name) const { return Cur().type == Tok::kName && Cur().value == name; }
  void ExpectOp(const char* op) {
    if (!IsOp(op)) {
      Error(std::string("expected '") + op + "', got " + Describe(Cur()));
    }
    Next();
  }
  std::string ExpectName() {
    if (Cur().type != Tok::kName) {
      Error("expected a name, got " + Describe(Cur()));
    }
    std::string n = Cur().value;
    Next();
    return n;
  }
  void ExpectBlockEnd() {
    if (Cur().type != Tok::kBlockEnd) {
      Error("expected end of statement block, got " + Describe(Cur()));
    }
    Next();
  }

  struct DepthGuard {
    explicit DepthGuard(Parser* p) : p(p) {
      if (++p->depth_ > kMaxDepth) p->Error("template nested too deeply");
    }
    ~DepthGuard() { --p->depth_; }
    Parser* p;
  };

  // Statements until a block tag named in `ends` (left unconsumed after its
  // name: *end gets the name) or, when `ends` is empty, the end of input.
  Body ParseBody(const std::vector<std::string>& ends, std::string* end) {
    DepthGuard guard(this);
    Body body;
    while (true) {
      const Token& t = Cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty()) {
          std::string want;
          for (const auto& e : ends) want += (want.empty() ? "'" : " or '") + e + "'";
          Error("unexpected end of template, expected " + want);
        }
        *end = "";
        return body;
      }
      if (t.type == Tok::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::K::kText;
        s->text = t.value;
        body.push_back(std::move(s));
        Next();
      } else if (t.type == Tok::kVarBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::K::kOutput;
        s->line = Line();
        s->expr = ParseTuple(true);
        if (Cur().type != Tok::kVarEnd) {
          Error("expected end of print statement, got " + Describe(Cur()));
        }
        Next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        Next();
        if (Cur().type != Tok::kName) Error("expected a statement name");
        std::string name = Cur().value;
        if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
          Next();
          *end = name;
          return body;
        }
        body.push_back(ParseStatement());
      } else {
        Error("unexpected " + Describe(t));
      }
    }
  }

  std::unique_ptr<Stmt> ParseStatement() {
    auto s = std::make_unique<Stmt>();
    s->line = Line();
    std::string name = Cur().value;
    Next();
    std::string end;
    if (name == "if") {
      SoftScope soft(this, true);
      s->kind = Stmt::K::kIf;
      s->expr = ParseTuple(false);
      ExpectBlockEnd();
      s->body = ParseBody({"elif", "else", "endif"}, &end);
      Stmt* cur = s.get();
      while (end == "elif") {
        auto e = std::make_unique<Stmt>();
        e->kind = Stmt::K::kIf;
        e->line = Line();
        e->expr = ParseTuple(false);
        ExpectBlockEnd();
        e->body = ParseBody({"elif", "else", "endif"}, &end);
        Stmt* next = e.get();
        cur->else_body.push_back(std::move(e));
        cur = next;
      }
      if (end == "else") {
        ExpectBlockEnd();
        cur->else_body = ParseBody({"endif"}, &end);
      }
      ExpectBlockEnd();
    } else if (name == "for") {
      s->kind = Stmt::K::kFor;
      s->targets = ParseTargets();
      if (!IsName("in")) Error("expected 'in', got " + Describe(Cur()));
      Next();
      s->expr = ParseTuple(false, /*no_cond=*/true);
      SoftScope loop_frame(this, false);
      if (IsName("if")) {
        Next();
        s->cond = ParseExpression();
      }
      if (IsName("recursive")) Error("recursive for loops are not supported");
      ExpectBlockEnd();
      ++loop_depth_;
      s->body = ParseBody({"endfor", "else"}, &end);
      --loop_depth_;
      if (end == "else") {
        ExpectBlockEnd();
        SoftScope outer_frame(this, loop_frame.outer);
        s->else_body = ParseBody({"endfor"}, &end);
      }
      ExpectBlockEnd();
    } else if (name == "set") {
      std::string first = ExpectName();
      if (IsOp(".")) {
        Next();
        s->kind = Stmt::K::kSet;
        s->targets = {first};
        s->attr = ExpectName();
        ExpectOp("=");
        s->expr = ParseTuple(false);
        ExpectBlockEnd();
      } else {
        s->targets = {first};
        while (IsOp(",")) {
          Next();
          if (Cur().type != Tok::kName) break;
          s->targets.push_back(ExpectName());
        }
        if (IsOp("=")) {
          Next();
          s->kind = Stmt::K::kSet;
          s->expr = ParseTuple(false);
          ExpectBlockEnd();
        } else {
          if (s->targets.size() != 1) Error("expected '='");
          SoftScope frame(this, false);
          s->kind = Stmt::K::kSetBlock;
          if (IsOp("|")) s->filter = ParseFilterChain();
          ExpectBlockEnd();
          s->body = ParseBody({"endset"}, &end);
          ExpectBlockEnd();
        }
      }
    } else if (name == "macro") {
      SoftScope frame(this, false);
      s->kind = Stmt::K::kMacro;
      s->text = ExpectName();
      ExpectOp("(");
      while (!IsOp(")")) {
        std::string p = ExpectName();
        ExprPtr def;
        if (IsOp("=")) {
          Next();
          def = ParseExpression();
        }
        s->params.emplace_back(p, std::move(def));
        if (!IsOp(",")) break;
        Next();
      }
      ExpectOp(")");
      ExpectBlockEnd();
      int outer_loops = loop_depth_;
      loop_depth_ = 0;
      s->body = ParseBody({"endmacro"}, &end);
      loop_depth_ = outer_loops;
      if (Cur().type == Tok::kName && Cur().value == s->text) Next();
      ExpectBlockEnd();
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) Error("'" + name + "' outside of a loop");
      s->kind = name == "break" ? Stmt::K::kBreak : Stmt::K::kContinue;
      ExpectBlockEnd();
    } else if (name == "with") {
      SoftScope frame(this, false);
      s->kind = Stmt::K::kWith;
      while (Cur().type == Tok::kName) {
        std::string p = ExpectName();
        ExpectOp("=");
        s->params.emplace_back(p, ParseExpression());
        if (!IsOp(",")) break;
        Next();
      }
      ExpectBlockEnd();
      s->body = ParseBody({"endwith"}, &end);
      ExpectBlockEnd();
    } else if (name == "filter") {
      SoftScope frame(this, false);
      s->kind = Stmt::K::kFilterBlock;
      pos_--;  // ParseFilterChain starts at a '|'; a filter block has none
      s->filter = ParseFilterChain(/*first_without_pipe=*/true);
      ExpectBlockEnd();
      s->body = ParseBody({"endfilter"}, &end);
      ExpectBlockEnd();
    } else if (name == "generation") {
      // transformers' AssistantTracker: only marks spans, renders the body.
      s->kind = Stmt::K::kBody;
      ExpectBlockEnd();
      s->body = ParseBody({"endgeneration"}, &end);
      ExpectBlockEnd();
    } else {
      pos_--;
      Error("unknown or unsupported statement '" + name + "'");
    }
    return s;
  }

  std::vector<std::string> ParseTargets() {
    std::vector<std::string> names;
    bool paren = IsOp("(");
    if (paren) Next();
    names.push_back(ExpectName());
    while (IsOp(",")) {
      Next();
      if (Cur().type != Tok::kName) break;
      names.push_back(ExpectName());
    }
    if (paren) ExpectOp(")");
    if (names.size() == 1 && names[0] == "loop") Error("cannot assign to 'loop'");
    return names;
  }

  ExprPtr Make(Expr::K k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = Line();
    return e;
  }

  // A filter chain applied to a placeholder (kLiteral undefined), for
  // {% filter %} and {% set x | f %} blocks.
  ExprPtr ParseFilterChain(bool first_without_pipe = false) {
    ExprPtr node = Make(Expr::K::kLiteral);
    bool first = true;
    while (IsOp("|") || (first && first_without_pipe)) {
      if (IsOp("|")) Next();
      if (first && first_without_pipe) Next();  // the word 'filter'
      first = false;
      node = ParseFilter(std::move(node));
    }
    return node;
  }

  // Comma-separated expressions; two or more make a tuple.
  ExprPtr ParseTuple(bool allow_empty_end, bool no_cond = false) {
    (void)allow_empty_end;
    ExprPtr first = no_cond ? ParseOr() : ParseExpression();
    if (!IsOp(",")) return first;
    ExprPtr t = Make(Expr::K::kTuple);
    t->args.push_back(std::move(first));
    while (IsOp(",")) {
      Next();
      if (Cur().type == Tok::kBlockEnd || Cur().type == Tok::kVarEnd || IsName("if")) {
        break;
      }
      t->args.push_back(no_cond ? ParseOr() : ParseExpression());
    }
    return t;
  }

  ExprPtr ParseExpression() {
    DepthGuard guard(this);
    size_t mark = hard_unknowns_.size();
    ExprPtr e = ParseOr();
    while (IsName("if")) {
      // jinja2 compiles a conditional expression in a soft frame, so unknown
      // names anywhere in it only fail when evaluated.
      hard_unknowns_.resize(std::min(mark, hard_unknowns_.size()));
      SoftScope soft(this, true);
      Next();
      ExprPtr c = Make(Expr::K::kCond);
      c->args.push_back(ParseOr());  // condition
      c->args.push_back(std::move(e));
      if (IsName("else")) {
        Next();
        c->args.push_back(ParseExpression());
      }
      e = std::move(c);
    }
    return e;
  }

  ExprPtr ParseOr() {
    ExprPtr l = ParseAnd();
    while (IsName("or")) {
      Next();
      ExprPtr n = Make(Expr::K::kOr);
      n->args.push_back(std::move(l));
      n->args.push_back(ParseAnd());
      l = std::move(n);
    }
    return l;
  }

  ExprPtr ParseAnd() {
    ExprPtr l = ParseNot();
    while (IsName("and")) {
      Next();
      ExprPtr n = Make(Expr::K::kAnd);
      n->args.push_back(std::move(l));
      n->args.push_back(ParseNot());
      l = std::move(n);
    }
    return l;
  }

  ExprPtr ParseNot() {
    DepthGuard guard(this);
    if (IsName("not")) {
      Next();
      ExprPtr n = Make(Expr::K::kNot);
      n->args.push_back(ParseNot());
      return n;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    ExprPtr first = ParseMath1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == Tok::kOp &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" || Cur().value == ">" ||
           Cur().value == "<=" || Cur().value == ">=")) {
        op = Cur().value;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Peek().type == Tok::kName && Peek().value == "in") {
        op = "not in";
        Next();
        Next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = Make(Expr::K::kCompare);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr Binary(const std::string& op, ExprPtr l, ExprPtr r) {
    ExprPtr n = Make(Expr::K::kBinary);
    n->name = op;
    n->args.push_back(std::move(l));
    n->args.push_back(std::move(r));
    return n;
  }

  ExprPtr ParseMath1() {
    ExprPtr l = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      std::string op = Cur().value;
      Next();
      l = Binary(op, std::move(l), ParseConcat());
    }
    return l;
  }

  ExprPtr ParseConcat() {
    ExprPtr l = ParseMath2();
    while (IsOp("~")) {
      Next();
      l = Binary("~", std::move(l), ParseMath2());
    }
    return l;
  }

  ExprPtr ParseMath2() {
    ExprPtr l = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      std::string op = Cur().value;
      Next();
      l = Binary(op, std::move(l), ParsePow());
    }
    return l;
  }

  ExprPtr ParsePow() {
    ExprPtr l = ParseUnary(true);
    while (IsOp("**")) {
      Next();
      l = Binary("**", std::move(l), ParseUnary(true));
    }
    return l;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      bool neg = IsOp("-");
      Next();
      node = Make(neg ? Expr::K::kNeg : Expr::K::kPos);
      node->args.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    if (t.type == Tok::kName) {
      const std::string& v = t.value;
      ExprPtr n = Make(Expr::K::kLiteral);
      if (v == "true" || v == "True") {
        n->literal = Value::Bool(true);
      } else if (v == "false" || v == "False") {
        n->literal = Value::Bool(false);
      } else if (v == "none" || v == "None") {
        n->literal = Value::None();
      } else {
        n->kind = Expr::K::kName;
        n->name = v;
      }
      Next();
      return n;
    }
    if (t.type == Tok::kString) {
      std::string s;
      ExprPtr n = Make(Expr::K::kLiteral);
      while (Cur().type == Tok::kString) {  // adjacent literals concatenate
        s += Cur().value;
        Next();
      }
      n->literal = Value::Str(std::move(s));
      return n;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      ExprPtr n = Make(Expr::K::kLiteral);
      n->literal = t.type == Tok::kInt ? Value::Int(t.int_value) : Value::Float(t.float_value);
      Next();
      return n;
    }
    if (IsOp("(")) {
      Next();
      if (IsOp(")")) {
        Next();
        return Make(Expr::K::kTuple);
      }
      ExprPtr first = ParseExpression();
      if (IsOp(")")) {
        Next();
        return first;
      }
      ExprPtr tup = Make(Expr::K::kTuple);
      tup->args.push_back(std::move(first));
      while (IsOp(",")) {
        Next();
        if (IsOp(")")) break;
        tup->args.push_back(ParseExpression());
      }
      ExpectOp(")");
      return tup;
    }
    if (IsOp("[")) {
      Next();
      ExprPtr list = Make(Expr::K::kList);
      while (!IsOp("]")) {
        list->args.push_back(ParseExpression());
        if (!IsOp(",")) break;
        Next();
      }
      ExpectOp("]");
      return list;
    }
    if (IsOp("{")) {
      Next();
      ExprPtr dict = Make(Expr::K::kDict);
      while (!IsOp("}")) {
        dict->args.push_back(ParseExpression());
        ExpectOp(":");
        dict->args.push_back(ParseExpression());
        if (!IsOp(",")) break;
        Next();
      }
      ExpectOp("}");
      return dict;
    }
    Error("unexpected " + Describe(t));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        Next();
        ExprPtr n;
        if (Cur().type == Tok::kName) {
          n = Make(Expr::K::kGetAttr);
          n->name = Cur().value;
        } else if (Cur().type == Tok::kInt) {
          n = Make(Expr::K::kGetItem);
          ExprPtr key = Make(Expr::K::kLiteral);
          key->literal = Value::Int(Cur().int_value);
          n->args.push_back(nullptr);  // the object, set below
          n->args.push_back(std::move(key));
        } else {
          Error("expected name or number after '.'");
        }
        Next();
        if (n->kind == Expr::K::kGetItem) {
          n->args[0] = std::move(node);
        } else {
          n->args.push_back(std::move(node));
        }
        node = std::move(n);
      } else if (IsOp("[")) {
        Next();
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr obj) {
    ExprPtr parts[3];
    bool slice = false;
    int idx = 0;
    while (true) {
      if (IsOp(":")) {
        slice = true;
        if (++idx > 2) Error("invalid slice");
        Next();
        continue;
      }
      if (IsOp("]")) break;
      if (parts[idx]) Error("expected ':' or ']'");
      parts[idx] = ParseExpression();
      if (!slice && IsOp(",")) Error("tuple subscripts are not supported");
    }
    ExpectOp("]");
    if (!slice) {
      if (!parts[0]) Error("expected a subscript");
      ExprPtr n = Make(Expr::K::kGetItem);
      n->args.push_back(std::move(obj));
      n->args.push_back(std::move(parts[0]));
      return n;
    }
    ExprPtr n = Make(Expr::K::kSlice);
    n->args.push_back(std::move(obj));
    for (auto& p : parts) n->args.push_back(std::move(p));
    return n;
  }

  void ParseArgs(Expr* call) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (IsOp("*") || IsOp("**")) Error("*args and **kwargs are not supported");
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().value == "=") {
        std::string k = Cur().value;
        Next();
        Next();
        call->kwargs.emplace_back(k, ParseExpression());
      } else {
        if (!call->kwargs.empty()) {
          Error("positional argument after keyword argument");
        }
        call->args.push_back(ParseExpression());
      }
      if (!IsOp(",")) break;
      Next();
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr callee) {
    ExprPtr n = Make(Expr::K::kCall);
    n->args.push_back(std::move(callee));
    ParseArgs(n.get());
    return n;
  }

  std::string DottedName() {
    std::string name = ExpectName();
    while (IsOp(".")) {
      Next();
      name += "." + ExpectName();
    }
    return name;
  }

  ExprPtr ParseFilter(ExprPtr input) {
    ExprPtr n = Make(Expr::K::kFilter);
    size_t pos = Cur().pos;
    n->name = DottedName();
    CheckName(n.get(), pos, "filter", names_.filter(n->name), names_.jinja_filter(n->name));
    n->args.push_back(std::move(input));
    if (IsOp("(")) ParseArgs(n.get());
    return n;
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        Next();
        node = ParseFilter(std::move(node));
      } else if (IsName("is")) {
        Next();
        ExprPtr n = Make(Expr::K::kTest);
        if (IsName("not")) {
          n->negated = true;
          Next();
        }
        size_t pos = Cur().pos;
        n->name = DottedName();
        CheckName(n.get(), pos, "test", names_.test(n->name), names_.jinja_test(n->name));
        n->args.push_back(std::move(node));
        if (IsOp("(")) {
          ParseArgs(n.get());
        } else if ((Cur().type == Tok::kName || Cur().type == Tok::kString ||
                    Cur().type == Tok::kInt || Cur().type == Tok::kFloat || IsOp("(") ||
                    IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and")) {
          if (IsName("is")) Error("you cannot chain multiple tests with is");
          n->args.push_back(ParsePostfix(ParsePrimary()));
        }
        node = std::move(n);
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  // jinja2 rejects an unknown filter or test when it compiles the template,
  // except inside an if statement or conditional expression ("soft" frames),
  // where the error waits until the name is evaluated. Filters and tests
  // that jinja2 has but this engine lacks always wait: a template may use
  // one in a branch that never runs.
  void CheckName(Expr* n, size_t pos, const char* kind, bool ours, bool jinja) {
    if (ours) return;
    if (jinja) {
      n->runtime_error = std::string(kind) + " '" + n->name + "' is not supported by this engine";
      return;
    }
    n->runtime_error = std::string("no ") + kind + " named '" + n->name + "'";
    if (!soft_) hard_unknowns_.emplace_back(pos, n->runtime_error);
  }

  struct SoftScope {
    SoftScope(Parser* p, bool soft) : p(p), outer(p->soft_) { p->soft_ = soft; }
    ~SoftScope() { p->soft_ = outer; }
    Parser* p;
    bool outer;
  };

  std::vector<Token> toks_;
  const Lexer& lexer_;
  const KnownNames& names_;
  size_t pos_ = 0;
  bool soft_ = false;
  std::vector<std::pair<size_t, std::string>> hard_unknowns_;
  int depth_ = 0;
  int loop_depth_ = 0;
  friend struct DepthGuard;
};

}  // namespace

Body ParseTemplate(const std::string& source, const LexerOptions& options,
                   const KnownNames& names) {
  Lexer lexer(source, options);
  std::vector<Token> tokens = lexer.Run();
  return Parser(std::move(tokens), lexer, names).ParseTemplate();
}

}  // namespace torchchat::jinja
