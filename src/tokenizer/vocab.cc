#include "tokenizer/vocab.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <utility>

namespace bw {
namespace {

constexpr std::string_view kModelKey = "tokenizer.ggml.model";
constexpr std::string_view kPreKey = "tokenizer.ggml.pre";
constexpr std::string_view kTokensKey = "tokenizer.ggml.tokens";
constexpr std::string_view kScoresKey = "tokenizer.ggml.scores";
constexpr std::string_view kTokenTypeKey = "tokenizer.ggml.token_type";
constexpr std::string_view kMergesKey = "tokenizer.ggml.merges";

bool text_is_any(std::string_view text, std::initializer_list<std::string_view> candidates) {
  return std::find(candidates.begin(), candidates.end(), text) != candidates.end();
}

uint32_t attr_from_type(int64_t type) {
  switch (static_cast<TokenType>(type)) {
    case TokenType::kNormal:
      return kAttrNormal;
    case TokenType::kUnknown:
      return kAttrUnknown;
    case TokenType::kControl:
      return kAttrControl;
    case TokenType::kUserDefined:
      return kAttrUserDefined;
    case TokenType::kUnused:
      return kAttrUnused;
    case TokenType::kByte:
      return kAttrByte;
    default:
      return kAttrUndefined;
  }
}

// An optional bool key: absent leaves `value` as it is.
Status read_bool(const GgufFile& g, std::string_view key, bool* value) {
  if (!g.has(key)) return OkStatus();
  ASSIGN_OR_RETURN(*value, g.get_bool(key));
  return OkStatus();
}

}  // namespace

std::string_view vocab_type_name(VocabType type) {
  switch (type) {
    case VocabType::kBpe:
      return "BPE";
    case VocabType::kSpm:
      return "SPM";
    case VocabType::kWpm:
      return "WPM";
  }
  return "unknown";
}

bool Vocab::is_eog(int32_t id) const { return std::binary_search(eog_ids.begin(), eog_ids.end(), id); }

int32_t Vocab::find(std::string_view text) const {
  auto it = index_.find(text);
  return it == index_.end() ? kNoToken : it->second;
}

Status Vocab::build_index() {
  index_.clear();
  index_.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto [it, inserted] = index_.emplace(tokens[i].text, static_cast<int32_t>(i));
    if (!inserted) {
      return DataLoss("duplicate token in the vocabulary: '{}' has ids {} and {}", tokens[i].text, it->second, i);
    }
  }
  return OkStatus();
}

void Vocab::apply_load_rules() {
  if (index_.size() != tokens.size()) (void)build_index();  // duplicates: find() sees the first ones
  // Special ids outside the vocabulary are dropped.
  for (int32_t* id : {&bos_id, &eos_id, &eot_id, &eom_id, &unk_id, &sep_id, &pad_id, &mask_id, &fim_pre_id, &fim_suf_id,
                      &fim_mid_id, &fim_pad_id, &fim_rep_id, &fim_sep_id}) {
    if (*id != kNoToken && !valid_id(*id)) {
      warnings.push_back(fmt::format("special token id {} is outside the vocabulary of {}; ignored", *id, size()));
      *id = kNoToken;
    }
  }
  // Tokens llama.cpp recognises by their text; they become CONTROL. (llama.cpp walks its
  // hash map, so which of several candidates wins is arbitrary there; here the first text
  // of the list that the vocab has, e.g. <|eot_id|> before <|end_of_text|>.)
  auto detect = [&](int32_t* slot, std::initializer_list<std::string_view> texts) {
    if (*slot != kNoToken) return;
    for (std::string_view text : texts) {
      if (const int32_t id = find(text); id != kNoToken) {
        *slot = id;
        tokens[static_cast<size_t>(id)].attr |= kAttrControl;
        return;
      }
    }
  };
  // Adjacent literals split hex escapes from the letters after them, on purpose.
  // NOLINTBEGIN(bugprone-suspicious-missing-comma)
  detect(&eot_id, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
                   "_<EOT>", "[EOT]",
                   "<\xEF\xBD\x9C"
                   "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                   "<end_of_utterance>"});
  detect(&eom_id, {"<|eom_id|>"});
  detect(&fim_pre_id, {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
                       "<\xEF\xBD\x9C"
                       "fim\xE2\x96\x81"
                       "begin\xEF\xBD\x9C>",
                       "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>"});
  detect(&fim_suf_id, {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
                       "<\xEF\xBD\x9C"
                       "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
                       "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>"});
  detect(&fim_mid_id, {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                       "<\xEF\xBD\x9C"
                       "fim\xE2\x96\x81"
                       "end\xEF\xBD\x9C>",
                       "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>"});
  // NOLINTEND(bugprone-suspicious-missing-comma)
  detect(&fim_pad_id, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"});
  detect(&fim_rep_id, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"});
  detect(&fim_sep_id, {"<|file_sep|>"});

  // CONTROL tokens named "...unused..." are unused.
  for (auto& t : tokens) {
    if ((t.attr & kAttrControl) && t.text.find("unused") != std::string::npos) t.attr |= kAttrUnused;
  }

  // End-of-generation tokens.
  std::set<int32_t> eog(eog_ids.begin(), eog_ids.end());
  for (int32_t id : {fim_pad_id, fim_rep_id, fim_sep_id, eos_id, eot_id, eom_id}) {
    if (id != kNoToken) eog.insert(id);
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (text_is_any(tokens[i].text,
                    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
                     "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>"})) {
      eog.insert(static_cast<int32_t>(i));
      tokens[i].attr |= kAttrControl;
    }
  }
  // o200k_harmony: with <|return|> and <|call|> present, <|end|> does not end generation.
  auto eog_text = [&](std::string_view text) {
    return std::any_of(eog.begin(), eog.end(),
                       [&](int32_t id) { return tokens[static_cast<size_t>(id)].text == text; });
  };
  if (eog_text("<|return|>") && eog_text("<|call|>")) {
    for (auto it = eog.begin(); it != eog.end(); ++it) {
      if (tokens[static_cast<size_t>(*it)].text == "<|end|>") {
        tokens[static_cast<size_t>(*it)].attr = kAttrUserDefined;
        eog.erase(it);
        break;
      }
    }
  }
  eog_ids.assign(eog.begin(), eog.end());
}

Result<Vocab> vocab_from_gguf(const GgufFile& g) {
  Vocab v;
  if (!g.has(kModelKey)) return NotFound("{}: {} is missing (not a tokenizer GGUF?)", g.name(), kModelKey);
  ASSIGN_OR_RETURN(v.model, g.get_string(kModelKey));
  if (g.has(kPreKey)) {
    ASSIGN_OR_RETURN(v.pre, g.get_string(kPreKey));
  }
  if (g.has("general.name")) {
    ASSIGN_OR_RETURN(v.name, g.get_string("general.name"));
  }

  // Per-model defaults (llama_vocab::impl::load).
  if (v.model == "llama") {
    v.type = VocabType::kSpm;
    v.bos_id = 1;
    v.eos_id = 2;
    v.unk_id = 0;
    v.add_space_prefix = true;
    v.add_bos = true;
  } else if (v.model == "bert") {
    v.type = VocabType::kWpm;
    v.bos_id = 101;
    v.unk_id = 100;
    v.sep_id = 102;
    v.pad_id = 0;
    v.mask_id = 103;
    v.add_bos = true;
    v.add_sep = true;
    v.clean_spaces = true;
  } else if (v.model == "gpt2") {
    v.type = VocabType::kBpe;
    v.bos_id = 11;
    v.eos_id = 11;
    v.clean_spaces = true;
    PreTokenizerInfo info;  // "default"
    if (v.pre.empty()) {
      v.warnings.push_back("tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer (quality may suffer)");
    } else if (auto known = pre_tokenizer_info(v.pre)) {
      info = *known;
    } else {
      return Unimplemented("{}: {} '{}' is not a pre-tokenizer this build knows", g.name(), kPreKey, v.pre);
    }
    v.pre_type = info.type;
    v.clean_spaces = info.clean_spaces;
    v.ignore_merges = info.ignore_merges;
    v.add_bos = info.add_bos;
    v.add_sep = info.add_sep;
    if (info.no_bos) v.bos_id = kNoToken;
    if (!g.has(kMergesKey)) {
      return NotFound("{}: {} is missing; a gpt2 (byte-level BPE) tokenizer needs its merges", g.name(), kMergesKey);
    }
    ASSIGN_OR_RETURN(auto merges, g.get_string_array(kMergesKey));
    v.merges.assign(merges.begin(), merges.end());
  } else {
    return Unimplemented("{}: {} '{}' is not supported (gpt2, llama and bert are)", g.name(), kModelKey, v.model);
  }
  RETURN_IF_ERROR(read_bool(g, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix));
  RETURN_IF_ERROR(read_bool(g, "tokenizer.ggml.remove_extra_whitespaces", &v.remove_extra_whitespaces));

  // Tokens, scores, types.
  if (!g.has(kTokensKey)) return NotFound("{}: {} is missing", g.name(), kTokensKey);
  ASSIGN_OR_RETURN(auto texts, g.get_string_array(kTokensKey));
  if (texts.empty()) return DataLoss("{}: {} is empty", g.name(), kTokensKey);
  if (texts.size() > static_cast<size_t>(INT32_MAX)) return DataLoss("{}: {} is too long", g.name(), kTokensKey);
  const size_t n = texts.size();
  std::vector<float> scores;
  if (g.has(kScoresKey)) {
    ASSIGN_OR_RETURN(scores, g.get_float_array(kScoresKey));
    if (scores.size() < n) {
      return DataLoss("{}: {} has {} entries for {} tokens", g.name(), kScoresKey, scores.size(), n);
    }
  }
  std::vector<int64_t> types;
  if (g.has(kTokenTypeKey)) {
    ASSIGN_OR_RETURN(types, g.get_int_array(kTokenTypeKey));
    if (types.size() < n) {
      return DataLoss("{}: {} has {} entries for {} tokens", g.name(), kTokenTypeKey, types.size(), n);
    }
  }
  v.tokens.resize(n);
  for (size_t i = 0; i < n; ++i) {
    VocabToken& t = v.tokens[i];
    t.text = texts[i];
    if (t.text.empty()) {
      v.warnings.push_back(fmt::format("empty token at index {}", i));
      t.text = fmt::format("[EMPTY_{}]", i);
    }
    t.score = scores.empty() ? 0.0f : scores[i];
    t.attr = types.empty() ? kAttrNormal : attr_from_type(types[i]);
  }
  if (Status s = v.build_index(); !s.ok()) return s.with_context(g.name());

  // Special ids and flags.
  const std::pair<std::string_view, int32_t*> special_keys[] = {
      {"tokenizer.ggml.bos_token_id", &v.bos_id},         {"tokenizer.ggml.eos_token_id", &v.eos_id},
      {"tokenizer.ggml.eot_token_id", &v.eot_id},         {"tokenizer.ggml.eom_token_id", &v.eom_id},
      {"tokenizer.ggml.unknown_token_id", &v.unk_id},     {"tokenizer.ggml.seperator_token_id", &v.sep_id},
      {"tokenizer.ggml.padding_token_id", &v.pad_id},     {"tokenizer.ggml.mask_token_id", &v.mask_id},
      {"tokenizer.ggml.fim_pre_token_id", &v.fim_pre_id}, {"tokenizer.ggml.fim_suf_token_id", &v.fim_suf_id},
      {"tokenizer.ggml.fim_mid_token_id", &v.fim_mid_id}, {"tokenizer.ggml.fim_pad_token_id", &v.fim_pad_id},
      {"tokenizer.ggml.fim_rep_token_id", &v.fim_rep_id}, {"tokenizer.ggml.fim_sep_token_id", &v.fim_sep_id},
      {"tokenizer.ggml.prefix_token_id", &v.fim_pre_id},  {"tokenizer.ggml.suffix_token_id", &v.fim_suf_id},
      {"tokenizer.ggml.middle_token_id", &v.fim_mid_id},
  };
  for (const auto& [key, id] : special_keys) {
    if (*id != kNoToken && !v.valid_id(*id)) {
      v.warnings.push_back(fmt::format("default {} = {} is outside the vocabulary; disabled", key, *id));
      *id = kNoToken;
    }
    if (!g.has(key)) continue;
    ASSIGN_OR_RETURN(uint64_t value, g.get_uint(key));
    if (value >= n) {
      v.warnings.push_back(fmt::format("{} = {} is outside the vocabulary of {}; using {}", key, value, n, *id));
    } else {
      *id = static_cast<int32_t>(value);
    }
  }
  RETURN_IF_ERROR(read_bool(g, "tokenizer.ggml.add_bos_token", &v.add_bos));
  RETURN_IF_ERROR(read_bool(g, "tokenizer.ggml.add_eos_token", &v.add_eos));
  RETURN_IF_ERROR(read_bool(g, "tokenizer.ggml.add_sep_token", &v.add_sep));
  if (v.add_bos && v.bos_id == kNoToken) {
    return DataLoss("{}: tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set", g.name());
  }
  if (v.add_eos && v.eos_id == kNoToken) {
    return DataLoss("{}: tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set", g.name());
  }
  if (v.add_sep && v.sep_id == kNoToken) {
    return DataLoss("{}: tokenizer.ggml.add_sep_token is true, but tokenizer.ggml.seperator_token_id is not set",
                    g.name());
  }
  if (g.has("tokenizer.chat_template")) {
    ASSIGN_OR_RETURN(v.chat_template, g.get_string("tokenizer.chat_template"));
  }

  v.apply_load_rules();

  // Phi-3: special tokens eat the whitespace after them (llama.cpp sets this by model name).
  std::string lower_name = v.name;
  std::transform(lower_name.begin(), lower_name.end(), lower_name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower_name.find("phi-3") != std::string::npos || lower_name.find("phi3") != std::string::npos) {
    for (auto& t : v.tokens) {
      if (t.attr & (kAttrControl | kAttrUserDefined | kAttrUnknown)) t.attr |= kAttrRstrip;
    }
    if (int32_t id = v.find("</s>"); id != kNoToken) v.tokens[static_cast<size_t>(id)].attr |= kAttrRstrip;
    for (std::string_view text : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (int32_t id = v.find(text); id != kNoToken) v.tokens[static_cast<size_t>(id)].attr &= ~kAttrRstrip;
    }
  }
  return v;
}

}  // namespace bw
