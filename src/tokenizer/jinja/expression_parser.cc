#include "tokenizer/jinja/expression_parser.h"

#include "tokenizer/jinja/builtins.h"

namespace bw::jinja {

std::string describe(const Token& t) {
  switch (t.type) {
    case TokenType::kData:
      return "template data";
    case TokenType::kVariableBegin:
      return "begin of print statement";
    case TokenType::kVariableEnd:
      return "end of print statement";
    case TokenType::kBlockBegin:
      return "begin of statement block";
    case TokenType::kBlockEnd:
      return "end of statement block";
    case TokenType::kName:
    case TokenType::kOperator:
      return "'" + t.value + "'";
    case TokenType::kString:
      return "string";
    case TokenType::kInteger:
      return "integer";
    case TokenType::kFloat:
      return "float";
    case TokenType::kEof:
      return "end of template";
  }
  return "token";
}

bool ExpressionParser::is_tuple_end(std::initializer_list<std::string_view> end_names) const {
  const Token& t = cur();
  if (t.type == TokenType::kVariableEnd || t.type == TokenType::kBlockEnd || t.type == TokenType::kEof) return true;
  if (t.type == TokenType::kOperator && t.value == ")") return true;
  if (t.type == TokenType::kName) {
    for (std::string_view n : end_names) {
      if (t.value == n) return true;
    }
  }
  return false;
}

// jinja2's parse_tuple: `a`, `a, b`, `a,`; `simplified` parses primaries only (targets).
Result<ExprPtr> ExpressionParser::parse_tuple(bool simplified, bool with_condexpr,
                                              std::initializer_list<std::string_view> end_names,
                                              bool explicit_parentheses) {
  const int line = cur().line;
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) RETURN_IF_ERROR(expect_op(","));
    if (is_tuple_end(end_names)) break;
    if (simplified) {
      ASSIGN_OR_RETURN(ExprPtr e, parse_primary());
      items.push_back(std::move(e));
    } else {
      ASSIGN_OR_RETURN(ExprPtr e, parse_expression(with_condexpr));
      items.push_back(std::move(e));
    }
    if (is_op(",")) {
      is_tuple = true;
    } else {
      break;
    }
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items.front());
    if (!explicit_parentheses) return fail_unexpected("an expression");
  }
  auto tuple = std::make_unique<ListExpr>(line, true);
  tuple->items = std::move(items);
  return ExprPtr(std::move(tuple));
}

Result<ExprPtr> ExpressionParser::parse_expression(bool with_condexpr) {
  DepthGuard guard(*this);
  if (guard.too_deep()) return fail("expression nested too deeply");
  if (!with_condexpr) return parse_or();
  const int line = cur().line;
  ASSIGN_OR_RETURN(ExprPtr expr, parse_or_in_condexpr());
  while (is_name("if")) {
    const bool saved_soft = soft_;
    soft_ = true;
    next();
    auto cond = std::make_unique<CondExpr>(line);
    cond->then_expr = std::move(expr);
    ASSIGN_OR_RETURN(cond->test, parse_or());
    if (skip_name("else")) {
      ASSIGN_OR_RETURN(cond->else_expr, parse_expression(true));
    }
    soft_ = saved_soft;
    expr = std::move(cond);
  }
  return expr;
}

// The first operand of a conditional expression is soft too if an `if` follows; we cannot
// know that before parsing it, so unknown filters there are recorded and re-checked.
Result<ExprPtr> ExpressionParser::parse_or_in_condexpr() {
  const size_t saved_pending = pending_unknown_.size();
  const bool saved_soft = soft_;
  soft_ = true;
  auto expr = parse_or();
  soft_ = saved_soft;
  if (!expr.ok()) return expr;
  if (is_name("if")) {
    pending_unknown_.resize(saved_pending);  // a conditional expression: all of it is soft
  } else if (!soft_ && pending_unknown_.size() > saved_pending) {
    Status s = pending_unknown_[saved_pending];
    pending_unknown_.resize(saved_pending);
    return s;
  }
  return expr;  // (in a soft context, an enclosing expression decides)
}

Result<ExprPtr> ExpressionParser::parse_or() {
  ASSIGN_OR_RETURN(ExprPtr left, parse_and());
  while (is_name("or")) {
    const int line = cur().line;
    next();
    ASSIGN_OR_RETURN(ExprPtr right, parse_and());
    left = std::make_unique<BinaryExpr>(line, BinaryOp::kOr, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> ExpressionParser::parse_and() {
  ASSIGN_OR_RETURN(ExprPtr left, parse_not());
  while (is_name("and")) {
    const int line = cur().line;
    next();
    ASSIGN_OR_RETURN(ExprPtr right, parse_not());
    left = std::make_unique<BinaryExpr>(line, BinaryOp::kAnd, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> ExpressionParser::parse_not() {
  if (is_name("not")) {
    DepthGuard guard(*this);
    if (guard.too_deep()) return fail("expression nested too deeply");
    const int line = cur().line;
    next();
    ASSIGN_OR_RETURN(ExprPtr operand, parse_not());
    return ExprPtr(std::make_unique<UnaryExpr>(line, UnaryOp::kNot, std::move(operand)));
  }
  return parse_compare();
}

Result<ExprPtr> ExpressionParser::parse_compare() {
  const int line = cur().line;
  ASSIGN_OR_RETURN(ExprPtr first, parse_math1());
  std::unique_ptr<CompareExpr> cmp;
  while (true) {
    CompareOp op;
    if (is_op("==")) {
      op = CompareOp::kEq;
    } else if (is_op("!=")) {
      op = CompareOp::kNe;
    } else if (is_op("<")) {
      op = CompareOp::kLt;
    } else if (is_op("<=")) {
      op = CompareOp::kLe;
    } else if (is_op(">")) {
      op = CompareOp::kGt;
    } else if (is_op(">=")) {
      op = CompareOp::kGe;
    } else if (is_name("in")) {
      op = CompareOp::kIn;
    } else if (is_name("not") && look().type == TokenType::kName && look().value == "in") {
      op = CompareOp::kNotIn;
      next();
    } else {
      break;
    }
    next();
    ASSIGN_OR_RETURN(ExprPtr operand, parse_math1());
    if (!cmp) cmp = std::make_unique<CompareExpr>(line, std::move(first));
    cmp->rest.emplace_back(op, std::move(operand));
  }
  if (!cmp) return first;
  return ExprPtr(std::move(cmp));
}

Result<ExprPtr> ExpressionParser::parse_math1() {
  ASSIGN_OR_RETURN(ExprPtr left, parse_concat());
  while (is_op("+") || is_op("-")) {
    const BinaryOp op = cur().value == "+" ? BinaryOp::kAdd : BinaryOp::kSub;
    const int line = cur().line;
    next();
    ASSIGN_OR_RETURN(ExprPtr right, parse_concat());
    left = std::make_unique<BinaryExpr>(line, op, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> ExpressionParser::parse_concat() {
  const int line = cur().line;
  ASSIGN_OR_RETURN(ExprPtr first, parse_math2());
  if (!is_op("~")) return first;
  auto concat = std::make_unique<ConcatExpr>(line);
  concat->parts.push_back(std::move(first));
  while (skip_op("~")) {
    ASSIGN_OR_RETURN(ExprPtr part, parse_math2());
    concat->parts.push_back(std::move(part));
  }
  return ExprPtr(std::move(concat));
}

Result<ExprPtr> ExpressionParser::parse_math2() {
  ASSIGN_OR_RETURN(ExprPtr left, parse_pow());
  while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
    const std::string& v = cur().value;
    const BinaryOp op = v == "*"    ? BinaryOp::kMul
                        : v == "/"  ? BinaryOp::kDiv
                        : v == "//" ? BinaryOp::kFloorDiv
                                    : BinaryOp::kMod;
    const int line = cur().line;
    next();
    ASSIGN_OR_RETURN(ExprPtr right, parse_pow());
    left = std::make_unique<BinaryExpr>(line, op, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> ExpressionParser::parse_pow() {
  ASSIGN_OR_RETURN(ExprPtr left, parse_unary(true));
  while (is_op("**")) {
    const int line = cur().line;
    next();
    ASSIGN_OR_RETURN(ExprPtr right, parse_unary(true));
    left = std::make_unique<BinaryExpr>(line, BinaryOp::kPow, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> ExpressionParser::parse_unary(bool with_filter) {
  const int line = cur().line;
  ExprPtr node;
  if (is_op("-") || is_op("+")) {
    DepthGuard guard(*this);
    if (guard.too_deep()) return fail("expression nested too deeply");
    const UnaryOp op = cur().value == "-" ? UnaryOp::kNeg : UnaryOp::kPos;
    next();
    ASSIGN_OR_RETURN(ExprPtr operand, parse_unary(false));
    node = std::make_unique<UnaryExpr>(line, op, std::move(operand));
  } else {
    ASSIGN_OR_RETURN(node, parse_primary());
  }
  ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
  if (with_filter) {
    ASSIGN_OR_RETURN(node, parse_filter_expr(std::move(node)));
  }
  return node;
}

Result<ExprPtr> ExpressionParser::parse_primary() {
  const Token& t = cur();
  const int line = t.line;
  switch (t.type) {
    case TokenType::kName: {
      ExprPtr e;
      if (t.value == "true" || t.value == "True") {
        e = std::make_unique<LiteralExpr>(line, Value::boolean(true));
      } else if (t.value == "false" || t.value == "False") {
        e = std::make_unique<LiteralExpr>(line, Value::boolean(false));
      } else if (t.value == "none" || t.value == "None") {
        e = std::make_unique<LiteralExpr>(line, Value::none());
      } else {
        if (t.value == "caller" || t.value == "varargs" || t.value == "kwargs") {
          for (MacroStmt* m : macros_) {
            m->uses_caller |= t.value == "caller";
            m->uses_varargs |= t.value == "varargs";
            m->uses_kwargs |= t.value == "kwargs";
          }
        }
        e = std::make_unique<NameExpr>(line, t.value);
      }
      next();
      return e;
    }
    case TokenType::kString: {
      std::string s = t.value;
      next();
      while (cur().type == TokenType::kString) {
        s += cur().value;
        next();
      }
      return ExprPtr(std::make_unique<LiteralExpr>(line, Value::string(std::move(s))));
    }
    case TokenType::kInteger: {
      auto e = std::make_unique<LiteralExpr>(line, Value::integer(t.int_value));
      next();
      return ExprPtr(std::move(e));
    }
    case TokenType::kFloat: {
      auto e = std::make_unique<LiteralExpr>(line, Value::number(t.float_value));
      next();
      return ExprPtr(std::move(e));
    }
    case TokenType::kOperator:
      if (t.value == "(") {
        next();
        ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, true));
        RETURN_IF_ERROR(expect_op(")"));
        return e;
      }
      if (t.value == "[") return parse_list();
      if (t.value == "{") return parse_dict();
      break;
    default:
      break;
  }
  return fail("unexpected " + describe(t));
}

Result<ExprPtr> ExpressionParser::parse_list() {
  auto list = std::make_unique<ListExpr>(cur().line, false);
  next();  // [
  while (!is_op("]")) {
    if (!list->items.empty()) RETURN_IF_ERROR(expect_op(","));
    if (is_op("]")) break;
    ASSIGN_OR_RETURN(ExprPtr e, parse_expression(true));
    list->items.push_back(std::move(e));
  }
  next();
  return ExprPtr(std::move(list));
}

Result<ExprPtr> ExpressionParser::parse_dict() {
  auto dict = std::make_unique<DictExpr>(cur().line);
  next();  // {
  while (!is_op("}")) {
    if (!dict->items.empty()) RETURN_IF_ERROR(expect_op(","));
    if (is_op("}")) break;
    ASSIGN_OR_RETURN(ExprPtr key, parse_expression(true));
    RETURN_IF_ERROR(expect_op(":"));
    ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
    dict->items.emplace_back(std::move(key), std::move(value));
  }
  next();
  return ExprPtr(std::move(dict));
}

Result<ExprPtr> ExpressionParser::parse_postfix(ExprPtr node) {
  while (true) {
    if (is_op(".") || is_op("[")) {
      ASSIGN_OR_RETURN(node, parse_subscript(std::move(node)));
    } else if (is_op("(")) {
      ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
    } else {
      return node;
    }
  }
}

Result<ExprPtr> ExpressionParser::parse_filter_expr(ExprPtr node) {
  while (true) {
    if (is_op("|")) {
      next();
      ASSIGN_OR_RETURN(node, parse_filter_chain(std::move(node)));
    } else if (is_name("is")) {
      ASSIGN_OR_RETURN(node, parse_test(std::move(node)));
    } else if (is_op("(")) {
      ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
    } else {
      return node;
    }
  }
}

Result<ExprPtr> ExpressionParser::parse_subscript(ExprPtr node) {
  const int line = cur().line;
  if (skip_op(".")) {
    if (cur().type == TokenType::kName) {
      std::string name = cur().value;
      next();
      return ExprPtr(std::make_unique<GetattrExpr>(line, std::move(node), std::move(name)));
    }
    if (cur().type == TokenType::kInteger) {
      auto index = std::make_unique<LiteralExpr>(line, Value::integer(cur().int_value));
      next();
      return ExprPtr(std::make_unique<GetitemExpr>(line, std::move(node), std::move(index)));
    }
    return fail_unexpected("name or number");
  }
  next();  // [
  std::vector<ExprPtr> args;
  while (!is_op("]")) {
    if (!args.empty()) RETURN_IF_ERROR(expect_op(","));
    ASSIGN_OR_RETURN(ExprPtr arg, parse_subscribed());
    args.push_back(std::move(arg));
  }
  next();  // ]
  if (args.empty()) return fail("expected subscript expression");
  ExprPtr index;
  if (args.size() == 1) {
    index = std::move(args.front());
  } else {
    auto tuple = std::make_unique<ListExpr>(line, true);
    tuple->items = std::move(args);
    index = std::move(tuple);
  }
  return ExprPtr(std::make_unique<GetitemExpr>(line, std::move(node), std::move(index)));
}

Result<ExprPtr> ExpressionParser::parse_subscribed() {
  const int line = cur().line;
  ExprPtr start;
  if (!is_op(":")) {
    ASSIGN_OR_RETURN(start, parse_expression(true));
    if (!is_op(":")) return start;
  }
  next();  // :
  auto slice = std::make_unique<SliceExpr>(line);
  slice->start = std::move(start);
  if (!is_op(":") && !is_op("]") && !is_op(",")) {
    ASSIGN_OR_RETURN(slice->stop, parse_expression(true));
  }
  if (skip_op(":")) {
    if (!is_op("]") && !is_op(",")) {
      ASSIGN_OR_RETURN(slice->step, parse_expression(true));
    }
  }
  return ExprPtr(std::move(slice));
}

Status ExpressionParser::parse_call_args(Args& args) {
  RETURN_IF_ERROR(expect_op("("));
  bool require_comma = false;
  while (!is_op(")")) {
    if (require_comma) {
      RETURN_IF_ERROR(expect_op(","));
      if (is_op(")")) break;
    }
    if (skip_op("*")) {
      if (args.star_args || args.star_kwargs) return fail("invalid syntax for function call expression");
      ASSIGN_OR_RETURN(args.star_args, parse_expression(true));
    } else if (skip_op("**")) {
      if (args.star_kwargs) return fail("invalid syntax for function call expression");
      ASSIGN_OR_RETURN(args.star_kwargs, parse_expression(true));
    } else if (cur().type == TokenType::kName && look().type == TokenType::kOperator && look().value == "=") {
      if (args.star_kwargs) return fail("invalid syntax for function call expression");
      std::string key = cur().value;
      next();
      next();
      ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      args.keyword.emplace_back(std::move(key), std::move(value));
    } else {
      if (args.star_args || args.star_kwargs || !args.keyword.empty()) {
        return fail("invalid syntax for function call expression");
      }
      ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      args.positional.push_back(std::move(value));
    }
    require_comma = true;
  }
  next();  // )
  return OkStatus();
}

Result<ExprPtr> ExpressionParser::parse_call(ExprPtr node) {
  auto call = std::make_unique<CallExpr>(cur().line, std::move(node));
  RETURN_IF_ERROR(parse_call_args(call->args));
  return ExprPtr(std::move(call));
}

Result<std::string> ExpressionParser::parse_dotted_name() {
  ASSIGN_OR_RETURN(std::string name, expect_name());
  while (skip_op(".")) {
    ASSIGN_OR_RETURN(std::string part, expect_name());
    name += "." + part;
  }
  return name;
}

// Reports a filter or test jinja2 does not know: an error now, or (in an if or a
// conditional expression) when evaluated.
Status ExpressionParser::check_known(bool known, std::string_view what, const std::string& name, int line) {
  if (known) return OkStatus();
  Status s = InvalidArgument("line {}: unknown {} '{}'", line, what, name);
  if (soft_) {
    pending_unknown_.push_back(s);
    return OkStatus();
  }
  return s;
}

// `name(args) | name2 ...` after the first `|` was consumed; `input` may be null.
Result<ExprPtr> ExpressionParser::parse_filter_chain(ExprPtr input) {
  while (true) {
    const int line = cur().line;
    ASSIGN_OR_RETURN(std::string name, parse_dotted_name());
    RETURN_IF_ERROR(check_known(is_jinja2_filter(name), "filter", name, line));
    auto filter = std::make_unique<FilterExpr>(line, std::move(input), std::move(name));
    if (is_op("(")) RETURN_IF_ERROR(parse_call_args(filter->args));
    input = std::move(filter);
    if (!is_op("|")) return input;
    next();
  }
}

Result<ExprPtr> ExpressionParser::parse_test(ExprPtr node) {
  const int line = cur().line;
  next();  // is
  const bool negated = skip_name("not");
  ASSIGN_OR_RETURN(std::string name, parse_dotted_name());
  RETURN_IF_ERROR(check_known(is_jinja2_test(name), "test", name, line));
  auto test = std::make_unique<TestExpr>(line, std::move(node), std::move(name));
  const Token& t = cur();
  if (is_op("(")) {
    RETURN_IF_ERROR(parse_call_args(test->args));
  } else if ((t.type == TokenType::kName || t.type == TokenType::kString || t.type == TokenType::kInteger ||
              t.type == TokenType::kFloat || is_op("[") || is_op("{")) &&
             !is_name("else") && !is_name("or") && !is_name("and")) {
    if (is_name("is")) return fail("You cannot chain multiple tests with is");
    ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
    ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
    test->args.positional.push_back(std::move(arg));
  }
  ExprPtr result = std::move(test);
  if (negated) result = std::make_unique<UnaryExpr>(line, UnaryOp::kNot, std::move(result));
  return result;
}

// A name, `ns.attr` (when with_namespace), or a tuple of names, optionally parenthesised.
Result<Target> ExpressionParser::parse_assign_target(bool with_namespace,
                                                     std::initializer_list<std::string_view> end_names) {
  Target target;
  if (with_namespace && cur().type == TokenType::kName && look().type == TokenType::kOperator && look().value == ".") {
    target.kind = Target::Kind::kNamespaceAttr;
    target.name = cur().value;
    next();
    next();
    ASSIGN_OR_RETURN(target.attr, expect_name());
    return target;
  }
  ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(true, false, end_names, false));
  return to_target(*e);
}

Result<Target> ExpressionParser::to_target(const Expr& e) {
  Target target;
  if (e.kind == ExprKind::kName) {
    target.name = static_cast<const NameExpr&>(e).name;
    return target;
  }
  if (e.kind == ExprKind::kList && static_cast<const ListExpr&>(e).tuple) {
    target.kind = Target::Kind::kTuple;
    for (const ExprPtr& item : static_cast<const ListExpr&>(e).items) {
      ASSIGN_OR_RETURN(Target t, to_target(*item));
      target.items.push_back(std::move(t));
    }
    return target;
  }
  return fail("can't assign to this expression");
}

}  // namespace bw::jinja
