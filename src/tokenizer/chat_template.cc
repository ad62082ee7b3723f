#include "tokenizer/chat_template.h"

#include <vector>

#include "tokenizer/jinja/value.h"

namespace bw {
namespace {

constexpr const char* kName = "chat template";

jinja::Value raise_exception_function() {
  return jinja::make_function("raise_exception",
                              [](jinja::Evaluator& ev, jinja::CallArgs& args) -> Result<jinja::Value> {
                                if (args.positional.size() != 1 || !args.keyword.empty()) {
                                  return InvalidArgument("raise_exception() takes exactly one argument");
                                }
                                return ev.raise(jinja::to_str(args.positional[0]));
                              });
}

// Python's datetime.strftime over C strftime (what CPython calls on Linux).
jinja::Value strftime_now_function(std::optional<std::tm> fixed) {
  return jinja::make_function(
      "strftime_now", [fixed](jinja::Evaluator&, jinja::CallArgs& args) -> Result<jinja::Value> {
        if (args.positional.size() != 1 || !args.keyword.empty() || !args.positional[0].is_string()) {
          return InvalidArgument("strftime_now() takes one string argument");
        }
        std::tm tm{};
        if (fixed) {
          tm = *fixed;
        } else {
          const std::time_t t = std::time(nullptr);
          localtime_r(&t, &tm);
        }
        const std::string& format = args.positional[0].str();
        if (format.empty()) return jinja::Value::string("");
        for (size_t size = 256; size <= (size_t{1} << 20); size *= 4) {
          std::vector<char> buf(size);
          const size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &tm);
          if (n > 0) return jinja::Value::string(std::string(buf.data(), n));
        }
        return jinja::Value::string("");
      });
}

}  // namespace

Result<ChatTemplate> ChatTemplate::create(std::string source) {
  ASSIGN_OR_RETURN(jinja::Template tmpl, jinja::Template::parse(source, kName));
  return ChatTemplate(std::move(tmpl), std::move(source));
}

Result<std::string> ChatTemplate::render(const nlohmann::json& messages, const ChatTemplateOptions& options) const {
  if (!messages.is_array()) return InvalidArgument("{}: messages must be a JSON array", kName);
  auto messages_value = jinja::from_json(messages);
  if (!messages_value.ok()) return messages_value.status().with_context(kName);
  std::optional<jinja::Value> tools;
  if (!options.tools.is_null()) {
    auto v = jinja::from_json(options.tools);
    if (!v.ok()) return v.status().with_context(kName);
    tools = std::move(v).value();
  }
  return render_values(std::move(messages_value).value(), std::move(tools), options);
}

Result<std::string> ChatTemplate::render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                         const ChatTemplateOptions& options) const {
  if (!messages.is_array()) return InvalidArgument("{}: messages must be a JSON array", kName);
  auto messages_value = jinja::from_json(messages);
  if (!messages_value.ok()) return messages_value.status().with_context(kName);
  std::optional<jinja::Value> tools_value;
  if (!tools.is_null()) {
    auto v = jinja::from_json(tools);
    if (!v.ok()) return v.status().with_context(kName);
    tools_value = std::move(v).value();
  }
  return render_values(std::move(messages_value).value(), std::move(tools_value), options);
}

Result<std::string> ChatTemplate::render_values(jinja::Value messages, std::optional<jinja::Value> tools,
                                                const ChatTemplateOptions& options) const {
  if (!options.extra_context.is_null() && !options.extra_context.is_object()) {
    return InvalidArgument("{}: extra_context must be a JSON object", kName);
  }
  // Later entries shadow earlier ones: template variables shadow the environment's globals.
  jinja::Globals globals;
  globals.emplace_back("raise_exception", raise_exception_function());
  globals.emplace_back("strftime_now", strftime_now_function(options.now));
  globals.emplace_back("messages", std::move(messages));
  globals.emplace_back("add_generation_prompt", jinja::Value::boolean(options.add_generation_prompt));
  globals.emplace_back("bos_token", jinja::Value::string(options.bos_token));
  globals.emplace_back("eos_token", jinja::Value::string(options.eos_token));
  if (tools) globals.emplace_back("tools", std::move(*tools));
  if (options.extra_context.is_object()) {
    for (auto it = options.extra_context.begin(); it != options.extra_context.end(); ++it) {
      auto v = jinja::from_json(it.value());
      if (!v.ok()) return v.status().with_context(kName);
      globals.emplace_back(it.key(), std::move(v).value());
    }
  }
  return template_.render(globals, options.limits);
}

}  // namespace bw
