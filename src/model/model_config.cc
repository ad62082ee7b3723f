#include "model/model_config.h"

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "io/gguf.h"

namespace bw {

namespace {

using json = nlohmann::json;

// Maps a Hugging Face `architectures` / `model_type` to a registry name.
std::optional<std::string> arch_from_hf(const json& j) {
  auto map = [](const std::string& s) -> std::optional<std::string> {
    if (s == "LlamaForCausalLM" || s == "llama") return "llama";
    if (s == "Qwen2ForCausalLM" || s == "qwen2") return "qwen2";
    return std::nullopt;
  };
  if (auto it = j.find("architectures"); it != j.end() && it->is_array()) {
    for (const auto& a : *it) {
      if (a.is_string()) {
        if (auto m = map(a.get<std::string>())) return m;
      }
    }
  }
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) return map(it->get<std::string>());
  return std::nullopt;
}

std::string describe_arch(const json& j) {
  if (auto it = j.find("architectures"); it != j.end()) return it->dump();
  if (auto it = j.find("model_type"); it != j.end()) return it->dump();
  return "(none)";
}

// Typed, non-throwing accessors with errors that name the key.
class JsonReader {
 public:
  JsonReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  Result<int64_t> integer(const std::string& key) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return DataLoss("{}: missing key '{}'", source_, key);
    if (!it->is_number_integer()) return DataLoss("{}: key '{}' must be an integer, got {}", source_, key, it->dump());
    return it->get<int64_t>();
  }
  Result<int64_t> integer_or(const std::string& key, int64_t fallback) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    return integer(key);
  }
  Result<double> number_or(const json& obj, const std::string& key, double fallback) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_number()) return DataLoss("{}: key '{}' must be a number, got {}", source_, key, it->dump());
    return it->get<double>();
  }
  Result<bool> boolean_or(const std::string& key, bool fallback) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return DataLoss("{}: key '{}' must be true or false, got {}", source_, key, it->dump());
    return it->get<bool>();
  }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

Status parse_rope_scaling(const json& scaling, const JsonReader& r, RopeScaling* out) {
  if (scaling.is_null()) return OkStatus();
  if (!scaling.is_object()) return DataLoss("{}: rope scaling must be an object, got {}", r.source(), scaling.dump());
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (auto it = scaling.find(key); it != scaling.end() && it->is_string()) {
      type = it->get<std::string>();
      break;
    }
  }
  if (type.empty() || type == "default") return OkStatus();
  ASSIGN_OR_RETURN(double factor, r.number_or(scaling, "factor", 1.0));
  if (!(factor > 0)) return DataLoss("{}: rope scaling factor must be > 0, got {}", r.source(), factor);
  out->factor = static_cast<float>(factor);
  if (type == "linear") {
    out->type = RopeScaling::Type::kLinear;
    return OkStatus();
  }
  if (type == "llama3") {
    out->type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(double low, r.number_or(scaling, "low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(double high, r.number_or(scaling, "high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(double orig, r.number_or(scaling, "original_max_position_embeddings", 8192));
    if (!(high > low) || !(orig > 0)) {
      return DataLoss(
          "{}: llama3 rope scaling needs high_freq_factor > low_freq_factor and "
          "original_max_position_embeddings > 0, got {}",
          r.source(), scaling.dump());
    }
    out->low_freq_factor = static_cast<float>(low);
    out->high_freq_factor = static_cast<float>(high);
    out->original_max_position = static_cast<int64_t>(orig);
    return OkStatus();
  }
  return Unimplemented("{}: rope scaling type '{}' is not supported (supported: linear, llama3)", r.source(), type);
}

DType dtype_from_torch_name(const std::string& s) {
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16") return DType::kF16;
  return DType::kF32;
}

}  // namespace

Status ModelConfig::validate() const {
  auto positive = [](int64_t v) { return v > 0; };
  if (!positive(vocab_size) || !positive(hidden_size) || !positive(intermediate_size) || !positive(num_layers) ||
      !positive(num_heads) || !positive(num_kv_heads) || !positive(head_dim)) {
    return InvalidArgument("model config: every size must be positive: {}", summary());
  }
  if (num_heads % num_kv_heads != 0) {
    return InvalidArgument("model config: num_heads {} is not a multiple of num_kv_heads {}", num_heads, num_kv_heads);
  }
  if (rope.rotary_dim <= 0 || rope.rotary_dim > head_dim || rope.rotary_dim % 2 != 0) {
    return InvalidArgument("model config: rotary dim {} must be even and in (0, head_dim {}]", rope.rotary_dim,
                           head_dim);
  }
  if (!rope.freq_factors.empty() && static_cast<int64_t>(rope.freq_factors.size()) != rope.rotary_dim / 2) {
    return InvalidArgument("model config: {} rope frequency factors, expected rotary_dim/2 = {}",
                           rope.freq_factors.size(), rope.rotary_dim / 2);
  }
  if (!(rope.theta > 0)) return InvalidArgument("model config: rope theta must be > 0");
  if (!(rms_norm_eps > 0)) return InvalidArgument("model config: rms_norm_eps must be > 0");
  // Guard the products the loader computes from these.
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  if (vocab_size > kMaxDim || hidden_size > kMaxDim || intermediate_size > kMaxDim || num_layers > 4096 ||
      num_heads > 4096 || head_dim > 4096) {
    return InvalidArgument("model config: implausibly large sizes: {}", summary());
  }
  return OkStatus();
}

std::string ModelConfig::summary() const {
  return fmt::format(
      "arch={} vocab={} hidden={} ffn={} layers={} heads={} kv_heads={} head_dim={} rope_theta={} "
      "rotary_dim={} scaling={} tied={} qkv_bias={} max_pos={}",
      architecture, vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim,
      rope.theta, rope.rotary_dim,
      rope.scaling.type == RopeScaling::Type::kLlama3   ? "llama3"
      : rope.scaling.type == RopeScaling::Type::kLinear ? "linear"
      : rope.freq_factors.empty()                       ? "none"
                                                        : "freq_factors",
      tie_word_embeddings, attention_bias, max_position_embeddings);
}

Result<ModelConfig> model_config_from_hf_json(const std::string& json_text, const std::string& source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss("{}: not a JSON object", source);
  JsonReader r(j, source);
  ModelConfig c;
  auto arch = arch_from_hf(j);
  if (!arch) {
    return Unimplemented("{}: unsupported architecture {} (supported: LlamaForCausalLM, Qwen2ForCausalLM)", source,
                         describe_arch(j));
  }
  c.architecture = *arch;
  ASSIGN_OR_RETURN(c.vocab_size, r.integer("vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, r.integer("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, r.integer("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, r.integer("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, r.integer("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_kv_heads, r.integer_or("num_key_value_heads", c.num_heads));
  if (c.num_heads <= 0) return DataLoss("{}: num_attention_heads must be positive", source);
  ASSIGN_OR_RETURN(c.head_dim, r.integer_or("head_dim", c.hidden_size / c.num_heads));
  ASSIGN_OR_RETURN(c.max_position_embeddings, r.integer_or("max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(double eps, r.number_or(j, "rms_norm_eps", 1e-6));
  c.rms_norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(c.tie_word_embeddings, r.boolean_or("tie_word_embeddings", false));
  // Qwen2 always has q/k/v biases; Llama has them when attention_bias is set.
  ASSIGN_OR_RETURN(bool attention_bias, r.boolean_or("attention_bias", false));
  c.attention_bias = c.architecture == "qwen2" || attention_bias;
  if (c.architecture == "llama") {
    ASSIGN_OR_RETURN(bool mlp_bias, r.boolean_or("mlp_bias", false));
    if (mlp_bias) return Unimplemented("{}: mlp_bias=true is not supported", source);
  }
  if (c.architecture == "qwen2") {
    ASSIGN_OR_RETURN(bool sliding, r.boolean_or("use_sliding_window", false));
    if (sliding) return Unimplemented("{}: use_sliding_window=true is not supported", source);
  }
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && it->get<std::string>() != "silu") {
    return Unimplemented("{}: hidden_act '{}' is not supported (only silu)", source, it->get<std::string>());
  }

  // Rope: transformers 5 nests everything in rope_parameters; older configs use
  // rope_theta + rope_scaling.
  double theta = 10000.0;
  double partial_rotary = 1.0;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    ASSIGN_OR_RETURN(theta, r.number_or(*it, "rope_theta", theta));
    ASSIGN_OR_RETURN(partial_rotary, r.number_or(*it, "partial_rotary_factor", 1.0));
    RETURN_IF_ERROR(parse_rope_scaling(*it, r, &c.rope.scaling));
  } else {
    ASSIGN_OR_RETURN(theta, r.number_or(j, "rope_theta", theta));
    ASSIGN_OR_RETURN(partial_rotary, r.number_or(j, "partial_rotary_factor", 1.0));
    if (auto s = j.find("rope_scaling"); s != j.end()) RETURN_IF_ERROR(parse_rope_scaling(*s, r, &c.rope.scaling));
  }
  c.rope.theta = static_cast<float>(theta);
  c.rope.rotary_dim = static_cast<int>(static_cast<double>(c.head_dim) * partial_rotary);

  if (auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer()) c.bos_token_id = it->get<int32_t>();
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    if (it->is_number_integer()) c.eos_token_ids.push_back(it->get<int32_t>());
    if (it->is_array()) {
      for (const auto& e : *it) {
        if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int32_t>());
      }
    }
  }
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (auto it = j.find(key); it != j.end() && it->is_string()) {
      c.weight_dtype = dtype_from_torch_name(it->get<std::string>());
      break;
    }
  }
  RETURN_IF_ERROR(c.validate().with_context(source));
  return c;
}

Result<ModelConfig> model_config_from_gguf(const GgufFile& gguf) {
  const std::string& source = gguf.name();
  ModelConfig c;
  ASSIGN_OR_RETURN(std::string arch, gguf.get_string("general.architecture"));
  if (arch != "llama" && arch != "qwen2") {
    return Unimplemented("{}: unsupported general.architecture '{}' (supported: llama, qwen2)", source, arch);
  }
  c.architecture = arch;
  const std::string p = arch + ".";
  auto get_int = [&](const std::string& key) -> Result<int64_t> {
    ASSIGN_OR_RETURN(uint64_t v, gguf.get_uint(key));
    if (v > static_cast<uint64_t>(INT64_MAX)) return DataLoss("{}: key '{}' is too large", source, key);
    return static_cast<int64_t>(v);
  };
  auto get_int_or = [&](const std::string& key, int64_t fallback) -> Result<int64_t> {
    if (gguf.find(key) == nullptr) return fallback;
    return get_int(key);
  };
  ASSIGN_OR_RETURN(c.hidden_size, get_int(p + "embedding_length"));
  ASSIGN_OR_RETURN(c.intermediate_size, get_int(p + "feed_forward_length"));
  ASSIGN_OR_RETURN(c.num_layers, get_int(p + "block_count"));
  ASSIGN_OR_RETURN(c.num_heads, get_int(p + "attention.head_count"));
  ASSIGN_OR_RETURN(c.num_kv_heads, get_int_or(p + "attention.head_count_kv", c.num_heads));
  if (c.num_heads <= 0) return DataLoss("{}: {}attention.head_count must be positive", source, p);
  ASSIGN_OR_RETURN(c.head_dim, get_int_or(p + "attention.key_length", c.hidden_size / c.num_heads));
  ASSIGN_OR_RETURN(c.max_position_embeddings, get_int_or(p + "context_length", 2048));
  ASSIGN_OR_RETURN(int64_t rotary, get_int_or(p + "rope.dimension_count", c.head_dim));
  c.rope.rotary_dim = static_cast<int>(rotary);
  if (gguf.find(p + "rope.freq_base") != nullptr) {
    ASSIGN_OR_RETURN(double theta, gguf.get_float(p + "rope.freq_base"));
    c.rope.theta = static_cast<float>(theta);
  }
  ASSIGN_OR_RETURN(double eps, gguf.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rms_norm_eps = static_cast<float>(eps);
  if (gguf.find(p + "rope.scaling.type") != nullptr) {
    ASSIGN_OR_RETURN(std::string type, gguf.get_string(p + "rope.scaling.type"));
    if (type == "linear") {
      ASSIGN_OR_RETURN(double factor, gguf.get_float(p + "rope.scaling.factor"));
      c.rope.scaling.type = RopeScaling::Type::kLinear;
      c.rope.scaling.factor = static_cast<float>(factor);
    } else if (type != "none") {
      return Unimplemented("{}: {}rope.scaling.type '{}' is not supported (supported: none, linear)", source, p, type);
    }
  }
  if (const auto* freqs = gguf.find_tensor("rope_freqs.weight")) {
    if (freqs->dtype != DType::kF32 || freqs->shape.rank() != 1) {
      return DataLoss("{}: tensor 'rope_freqs.weight' must be a 1-D f32 tensor, got {} {}", source,
                      dtype_name(freqs->dtype), freqs->shape.to_string());
    }
    c.rope.freq_factors.resize(static_cast<size_t>(freqs->shape[0]));
    std::memcpy(c.rope.freq_factors.data(), freqs->data, c.rope.freq_factors.size() * sizeof(float));
  }
  // The vocabulary: the explicit key, else the tokenizer's, else the embedding's rows.
  if (gguf.find(p + "vocab_size") != nullptr) {
    ASSIGN_OR_RETURN(c.vocab_size, get_int(p + "vocab_size"));
  } else if (const auto* embd = gguf.find_tensor("token_embd.weight"); embd != nullptr && embd->shape.rank() == 2) {
    c.vocab_size = embd->shape[0];
  } else {
    return DataLoss("{}: cannot tell the vocabulary size: no '{}vocab_size' key and no 2-D 'token_embd.weight'", source,
                    p);
  }
  c.tie_word_embeddings = gguf.find_tensor("output.weight") == nullptr;
  c.attention_bias = gguf.find_tensor("blk.0.attn_q.bias") != nullptr;
  if (gguf.find("tokenizer.ggml.bos_token_id") != nullptr) {
    ASSIGN_OR_RETURN(int64_t bos, get_int("tokenizer.ggml.bos_token_id"));
    c.bos_token_id = static_cast<int32_t>(bos);
  }
  if (gguf.find("tokenizer.ggml.eos_token_id") != nullptr) {
    ASSIGN_OR_RETURN(int64_t eos, get_int("tokenizer.ggml.eos_token_id"));
    c.eos_token_ids.push_back(static_cast<int32_t>(eos));
  }
  if (const auto* embd = gguf.find_tensor("token_embd.weight")) c.weight_dtype = embd->dtype;
  RETURN_IF_ERROR(c.validate().with_context(source));
  return c;
}

std::string model_config_to_hf_json(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.architecture == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = c.architecture;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  if (c.head_dim != c.hidden_size / c.num_heads) j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope.theta;
  if (c.rope.scaling.type == RopeScaling::Type::kLlama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope.scaling.factor},
                         {"low_freq_factor", c.rope.scaling.low_freq_factor},
                         {"high_freq_factor", c.rope.scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope.scaling.original_max_position}};
  } else if (c.rope.scaling.type == RopeScaling::Type::kLinear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope.scaling.factor}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.architecture == "llama") j["attention_bias"] = c.attention_bias;
  if (c.architecture == "qwen2") j["use_sliding_window"] = false;
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  if (c.eos_token_ids.size() > 1) j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = c.weight_dtype == DType::kBF16  ? "bfloat16"
                     : c.weight_dtype == DType::kF16 ? "float16"
                                                     : "float32";
  return j.dump(2) + "\n";
}

}  // namespace bw
