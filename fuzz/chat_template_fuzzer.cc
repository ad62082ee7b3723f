// libFuzzer target for the chat template interpreter (tokenizer/chat_template.h and
// tokenizer/jinja/): the input is a template, a NUL byte, then a JSON conversation (an array
// of messages, or {"messages": [...], "tools": [...], "add_generation_prompt": true,
// "extra": {...}}); without a usable JSON part a fixed conversation is used. The template is
// parsed and rendered with small limits. Every failure must be an error Status that names
// what failed; rendering twice must give the same result.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_template.h"

namespace {

nlohmann::json default_messages() {
  return nlohmann::json::array({{{"role", "system"}, {"content", "Be brief."}},
                                {{"role", "user"}, {"content", "Hi! «¿Qué?» 😀"}},
                                {{"role", "assistant"}, {"content", "<think>hm</think>Hello."}},
                                {{"role", "user"}, {"content", "Bye"}}});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view source = input.substr(0, split);

  bw::ChatTemplateOptions options;
  options.bos_token = "<s>";
  options.eos_token = "</s>";
  options.limits.max_output_bytes = size_t{1} << 20;
  options.limits.max_steps = 200'000;
  std::tm now{};
  now.tm_year = 125;
  now.tm_mday = 1;
  options.now = now;
  nlohmann::json messages = default_messages();
  if (split != std::string_view::npos) {
    // parse() without exceptions: a bad document is "discarded".
    nlohmann::json j = nlohmann::json::parse(input.substr(split + 1), nullptr, /*allow_exceptions=*/false);
    if (j.is_array()) {
      messages = std::move(j);
    } else if (j.is_object()) {
      auto it = j.find("messages");
      if (it != j.end() && it->is_array()) messages = *it;
      it = j.find("tools");
      if (it != j.end()) options.tools = *it;
      it = j.find("add_generation_prompt");
      options.add_generation_prompt = it != j.end() && it->is_boolean() && it->get<bool>();
      it = j.find("extra");
      if (it != j.end() && it->is_object()) options.extra_context = *it;
    }
  }

  auto tmpl = bw::ChatTemplate::create(std::string(source));
  if (!tmpl.ok()) {
    if (tmpl.status().message().empty()) std::abort();  // every error must say what failed
    return 0;
  }
  auto first = tmpl->render(messages, options);
  auto second = tmpl->render(messages, options);
  if (first.ok() != second.ok()) std::abort();
  if (!first.ok()) {
    if (first.status().message().empty() || first.status().message() != second.status().message()) std::abort();
    return 0;
  }
  if (*first != *second) std::abort();  // rendering is deterministic
  if (first->size() > options.limits.max_output_bytes) std::abort();
  return 0;
}
