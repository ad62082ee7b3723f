// Internal to the parser (parser.cc): the token cursor, parse state and expression grammar
// (jinja2's parse_tuple ... parse_primary, filters, tests, call arguments, assignment
// targets). The statement parser in parser.cc derives from it.
//
// Thread-safety: one instance per parse.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace bw::jinja {

// Nesting limit for expressions and blocks: keeps the recursive descent (and later the
// evaluator) far from the end of the stack.
inline constexpr int kMaxNesting = 100;

// How a token reads in an error message ("'+'", "end of print statement" ...).
std::string describe(const Token& t);

class ExpressionParser {
 public:
  explicit ExpressionParser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

 protected:
  // ---- token cursor ----

  const Token& cur() const { return toks_[pos_]; }
  const Token& look() const { return toks_[std::min(pos_ + 1, toks_.size() - 1)]; }
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(std::string_view op) const { return cur().type == TokenType::kOperator && cur().value == op; }
  bool is_name(std::string_view name) const { return cur().type == TokenType::kName && cur().value == name; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }

  Status fail(std::string_view message) const { return InvalidArgument("line {}: {}", cur().line, message); }
  Status fail_unexpected(std::string_view expected) const {
    return InvalidArgument("line {}: expected {}, got {}", cur().line, expected, describe(cur()));
  }
  Status expect_op(std::string_view op) {
    if (!skip_op(op)) return fail_unexpected("'" + std::string(op) + "'");
    return OkStatus();
  }
  Status expect_block_end() {
    if (cur().type != TokenType::kBlockEnd) return fail_unexpected("end of statement block");
    next();
    return OkStatus();
  }
  Result<std::string> expect_name() {
    if (cur().type != TokenType::kName) return fail_unexpected("a name");
    std::string name = cur().value;
    next();
    return name;
  }

  // Guards recursion depth for one parse function activation.
  class DepthGuard {
   public:
    explicit DepthGuard(ExpressionParser& p) : p_(p) { ++p_.depth_; }
    ~DepthGuard() { --p_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;
    bool too_deep() const { return p_.depth_ > kMaxNesting; }

   private:
    ExpressionParser& p_;
  };

  // ---- expressions ----

  bool is_tuple_end(std::initializer_list<std::string_view> end_names) const;

  // jinja2's parse_tuple: `a`, `a, b`, `a,`; `simplified` parses primaries only (targets).
  Result<ExprPtr> parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<std::string_view> end_names,
                              bool explicit_parentheses);

  Result<ExprPtr> parse_expression(bool with_condexpr);

  // The first operand of a conditional expression is soft too if an `if` follows; we cannot
  // know that before parsing it, so unknown filters there are recorded and re-checked.
  Result<ExprPtr> parse_or_in_condexpr();

  Result<ExprPtr> parse_or();

  Result<ExprPtr> parse_and();

  Result<ExprPtr> parse_not();

  Result<ExprPtr> parse_compare();

  Result<ExprPtr> parse_math1();

  Result<ExprPtr> parse_concat();

  Result<ExprPtr> parse_math2();

  Result<ExprPtr> parse_pow();

  Result<ExprPtr> parse_unary(bool with_filter);

  Result<ExprPtr> parse_primary();

  Result<ExprPtr> parse_list();

  Result<ExprPtr> parse_dict();

  Result<ExprPtr> parse_postfix(ExprPtr node);

  Result<ExprPtr> parse_filter_expr(ExprPtr node);

  Result<ExprPtr> parse_subscript(ExprPtr node);

  Result<ExprPtr> parse_subscribed();

  Status parse_call_args(Args& args);

  Result<ExprPtr> parse_call(ExprPtr node);

  Result<std::string> parse_dotted_name();

  // Reports a filter or test jinja2 does not know: an error now, or (in an if or a
  // conditional expression) when evaluated.
  Status check_known(bool known, std::string_view what, const std::string& name, int line);

  // `name(args) | name2 ...` after the first `|` was consumed; `input` may be null.
  Result<ExprPtr> parse_filter_chain(ExprPtr input);

  Result<ExprPtr> parse_test(ExprPtr node);

  // A name, `ns.attr` (when with_namespace), or a tuple of names, optionally parenthesised.
  Result<Target> parse_assign_target(bool with_namespace, std::initializer_list<std::string_view> end_names);

  Result<Target> to_target(const Expr& e);

  // ---- state ----
  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  bool soft_ = false;
  std::vector<MacroStmt*> macros_;
  std::vector<Status> pending_unknown_;
};

}  // namespace bw::jinja
