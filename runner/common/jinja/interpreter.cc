#include "runner/common/jinja/interpreter.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/text.h"

namespace torchchat::jinja {
namespace {

// Python slice indices for a sequence of length n.
std::vector<int64_t> SliceIndices(int64_t n, const Value& start, const Value& stop,
                                  const Value& step) {
  int64_t st = step.none() || step.undefined() ? 1 : step.as_int();
  if (st == 0) Fail("slice step cannot be zero");
  auto adjust = [&](const Value& v, int64_t def) -> int64_t {
    if (v.none() || v.undefined()) return def;
    int64_t x = v.as_int();
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t b = adjust(start, st < 0 ? n - 1 : 0);
  int64_t e = adjust(stop, st < 0 ? -1 : n);
  std::vector<int64_t> idx;
  if (st > 0) {
    for (int64_t k = b; k < e; k += st) idx.push_back(k);
  } else {
    for (int64_t k = b; k > e; k += st) idx.push_back(k);
  }
  return idx;
}

// Whether `target` can be reached from `v` (shared containers visited once).
bool Reaches(const Value& v, const DictData* target) {
  std::vector<const Value*> stack{&v};
  std::vector<const void*> seen;
  while (!stack.empty()) {
    const Value* x = stack.back();
    stack.pop_back();
    const void* id =
        x->list ? static_cast<const void*>(x->list.get()) : static_cast<const void*>(x->dict.get());
    if (!id) continue;
    if (id == target) return true;
    if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;
    seen.push_back(id);
    if (x->list) {
      for (const Value& y : x->list->items) stack.push_back(&y);
    } else {
      for (const auto& kv : x->dict->items) stack.push_back(&kv.second);
    }
  }
  return false;
}

}  // namespace

ScopePtr Child(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

const Value* Arg(const std::vector<Value>& args, const Kwargs& kwargs, size_t idx,
                 const char* name) {
  if (idx < args.size()) return &args[idx];
  for (const auto& [k, v] : kwargs) {
    if (k == name) return &v;
  }
  return nullptr;
}

int64_t IntArg(const Value* v, int64_t def, const char* what) {
  if (!v || v->none()) return def;
  if (!v->is_int()) Fail(std::string(what) + " must be an integer");
  return v->as_int();
}

std::string StrArg(const Value* v, const std::string& def) { return v ? Str(*v) : def; }

Interp::Interp(const RenderLimits& limits) : limits_(limits) {
  budget_.max_steps = limits.max_steps;
  budget_.max_bytes = limits.max_output_bytes;
  outer_budget_ = g_budget;
  g_budget = &budget_;
}

Interp::~Interp() {
  g_budget = outer_budget_;
  // Macros hold their defining scope, which holds them: break the cycles.
  for (auto& w : macro_scopes_) {
    if (auto s = w.lock()) s->vars.clear();
  }
}

Interp::Flow Interp::Exec(const Body& body, const ScopePtr& scope, std::string* out) {
  for (const auto& st : body) {
    Flow f;
    try {
      f = ExecOne(*st, scope, out);
    } catch (TemplateError& e) {
      if (e.line == 0 && st->line > 0) e.line = st->line;
      throw;
    }
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

Value Interp::Eval(const Expr& e, const ScopePtr& scope) {
  try {
    return EvalImpl(e, scope);
  } catch (TemplateError& err) {
    if (err.line == 0 && e.line > 0) err.line = e.line;
    throw;
  }
}

void Interp::CheckSize(size_t n) const {
  if (static_cast<int64_t>(n) > limits_.max_output_bytes) {
    Fail("output exceeds " + std::to_string(limits_.max_output_bytes) + " bytes");
  }
}

Interp::Flow Interp::ExecOne(const Stmt& st, const ScopePtr& scope, std::string* out) {
  Step();
  switch (st.kind) {
    case Stmt::K::kText:
      *out += st.text;
      CheckSize(out->size());
      return Flow::kNormal;
    case Stmt::K::kOutput:
      *out += Str(Eval(*st.expr, scope));
      CheckSize(out->size());
      return Flow::kNormal;
    case Stmt::K::kIf:
      return Exec(Truthy(Eval(*st.expr, scope)) ? st.body : st.else_body, scope, out);
    case Stmt::K::kFor:
      return ExecFor(st, scope, out);
    case Stmt::K::kSet: {
      Value v = Eval(*st.expr, scope);
      if (!st.attr.empty()) {
        const Value* ns = scope->Find(st.targets[0]);
        if (!ns || ns->t != Value::T::kNamespace) {
          Fail("cannot assign attribute on non-namespace object");
        }
        if (st.attr[0] == '_') {
          Fail("cannot store underscore-prefixed attribute '" + st.attr + "' on a namespace");
        }
        if (Reaches(v, ns->dict.get())) {
          // Python allows it, but a cycle would outlive the render.
          Fail("cannot store a namespace inside itself");
        }
        DictSet(ns->dict.get(), Value::Str(st.attr), std::move(v));
      } else {
        Assign(st.targets, v, scope.get());
      }
      return Flow::kNormal;
    }
    case Stmt::K::kSetBlock: {
      std::string captured;
      Exec(st.body, scope, &captured);
      Value v = Value::Str(std::move(captured));
      if (st.filter) v = ApplyFilterChain(*st.filter, std::move(v), scope);
      scope->vars[st.targets[0]] = std::move(v);
      return Flow::kNormal;
    }
    case Stmt::K::kMacro: {
      Value m;
      m.t = Value::T::kMacro;
      m.macro = std::make_shared<Macro>(Macro{&st, scope});
      scope->vars[st.text] = std::move(m);
      macro_scopes_.push_back(scope);
      return Flow::kNormal;
    }
    case Stmt::K::kBreak:
      return Flow::kBreak;
    case Stmt::K::kContinue:
      return Flow::kContinue;
    case Stmt::K::kWith: {
      ScopePtr inner = Child(scope);
      for (const auto& [name, e] : st.params) {
        inner->vars[name] = Eval(*e, scope);
      }
      return Exec(st.body, inner, out);
    }
    case Stmt::K::kFilterBlock: {
      std::string captured;
      Flow f = Exec(st.body, scope, &captured);
      *out += Str(ApplyFilterChain(*st.filter, Value::Str(captured), scope));
      CheckSize(out->size());
      return f;
    }
    case Stmt::K::kBody:
      return Exec(st.body, scope, out);
  }
  return Flow::kNormal;
}

void Interp::Assign(const std::vector<std::string>& targets, const Value& v, Scope* scope) {
  if (targets.size() == 1) {
    scope->vars[targets[0]] = v;
    return;
  }
  std::vector<Value> items = Iterate(v);
  if (items.size() != targets.size()) {
    Fail(items.size() > targets.size()
             ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
             : "not enough values to unpack (expected " + std::to_string(targets.size()) +
                   ", got " + std::to_string(items.size()) + ")");
  }
  for (size_t k = 0; k < targets.size(); ++k) scope->vars[targets[k]] = items[k];
}

Interp::Flow Interp::ExecFor(const Stmt& st, const ScopePtr& scope, std::string* out) {
  Value seq = Eval(*st.expr, scope);
  std::vector<Value> items = Iterate(seq);
  if (st.cond) {
    std::vector<Value> kept;
    for (auto& item : items) {
      Step();
      ScopePtr s = Child(scope);
      Assign(st.targets, item, s.get());
      if (Truthy(Eval(*st.cond, s))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    Exec(st.else_body, scope, out);
    return Flow::kNormal;
  }
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t k = 0; k < n; ++k) {
    Step();
    ScopePtr s = Child(scope);
    Assign(st.targets, items[k], s.get());
    Value loop = Value::Dict(Value::T::kLoop);
    auto set = [&](const char* key, Value v) {
      loop.dict->items.emplace_back(Value::Str(key), std::move(v));
    };
    set("index", Value::Int(k + 1));
    set("index0", Value::Int(k));
    set("revindex", Value::Int(n - k));
    set("revindex0", Value::Int(n - k - 1));
    set("first", Value::Bool(k == 0));
    set("last", Value::Bool(k == n - 1));
    set("length", Value::Int(n));
    set("depth", Value::Int(1));
    set("depth0", Value::Int(0));
    if (k > 0) set("previtem", items[k - 1]);
    if (k + 1 < n) set("nextitem", items[k + 1]);
    s->vars["loop"] = std::move(loop);
    if (Exec(st.body, s, out) == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

Value Interp::EvalImpl(const Expr& e, const ScopePtr& scope) {
  switch (e.kind) {
    case Expr::K::kLiteral:
      return e.literal;
    case Expr::K::kName: {
      const Value* v = scope->Find(e.name);
      return v ? *v : Value::Undefined("'" + e.name + "' is undefined");
    }
    case Expr::K::kList:
    case Expr::K::kTuple: {
      std::vector<Value> items;
      for (const auto& a : e.args) items.push_back(Eval(*a, scope));
      return Value::List(std::move(items), e.kind == Expr::K::kTuple);
    }
    case Expr::K::kDict: {
      Value d = Value::Dict();
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = Eval(*e.args[k], scope);
        if (key.is_list() && !key.list->tuple) Fail("unhashable type: 'list'");
        if (key.is_dict()) Fail("unhashable type: 'dict'");
        DictSet(d.dict.get(), key, Eval(*e.args[k + 1], scope));
      }
      return d;
    }
    case Expr::K::kGetAttr:
      return GetAttr(Eval(*e.args[0], scope), e.name);
    case Expr::K::kGetItem:
      return GetItem(Eval(*e.args[0], scope), Eval(*e.args[1], scope));
    case Expr::K::kSlice: {
      Value obj = Eval(*e.args[0], scope);
      if (obj.undefined()) FailUndefined(obj);
      Value parts[3];
      for (int k = 0; k < 3; ++k) {
        parts[k] = e.args[k + 1] ? Eval(*e.args[k + 1], scope) : Value::None();
        // A non-integer index is a TypeError, which jinja2's getitem turns
        // into an undefined value.
        if (!parts[k].none() && !parts[k].is_int()) {
          return Value::Undefined("invalid slice index");
        }
      }
      if (obj.is_str()) {
        std::vector<uint32_t> cps = Decode(obj.s);
        std::string s;
        for (int64_t k :
             SliceIndices(static_cast<int64_t>(cps.size()), parts[0], parts[1], parts[2])) {
          AppendCp(cps[k], &s);
        }
        return Value::Str(std::move(s));
      }
      if (obj.is_list()) {
        std::vector<Value> items;
        for (int64_t k : SliceIndices(static_cast<int64_t>(obj.list->items.size()), parts[0],
                                      parts[1], parts[2])) {
          items.push_back(obj.list->items[k]);
        }
        return Value::List(std::move(items), obj.list->tuple);
      }
      return Value::Undefined(std::string("'") + TypeName(obj) + " object' is not subscriptable");
    }
    case Expr::K::kCall:
      return EvalCall(e, scope);
    case Expr::K::kFilter: {
      Value in = Eval(*e.args[0], scope);
      if (!e.runtime_error.empty()) Fail(e.runtime_error);
      return ApplyFilter(e, std::move(in), scope);
    }
    case Expr::K::kTest: {
      Value in = Eval(*e.args[0], scope);
      if (!e.runtime_error.empty()) Fail(e.runtime_error);
      std::vector<Value> args;
      for (size_t k = 1; k < e.args.size(); ++k) {
        args.push_back(Eval(*e.args[k], scope));
      }
      for (const auto& kv : e.kwargs) args.push_back(Eval(*kv.second, scope));
      bool r = ApplyTest(e.name, in, args);
      return Value::Bool(e.negated ? !r : r);
    }
    case Expr::K::kNeg:
    case Expr::K::kPos: {
      Value v = Eval(*e.args[0], scope);
      if (v.undefined()) FailUndefined(v);
      if (!v.is_num()) {
        Fail(std::string("bad operand type for unary ") + (e.kind == Expr::K::kNeg ? "-" : "+") +
             ": '" + TypeName(v) + "'");
      }
      if (e.kind == Expr::K::kPos) {
        return v.t == Value::T::kFloat ? v : Value::Int(v.as_int());
      }
      if (v.t == Value::T::kFloat) return Value::Float(-v.f);
      return Value::Int(CheckedMul(v.as_int(), -1));
    }
    case Expr::K::kNot:
      return Value::Bool(!Truthy(Eval(*e.args[0], scope)));
    case Expr::K::kAnd: {
      Value l = Eval(*e.args[0], scope);
      return Truthy(l) ? Eval(*e.args[1], scope) : l;
    }
    case Expr::K::kOr: {
      Value l = Eval(*e.args[0], scope);
      return Truthy(l) ? l : Eval(*e.args[1], scope);
    }
    case Expr::K::kBinary:
      return BinaryOp(e.name, Eval(*e.args[0], scope), Eval(*e.args[1], scope));
    case Expr::K::kCompare: {
      Value l = Eval(*e.args[0], scope);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value r = Eval(*e.args[k + 1], scope);
        const std::string& op = e.ops[k];
        bool ok;
        if (op == "==")
          ok = Equal(l, r);
        else if (op == "!=")
          ok = !Equal(l, r);
        else if (op == "in")
          ok = Contains(r, l);
        else if (op == "not in")
          ok = !Contains(r, l);
        else {
          int c = Compare(l, r, op.c_str());
          ok = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
        }
        if (!ok) return Value::Bool(false);
        l = std::move(r);
      }
      return Value::Bool(true);
    }
    case Expr::K::kCond: {
      if (Truthy(Eval(*e.args[0], scope))) return Eval(*e.args[1], scope);
      if (e.args.size() > 2) return Eval(*e.args[2], scope);
      return Value::Undefined("the inline if-expression on line " + std::to_string(e.line) +
                              " evaluated to false and no else section was defined.");
    }
  }
  return Value();
}

Value Interp::BinaryOp(const std::string& op, const Value& l, const Value& r) {
  if (op == "~") {
    std::string s = Str(l) + Str(r);
    CheckSize(s.size());
    return Value::Str(std::move(s));
  }
  if (l.undefined()) FailUndefined(l);
  if (r.undefined()) FailUndefined(r);
  bool floats = l.t == Value::T::kFloat || r.t == Value::T::kFloat;
  if (l.is_num() && r.is_num()) {
    if (op == "+") {
      return floats ? Value::Float(l.as_float() + r.as_float())
                    : Value::Int(CheckedAdd(l.as_int(), r.as_int()));
    }
    if (op == "-") {
      return floats ? Value::Float(l.as_float() - r.as_float())
                    : Value::Int(CheckedAdd(l.as_int(), CheckedMul(r.as_int(), -1)));
    }
    if (op == "*") {
      return floats ? Value::Float(l.as_float() * r.as_float())
                    : Value::Int(CheckedMul(l.as_int(), r.as_int()));
    }
    if (op == "/") {
      if (r.as_float() == 0) Fail("division by zero");
      return Value::Float(l.as_float() / r.as_float());
    }
    if (op == "//" || op == "%") {
      if (floats) {
        double a = l.as_float(), b = r.as_float();
        if (b == 0) Fail("float floor division by zero");
        double m = std::fmod(a, b);
        if (m != 0 && ((m < 0) != (b < 0))) m += b;
        if (op == "%") return Value::Float(m);
        return Value::Float(std::floor((a - m) / b + 0.5));
      }
      int64_t q = FloorDiv(l.as_int(), r.as_int());
      if (op == "//") return Value::Int(q);
      return Value::Int(l.as_int() - q * r.as_int());
    }
    if (op == "**") {
      if (!floats && r.as_int() >= 0) {
        int64_t base = l.as_int(), result = 1;
        for (int64_t k = 0; k < r.as_int(); ++k) {
          result = CheckedMul(result, base);
          if (result == 0 || result == 1) break;
        }
        return Value::Int(result);
      }
      return Value::Float(std::pow(l.as_float(), r.as_float()));
    }
  }
  if (op == "+" && l.is_str() && r.is_str()) {
    CheckSize(l.s.size() + r.s.size());
    return Value::Str(l.s + r.s);
  }
  if (op == "+" && l.is_list() && r.is_list() && l.list->tuple == r.list->tuple) {
    std::vector<Value> items = l.list->items;
    items.insert(items.end(), r.list->items.begin(), r.list->items.end());
    return Value::List(std::move(items), l.list->tuple);
  }
  if (op == "*" && ((l.is_int() && (r.is_str() || r.is_list())) ||
                    (r.is_int() && (l.is_str() || l.is_list())))) {
    const Value& seq = l.is_int() ? r : l;
    int64_t times = std::max<int64_t>(0, l.is_int() ? l.as_int() : r.as_int());
    size_t unit = seq.is_str() ? seq.s.size() : seq.list->items.size() * 16;
    if (unit && times > limits_.max_output_bytes / static_cast<int64_t>(unit)) {
      CheckSize(static_cast<size_t>(limits_.max_output_bytes) + 1);
    }
    if (seq.is_str()) {
      std::string s;
      for (int64_t k = 0; k < times; ++k) s += seq.s;
      return Value::Str(std::move(s));
    }
    std::vector<Value> items;
    for (int64_t k = 0; k < times; ++k) {
      items.insert(items.end(), seq.list->items.begin(), seq.list->items.end());
    }
    return Value::List(std::move(items), seq.list->tuple);
  }
  if (op == "%" && l.is_str()) return Value::Str(PercentFormat(l.s, r));
  Fail("unsupported operand type(s) for " + op + ": '" + TypeName(l) + "' and '" + TypeName(r) +
       "'");
}

Value Interp::EvalCall(const Expr& e, const ScopePtr& scope) {
  const Expr& callee = *e.args[0];
  std::vector<Value> args;
  Kwargs kwargs;
  auto eval_args = [&] {
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(Eval(*e.args[k], scope));
    for (const auto& [name, x] : e.kwargs) kwargs.emplace_back(name, Eval(*x, scope));
  };
  Value fn;
  if (callee.kind == Expr::K::kGetAttr) {
    Value obj = Eval(*callee.args[0], scope);
    if (obj.undefined()) FailUndefined(obj);
    if (HasMethod(obj, callee.name)) {
      eval_args();
      return CallMethod(obj, callee.name, args, kwargs);
    }
    fn = GetAttr(obj, callee.name);
  } else {
    fn = Eval(callee, scope);
  }
  eval_args();
  return CallValue(fn, args, kwargs);
}

Value Interp::CallValue(const Value& fn, std::vector<Value>& args, Kwargs& kwargs) {
  if (fn.t == Value::T::kBuiltin) return fn.builtin->fn(args, kwargs);
  if (fn.t == Value::T::kMacro) return CallMacro(*fn.macro, args, kwargs);
  if (fn.undefined()) FailUndefined(fn);
  Fail(std::string("'") + TypeName(fn) + "' object is not callable");
}

Value Interp::CallMacro(const Macro& m, std::vector<Value>& args, Kwargs& kwargs) {
  const Stmt& def = *m.def;
  if (args.size() > def.params.size()) {
    Fail("macro '" + def.text + "' takes not more than " + std::to_string(def.params.size()) +
         " argument(s)");
  }
  if (++call_depth_ > limits_.max_call_depth) {
    Fail("macro calls nested deeper than " + std::to_string(limits_.max_call_depth) +
         " (runaway recursion?)");
  }
  ScopePtr s = Child(m.closure);
  for (size_t k = 0; k < def.params.size(); ++k) {
    const auto& [name, def_expr] = def.params[k];
    const Value* kw = nullptr;
    for (const auto& [kn, kv] : kwargs) {
      if (kn == name) kw = &kv;
    }
    if (k < args.size()) {
      s->vars[name] = args[k];
    } else if (kw) {
      s->vars[name] = *kw;
    } else if (def_expr) {
      s->vars[name] = Eval(*def_expr, s);
    } else {
      s->vars[name] = Value::Undefined("parameter '" + name + "' was not provided");
    }
  }
  for (const auto& [kn, kv] : kwargs) {
    bool known = false;
    for (const auto& p : def.params) known |= p.first == kn;
    if (!known) {
      Fail("macro '" + def.text + "' takes no keyword argument '" + kn + "'");
    }
  }
  std::string out;
  Exec(def.body, s, &out);
  --call_depth_;
  return Value::Str(std::move(out));
}

Value Interp::ApplyFilterChain(const Expr& chain, Value in, const ScopePtr& scope) {
  if (chain.kind != Expr::K::kFilter) return in;
  Value inner = ApplyFilterChain(*chain.args[0], std::move(in), scope);
  return ApplyFilter(chain, std::move(inner), scope);
}

Value Interp::ApplyFilter(const Expr& e, Value in, const ScopePtr& scope) {
  std::vector<Value> args;
  Kwargs kwargs;
  for (size_t k = 1; k < e.args.size(); ++k) args.push_back(Eval(*e.args[k], scope));
  for (const auto& [name, x] : e.kwargs) kwargs.emplace_back(name, Eval(*x, scope));
  Value r = Filter(e.name, std::move(in), args, kwargs);
  if (r.is_str()) CheckSize(r.s.size());
  return r;
}

}  // namespace torchchat::jinja
