#include "tokenizer/jinja/parser.h"

#include <initializer_list>

#include "tokenizer/jinja/expression_parser.h"
#include "tokenizer/jinja/lexer.h"

namespace bw::jinja {
namespace {

class Parser : public ExpressionParser {
 public:
  using ExpressionParser::ExpressionParser;

  Result<std::unique_ptr<Program>> run() {
    auto program = std::make_unique<Program>();
    std::string end;
    ASSIGN_OR_RETURN(program->body, parse_body({}, &end));
    return program;
  }

 private:
  // Parses until `{% <one of end_tags>` (left at the tag name) or the end of the template.
  Result<Body> parse_body(std::initializer_list<std::string_view> end_tags, std::string* found) {
    DepthGuard guard(*this);
    if (guard.too_deep()) return fail("blocks nested too deeply");
    Body body;
    while (true) {
      const Token& t = cur();
      switch (t.type) {
        case TokenType::kData:
          body.push_back(std::make_unique<TextStmt>(t.line, t.value));
          next();
          break;
        case TokenType::kVariableBegin: {
          next();
          const int line = cur().line;
          ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, false));
          if (cur().type != TokenType::kVariableEnd) return fail_unexpected("end of print statement");
          next();
          body.push_back(std::make_unique<OutputStmt>(line, std::move(e)));
          break;
        }
        case TokenType::kBlockBegin: {
          next();
          if (cur().type == TokenType::kName) {
            for (std::string_view end : end_tags) {
              if (cur().value == end) {
                *found = cur().value;
                return body;
              }
            }
          }
          ASSIGN_OR_RETURN(StmtPtr stmt, parse_statement());
          body.push_back(std::move(stmt));
          break;
        }
        case TokenType::kEof: {
          if (end_tags.size() == 0) return body;
          std::string tags;
          for (std::string_view end : end_tags)
            tags += (tags.empty() ? "'" : " or '") + std::string(end) + "'";
          return fail("unexpected end of template, expected " + tags);
        }
        default:
          return fail_unexpected("template data or a tag");
      }
    }
  }

  Result<StmtPtr> parse_statement() {
    if (cur().type != TokenType::kName) return fail("tag name expected");
    const std::string tag = cur().value;
    const int line = cur().line;
    if (tag == "if") return parse_if();
    if (tag == "for") return parse_for();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "call") return parse_call_block();
    if (tag == "filter") return parse_filter_block();
    if (tag == "with") return parse_with();
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) return fail("'" + tag + "' outside of a loop");
      next();
      RETURN_IF_ERROR(expect_block_end());
      return StmtPtr(std::make_unique<Stmt>(tag == "break" ? StmtKind::kBreak : StmtKind::kContinue, line));
    }
    if (tag == "block" || tag == "extends" || tag == "include" || tag == "import" || tag == "from" ||
        tag == "autoescape" || tag == "do" || tag == "print") {
      return fail("tag '" + tag + "' is not supported");
    }
    return fail("unknown tag '" + tag + "'");
  }

  // Consumes `{% <name>` ... `%}` of an end tag found by parse_body.
  Status finish_end_tag() {
    next();  // the end tag's name
    return expect_block_end();
  }

  Result<StmtPtr> parse_if() {
    auto stmt = std::make_unique<IfStmt>(cur().line);
    const bool saved_soft = soft_;
    soft_ = true;
    next();  // if
    while (true) {
      ASSIGN_OR_RETURN(ExprPtr test, parse_tuple(false, false, {}, false));
      RETURN_IF_ERROR(expect_block_end());
      std::string end;
      ASSIGN_OR_RETURN(Body body, parse_body({"elif", "else", "endif"}, &end));
      stmt->branches.emplace_back(std::move(test), std::move(body));
      if (end == "elif") {
        next();
        continue;
      }
      if (end == "else") {
        next();
        RETURN_IF_ERROR(expect_block_end());
        ASSIGN_OR_RETURN(stmt->else_body, parse_body({"endif"}, &end));
      }
      RETURN_IF_ERROR(finish_end_tag());
      break;
    }
    soft_ = saved_soft;
    return StmtPtr(std::move(stmt));
  }

  Result<StmtPtr> parse_for() {
    auto stmt = std::make_unique<ForStmt>(cur().line);
    next();  // for
    ASSIGN_OR_RETURN(stmt->target, parse_assign_target(false, {"in"}));
    if (!skip_name("in")) return fail_unexpected("'in'");
    ASSIGN_OR_RETURN(stmt->iter, parse_tuple(false, false, {"recursive"}, false));
    if (skip_name("if")) {
      ASSIGN_OR_RETURN(stmt->filter, parse_expression(true));
    }
    if (is_name("recursive")) return fail("recursive loops are not supported");
    RETURN_IF_ERROR(expect_block_end());
    const bool saved_soft = soft_;
    soft_ = false;
    ++loop_depth_;
    std::string end;
    ASSIGN_OR_RETURN(stmt->body, parse_body({"endfor", "else"}, &end));
    --loop_depth_;
    if (end == "else") {
      next();
      RETURN_IF_ERROR(expect_block_end());
      ASSIGN_OR_RETURN(stmt->else_body, parse_body({"endfor"}, &end));
    }
    soft_ = saved_soft;
    RETURN_IF_ERROR(finish_end_tag());
    return StmtPtr(std::move(stmt));
  }

  Result<StmtPtr> parse_set() {
    const int line = cur().line;
    next();  // set
    ASSIGN_OR_RETURN(Target target, parse_assign_target(true, {}));
    if (skip_op("=")) {
      auto stmt = std::make_unique<SetStmt>(line);
      stmt->target = std::move(target);
      ASSIGN_OR_RETURN(stmt->value, parse_tuple(false, true, {}, false));
      RETURN_IF_ERROR(expect_block_end());
      return StmtPtr(std::move(stmt));
    }
    auto stmt = std::make_unique<SetBlockStmt>(line);
    stmt->target = std::move(target);
    if (is_op("|")) {
      next();
      ASSIGN_OR_RETURN(stmt->filter, parse_filter_chain(nullptr));
    }
    RETURN_IF_ERROR(expect_block_end());
    ASSIGN_OR_RETURN(stmt->body, parse_nested_body("endset"));
    return StmtPtr(std::move(stmt));
  }

  // A block body parsed in a fresh (non-soft) frame, through `{% <end> %}`.
  Result<Body> parse_nested_body(std::string_view end_tag) {
    const bool saved_soft = soft_;
    soft_ = false;
    std::string end;
    ASSIGN_OR_RETURN(Body body, parse_body({end_tag}, &end));
    soft_ = saved_soft;
    RETURN_IF_ERROR(finish_end_tag());
    return body;
  }

  Status parse_macro_params(MacroStmt& macro) {
    RETURN_IF_ERROR(expect_op("("));
    while (!is_op(")")) {
      if (!macro.params.empty()) RETURN_IF_ERROR(expect_op(","));
      if (is_op(")")) break;
      MacroParam param;
      ASSIGN_OR_RETURN(param.name, expect_name());
      if (skip_op("=")) {
        ASSIGN_OR_RETURN(param.default_value, parse_expression(true));
      } else {
        for (const MacroParam& p : macro.params) {
          if (p.default_value) return fail("non-default argument follows default argument");
        }
      }
      macro.params.push_back(std::move(param));
    }
    next();  // )
    return OkStatus();
  }

  // Parses a macro body, recording whether it mentions caller/varargs/kwargs.
  Status parse_macro_body(MacroStmt& macro, std::string_view end_tag) {
    macros_.push_back(&macro);
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    auto body = parse_nested_body(end_tag);
    loop_depth_ = saved_loops;
    macros_.pop_back();
    if (!body.ok()) return body.status();
    macro.body = std::move(body).value();
    return OkStatus();
  }

  Result<StmtPtr> parse_macro() {
    auto stmt = std::make_unique<MacroStmt>(cur().line);
    next();  // macro
    ASSIGN_OR_RETURN(stmt->name, expect_name());
    RETURN_IF_ERROR(parse_macro_params(*stmt));
    RETURN_IF_ERROR(expect_block_end());
    RETURN_IF_ERROR(parse_macro_body(*stmt, "endmacro"));
    return StmtPtr(std::move(stmt));
  }

  Result<StmtPtr> parse_call_block() {
    auto stmt = std::make_unique<CallBlockStmt>(cur().line);
    stmt->caller = std::make_unique<MacroStmt>(cur().line);
    stmt->caller->name = "caller";
    next();  // call
    if (is_op("(")) RETURN_IF_ERROR(parse_macro_params(*stmt->caller));
    ASSIGN_OR_RETURN(ExprPtr call, parse_expression(true));
    if (call->kind != ExprKind::kCall) return fail("expected call");
    stmt->call.reset(static_cast<CallExpr*>(call.release()));
    RETURN_IF_ERROR(expect_block_end());
    RETURN_IF_ERROR(parse_macro_body(*stmt->caller, "endcall"));
    return StmtPtr(std::move(stmt));
  }

  Result<StmtPtr> parse_filter_block() {
    auto stmt = std::make_unique<FilterBlockStmt>(cur().line);
    next();  // filter
    ASSIGN_OR_RETURN(stmt->filter, parse_filter_chain(nullptr));
    RETURN_IF_ERROR(expect_block_end());
    ASSIGN_OR_RETURN(stmt->body, parse_nested_body("endfilter"));
    return StmtPtr(std::move(stmt));
  }

  Result<StmtPtr> parse_with() {
    auto stmt = std::make_unique<WithStmt>(cur().line);
    next();  // with
    while (cur().type != TokenType::kBlockEnd) {
      if (!stmt->assignments.empty()) RETURN_IF_ERROR(expect_op(","));
      ASSIGN_OR_RETURN(Target target, parse_assign_target(false, {}));
      RETURN_IF_ERROR(expect_op("="));
      ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      stmt->assignments.emplace_back(std::move(target), std::move(value));
    }
    next();
    ASSIGN_OR_RETURN(stmt->body, parse_nested_body("endwith"));
    return StmtPtr(std::move(stmt));
  }
};

}  // namespace

Result<std::unique_ptr<Program>> parse(std::string_view source) {
  ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(source));
  Parser parser(std::move(tokens));
  return parser.run();
}

}  // namespace bw::jinja
