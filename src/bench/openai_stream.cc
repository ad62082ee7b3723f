#include "bench/openai_stream.h"

namespace bw::bench {

using Json = nlohmann::json;

Result<ApiKind> parse_api_kind(std::string_view name) {
  if (name == "chat") return ApiKind::kChat;
  if (name == "completions") return ApiKind::kCompletions;
  return InvalidArgument("--endpoint must be chat or completions, got '{}'", name);
}

std::string_view api_kind_name(ApiKind kind) { return kind == ApiKind::kChat ? "chat" : "completions"; }

std::string_view api_route(ApiKind kind) { return kind == ApiKind::kChat ? "/chat/completions" : "/completions"; }

std::string build_request_body(const RequestOptions& options, const std::string& prompt, int64_t max_tokens) {
  Json body = Json::object();
  if (!options.model.empty()) body["model"] = options.model;
  if (options.api == ApiKind::kChat) {
    body["messages"] = Json::array({Json{{"role", "user"}, {"content", prompt}}});
  } else {
    body["prompt"] = prompt;
  }
  body["max_tokens"] = max_tokens;
  body["temperature"] = options.temperature;
  body["stream"] = true;
  body["stream_options"] = Json{{"include_usage", true}};
  if (options.ignore_eos) body["ignore_eos"] = true;
  if (options.extra_body.is_object()) {
    for (const auto& [key, value] : options.extra_body.items())
      body[key] = value;
  }
  return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace {

void append_string(const Json& object, const char* key, std::string* out) {
  auto it = object.find(key);
  if (it != object.end() && it->is_string()) out->append(it->get_ref<const std::string&>());
}

std::optional<int64_t> read_count(const Json& usage, const char* key) {
  auto it = usage.find(key);
  if (it == usage.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

}  // namespace

Result<StreamChunk> parse_stream_chunk(std::string_view data, ApiKind api) {
  Json chunk = Json::parse(data, nullptr, false);
  if (chunk.is_discarded() || !chunk.is_object()) {
    return DataLoss("stream chunk is not a JSON object: {}", data.substr(0, 200));
  }
  if (auto error = chunk.find("error"); error != chunk.end() && !error->is_null()) {
    std::string message = error->dump();
    if (error->is_object() && error->contains("message") && (*error)["message"].is_string()) {
      message = (*error)["message"].get<std::string>();
    }
    return Unavailable("error event in the stream: {}", message);
  }
  StreamChunk out;
  if (auto choices = chunk.find("choices"); choices != chunk.end() && choices->is_array() && !choices->empty()) {
    const Json& choice = (*choices)[0];
    if (!choice.is_object()) return DataLoss("stream chunk: choices[0] is not an object");
    if (api == ApiKind::kChat) {
      auto delta = choice.find("delta");
      if (delta != choice.end() && delta->is_object()) {
        append_string(*delta, "content", &out.text);
        // Reasoning models stream their thinking first; it is generated output too.
        append_string(*delta, "reasoning_content", &out.text);
        append_string(*delta, "reasoning", &out.text);
      }
    } else {
      append_string(choice, "text", &out.text);
    }
  }
  if (auto usage = chunk.find("usage"); usage != chunk.end() && usage->is_object()) {
    out.prompt_tokens = read_count(*usage, "prompt_tokens");
    out.completion_tokens = read_count(*usage, "completion_tokens");
  }
  return out;
}

}  // namespace bw::bench
