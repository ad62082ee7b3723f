// The tensor naming of llama.cpp's GGUF files for Llama-family decoders, mapped to and
// from Hugging Face names. model/ code names weights the Hugging Face way everywhere;
// only the checkpoint reader and the GGUF writer translate.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace bw {

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; nullopt if unknown.
std::optional<std::string> hf_to_gguf_tensor_name(std::string_view hf_name);

}  // namespace bw
