#include "cache/cached_response.h"

#include <exception>

#include <nlohmann/json.hpp>

namespace bw::cache {

namespace {

using Json = nlohmann::json;

// Compact field names: L2 values cross the network on every hit.
Json logprobs_json(const std::vector<SampledLogprobs>& logprobs) {
  Json out = Json::array();
  for (const SampledLogprobs& entry : logprobs) {
    Json top = Json::array();
    for (const TokenLogprob& alt : entry.top)
      top.push_back(Json::array({alt.token_id, alt.logprob}));
    out.push_back(Json::array({entry.token_id, entry.logprob, std::move(top)}));
  }
  return out;
}

// nlohmann throws on type mismatches; this adapter catches them in deserialize().
std::vector<SampledLogprobs> logprobs_from_json(const Json& json) {
  std::vector<SampledLogprobs> out;
  out.reserve(json.size());
  for (const Json& entry : json) {
    SampledLogprobs s;
    s.token_id = entry.at(0).get<int32_t>();
    s.logprob = entry.at(1).get<float>();
    for (const Json& alt : entry.at(2))
      s.top.push_back(TokenLogprob{alt.at(0).get<int32_t>(), alt.at(1).get<float>()});
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

std::string serialize(const CachedResponse& response) {
  Json choices = Json::array();
  for (const CachedChoice& c : response.choices) {
    Json j;
    j["text"] = c.text;
    j["reasoning"] = c.reasoning_content;
    j["ids"] = c.token_ids;
    j["logprobs"] = logprobs_json(c.logprobs);
    j["finish"] = c.finish_reason;
    j["stop"] = c.stop_reason;
    choices.push_back(std::move(j));
  }
  Json j;
  j["v"] = kCachedResponseFormatVersion;
  j["choices"] = std::move(choices);
  j["usage"] =
      Json::array({response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.cached_tokens});
  // Texts are the engine's detokenizer output (whole UTF-8 characters); replace defends
  // against anything else rather than throwing.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Result<CachedResponse> deserialize(std::string_view text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss("cached response: not a JSON object");
  const auto version = j.find("v");
  if (version == j.end() || !version->is_number_integer() || version->get<int>() != kCachedResponseFormatVersion) {
    return DataLoss("cached response: format version is not {}", kCachedResponseFormatVersion);
  }
  try {
    CachedResponse out;
    for (const Json& c : j.at("choices")) {
      CachedChoice choice;
      choice.text = c.at("text").get<std::string>();
      choice.reasoning_content = c.at("reasoning").get<std::string>();
      choice.token_ids = c.at("ids").get<std::vector<int32_t>>();
      choice.logprobs = logprobs_from_json(c.at("logprobs"));
      choice.finish_reason = c.at("finish").get<std::string>();
      choice.stop_reason = c.at("stop").get<std::string>();
      out.choices.push_back(std::move(choice));
    }
    const Json& usage = j.at("usage");
    out.usage.prompt_tokens = usage.at(0).get<int32_t>();
    out.usage.completion_tokens = usage.at(1).get<int32_t>();
    out.usage.cached_tokens = usage.at(2).get<int32_t>();
    return out;
  } catch (const std::exception& e) {
    return DataLoss("cached response: {}", e.what());
  }
}

uint64_t approximate_bytes(const CachedResponse& response) {
  uint64_t bytes = sizeof(CachedResponse);
  for (const CachedChoice& c : response.choices) {
    bytes += sizeof(CachedChoice) + c.text.size() + c.reasoning_content.size() + c.finish_reason.size() +
             c.stop_reason.size() + c.token_ids.size() * sizeof(int32_t);
    for (const SampledLogprobs& l : c.logprobs)
      bytes += sizeof(SampledLogprobs) + l.top.size() * sizeof(TokenLogprob);
  }
  return bytes;
}

}  // namespace bw::cache
