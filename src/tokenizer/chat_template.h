// ChatTemplate: renders a model's chat template (the Jinja2 source from tokenizer_config.json
// or GGUF metadata) for a conversation, the way Hugging Face transformers'
// apply_chat_template does: the template sees `messages`, `add_generation_prompt`,
// `bos_token`, `eos_token`, `tools` (only when given), any extra context variables, and the
// functions raise_exception(message) and strftime_now(format). The output is byte-identical
// to transformers' for the templates in the shared test data (tests/tokenizer).
//
// Errors are InvalidArgument: a template that does not parse fails create() with
// "chat template line N: ..."; a template that rejects the conversation fails render() with
// "chat template: raise_exception: <the template's message>"; other runtime errors (a type
// error, an unknown filter, a budget exceeded) with "chat template line N: ...". Rendering
// is bounded (16 MiB of output and a fixed step budget by default), so no template or
// conversation can hang or exhaust memory.
//
// Ownership: a ChatTemplate owns its parsed template; copies share it.
// Thread-safety: render() is const and may be called concurrently from any number of threads.
#pragma once

#include <ctime>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "tokenizer/jinja/template.h"

namespace bw {

struct ChatTemplateOptions {
  bool add_generation_prompt = false;
  std::string bos_token;
  std::string eos_token;
  // The tool schemas (a JSON array); null leaves `tools` undefined in the template.
  nlohmann::json tools;
  // A JSON object whose members become template variables (enable_thinking, date_string ...).
  nlohmann::json extra_context;
  // The local time strftime_now() formats; nullopt reads the system clock.
  std::optional<std::tm> now;
  jinja::RenderLimits limits;
};

class ChatTemplate {
 public:
  static Result<ChatTemplate> create(std::string source);

  // `messages` is the OpenAI-style array of message objects. Object members are seen in
  // the json's iteration order: nlohmann::json sorts keys, so `tojson` prints them sorted.
  Result<std::string> render(const nlohmann::json& messages, const ChatTemplateOptions& options) const;

  // The same for a request parsed with nlohmann::ordered_json, so that objects keep the
  // request's key order as Python's json module does (what transformers sees, and what
  // `tojson` of tool schemas prints). `tools` replaces options.tools (null: no tools).
  Result<std::string> render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                             const ChatTemplateOptions& options) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate(jinja::Template tmpl, std::string source) : template_(std::move(tmpl)), source_(std::move(source)) {}
  Result<std::string> render_values(jinja::Value messages, std::optional<jinja::Value> tools,
                                    const ChatTemplateOptions& options) const;

  jinja::Template template_;
  std::string source_;
};

}  // namespace bw
