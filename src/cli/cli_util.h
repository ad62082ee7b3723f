// Small helpers shared by the CLI subcommands.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/checkpoint.h"
#include "tensor/dtype.h"
#include "tokenizer/tokenizer.h"

namespace bw::cli {

// "1,2, 3" -> {1, 2, 3}; InvalidArgument naming the bad item otherwise.
Result<std::vector<int32_t>> parse_id_list(const std::string& text);

// --dtype: "auto" (nullopt: the checkpoint's float type), f32, f16 or bf16.
Result<std::optional<DType>> parse_weight_dtype(const std::string& s);

// The model's tokenizer: from the GGUF itself, else from the model folder (tokenizer.json).
Result<std::unique_ptr<Tokenizer>> model_tokenizer(const Checkpoint& checkpoint, const std::string& path);

// Prints "error: <message>" to stderr and returns the exit code for a failed command.
int report_error(const Status& status);

}  // namespace bw::cli
