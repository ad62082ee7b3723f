#include "tokenizer/jinja/evaluator.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/operators.h"

namespace bw::jinja {

// The state behind a for loop's `loop` variable, turned into a value only when a template
// reads it (most iterations never do).
struct LoopState {
  std::shared_ptr<const std::vector<Value>> items;
  size_t index = 0;
};

namespace {

Value make_loop_value(const LoopState& state) {
  static const auto* keys = new std::vector<Value>{
      Value::string("index"),  Value::string("index0"),   Value::string("revindex"), Value::string("revindex0"),
      Value::string("first"),  Value::string("last"),     Value::string("length"),   Value::string("depth"),
      Value::string("depth0"), Value::string("previtem"), Value::string("nextitem"), Value::string("cycle")};
  const std::vector<Value>& items = *state.items;
  const size_t i = state.index;
  const size_t n = items.size();
  const auto index = static_cast<int64_t>(i);
  const auto length = static_cast<int64_t>(n);
  Dict loop;
  loop.set((*keys)[0], Value::integer(index + 1));
  loop.set((*keys)[1], Value::integer(index));
  loop.set((*keys)[2], Value::integer(length - index));
  loop.set((*keys)[3], Value::integer(length - index - 1));
  loop.set((*keys)[4], Value::boolean(i == 0));
  loop.set((*keys)[5], Value::boolean(i + 1 == n));
  loop.set((*keys)[6], Value::integer(length));
  loop.set((*keys)[7], Value::integer(1));
  loop.set((*keys)[8], Value::integer(0));
  loop.set((*keys)[9], i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
  loop.set((*keys)[10], i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
  loop.set((*keys)[11], make_function("cycle", [i](Evaluator&, CallArgs& args) -> Result<Value> {
             if (args.positional.empty()) return InvalidArgument("no items for cycling given");
             return args.positional[i % args.positional.size()];
           }));
  return Value::dict(std::move(loop));
}

}  // namespace

// Variables of one frame (the template's top level, a loop iteration, a macro call); lookups
// walk up to the globals.
class Scope {
 public:
  explicit Scope(std::shared_ptr<Scope> parent) : parent_(std::move(parent)) {}

  // The returned pointer is valid until the next set() on the scope that holds it.
  const Value* find(std::string_view name) {
    for (Scope* s = this; s != nullptr; s = s->parent_.get()) {
      for (const auto& [key, value] : s->vars_) {
        if (key == name) return &value;
      }
      if (s->loop_ && name == "loop") {
        s->vars_.emplace_back("loop", make_loop_value(*s->loop_));
        s->loop_.reset();
        return &s->vars_.back().second;
      }
    }
    return nullptr;
  }

  void set(std::string_view name, Value value) {
    for (auto& [key, v] : vars_) {
      if (key == name) {
        v = std::move(value);
        return;
      }
    }
    vars_.emplace_back(std::string(name), std::move(value));
  }

  void set_loop(LoopState state) { loop_ = std::move(state); }

 private:
  std::shared_ptr<Scope> parent_;
  std::vector<std::pair<std::string, Value>> vars_;
  std::optional<LoopState> loop_;
};

class Macro : public Callable {
 public:
  Macro(const MacroStmt* def, std::shared_ptr<Scope> closure) : def_(def), closure_(std::move(closure)) {}
  Result<Value> call(Evaluator& ev, CallArgs& args) const override { return ev.call_macro(*this, args); }
  std::string repr() const override { return fmt::format("<Macro '{}'>", def_->name); }

  const MacroStmt& def() const { return *def_; }
  const std::shared_ptr<Scope>& closure() const { return closure_; }
  void release() { closure_.reset(); }

 private:
  const MacroStmt* def_;
  std::shared_ptr<Scope> closure_;  // the scope the macro was defined in
};

namespace {

class NativeFunction : public Callable {
 public:
  NativeFunction(std::string name, std::function<Result<Value>(Evaluator&, CallArgs&)> fn)
      : name_(std::move(name)), fn_(std::move(fn)) {}
  Result<Value> call(Evaluator& ev, CallArgs& args) const override { return fn_(ev, args); }
  std::string repr() const override { return fmt::format("<function {}>", name_); }

 private:
  std::string name_;
  std::function<Result<Value>(Evaluator&, CallArgs&)> fn_;
};

// Restores a variable when leaving a block.
template <typename T>
class Restore {
 public:
  Restore(T& slot, T value) : slot_(slot), saved_(std::move(slot)) { slot_ = std::move(value); }
  ~Restore() { slot_ = std::move(saved_); }
  Restore(const Restore&) = delete;
  Restore& operator=(const Restore&) = delete;

 private:
  T& slot_;
  T saved_;
};

class DepthGuard {
 public:
  explicit DepthGuard(int& depth) : depth_(depth) { ++depth_; }
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

}  // namespace

namespace {

// jinja2's filters written as Python generators: they fail only when iterated.
bool is_generator_filter(std::string_view name) {
  static constexpr std::string_view kNames[] = {"batch",  "items",      "map",   "reject", "rejectattr",
                                                "select", "selectattr", "slice", "unique"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

}  // namespace

Value make_function(std::string name, std::function<Result<Value>(Evaluator&, CallArgs&)> fn) {
  return Value::callable(std::make_shared<NativeFunction>(std::move(name), std::move(fn)));
}

Evaluator::Evaluator(const RenderLimits& limits) : limits_(limits) {}

Evaluator::~Evaluator() {
  // Break the cycles a template can build so that everything is freed.
  scope_.reset();
  for (auto& macro : macros_)
    macro->release();
  for (Value& ns : namespaces_)
    ns.namespace_attrs().clear();
}

Result<std::string> Evaluator::render(const Program& program, const Globals& globals) {
  Globals all;
  add_default_globals(all);
  auto global_scope = std::make_shared<Scope>(nullptr);
  for (auto& [name, value] : all)
    global_scope->set(name, value);
  for (const auto& [name, value] : globals)
    global_scope->set(name, value);
  scope_ = std::make_shared<Scope>(std::move(global_scope));
  std::string out;
  out_ = &out;
  auto flow = exec_body(program.body);
  out_ = nullptr;
  if (!flow.ok()) {
    if (raised_) return flow.status();
    return InvalidArgument("line {}: {}", line_, flow.status().message());
  }
  return out;
}

Status Evaluator::raise(std::string message) {
  raised_ = true;
  return InvalidArgument("raise_exception: {}", message);
}

Status Evaluator::charge(uint64_t units) {
  steps_ += units;
  if (steps_ > limits_.max_steps) {
    return InvalidArgument("template exceeded its evaluation budget ({} steps)", limits_.max_steps);
  }
  return OkStatus();
}

Status Evaluator::check_size(size_t size) const {
  if (size > limits_.max_output_bytes) {
    return InvalidArgument("value of {} bytes/items exceeds the limit of {}", size, limits_.max_output_bytes);
  }
  return OkStatus();
}

Status Evaluator::emit(std::string_view text) {
  if (out_->size() + text.size() > limits_.max_output_bytes) {
    return InvalidArgument("output exceeds {} bytes", limits_.max_output_bytes);
  }
  RETURN_IF_ERROR(charge(text.size() / 16));
  out_->append(text);
  return OkStatus();
}

Value Evaluator::make_namespace(Dict attrs) {
  Value ns = Value::make_namespace(std::move(attrs));
  namespaces_.push_back(ns);
  return ns;
}

std::shared_ptr<Macro> Evaluator::make_macro(const MacroStmt& def) {
  auto macro = std::make_shared<Macro>(&def, scope_);
  macros_.push_back(macro);
  return macro;
}

// ---- statements -------------------------------------------------------------------------

Result<Evaluator::Flow> Evaluator::exec_body(const Body& body) {
  for (const StmtPtr& stmt : body) {
    ASSIGN_OR_RETURN(Flow flow, exec(*stmt));
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Result<std::string> Evaluator::render_body(const Body& body, std::shared_ptr<Scope> scope) {
  std::string text;
  Restore<std::string*> out_guard(out_, &text);
  Restore<std::shared_ptr<Scope>> scope_guard(scope_, std::move(scope));
  ASSIGN_OR_RETURN(Flow flow, exec_body(body));
  if (flow != Flow::kNormal) return InvalidArgument("'break' or 'continue' outside of a loop body");
  return text;
}

Result<Evaluator::Flow> Evaluator::exec(const Stmt& stmt) {
  DepthGuard depth(eval_depth_);
  if (eval_depth_ > limits_.max_eval_depth) return InvalidArgument("template nested too deeply");
  line_ = stmt.line;
  RETURN_IF_ERROR(charge(1));
  switch (stmt.kind) {
    case StmtKind::kText:
      RETURN_IF_ERROR(emit(static_cast<const TextStmt&>(stmt).text));
      return Flow::kNormal;
    case StmtKind::kOutput: {
      ASSIGN_OR_RETURN(Value v, eval(*static_cast<const OutputStmt&>(stmt).expr));
      if (v.is_string()) {
        RETURN_IF_ERROR(emit(v.str()));
      } else {
        RETURN_IF_ERROR(emit(to_str(v)));
      }
      return Flow::kNormal;
    }
    case StmtKind::kIf: {
      const auto& s = static_cast<const IfStmt&>(stmt);
      for (const auto& [test, body] : s.branches) {
        ASSIGN_OR_RETURN(Value v, eval(*test));
        if (truthy(v)) return exec_body(body);
      }
      return exec_body(s.else_body);
    }
    case StmtKind::kFor:
      return exec_for(static_cast<const ForStmt&>(stmt));
    case StmtKind::kSet: {
      const auto& s = static_cast<const SetStmt&>(stmt);
      ASSIGN_OR_RETURN(Value v, eval(*s.value));
      RETURN_IF_ERROR(exec_set(s.target, std::move(v)));
      return Flow::kNormal;
    }
    case StmtKind::kSetBlock: {
      const auto& s = static_cast<const SetBlockStmt&>(stmt);
      ASSIGN_OR_RETURN(std::string text, render_body(s.body, std::make_shared<Scope>(scope_)));
      Value v = Value::string(std::move(text));
      if (s.filter) {
        ASSIGN_OR_RETURN(v, eval_filter(static_cast<const FilterExpr&>(*s.filter), &v));
      }
      RETURN_IF_ERROR(exec_set(s.target, std::move(v)));
      return Flow::kNormal;
    }
    case StmtKind::kMacro: {
      const auto& s = static_cast<const MacroStmt&>(stmt);
      scope_->set(s.name, Value::callable(make_macro(s)));
      return Flow::kNormal;
    }
    case StmtKind::kCallBlock: {
      const auto& s = static_cast<const CallBlockStmt&>(stmt);
      ASSIGN_OR_RETURN(Value callee, eval(*s.call->callee));
      CallArgs args;
      RETURN_IF_ERROR(eval_args(s.call->args, args));
      args.keyword.emplace_back("caller", Value::callable(make_macro(*s.caller)));
      ASSIGN_OR_RETURN(Value v, call(callee, args));
      RETURN_IF_ERROR(emit(to_str(v)));
      return Flow::kNormal;
    }
    case StmtKind::kFilterBlock: {
      const auto& s = static_cast<const FilterBlockStmt&>(stmt);
      ASSIGN_OR_RETURN(std::string text, render_body(s.body, std::make_shared<Scope>(scope_)));
      const Value input = Value::string(std::move(text));
      ASSIGN_OR_RETURN(Value v, eval_filter(static_cast<const FilterExpr&>(*s.filter), &input));
      RETURN_IF_ERROR(emit(to_str(v)));
      return Flow::kNormal;
    }
    case StmtKind::kWith: {
      const auto& s = static_cast<const WithStmt&>(stmt);
      auto inner = std::make_shared<Scope>(scope_);
      for (const auto& [target, expr] : s.assignments) {
        ASSIGN_OR_RETURN(Value v, eval(*expr));
        RETURN_IF_ERROR(assign(*inner, target, std::move(v)));
      }
      Restore<std::shared_ptr<Scope>> scope_guard(scope_, std::move(inner));
      return exec_body(s.body);
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
  }
  return Flow::kNormal;
}

Status Evaluator::exec_set(const Target& target, Value value) {
  if (target.kind == Target::Kind::kNamespaceAttr) {
    const Value* ns = scope_->find(target.name);
    if (ns == nullptr || !ns->is_namespace()) return InvalidArgument("Cannot assign attribute on non-namespace object");
    if (value.depth() > kMaxValueDepth) return InvalidArgument("value nested too deeply");
    ns->namespace_attrs().set(target.attr, std::move(value));
    return OkStatus();
  }
  return assign(*scope_, target, std::move(value));
}

Status Evaluator::assign(Scope& scope, const Target& target, Value value) {
  if (value.depth() > kMaxValueDepth) return InvalidArgument("value nested too deeply");
  switch (target.kind) {
    case Target::Kind::kName:
      scope.set(target.name, std::move(value));
      return OkStatus();
    case Target::Kind::kNamespaceAttr:
      return exec_set(target, std::move(value));
    case Target::Kind::kTuple: {
      ASSIGN_OR_RETURN(std::vector<Value> items, iterate(value));
      if (items.size() > target.items.size()) {
        return InvalidArgument("too many values to unpack (expected {})", target.items.size());
      }
      if (items.size() < target.items.size()) {
        return InvalidArgument("not enough values to unpack (expected {}, got {})", target.items.size(), items.size());
      }
      for (size_t i = 0; i < items.size(); ++i)
        RETURN_IF_ERROR(assign(scope, target.items[i], std::move(items[i])));
      return OkStatus();
    }
  }
  return OkStatus();
}

Result<Evaluator::Flow> Evaluator::exec_for(const ForStmt& stmt) {
  ASSIGN_OR_RETURN(Value iterable, eval(*stmt.iter));
  ASSIGN_OR_RETURN(std::vector<Value> items, iterate(iterable));
  RETURN_IF_ERROR(charge(items.size()));
  const std::shared_ptr<Scope> parent = scope_;
  if (stmt.filter) {
    std::vector<Value> kept;
    for (Value& item : items) {
      auto s = std::make_shared<Scope>(parent);
      RETURN_IF_ERROR(assign(*s, stmt.target, item));
      Restore<std::shared_ptr<Scope>> scope_guard(scope_, std::move(s));
      ASSIGN_OR_RETURN(Value keep, eval(*stmt.filter));
      if (truthy(keep)) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    Restore<std::shared_ptr<Scope>> scope_guard(scope_, std::make_shared<Scope>(parent));
    ASSIGN_OR_RETURN(Flow flow, exec_body(stmt.else_body));
    (void)flow;
    return Flow::kNormal;
  }
  const size_t n = items.size();
  const auto shared_items = std::make_shared<const std::vector<Value>>(std::move(items));
  for (size_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(charge(1));
    auto s = std::make_shared<Scope>(parent);
    RETURN_IF_ERROR(assign(*s, stmt.target, (*shared_items)[i]));
    s->set_loop(LoopState{shared_items, i});
    Restore<std::shared_ptr<Scope>> scope_guard(scope_, std::move(s));
    ASSIGN_OR_RETURN(Flow flow, exec_body(stmt.body));
    if (flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

// ---- expressions ------------------------------------------------------------------------

Result<Value> Evaluator::eval(const Expr& expr) {
  DepthGuard depth(eval_depth_);
  if (eval_depth_ > limits_.max_eval_depth) return InvalidArgument("template nested too deeply");
  line_ = expr.line;
  RETURN_IF_ERROR(charge(1));
  switch (expr.kind) {
    case ExprKind::kLiteral:
      return static_cast<const LiteralExpr&>(expr).value;
    case ExprKind::kName: {
      const auto& name = static_cast<const NameExpr&>(expr).name;
      if (const Value* v = scope_->find(name)) return *v;
      return Value::undefined(fmt::format("'{}' is undefined", name));
    }
    case ExprKind::kList: {
      const auto& e = static_cast<const ListExpr&>(expr);
      std::vector<Value> items;
      items.reserve(e.items.size());
      for (const ExprPtr& item : e.items) {
        ASSIGN_OR_RETURN(Value v, eval(*item));
        items.push_back(std::move(v));
      }
      return Value::list(std::move(items), e.tuple);
    }
    case ExprKind::kDict: {
      Dict d;
      for (const auto& [key_expr, value_expr] : static_cast<const DictExpr&>(expr).items) {
        ASSIGN_OR_RETURN(Value key, eval(*key_expr));
        if (!is_hashable(key)) return InvalidArgument("unhashable type: '{}'", type_name(key));
        ASSIGN_OR_RETURN(Value value, eval(*value_expr));
        d.set(std::move(key), std::move(value));
      }
      return Value::dict(std::move(d));
    }
    case ExprKind::kGetattr: {
      const auto& e = static_cast<const GetattrExpr&>(expr);
      ASSIGN_OR_RETURN(Value obj, eval(*e.object));
      if (obj.is_undefined()) return undefined_error(obj);
      return get_attribute(obj, e.name);
    }
    case ExprKind::kGetitem:
      return eval_getitem(static_cast<const GetitemExpr&>(expr));
    case ExprKind::kSlice:
      return InvalidArgument("slice outside of a subscript");
    case ExprKind::kCall:
      return eval_call(static_cast<const CallExpr&>(expr));
    case ExprKind::kFilter:
      return eval_filter(static_cast<const FilterExpr&>(expr), nullptr);
    case ExprKind::kTest: {
      const auto& e = static_cast<const TestExpr&>(expr);
      ASSIGN_OR_RETURN(Value input, eval(*e.input));
      CallArgs args;
      RETURN_IF_ERROR(eval_args(e.args, args));
      line_ = e.line;
      ASSIGN_OR_RETURN(bool result, apply_test(e.name, input, args));
      return Value::boolean(result);
    }
    case ExprKind::kUnary: {
      const auto& e = static_cast<const UnaryExpr&>(expr);
      ASSIGN_OR_RETURN(Value v, eval(*e.operand));
      return unary_op(e.op, v);
    }
    case ExprKind::kBinary: {
      const auto& e = static_cast<const BinaryExpr&>(expr);
      ASSIGN_OR_RETURN(Value left, eval(*e.left));
      if (e.op == BinaryOp::kAnd) {
        if (!truthy(left)) return left;
        return eval(*e.right);
      }
      if (e.op == BinaryOp::kOr) {
        if (truthy(left)) return left;
        return eval(*e.right);
      }
      ASSIGN_OR_RETURN(Value right, eval(*e.right));
      line_ = e.line;
      return binary_op(*this, e.op, left, right);
    }
    case ExprKind::kConcat: {
      std::string s;
      for (const ExprPtr& part : static_cast<const ConcatExpr&>(expr).parts) {
        ASSIGN_OR_RETURN(Value v, eval(*part));
        if (v.is_string()) {
          s += v.str();
        } else {
          s += to_str(v);
        }
        RETURN_IF_ERROR(check_size(s.size()));
      }
      RETURN_IF_ERROR(charge(s.size() / 16));
      return Value::string(std::move(s));
    }
    case ExprKind::kCompare: {
      const auto& e = static_cast<const CompareExpr&>(expr);
      ASSIGN_OR_RETURN(Value left, eval(*e.first));
      for (const auto& [op, operand] : e.rest) {
        ASSIGN_OR_RETURN(Value right, eval(*operand));
        ASSIGN_OR_RETURN(bool ok, compare(op, left, right));
        if (!ok) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case ExprKind::kCondExpr: {
      const auto& e = static_cast<const CondExpr&>(expr);
      ASSIGN_OR_RETURN(Value test, eval(*e.test));
      if (truthy(test)) return eval(*e.then_expr);
      if (e.else_expr) return eval(*e.else_expr);
      return Value::undefined(fmt::format(
          "the inline if-expression on line {} evaluated to false and no else section was defined.", e.line));
    }
  }
  return Value();
}

Result<Value> Evaluator::eval_getitem(const GetitemExpr& expr) {
  ASSIGN_OR_RETURN(Value obj, eval(*expr.object));
  if (obj.is_undefined()) return undefined_error(obj);
  if (expr.index->kind == ExprKind::kSlice) {
    const auto& slice = static_cast<const SliceExpr&>(*expr.index);
    Value bounds[3] = {Value::none(), Value::none(), Value::none()};
    const Expr* parts[3] = {slice.start.get(), slice.stop.get(), slice.step.get()};
    for (int i = 0; i < 3; ++i) {
      if (parts[i] != nullptr) {
        ASSIGN_OR_RETURN(bounds[i], eval(*parts[i]));
      }
    }
    if (obj.is_list()) RETURN_IF_ERROR(charge(obj.items().size()));
    if (obj.is_string()) RETURN_IF_ERROR(charge(obj.str().size() / 16));
    return get_slice(obj, bounds[0], bounds[1], bounds[2]);
  }
  ASSIGN_OR_RETURN(Value key, eval(*expr.index));
  return get_item(obj, key);
}

Status Evaluator::eval_args(const Args& args, CallArgs& out) {
  for (const ExprPtr& e : args.positional) {
    ASSIGN_OR_RETURN(Value v, eval(*e));
    out.positional.push_back(std::move(v));
  }
  if (args.star_args) {
    ASSIGN_OR_RETURN(Value v, eval(*args.star_args));
    ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    for (Value& item : items)
      out.positional.push_back(std::move(item));
  }
  for (const auto& [name, e] : args.keyword) {
    ASSIGN_OR_RETURN(Value v, eval(*e));
    out.keyword.emplace_back(name, std::move(v));
  }
  if (args.star_kwargs) {
    ASSIGN_OR_RETURN(Value v, eval(*args.star_kwargs));
    if (!v.is_dict()) return InvalidArgument("argument after ** must be a mapping, not {}", type_name(v));
    for (const auto& [key, value] : v.dict().items()) {
      if (!key.is_string()) return InvalidArgument("keywords must be strings");
      out.keyword.emplace_back(key.str(), value);
    }
  }
  return OkStatus();
}

Result<Value> Evaluator::eval_call(const CallExpr& expr) {
  ASSIGN_OR_RETURN(Value callee, eval(*expr.callee));
  CallArgs args;
  RETURN_IF_ERROR(eval_args(expr.args, args));
  line_ = expr.line;
  return call(callee, args);
}

Result<Value> Evaluator::eval_filter(const FilterExpr& filter, const Value* block_input) {
  Value input;
  if (filter.input == nullptr) {
    if (block_input != nullptr) input = *block_input;
  } else if (filter.input->kind == ExprKind::kFilter) {
    ASSIGN_OR_RETURN(input, eval_filter(static_cast<const FilterExpr&>(*filter.input), block_input));
  } else {
    ASSIGN_OR_RETURN(input, eval(*filter.input));
  }
  CallArgs args;
  RETURN_IF_ERROR(eval_args(filter.args, args));
  line_ = filter.line;
  return apply_filter(filter.name, input, args);
}

Result<Value> Evaluator::call(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) return undefined_error(callee);
  if (!callee.is_callable()) return InvalidArgument("'{}' object is not callable", type_name(callee));
  return callee.callable().call(*this, args);
}

Result<Value> Evaluator::apply_filter(std::string_view name, const Value& input, CallArgs& args) {
  FilterFn fn = find_filter(name);
  if (fn == nullptr) {
    if (is_jinja2_filter(name)) return InvalidArgument("filter '{}' is not supported", name);
    return InvalidArgument("unknown filter '{}'", name);
  }
  auto result = fn(*this, input, args);
  if (!result.ok() && is_generator_filter(name)) return Value::failed_generator(result.status().message());
  return result;
}

Result<bool> Evaluator::apply_test(std::string_view name, const Value& input, CallArgs& args) {
  TestFn fn = find_test(name);
  if (fn == nullptr) {
    if (is_jinja2_test(name)) return InvalidArgument("test '{}' is not supported", name);
    return InvalidArgument("unknown test '{}'", name);
  }
  return fn(*this, input, args);
}

Result<Value> Evaluator::lookup_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return undefined_error(obj);
  return get_item(obj, key);
}

Result<Value> Evaluator::call_macro(const Macro& macro, CallArgs& args) {
  const MacroStmt& def = macro.def();
  if (call_depth_ >= limits_.max_call_depth) {
    return InvalidArgument("macro calls nested deeper than {} (recursion?)", limits_.max_call_depth);
  }
  auto scope = std::make_shared<Scope>(macro.closure());
  const size_t num_params = def.params.size();
  if (args.positional.size() > num_params && !def.uses_varargs) {
    return InvalidArgument("macro '{}' takes not more than {} argument(s)", def.name, num_params);
  }
  std::vector<bool> bound(num_params, false);
  for (size_t i = 0; i < num_params && i < args.positional.size(); ++i) {
    scope->set(def.params[i].name, args.positional[i]);
    bound[i] = true;
  }
  Dict kwargs;
  Value caller = Value::undefined("No caller defined");
  for (auto& [key, value] : args.keyword) {
    size_t index = num_params;
    for (size_t i = 0; i < num_params; ++i) {
      if (def.params[i].name == key) index = i;
    }
    if (index < num_params) {
      if (bound[index]) return InvalidArgument("macro '{}' got multiple values for argument '{}'", def.name, key);
      scope->set(key, value);
      bound[index] = true;
    } else if (key == "caller" && def.uses_caller) {
      caller = value;
    } else if (def.uses_kwargs) {
      kwargs.set(key, value);
    } else {
      return InvalidArgument("macro '{}' takes no keyword argument '{}'", def.name, key);
    }
  }
  Restore<std::shared_ptr<Scope>> scope_guard(scope_, scope);
  for (size_t i = 0; i < num_params; ++i) {
    if (bound[i]) continue;
    const MacroParam& param = def.params[i];
    if (param.default_value) {
      ASSIGN_OR_RETURN(Value v, eval(*param.default_value));
      scope->set(param.name, std::move(v));
    } else {
      scope->set(param.name, Value::undefined(fmt::format("parameter '{}' was not provided", param.name)));
    }
  }
  if (def.uses_varargs) {
    std::vector<Value> extra;
    for (size_t i = num_params; i < args.positional.size(); ++i)
      extra.push_back(args.positional[i]);
    scope->set("varargs", Value::list(std::move(extra), true));
  }
  if (def.uses_kwargs) scope->set("kwargs", Value::dict(std::move(kwargs)));
  if (def.uses_caller) scope->set("caller", std::move(caller));
  ++call_depth_;
  auto text = render_body(def.body, scope);
  --call_depth_;
  if (!text.ok()) return text.status();
  return Value::string(std::move(text).value());
}

}  // namespace bw::jinja
