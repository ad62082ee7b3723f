// Request half of openai_protocol.h: a /v1/chat/completions or /v1/completions body parsed
// and validated into a ParsedRequest, every failure a 400 ApiError naming the field.
//
// nlohmann throws; this file is the adapter: parse() is wrapped, and every later access
// goes through type checks (find(), is_*()) so nothing else can throw but allocation,
// which the boundary catches too. Before parsing, one linear scan of the body bounds its
// nesting (nlohmann's DOM, its destructor and dump() recurse) and the work of building
// ordered objects (ordered_map inserts are linear in the keys already there).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "server/openai_protocol.h"

namespace bw::server {

namespace {

using Json = nlohmann::ordered_json;

constexpr int kMaxNestingDepth = 64;
// Sum over objects of (keys)^2: about the comparisons ordered_map does to build them.
constexpr int64_t kMaxObjectKeyWork = int64_t{1} << 24;
constexpr int32_t kMaxCompletionLogprobs = 5;  // OpenAI's legacy completions limit
constexpr int32_t kMaxChatTopLogprobs = 20;
constexpr double kMaxTimeoutSeconds = 365.0 * 24 * 3600;  // longer timeouts are clipped to a year
constexpr double kMaxTemperature = 2.0;
constexpr double kMaxPenalty = 2.0;
constexpr double kMaxLogitBias = 100.0;

// Checks nesting depth and object-building work without parsing. Strings are skipped
// (escapes included); on malformed text the parser fails no later than the scan errs.
Status scan_body(std::string_view body) {
  std::array<int64_t, kMaxNestingDepth + 1> keys{};  // per open container: ':' seen in it
  int depth = 0;
  int64_t work = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > kMaxNestingDepth) {
          return InvalidArgument("the body nests arrays and objects deeper than {} levels", kMaxNestingDepth);
        }
        keys[depth] = 0;
        break;
      case ':':
        if (depth > 0) {
          work += 2 * keys[depth] + 1;  // (k + 1)^2 - k^2
          ++keys[depth];
          if (work > kMaxObjectKeyWork) return InvalidArgument("the body has too many object keys");
        }
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return OkStatus();
}

// "must be in [0, 2]" style range text.
std::string range_text(double lo, bool lo_open, double hi, bool hi_open) {
  if (std::isinf(hi)) return fmt::format("{} {}", lo_open ? ">" : ">=", lo);
  return fmt::format("in {}{}, {}{}", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
}

// A JSON number as an int64: exact, saturated (beyond int64 or a huge float), or not an
// integer at all (a fraction; other types).
enum class IntValue { kExact, kSaturated, kNotInteger };

IntValue to_int64(const Json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const auto u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      *out = std::numeric_limits<int64_t>::max();
      return IntValue::kSaturated;
    }
    *out = static_cast<int64_t>(u);
    return IntValue::kExact;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return IntValue::kExact;
  }
  if (!value.is_number_float()) return IntValue::kNotInteger;
  const auto d = value.get<double>();
  if (!std::isfinite(d) || d != std::floor(d)) return IntValue::kNotInteger;
  constexpr double kTwo63 = 9223372036854775808.0;
  if (d >= kTwo63) {
    *out = std::numeric_limits<int64_t>::max();
    return IntValue::kSaturated;
  }
  if (d < -kTwo63) {
    *out = std::numeric_limits<int64_t>::min();
    return IntValue::kSaturated;
  }
  *out = static_cast<int64_t>(d);
  return IntValue::kExact;
}

// The SamplingParams field a validate() message opens with ("top_p must be ...").
std::string leading_field(const std::string& message) { return message.substr(0, message.find(' ')); }

class RequestParser {
 public:
  RequestParser(Endpoint endpoint, const ParseLimits& limits) : endpoint_(endpoint), limits_(limits) {}

  bool parse(const Json& body, ParsedRequest* req);
  const ApiError& error() const { return error_; }

 private:
  bool is_chat() const { return endpoint_ == Endpoint::kChatCompletions; }

  bool fail(std::string param, std::string message) {
    error_.http_status = 400;
    error_.type = "invalid_request_error";
    error_.param = std::move(param);
    error_.message = std::move(message);
    return false;
  }
  bool wrong_type(const std::string& name, std::string_view expected, const Json& value) {
    return fail(name, fmt::format("'{}' must be {}, got {}", name, expected, value.type_name()));
  }

  // The field's value, or nullptr when absent or null.
  static const Json* field(const Json& object, const char* name) {
    auto it = object.find(name);
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
  }

  // Each reader leaves *out untouched when the field is absent or null; false on error.
  bool read_bool(const Json& object, const char* name, bool* out);
  bool read_string(const Json& object, const char* name, std::string* out);
  bool read_number(const Json& object, const char* name, double lo, bool lo_open, double hi, bool hi_open,
                   std::optional<double>* out);
  bool read_float(const Json& object, const char* name, double lo, bool lo_open, double hi, bool hi_open, float* out);
  bool read_int(const Json& object, const char* name, int64_t lo, int64_t hi, std::optional<int64_t>* out);
  // A token id: an integer in [0, vocab_size) (or [0, 2^31) without a vocabulary).
  bool read_token_id(const Json& value, const std::string& name, int32_t* out);

  bool parse_messages(const Json& body, ParsedRequest* req);
  bool parse_message(const Json& message, size_t i, Json* out);
  bool parse_prompt(const Json& body, ParsedRequest* req);
  bool parse_max_tokens(const Json& body, ParsedRequest* req);
  bool parse_sampling(const Json& body, ParsedRequest* req);
  bool parse_logit_bias(const Json& body, ParsedRequest* req);
  bool parse_seed(const Json& body, ParsedRequest* req);
  bool parse_stop(const Json& body, ParsedRequest* req);
  bool parse_logprobs(const Json& body, ParsedRequest* req);
  bool parse_stream(const Json& body, ParsedRequest* req);

  Endpoint endpoint_;
  ParseLimits limits_;
  ApiError error_;
};

bool RequestParser::read_bool(const Json& object, const char* name, bool* out) {
  const Json* value = field(object, name);
  if (value == nullptr) return true;
  if (!value->is_boolean()) return wrong_type(name, "a boolean", *value);
  *out = value->get<bool>();
  return true;
}

bool RequestParser::read_string(const Json& object, const char* name, std::string* out) {
  const Json* value = field(object, name);
  if (value == nullptr) return true;
  if (!value->is_string()) return wrong_type(name, "a string", *value);
  *out = value->get<std::string>();
  return true;
}

bool RequestParser::read_number(const Json& object, const char* name, double lo, bool lo_open, double hi, bool hi_open,
                                std::optional<double>* out) {
  const Json* value = field(object, name);
  if (value == nullptr) return true;
  if (!value->is_number()) return wrong_type(name, "a number", *value);
  const auto v = value->get<double>();
  const bool above_lo = lo_open ? v > lo : v >= lo;
  const bool below_hi = hi_open ? v < hi : v <= hi;
  if (!std::isfinite(v) || !above_lo || !below_hi) {
    return fail(name,
                fmt::format("'{}' must be {}, got {}", name, range_text(lo, lo_open, hi, hi_open), value->dump()));
  }
  *out = v;
  return true;
}

bool RequestParser::read_float(const Json& object, const char* name, double lo, bool lo_open, double hi, bool hi_open,
                               float* out) {
  std::optional<double> v;
  if (!read_number(object, name, lo, lo_open, hi, hi_open, &v)) return false;
  if (!v) return true;
  if (std::abs(*v) > std::numeric_limits<float>::max()) {
    return fail(name, fmt::format("'{}' is out of range, got {}", name, *v));
  }
  *out = static_cast<float>(*v);
  return true;
}

bool RequestParser::read_int(const Json& object, const char* name, int64_t lo, int64_t hi,
                             std::optional<int64_t>* out) {
  const Json* value = field(object, name);
  if (value == nullptr) return true;
  int64_t v = 0;
  if (!value->is_number()) return wrong_type(name, "an integer", *value);
  if (to_int64(*value, &v) == IntValue::kNotInteger) {
    return fail(name, fmt::format("'{}' must be an integer, got {}", name, value->dump()));
  }
  // A saturated value is outside any range narrower than int64 (and clipped otherwise).
  if (v < lo || v > hi) {
    const std::string range =
        hi == std::numeric_limits<int64_t>::max() ? fmt::format(">= {}", lo) : fmt::format("in [{}, {}]", lo, hi);
    return fail(name, fmt::format("'{}' must be {}, got {}", name, range, value->dump()));
  }
  *out = v;
  return true;
}

bool RequestParser::read_token_id(const Json& value, const std::string& name, int32_t* out) {
  const int64_t limit = limits_.vocab_size > 0 ? limits_.vocab_size : int64_t{std::numeric_limits<int32_t>::max()} + 1;
  int64_t v = 0;
  if (!value.is_number() || to_int64(value, &v) != IntValue::kExact || v < 0 || v >= limit) {
    const std::string got = value.is_number() ? value.dump() : std::string(value.type_name());
    return fail(name, fmt::format("'{}' must be a token id in [0, {}), got {}", name, limit, got));
  }
  *out = static_cast<int32_t>(v);
  return true;
}

bool RequestParser::parse(const Json& body, ParsedRequest* req) {
  if (!body.is_object()) return fail("", fmt::format("the body must be a JSON object, got {}", body.type_name()));
  req->endpoint = endpoint_;
  if (!read_string(body, "model", &req->model)) return false;
  if (is_chat()) {
    if (!parse_messages(body, req)) return false;
    if (!read_bool(body, "add_generation_prompt", &req->add_generation_prompt)) return false;
  } else {
    if (!parse_prompt(body, req)) return false;
    if (!read_bool(body, "echo", &req->echo)) return false;
  }
  if (!read_bool(body, "return_token_ids", &req->return_token_ids)) return false;
  if (!parse_max_tokens(body, req) || !parse_sampling(body, req) || !parse_stop(body, req) ||
      !parse_logprobs(body, req) || !parse_stream(body, req)) {
    return false;
  }

  std::optional<int64_t> n;
  if (!read_int(body, "n", 1, limits_.max_n, &n)) return false;
  if (n) req->n = static_cast<int32_t>(*n);
  if (!read_string(body, "user", &req->user)) return false;
  std::optional<int64_t> priority;
  if (!read_int(body, "priority", std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(),
                &priority)) {
    return false;
  }
  if (priority) req->priority = static_cast<int32_t>(*priority);
  std::optional<double> timeout;
  if (!read_number(body, "timeout", 0.0, true, std::numeric_limits<double>::infinity(), false, &timeout)) return false;
  if (timeout) req->timeout_seconds = std::min(*timeout, kMaxTimeoutSeconds);

  if (limits_.vocab_size > 0) {
    const Status status = req->sampling.validate(limits_.vocab_size);
    if (!status.ok()) return fail(leading_field(status.message()), status.message());
  }
  return true;
}

bool RequestParser::parse_messages(const Json& body, ParsedRequest* req) {
  const Json* messages = field(body, "messages");
  if (messages == nullptr) return fail("messages", "'messages' is required");
  if (!messages->is_array()) return wrong_type("messages", "an array", *messages);
  if (messages->empty()) return fail("messages", "'messages' must not be empty");
  req->messages = Json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    Json message;
    if (!parse_message((*messages)[i], i, &message)) return false;
    req->messages.push_back(std::move(message));
  }
  if (const Json* tools = field(body, "tools")) {
    if (!tools->is_array()) return wrong_type("tools", "an array", *tools);
    req->tools = *tools;
  }
  if (const Json* tool_choice = field(body, "tool_choice")) {
    if (!tool_choice->is_string() && !tool_choice->is_object()) {
      return wrong_type("tool_choice", "a string or an object", *tool_choice);
    }
    req->tool_choice = *tool_choice;
  }
  return true;
}

bool RequestParser::parse_message(const Json& message, size_t i, Json* out) {
  const std::string path = fmt::format("messages[{}]", i);
  if (!message.is_object()) return wrong_type(path, "an object", message);

  const std::string role_path = path + ".role";
  const Json* role = field(message, "role");
  if (role == nullptr) return fail(role_path, fmt::format("'{}' is required", role_path));
  if (!role->is_string()) return wrong_type(role_path, "a string", *role);
  const auto& role_name = role->get_ref<const std::string&>();
  constexpr std::array<std::string_view, 5> kRoles = {"system", "user", "assistant", "tool", "developer"};
  if (std::find(kRoles.begin(), kRoles.end(), role_name) == kRoles.end()) {
    return fail(role_path, fmt::format("'{}' must be one of system, user, assistant, tool, developer, got {}",
                                       role_path, role->dump(-1, ' ', false, Json::error_handler_t::replace)));
  }
  const bool is_assistant = role_name == "assistant";

  const Json* tool_calls = field(message, "tool_calls");
  if (tool_calls != nullptr && !tool_calls->is_array())
    return wrong_type(path + ".tool_calls", "an array", *tool_calls);
  for (const char* name : {"tool_call_id", "name"}) {
    const Json* value = field(message, name);
    if (value != nullptr && !value->is_string())
      return wrong_type(fmt::format("{}.{}", path, name), "a string", *value);
  }

  *out = message;
  const std::string content_path = path + ".content";
  const Json* content = field(message, "content");
  if (content == nullptr) {
    if (is_assistant && tool_calls != nullptr) return true;
    return fail(content_path, is_assistant
                                  ? fmt::format("'{}' is required unless the message has tool_calls", content_path)
                                  : fmt::format("'{}' is required", content_path));
  }
  if (content->is_string()) return true;
  if (!content->is_array()) return wrong_type(content_path, "a string or an array of content parts", *content);
  std::string text;
  for (size_t p = 0; p < content->size(); ++p) {
    const Json& part = (*content)[p];
    const std::string part_path = fmt::format("{}[{}]", content_path, p);
    if (!part.is_object()) return wrong_type(part_path, "an object", part);
    const Json* type = field(part, "type");
    if (type == nullptr || !type->is_string()) {
      return fail(part_path + ".type", fmt::format("'{}.type' must be a string", part_path));
    }
    if (type->get_ref<const std::string&>() != "text") {
      return fail(part_path + ".type", fmt::format("only text content parts are supported, got type {}",
                                                   type->dump(-1, ' ', false, Json::error_handler_t::replace)));
    }
    const Json* part_text = field(part, "text");
    if (part_text == nullptr || !part_text->is_string()) {
      return fail(part_path + ".text", fmt::format("'{}.text' must be a string", part_path));
    }
    text += part_text->get_ref<const std::string&>();
  }
  (*out)["content"] = std::move(text);
  return true;
}

bool RequestParser::parse_prompt(const Json& body, ParsedRequest* req) {
  const Json* prompt = field(body, "prompt");
  if (prompt == nullptr) return fail("prompt", "'prompt' is required");
  constexpr std::string_view kForms =
      "a string, an array of strings, an array of token ids or an array of arrays of "
      "token ids";
  if (prompt->is_string()) {
    if (prompt->get_ref<const std::string&>().empty()) return fail("prompt", "'prompt' must not be empty");
    req->prompt_texts.push_back(prompt->get<std::string>());
    return true;
  }
  if (!prompt->is_array()) return wrong_type("prompt", kForms, *prompt);
  if (prompt->empty()) return fail("prompt", "'prompt' must not be empty");
  const Json& first = prompt->front();

  if (first.is_number()) {  // one prompt of token ids
    req->prompt_is_tokens = true;
    std::vector<int32_t> ids(prompt->size());
    for (size_t i = 0; i < prompt->size(); ++i) {
      if (!read_token_id((*prompt)[i], fmt::format("prompt[{}]", i), &ids[i])) return false;
    }
    req->prompt_token_ids.push_back(std::move(ids));
    return true;
  }
  if (prompt->size() > static_cast<size_t>(limits_.max_prompts)) {
    return fail("prompt",
                fmt::format("'prompt' has {} prompts, at most {} are allowed", prompt->size(), limits_.max_prompts));
  }
  if (first.is_string()) {
    for (size_t i = 0; i < prompt->size(); ++i) {
      const Json& item = (*prompt)[i];
      const std::string name = fmt::format("prompt[{}]", i);
      if (!item.is_string()) return wrong_type(name, "a string like the other prompts", item);
      if (item.get_ref<const std::string&>().empty()) return fail(name, fmt::format("'{}' must not be empty", name));
      req->prompt_texts.push_back(item.get<std::string>());
    }
    return true;
  }
  if (first.is_array()) {
    req->prompt_is_tokens = true;
    for (size_t i = 0; i < prompt->size(); ++i) {
      const Json& item = (*prompt)[i];
      const std::string name = fmt::format("prompt[{}]", i);
      if (!item.is_array()) return wrong_type(name, "an array of token ids like the other prompts", item);
      if (item.empty()) return fail(name, fmt::format("'{}' must not be empty", name));
      std::vector<int32_t> ids(item.size());
      for (size_t j = 0; j < item.size(); ++j) {
        if (!read_token_id(item[j], fmt::format("prompt[{}][{}]", i, j), &ids[j])) return false;
      }
      req->prompt_token_ids.push_back(std::move(ids));
    }
    return true;
  }
  return fail("prompt", fmt::format("'prompt' must be {}, got an array of {}", kForms, first.type_name()));
}

bool RequestParser::parse_max_tokens(const Json& body, ParsedRequest* req) {
  // Larger limits are clipped: the service clips to the context length anyway.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  std::optional<int64_t> max_tokens;
  std::optional<int64_t> max_completion_tokens;
  if (!read_int(body, "max_tokens", 1, kMax, &max_tokens)) return false;
  if (!read_int(body, "max_completion_tokens", 1, kMax, &max_completion_tokens)) return false;
  const std::optional<int64_t> chosen = max_completion_tokens ? max_completion_tokens : max_tokens;
  if (chosen) {
    req->max_tokens = static_cast<int32_t>(std::min<int64_t>(*chosen, std::numeric_limits<int32_t>::max()));
  }
  return true;
}

bool RequestParser::parse_sampling(const Json& body, ParsedRequest* req) {
  SamplingParams& s = req->sampling;
  s.temperature = 1.0f;  // OpenAI's default
  const double inf = std::numeric_limits<double>::infinity();
  if (!read_float(body, "temperature", 0.0, false, kMaxTemperature, false, &s.temperature) ||
      !read_float(body, "top_p", 0.0, true, 1.0, false, &s.top_p) ||
      !read_float(body, "min_p", 0.0, false, 1.0, false, &s.min_p) ||
      !read_float(body, "presence_penalty", -kMaxPenalty, false, kMaxPenalty, false, &s.presence_penalty) ||
      !read_float(body, "frequency_penalty", -kMaxPenalty, false, kMaxPenalty, false, &s.frequency_penalty) ||
      !read_float(body, "repetition_penalty", 0.0, true, inf, false, &s.repetition_penalty)) {
    return false;
  }
  std::optional<int64_t> top_k;
  if (!read_int(body, "top_k", -1, std::numeric_limits<int32_t>::max(), &top_k)) return false;
  if (top_k) s.top_k = static_cast<int32_t>(*top_k);
  return parse_logit_bias(body, req) && parse_seed(body, req);
}

bool RequestParser::parse_logit_bias(const Json& body, ParsedRequest* req) {
  const Json* bias = field(body, "logit_bias");
  if (bias == nullptr) return true;
  if (!bias->is_object()) return wrong_type("logit_bias", "an object", *bias);
  for (const auto& [key, value] : bias->items()) {
    // Keys are decimal token ids ("50256"), as OpenAI's tokenizer-specific ids.
    int64_t id = 0;
    const bool digits = !key.empty() && key.size() <= 10 &&
                        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits) id = std::stoll(key);
    const Json key_json = key;
    if (!digits || id > std::numeric_limits<int32_t>::max()) {
      return fail("logit_bias", fmt::format("'logit_bias' keys must be token ids, got {}",
                                            key_json.dump(-1, ' ', false, Json::error_handler_t::replace)));
    }
    if (limits_.vocab_size > 0 && id >= limits_.vocab_size) {
      return fail("logit_bias",
                  fmt::format("'logit_bias' token id {} is outside the vocabulary [0, {})", id, limits_.vocab_size));
    }
    if (!value.is_number()) {
      return fail("logit_bias",
                  fmt::format("'logit_bias' values must be numbers, got {} for token {}", value.type_name(), id));
    }
    const auto v = value.get<double>();
    if (!(v >= -kMaxLogitBias && v <= kMaxLogitBias)) {
      return fail("logit_bias",
                  fmt::format("'logit_bias' values must be in [-100, 100], got {} for token {}", value.dump(), id));
    }
    req->sampling.logit_bias.emplace_back(static_cast<int32_t>(id), static_cast<float>(v));
  }
  return true;
}

bool RequestParser::parse_seed(const Json& body, ParsedRequest* req) {
  const Json* seed = field(body, "seed");
  if (seed == nullptr) return true;
  if (!seed->is_number()) return wrong_type("seed", "an integer", *seed);
  // Any 64-bit integer: negative values map to uint64 by two's complement.
  if (seed->is_number_unsigned()) {
    req->sampling.seed = seed->get<uint64_t>();
    return true;
  }
  if (seed->is_number_integer()) {
    req->sampling.seed = static_cast<uint64_t>(seed->get<int64_t>());
    return true;
  }
  const auto d = seed->get<double>();
  constexpr double kTwo63 = 9223372036854775808.0;
  if (!std::isfinite(d) || d != std::floor(d) || d < -kTwo63 || d >= 2.0 * kTwo63) {
    return fail("seed", fmt::format("'seed' must be a 64-bit integer, got {}", seed->dump()));
  }
  req->sampling.seed = d >= 0 ? static_cast<uint64_t>(d) : static_cast<uint64_t>(static_cast<int64_t>(d));
  return true;
}

bool RequestParser::parse_stop(const Json& body, ParsedRequest* req) {
  if (!read_bool(body, "ignore_eos", &req->ignore_eos)) return false;
  if (const Json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      if (stop->get_ref<const std::string&>().empty()) return fail("stop", "'stop' must not be an empty string");
      req->stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > static_cast<size_t>(limits_.max_stop_strings)) {
        return fail("stop", fmt::format("'stop' has {} strings, at most {} are allowed", stop->size(),
                                        limits_.max_stop_strings));
      }
      for (size_t i = 0; i < stop->size(); ++i) {
        const Json& item = (*stop)[i];
        if (!item.is_string()) {
          return fail("stop", fmt::format("'stop[{}]' must be a string, got {}", i, item.type_name()));
        }
        if (item.get_ref<const std::string&>().empty()) {
          return fail("stop", fmt::format("'stop[{}]' must not be empty", i));
        }
        req->stop.push_back(item.get<std::string>());
      }
    } else {
      return wrong_type("stop", "a string or an array of strings", *stop);
    }
  }
  if (const Json* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) return wrong_type("stop_token_ids", "an array of token ids", *ids);
    req->stop_token_ids.resize(ids->size());
    for (size_t i = 0; i < ids->size(); ++i) {
      if (!read_token_id((*ids)[i], "stop_token_ids", &req->stop_token_ids[i])) return false;
    }
  }
  return true;
}

bool RequestParser::parse_logprobs(const Json& body, ParsedRequest* req) {
  if (is_chat()) {
    if (!read_bool(body, "logprobs", &req->logprobs)) return false;
    std::optional<int64_t> top;
    if (!read_int(body, "top_logprobs", 0, kMaxChatTopLogprobs, &top)) return false;
    if (top) {
      if (*top > 0 && !req->logprobs) return fail("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
      req->top_logprobs = static_cast<int32_t>(*top);
    }
  } else {
    std::optional<int64_t> logprobs;
    if (!read_int(body, "logprobs", 0, kMaxCompletionLogprobs, &logprobs)) return false;
    if (logprobs) {
      req->logprobs = true;
      req->top_logprobs = static_cast<int32_t>(*logprobs);
    }
  }
  req->sampling.logprobs = req->logprobs ? req->top_logprobs : -1;
  return true;
}

bool RequestParser::parse_stream(const Json& body, ParsedRequest* req) {
  if (!read_bool(body, "stream", &req->stream)) return false;
  const Json* options = field(body, "stream_options");
  if (options == nullptr) return true;
  if (!options->is_object()) return wrong_type("stream_options", "an object", *options);
  if (!req->stream) return fail("stream_options", "'stream_options' is only allowed when 'stream' is true");
  const Json* include_usage = field(*options, "include_usage");
  if (include_usage != nullptr) {
    if (!include_usage->is_boolean()) {
      return fail("stream_options",
                  fmt::format("'stream_options.include_usage' must be a boolean, got {}", include_usage->type_name()));
    }
    req->include_usage = include_usage->get<bool>();
  }
  return true;
}

// The body parsed, or the error filled in.
Result<ParsedRequest> parse_body(Endpoint endpoint, std::string_view body, const ParseLimits& limits, ApiError* error) {
  auto failed = [error](std::string param, std::string message) -> Status {
    error->http_status = 400;
    error->type = "invalid_request_error";
    error->param = std::move(param);
    error->message = std::move(message);
    error->code.clear();
    return Status(StatusCode::kInvalidArgument, error->message);
  };
  if (const Status status = scan_body(body); !status.ok()) return failed("", status.message());
  Json json;
  try {
    json = Json::parse(body);
  } catch (const Json::exception& e) {
    // "[json.exception.parse_error.101] parse error at ..." without the bracketed id.
    std::string_view what = e.what();
    if (!what.empty() && what.front() == '[') {
      const size_t close = what.find("] ");
      if (close != std::string_view::npos) what.remove_prefix(close + 2);
    }
    return failed("", fmt::format("the body is not valid JSON: {}", what));
  }
  RequestParser parser(endpoint, limits);
  ParsedRequest request;
  if (!parser.parse(json, &request)) {
    *error = parser.error();
    return Status(StatusCode::kInvalidArgument, error->message);
  }
  return request;
}

}  // namespace

Result<ParsedRequest> parse_request(Endpoint endpoint, std::string_view body, const ParseLimits& limits,
                                    ApiError* error) {
  ApiError local;
  ApiError* out = error != nullptr ? error : &local;
  try {
    return parse_body(endpoint, body, limits, out);
  } catch (const std::exception& e) {  // allocation failure, or a bug: never past this boundary
    *out = ApiError{500, fmt::format("internal error while parsing the request: {}", e.what()), "server_error", "", ""};
    return Status(StatusCode::kInternal, out->message);
  }
}

}  // namespace bw::server
