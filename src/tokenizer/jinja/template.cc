#include "tokenizer/jinja/template.h"

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/parser.h"

namespace bw::jinja {
namespace {

// "line 3: ..." -> "<name> line 3: ..."; "raise_exception: ..." -> "<name>: raise_exception: ...".
Status with_name(const Status& s, const std::string& name) {
  const std::string& msg = s.message();
  if (msg.rfind("line ", 0) == 0) return Status(s.code(), name + " " + msg);
  return Status(s.code(), name + ": " + msg);
}

}  // namespace

Result<Template> Template::parse(std::string_view source, std::string name) {
  auto program = jinja::parse(source);
  if (!program.ok()) return with_name(program.status(), name);
  return Template(std::shared_ptr<const Program>(std::move(program).value()), std::move(name));
}

Result<std::string> Template::render(const Globals& globals, const RenderLimits& limits) const {
  Evaluator evaluator(limits);
  auto out = evaluator.render(*program_, globals);
  if (!out.ok()) return with_name(out.status(), name_);
  return out;
}

}  // namespace bw::jinja
