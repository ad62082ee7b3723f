// A Jinja2 template interpreter (the subset real model chat templates use), rendering
// byte-identically to Python jinja2 configured as Hugging Face transformers configures it:
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loop controls.
// See lexer.h, parser.h and evaluator.h for the pieces, builtins.h for filters and tests.
//
// Ownership: a Template owns its parsed program (shared, immutable); copies are cheap.
// Thread-safety: render() is const and may run on many threads at once; each call has its
// own evaluation state.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "tokenizer/jinja/evaluator.h"
#include "tokenizer/jinja/value.h"

namespace bw::jinja {

struct Program;

class Template {
 public:
  // `name` starts every error message: "<name> line 3: unknown filter 'foo'", or
  // "<name>: raise_exception: <message>" when the template raises. Errors are
  // InvalidArgument.
  static Result<Template> parse(std::string_view source, std::string name = "template");

  // Renders with `globals` (besides the defaults range/dict/namespace) under `limits`.
  Result<std::string> render(const Globals& globals, const RenderLimits& limits = {}) const;

 private:
  Template(std::shared_ptr<const Program> program, std::string name)
      : program_(std::move(program)), name_(std::move(name)) {}

  std::shared_ptr<const Program> program_;
  std::string name_;
};

}  // namespace bw::jinja
