#include "cache/cache_key.h"

#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "common/sha256.h"

namespace bw::cache {

namespace {

// A tagged, length-prefixed writer: no two different inputs serialise alike.
class Writer {
 public:
  void tag(std::string_view name) {
    out_ += name;
    out_ += '=';
  }
  void u64(uint64_t v) { out_ += fmt::format("{};", v); }
  void i64(int64_t v) { out_ += fmt::format("{};", v); }
  // Floats by their bits: 0.1f and 0.10000001f are different requests.
  void f32(float v) { u64(std::bit_cast<uint32_t>(v)); }
  void str(std::string_view s) {
    out_ += fmt::format("{}:", s.size());
    out_ += s;
    out_ += ';';
  }
  void ids(const std::vector<int32_t>& ids) {
    out_ += fmt::format("[{}:", ids.size());
    for (int32_t id : ids)
      out_ += fmt::format("{},", id);
    out_ += "];";
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace

std::string canonical_request(const CacheKeyInput& in) {
  Writer w;
  w.tag("bw-response-cache");
  w.i64(kCacheKeyVersion);
  w.tag("endpoint");
  w.str(in.endpoint);
  w.tag("model");
  w.str(in.model);
  w.tag("vocab");
  w.i64(in.vocab_size);
  w.tag("eos");
  w.ids(in.eos_token_ids);
  w.tag("adapter");
  w.str(in.adapter);
  w.tag("prompts");
  w.u64(in.prompts.size());
  for (const auto& p : in.prompts)
    w.ids(p);
  w.tag("max_tokens");
  w.ids(in.max_tokens);
  const SamplingParams& s = in.sampling;
  w.tag("temperature");
  w.f32(s.temperature);
  w.tag("top_k");
  w.i64(s.top_k);
  w.tag("top_p");
  w.f32(s.top_p);
  w.tag("min_p");
  w.f32(s.min_p);
  w.tag("repetition_penalty");
  w.f32(s.repetition_penalty);
  w.tag("presence_penalty");
  w.f32(s.presence_penalty);
  w.tag("frequency_penalty");
  w.f32(s.frequency_penalty);
  w.tag("logit_bias");
  w.u64(s.logit_bias.size());
  for (const auto& [id, bias] : s.logit_bias) {
    w.i64(id);
    w.f32(bias);
  }
  w.tag("seed");
  if (s.seed) {
    w.u64(*s.seed);
  } else {
    w.str("none");
  }
  w.tag("logprobs");
  w.i64(s.logprobs);
  w.tag("stop_token_ids");
  w.ids(in.stop_token_ids);
  w.tag("ignore_eos");
  w.i64(in.ignore_eos ? 1 : 0);
  w.tag("stop");
  w.u64(in.stop_strings.size());
  for (const std::string& stop : in.stop_strings)
    w.str(stop);
  w.tag("n");
  w.i64(in.n);
  w.tag("reasoning");
  w.i64(in.reasoning ? 1 : 0);
  return w.take();
}

std::string cache_key(const CacheKeyInput& input) {
  const std::string canonical = canonical_request(input);
  return sha256_hex(canonical.data(), canonical.size());
}

}  // namespace bw::cache
