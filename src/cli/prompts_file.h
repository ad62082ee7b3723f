// `breakwater generate --prompts-file FILE`: every prompt of a file through one engine at
// once (continuous batching), then per-prompt results and the engine's stats.
#pragma once

#include <string>
#include <vector>

#include "common/logging.h"
#include "common/status.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace bw::cli {

// One prompt per line: token ids (integers separated by commas and/or spaces) or text,
// tokenized with BOS and special tokens parsed. Empty lines are skipped. A text line
// without a tokenizer is an error naming the line.
Result<std::vector<std::vector<int32_t>>> read_prompts_file(const std::string& path, const Tokenizer* tokenizer);

// Submits every prompt with `base`'s settings, waits for all of them and prints, per
// prompt, one line (or one JSON object with `json`: index, prompt_ids, generated_ids,
// finish_reason, text when there is a tokenizer), then the stats (`{"stats": {...}}`).
Status run_prompts(Engine& engine, const std::vector<std::vector<int32_t>>& prompts, const GenerationRequest& base,
                   bool json);

}  // namespace bw::cli
