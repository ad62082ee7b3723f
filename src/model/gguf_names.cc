#include "model/gguf_names.h"

#include <array>
#include <charconv>
#include <utility>

namespace bw {

namespace {

constexpr std::array<std::pair<std::string_view, std::string_view>, 3> kGlobal = {{
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
}};

// Suffixes after "model.layers.N." and their GGUF names after "blk.N.".
constexpr std::array<std::pair<std::string_view, std::string_view>, 15> kPerLayer = {{
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"self_attn.rotary_emb.inv_freq", "rope_freqs.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
}};

}  // namespace

std::optional<std::string> hf_to_gguf_tensor_name(std::string_view hf_name) {
  for (const auto& [hf, gguf] : kGlobal) {
    if (hf_name == hf) return std::string(gguf);
  }
  constexpr std::string_view kPrefix = "model.layers.";
  if (!hf_name.starts_with(kPrefix)) return std::nullopt;
  std::string_view rest = hf_name.substr(kPrefix.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  int layer = 0;
  auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + dot, layer);
  if (ec != std::errc() || ptr != rest.data() + dot) return std::nullopt;
  const std::string_view suffix = rest.substr(dot + 1);
  for (const auto& [hf, gguf] : kPerLayer) {
    if (suffix == hf) return "blk." + std::to_string(layer) + "." + std::string(gguf);
  }
  return std::nullopt;
}

}  // namespace bw
