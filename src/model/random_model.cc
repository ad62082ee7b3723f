#include "model/random_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "backend/rope.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/safetensors_writer.h"
#include "model/gguf_names.h"

namespace bw {

namespace {

// SplitMix64: a tiny, fast, well-mixed generator; one stream per (tensor, chunk) so the
// values do not depend on the number of threads.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Approximately normal(0, 1): the Irwin-Hall sum of four uniforms, rescaled. Exact
// normality does not matter for random weights; speed does (billions of values).
float approx_normal(uint64_t& state) {
  const uint64_t bits = splitmix64(state);
  float sum = 0.0f;
  for (int i = 0; i < 4; ++i)
    sum += static_cast<float>((bits >> (16 * i)) & 0xffff) * (1.0f / 65536.0f);
  return (sum - 2.0f) * 1.7320508f;  // variance of the sum is 4/12
}

enum class Init { kOnes, kNormal };

struct TensorPlan {
  std::string name;
  Shape shape;
  Init init;
  float std = 0.0f;
  bool is_norm = false;
};

std::vector<TensorPlan> plan_tensors(const ModelConfig& c) {
  std::vector<TensorPlan> plan;
  for (const NamedShape& t : dense_decoder_tensor_shapes(c)) {
    TensorPlan p{t.name, t.shape, Init::kNormal, 0.0f, false};
    if (t.name.ends_with("norm.weight")) {
      p.init = Init::kOnes;
      p.is_norm = true;
    } else if (t.name.ends_with(".bias")) {
      p.std = 0.1f;
    } else if (t.name == "model.embed_tokens.weight") {
      p.std = 0.5f;
    } else {
      p.std = 1.0f / std::sqrt(static_cast<float>(t.shape[t.shape.rank() - 1]));
    }
    plan.push_back(p);
  }
  return plan;
}

void fill_tensor(const TensorPlan& p, uint64_t seed, uint64_t index, std::vector<float>& out, ThreadPool& pool) {
  out.resize(static_cast<size_t>(p.shape.numel()));
  if (p.init == Init::kOnes) {
    std::fill(out.begin(), out.end(), 1.0f);
    return;
  }
  constexpr int64_t kChunk = 1 << 16;
  const int64_t n = static_cast<int64_t>(out.size());
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  pool.parallel_for(num_chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint64_t state = seed * 0x100000001b3ull ^ (index << 40) ^ static_cast<uint64_t>(c);
      splitmix64(state);
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i)
        out[i] = approx_normal(state) * p.std;
    }
  });
}

std::vector<uint8_t> encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(*dtype_bytes(dtype, values.size()));
  const int64_t n = static_cast<int64_t>(values.size());
  switch (dtype) {
    case DType::kF16:
      convert_f32_to_f16(values.data(), reinterpret_cast<uint16_t*>(bytes.data()), n);
      break;
    case DType::kBF16:
      convert_f32_to_bf16(values.data(), reinterpret_cast<uint16_t*>(bytes.data()), n);
      break;
    default:
      std::memcpy(bytes.data(), values.data(), bytes.size());
      break;
  }
  return bytes;
}

// llama.cpp stores llama Q/K rows with each head's two halves interleaved (adjacent-pair
// rope): Hugging Face row h * (D/2) + i goes to row 2i + h.
std::vector<float> permute_for_gguf(const std::vector<float>& hf, int64_t heads, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(hf.size()) / rows;
  const int64_t head_dim = rows / heads, half = head_dim / 2;
  std::vector<float> out(hf.size());
  for (int64_t head = 0; head < heads; ++head) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t h = 0; h < 2; ++h) {
        std::memcpy(&out[static_cast<size_t>((head * head_dim + 2 * i + h) * cols)],
                    &hf[static_cast<size_t>((head * head_dim + h * half + i) * cols)],
                    static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
  return out;
}

uint32_t gguf_file_type(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return 1;  // LLAMA_FTYPE_MOSTLY_F16
    case DType::kBF16:
      return 32;  // LLAMA_FTYPE_MOSTLY_BF16
    default:
      return 0;  // LLAMA_FTYPE_ALL_F32
  }
}

// A per-token array of a GGUF tokenizer padded to `vocab` entries, as llama.cpp's
// converter pads a vocabulary with more rows than tokens (Qwen2-7B: 152,064 rows): tokens
// (strings) "[PAD<id>]", token types (int32) UNUSED (llama.cpp's 5), scores (float) 0.
Result<GgufValue> padded_token_array(const std::string& key, const GgufArray& items, size_t vocab) {
  if (const auto* strings = items.get<std::string>()) {
    std::vector<std::string> out = *strings;
    for (size_t id = out.size(); id < vocab; ++id)
      out.push_back(fmt::format("[PAD{}]", id));
    return GgufValue(std::move(out));
  }
  if (const auto* types = items.get<int32_t>()) {
    std::vector<int32_t> out = *types;
    out.resize(vocab, 5);
    return GgufValue(std::move(out));
  }
  if (const auto* scores = items.get<float>()) {
    std::vector<float> out = *scores;
    out.resize(vocab, 0.0f);
    return GgufValue(std::move(out));
  }
  return InvalidArgument("{}: cannot pad a {} to {} tokens", key, GgufValue(items).describe(), vocab);
}

// Copies the tokenizer.* keys of the GGUF file `path` into `writer`, padding the per-token
// arrays when the model's vocabulary has more rows than the tokenizer has tokens.
Status copy_tokenizer(const std::string& path, int64_t vocab_size, GgufWriter* writer) {
  ASSIGN_OR_RETURN(GgufFile tok, GgufFile::open(path));
  const GgufValue* tokens = tok.find("tokenizer.ggml.tokens");
  const size_t n = tokens != nullptr && tokens->as_array() != nullptr ? tokens->as_array()->size() : 0;
  const auto vocab = static_cast<size_t>(vocab_size);
  if (n > vocab) {
    return InvalidArgument("{}: the tokenizer has {} tokens but the model's vocabulary is only {}", path, n,
                           vocab_size);
  }
  static constexpr std::string_view kPerToken[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                                   "tokenizer.ggml.scores"};
  bool any = false;
  for (const GgufKeyValue& kv : tok.metadata()) {
    if (!kv.key.starts_with("tokenizer.")) continue;
    any = true;
    const GgufArray* items = kv.value.as_array();
    const bool per_token = std::find(std::begin(kPerToken), std::end(kPerToken), kv.key) != std::end(kPerToken);
    if (per_token && items != nullptr && items->size() == n && n < vocab) {
      ASSIGN_OR_RETURN(GgufValue padded, padded_token_array(kv.key, *items, vocab));
      writer->set(kv.key, std::move(padded));
    } else {
      writer->set(kv.key, kv.value);
    }
  }
  if (!any) return InvalidArgument("{}: has no tokenizer.* keys to copy", path);
  return OkStatus();
}

Status write_gguf(const ModelConfig& c, const RandomModelOptions& o, const std::vector<TensorPlan>& plan,
                  ThreadPool& pool) {
  GgufWriter writer;
  const std::string a = c.architecture;
  writer.set("general.architecture", a);
  writer.set("general.name", std::string("breakwater random ") + a);
  writer.set("general.file_type", gguf_file_type(o.dtype));
  writer.set(a + ".vocab_size", static_cast<uint32_t>(c.vocab_size));
  writer.set(a + ".context_length", static_cast<uint32_t>(c.max_position_embeddings));
  writer.set(a + ".embedding_length", static_cast<uint32_t>(c.hidden_size));
  writer.set(a + ".feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  writer.set(a + ".block_count", static_cast<uint32_t>(c.num_layers));
  writer.set(a + ".attention.head_count", static_cast<uint32_t>(c.num_heads));
  writer.set(a + ".attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  writer.set(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
  writer.set(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
  writer.set(a + ".rope.dimension_count", static_cast<uint32_t>(c.rope.rotary_dim));
  writer.set(a + ".rope.freq_base", c.rope.theta);
  writer.set(a + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  if (c.rope.scaling.type == RopeScaling::Type::kLinear) {
    writer.set(a + ".rope.scaling.type", "linear");
    writer.set(a + ".rope.scaling.factor", c.rope.scaling.factor);
  }
  if (!o.tokenizer_from.empty()) RETURN_IF_ERROR(copy_tokenizer(o.tokenizer_from, c.vocab_size, &writer));

  // Tensor data must outlive write(): keep each encoded tensor.
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(plan.size() + 1);
  std::vector<float> values;
  for (size_t i = 0; i < plan.size(); ++i) {
    const TensorPlan& p = plan[i];
    fill_tensor(p, o.seed, i, values, pool);
    if (c.architecture == "llama") {
      const bool is_q = p.name.ends_with("q_proj.weight") || p.name.ends_with("q_proj.bias");
      const bool is_k = p.name.ends_with("k_proj.weight") || p.name.ends_with("k_proj.bias");
      if (is_q) values = permute_for_gguf(values, c.num_heads, p.shape[0]);
      if (is_k) values = permute_for_gguf(values, c.num_kv_heads, p.shape[0]);
    }
    // llama.cpp keeps norms and biases in f32.
    const DType dtype = (p.is_norm || p.shape.rank() == 1) ? DType::kF32 : o.dtype;
    storage.push_back(encode(values, dtype));
    auto name = hf_to_gguf_tensor_name(p.name);
    if (!name) return Internal("no GGUF name for tensor '{}'", p.name);
    RETURN_IF_ERROR(writer.add_tensor(*name, dtype, p.shape, storage.back()));
  }
  if (c.rope.scaling.type == RopeScaling::Type::kLlama3) {
    // llama.cpp carries Llama-3 scaling as per-frequency divisors.
    RopeParams plain = c.rope;
    plain.scaling = RopeScaling{};
    const std::vector<float> base = rope_inv_freq(plain);
    const std::vector<float> scaled = rope_inv_freq(c.rope);
    std::vector<float> factors(base.size());
    for (size_t i = 0; i < base.size(); ++i)
      factors[i] = base[i] / scaled[i];
    storage.push_back(encode(factors, DType::kF32));
    RETURN_IF_ERROR(
        writer.add_tensor("rope_freqs.weight", DType::kF32, {static_cast<int64_t>(factors.size())}, storage.back()));
  }
  return writer.write(o.out_path);
}

Status write_safetensors_folder(const ModelConfig& c, const RandomModelOptions& o, const std::vector<TensorPlan>& plan,
                                ThreadPool& pool) {
  std::error_code ec;
  std::filesystem::create_directories(o.out_path, ec);
  if (ec) return Unavailable("{}: cannot create folder: {}", o.out_path, ec.message());
  ModelConfig written = c;
  written.weight_dtype = o.dtype;
  RETURN_IF_ERROR(write_string_to_file((std::filesystem::path(o.out_path) / "config.json").string(),
                                       model_config_to_hf_json(written)));
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(plan.size());
  std::vector<TensorToWrite> tensors;
  std::vector<float> values;
  for (size_t i = 0; i < plan.size(); ++i) {
    fill_tensor(plan[i], o.seed, i, values, pool);
    storage.push_back(encode(values, o.dtype));
    tensors.push_back({plan[i].name, o.dtype, plan[i].shape, storage.back()});
  }
  return write_safetensors_sharded(o.out_path, tensors, o.max_shard_bytes, {{"format", "pt"}});
}

}  // namespace

std::vector<NamedShape> dense_decoder_tensor_shapes(const ModelConfig& c) {
  const int64_t H = c.hidden_size, F = c.intermediate_size, q = c.num_heads * c.head_dim,
                kv = c.num_kv_heads * c.head_dim;
  std::vector<NamedShape> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, H}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {H}});
    t.push_back({p + "self_attn.q_proj.weight", {q, H}});
    t.push_back({p + "self_attn.k_proj.weight", {kv, H}});
    t.push_back({p + "self_attn.v_proj.weight", {kv, H}});
    if (c.attention_bias) {
      t.push_back({p + "self_attn.q_proj.bias", {q}});
      t.push_back({p + "self_attn.k_proj.bias", {kv}});
      t.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    t.push_back({p + "self_attn.o_proj.weight", {H, q}});
    t.push_back({p + "post_attention_layernorm.weight", {H}});
    t.push_back({p + "mlp.gate_proj.weight", {F, H}});
    t.push_back({p + "mlp.up_proj.weight", {F, H}});
    t.push_back({p + "mlp.down_proj.weight", {H, F}});
  }
  t.push_back({"model.norm.weight", {H}});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, H}});
  return t;
}

Result<uint64_t> write_random_model(const ModelConfig& config, const RandomModelOptions& options, ThreadPool& pool) {
  RETURN_IF_ERROR(config.validate());
  if (!is_float(options.dtype)) {
    return InvalidArgument("make-model: --dtype must be f32, f16 or bf16, got {}", dtype_name(options.dtype));
  }
  if (options.out_path.empty()) return InvalidArgument("make-model: --out is required");
  if (options.format == RandomModelOptions::Format::kSafetensors && !options.tokenizer_from.empty()) {
    return InvalidArgument("make-model: --tokenizer-from applies to --format gguf only");
  }
  const std::vector<TensorPlan> plan = plan_tensors(config);
  uint64_t params = 0;
  for (const auto& p : plan)
    params += static_cast<uint64_t>(p.shape.numel());
  if (options.format == RandomModelOptions::Format::kGguf) {
    RETURN_IF_ERROR(write_gguf(config, options, plan, pool));
  } else {
    RETURN_IF_ERROR(write_safetensors_folder(config, options, plan, pool));
  }
  return params;
}

}  // namespace bw
