// Evaluator of the Jinja interpreter: renders a parsed Program with a set of global
// variables, following jinja2's semantics in Hugging Face's sandbox
// (ImmutableSandboxedEnvironment): scoping (a for-loop body or macro gets its own scope,
// an if does not), the loop object, macros and call blocks, namespace attributes, default
// Undefined (printing and iterating are fine, anything else raises), Python truthiness and
// arithmetic.
//
// Every render is bounded: output size, total evaluation steps (loop iterations, nodes,
// bytes built) and nesting depth (macro calls, expression recursion) are capped, so no
// template can hang, exhaust memory or overflow the stack; hitting a cap is an error.
//
// Ownership: an Evaluator lives for one render and owns everything created during it; its
// destructor breaks the reference cycles templates can build (a namespace holding itself, a
// macro in the scope it closes over). Builtins (builtins.h) receive it to call back into
// filters, tests and callables and to charge their work.
//
// Thread-safety: one Evaluator per render and per thread; the Program it reads is shared
// read-only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace bw::jinja {

struct RenderLimits {
  size_t max_output_bytes = size_t{16} << 20;  // also the largest string a template may build
  uint64_t max_steps = 20'000'000;             // 1 per node, loop iteration, item or 16 bytes built
  int max_call_depth = 100;                    // nested macro calls
  int max_eval_depth = 1000;                   // nested expression/statement evaluation
};

using Globals = std::vector<std::pair<std::string, Value>>;

class Scope;
class Macro;

class Evaluator {
 public:
  explicit Evaluator(const RenderLimits& limits);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // Renders the program. Errors are InvalidArgument: "line N: <what failed>", or
  // "raise_exception: <message>" when the template called raise_exception.
  Result<std::string> render(const Program& program, const Globals& globals);

  // ---- for builtins ----

  // The error a template's raise_exception(message) produces.
  Status raise(std::string message);
  // Charges `units` of work; fails once the step budget is spent.
  Status charge(uint64_t units);
  // Fails when a string or list of `size` bytes/items would be too large.
  Status check_size(size_t size) const;

  Result<Value> call(const Value& callee, CallArgs& args);
  Result<Value> apply_filter(std::string_view name, const Value& input, CallArgs& args);
  Result<bool> apply_test(std::string_view name, const Value& input, CallArgs& args);
  // jinja2's environment.getitem (item first, then attribute), for attribute= arguments.
  Result<Value> lookup_item(const Value& obj, const Value& key);
  // A namespace object whose attributes this evaluator clears when it is destroyed.
  Value make_namespace(Dict attrs);

  const RenderLimits& limits() const { return limits_; }

  // Called by Macro::call.
  Result<Value> call_macro(const Macro& macro, CallArgs& args);

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Result<Flow> exec_body(const Body& body);
  Result<Flow> exec(const Stmt& stmt);
  Result<Flow> exec_for(const ForStmt& stmt);
  Status exec_set(const Target& target, Value value);
  Status assign(Scope& scope, const Target& target, Value value);
  Result<std::string> render_body(const Body& body, std::shared_ptr<Scope> scope);
  Result<Value> eval(const Expr& expr);
  Result<Value> eval_call(const CallExpr& call);
  Result<Value> eval_filter(const FilterExpr& filter, const Value* block_input);
  Result<Value> eval_getitem(const GetitemExpr& expr);
  Status eval_args(const Args& args, CallArgs& out);
  Status emit(std::string_view text);
  std::shared_ptr<Macro> make_macro(const MacroStmt& def);

  RenderLimits limits_;
  uint64_t steps_ = 0;
  int call_depth_ = 0;
  int eval_depth_ = 0;
  int line_ = 0;
  bool raised_ = false;
  std::string* out_ = nullptr;
  std::shared_ptr<Scope> scope_;
  std::vector<Value> namespaces_;
  std::vector<std::shared_ptr<Macro>> macros_;
};

// A Callable backed by a C++ function (globals such as range() or raise_exception()).
Value make_function(std::string name, std::function<Result<Value>(Evaluator&, CallArgs&)> fn);

}  // namespace bw::jinja
