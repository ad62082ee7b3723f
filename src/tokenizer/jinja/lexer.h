// Lexer of the Jinja interpreter: splits a template source into data and tag tokens the way
// jinja2's lexer does with Hugging Face's settings (trim_blocks=True, lstrip_blocks=True,
// keep_trailing_newline=False): newlines are normalised to "\n" and one trailing newline
// dropped; `{%-`/`-%}` strip whitespace; a newline after `%}` or `#}` is removed; spaces
// and tabs before `{%`/`{#` at the start of a line are removed; `{%+`/`+%}` turn that off;
// `{% raw %}` passes text through; comments vanish.
//
// Thread-safety: pure function.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace bw::jinja {

enum class TokenType {
  kData,           // template text (value)
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,           // identifier (value)
  kString,         // string literal, unescaped (value)
  kInteger,        // int_value
  kFloat,          // float_value
  kOperator,       // value: "+", "//", "==", "(", ...
  kEof,
};

struct Token {
  TokenType type = TokenType::kEof;
  int line = 1;
  std::string value;
  int64_t int_value = 0;
  double float_value = 0;
};

// Errors are InvalidArgument "line N: ..." (the caller adds the template's name).
Result<std::vector<Token>> tokenize(std::string_view source);

}  // namespace bw::jinja
