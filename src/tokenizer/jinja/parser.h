// Parser of the Jinja interpreter: tokens -> syntax tree (ast.h), following jinja2's grammar
// and operator precedence (filters and `is` tests bind tighter than arithmetic, `**` is
// left-associative, comparisons chain). Statements: if/elif/else, for (with else, a filter
// condition and tuple targets), set (expression, block, namespace attribute), macro, call,
// filter, with, break/continue, raw (in the lexer). Unknown filters and tests are errors at
// parse time except inside an if or a conditional expression, as in jinja2 (there they fail
// only when evaluated).
//
// Thread-safety: pure function.
#pragma once

#include <memory>
#include <string_view>

#include "common/status.h"
#include "tokenizer/jinja/ast.h"

namespace bw::jinja {

// Errors are InvalidArgument "line N: ..." (the caller adds the template's name).
Result<std::unique_ptr<Program>> parse(std::string_view source);

}  // namespace bw::jinja
