#include "tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/text_util.h"
#include "tokenizer/unicode.h"

namespace bw {
namespace {

using json = nlohmann::json;

constexpr std::string_view kTokenizerFile = "tokenizer.json";
constexpr std::string_view kConfigFile = "tokenizer_config.json";
constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581, SentencePiece's space
// Token ids (and pad_to_size) must stay below this: the largest real vocabularies have
// ~256k tokens, and a corrupt id must not allocate gigabytes of [PAD] tokens.
constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
constexpr int kMaxNesting = 8;  // Sequence inside Sequence

// --- JSON access (never throws) -------------------------------------------------------

Status parse_json(std::string_view text, std::string_view file, json* out) {
  try {
    *out = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return DataLoss("{}: not valid JSON: {}", file, e.what());
  }
  return OkStatus();
}

// A value for an error message: short, never the whole of a big object.
std::string describe(const json& j) {
  switch (j.type()) {
    case json::value_t::string: {
      const auto& s = j.get_ref<const std::string&>();
      return fmt::format("the string '{}'", s.size() > 48 ? s.substr(0, 48) + "..." : s);
    }
    case json::value_t::boolean:
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return j.dump();
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    default:
      return j.type_name();
  }
}

// The member `key` of an object; nullptr when `obj` is no object, or the key is absent or null.
const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

Status wrong_type(std::string_view file, std::string_view path, std::string_view expected, const json& got) {
  return DataLoss("{}: {} must be {}, not {}", file, path, expected, describe(got));
}

// An optional string member: nullptr when absent.
Status read_string(const json& obj, const char* key, std::string_view file, std::string_view path,
                   const std::string** out) {
  *out = nullptr;
  const json* v = member(obj, key);
  if (v == nullptr) return OkStatus();
  if (!v->is_string()) return wrong_type(file, path, "a string", *v);
  *out = &v->get_ref<const std::string&>();
  return OkStatus();
}

// An optional bool member: `out` unchanged when absent.
Status read_bool(const json& obj, const char* key, std::string_view file, std::string_view path,
                 std::optional<bool>* out) {
  const json* v = member(obj, key);
  if (v == nullptr) return OkStatus();
  if (!v->is_boolean()) return wrong_type(file, path, "true or false", *v);
  *out = v->get<bool>();
  return OkStatus();
}

// A token id: an integer in [0, kMaxVocabSize); nullopt otherwise.
std::optional<int64_t> token_id(const json& v) {
  if (!v.is_number_integer()) return std::nullopt;
  const auto id = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), kMaxVocabSize))
                                         : v.get<int64_t>();
  if (id < 0 || id >= kMaxVocabSize) return std::nullopt;
  return id;
}

Status bad_id(const json& v, std::string_view file, std::string_view path) {
  if (!v.is_number_integer()) return wrong_type(file, path, "a token id (an integer)", v);
  return DataLoss("{}: {} = {} is not a token id (0 to {})", file, path, v.dump(), kMaxVocabSize - 1);
}

// --- Pre-tokenizer ------------------------------------------------------------------------

// HF writes the contractions case-insensitively; llama.cpp (and our regexes) spell out the cases.
constexpr std::string_view kHfContractions = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
constexpr std::string_view kExpandedContractions = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
// Stages of a chain that are not regexes.
constexpr std::string_view kByteLevelStage = "<ByteLevel>";
constexpr std::string_view kPunctuationStage = "<Punctuation Contiguous>";

void append_canonical(std::string* out, uint32_t cp) {
  switch (cp) {
    case '\r':
      *out += "\\r";
      return;
    case '\n':
      *out += "\\n";
      return;
    case '\t':
      *out += "\\t";
      return;
    default:
      break;
  }
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else {
    *out += fmt::format("\\x{{{:X}}}", cp);
  }
}

// One spelling of a regex for comparison: non-ASCII characters, raw or as \x{..}, become
// \x{HEX}; \x{..} escapes of ASCII letters and digits become the character; raw CR, LF
// and TAB become \r \n \t; HF's (?i:'s|...) is expanded as llama.cpp expands it. Other
// escapes stay as written (\x{2D} and '-' differ inside a class).
std::string canonical_regex(std::string_view regex) {
  const std::string r = replace_all(regex, kHfContractions, kExpandedContractions);
  std::string out;
  out.reserve(r.size());
  for (size_t i = 0; i < r.size();) {
    if (r[i] == '\\' && i + 1 < r.size()) {
      if (r[i + 1] == 'x' && i + 2 < r.size() && r[i + 2] == '{') {
        const size_t close = r.find('}', i + 3);
        bool ok = close != std::string::npos && close > i + 3 && close - (i + 3) <= 6;
        uint32_t cp = 0;
        for (size_t k = i + 3; ok && k < close; ++k) {
          const int h = hex_value(r[k]);
          ok = h >= 0;
          cp = cp * 16 + static_cast<uint32_t>(h);
        }
        if (ok) {
          if (cp < 0x80 && std::isalnum(static_cast<int>(cp)) != 0) {
            out.push_back(static_cast<char>(cp));
          } else if (cp >= 0x80 || cp == '\r' || cp == '\n' || cp == '\t') {
            append_canonical(&out, cp);
          } else {
            out += fmt::format("\\x{{{:X}}}", cp);
          }
          i = close + 1;
          continue;
        }
      }
      // Any other escape: the backslash and the escaped character as written.
      size_t len = 1;
      (void)unicode::decode(r.data() + i + 1, r.size() - i - 1, &len);
      out.append(r, i, 1 + len);
      i += 1 + len;
      continue;
    }
    size_t len = 1;
    const uint32_t cp = unicode::decode(r.data() + i, r.size() - i, &len);
    append_canonical(&out, cp);
    i += len;
  }
  return out;
}

std::vector<std::string> canonical_stages(const std::vector<std::string>& regexes) {
  std::vector<std::string> stages;
  stages.reserve(regexes.size() + 1);
  for (const std::string& r : regexes)
    stages.push_back(canonical_regex(r));
  stages.emplace_back(kByteLevelStage);
  return stages;
}

struct KnownPreTokenizer {
  std::string_view name;  // the llama.cpp pre name whose PreTokenizerInfo applies
  std::vector<std::string> stages;
};

// The chains vocab_from_hf recognises, in canonical form, ending with ByteLevel.
const std::vector<KnownPreTokenizer>& known_pre_tokenizers() {
  static const std::vector<KnownPreTokenizer> known = [] {
    using T = PreTokenizerType;
    std::vector<KnownPreTokenizer> k;
    // llama.cpp's own regexes, as Split(Regex, Isolated) stages before a
    // ByteLevel(use_regex=false), or with ByteLevel(use_regex=true) for GPT-2's regex.
    // One name per type: where several llama.cpp names share a type (gpt-2 / mpt / olmo,
    // llama-bpe / dbrx, starcoder / refact / smollm), the flags of the first are used.
    const std::pair<T, std::string_view> types[] = {
        {T::kGpt2, "gpt-2"},
        {T::kLlama3, "llama-bpe"},
        {T::kQwen2, "qwen2"},
        {T::kDeepseekLlm, "deepseek-llm"},
        {T::kDeepseekCoder, "deepseek-coder"},
        {T::kDeepseek3, "deepseek-v3"},
        {T::kFalcon, "falcon"},
        {T::kStarcoder, "starcoder"},
        {T::kBloom, "bloom"},
        {T::kViking, "viking"},
        {T::kTekken, "tekken"},
        {T::kChameleon, "chameleon"},
        {T::kGpt4o, "gpt-4o"},
    };
    for (const auto& [type, name] : types)
      k.push_back({name, canonical_stages(pre_tokenizer_regexes(type))});

    // Chains of real tokenizer.json files that llama.cpp maps (by the hash of their
    // tokens) to a pre-tokenizer whose regexes are spelled differently.
    // DeepSeek LLM / V2 / Coder-V2 / Coder-1.5: Digits(individual_digits) where llama.cpp
    // has \p{N}+ (the vocab has no token of two digits, so the two split alike).
    std::vector<std::string> deepseek_llm = pre_tokenizer_regexes(T::kDeepseekLlm);
    deepseek_llm.back() = R"(\p{N})";
    k.push_back({"deepseek-llm", canonical_stages(deepseek_llm)});
    // Falcon: Punctuation(Contiguous) > ByteLevel(use_regex) > Digits > Split([0-9][0-9][0-9]).
    k.push_back({"falcon",
                 {std::string(kPunctuationStage), canonical_regex(pre_tokenizer_regexes(T::kGpt2)[0]),
                  std::string(kByteLevelStage), canonical_regex(R"(\p{N}+)"), canonical_regex("[0-9][0-9][0-9]")}});
    return k;
  }();
  return known;
}

// A pre_tokenizer section read into canonical stages.
struct PreTokenizerChain {
  std::vector<std::string> stages;  // canonical, for matching
  std::vector<std::string> shown;   // as written, for messages
  bool has_byte_level = false;
  bool add_prefix_space = false;  // some ByteLevel has add_prefix_space
};

Status read_pre_tokenizer(const json& pre, std::string_view path, int depth, PreTokenizerChain* chain) {
  if (!pre.is_object()) return wrong_type(kTokenizerFile, path, "an object", pre);
  const std::string* type = nullptr;
  RETURN_IF_ERROR(read_string(pre, "type", kTokenizerFile, fmt::format("{}.type", path), &type));
  if (type == nullptr) return DataLoss("{}: {}.type is missing", kTokenizerFile, path);

  if (*type == "Sequence") {
    if (depth >= kMaxNesting) return DataLoss("{}: {}: Sequences nested too deep", kTokenizerFile, path);
    const json* list = member(pre, "pretokenizers");
    const std::string list_path = fmt::format("{}.pretokenizers", path);
    if (list == nullptr) return DataLoss("{}: {} is missing", kTokenizerFile, list_path);
    if (!list->is_array()) return wrong_type(kTokenizerFile, list_path, "an array", *list);
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(read_pre_tokenizer((*list)[i], fmt::format("{}[{}]", list_path, i), depth + 1, chain));
    }
    return OkStatus();
  }

  if (*type == "Split") {
    const json* pattern = member(pre, "pattern");
    const std::string pattern_path = fmt::format("{}.pattern", path);
    if (pattern == nullptr) return DataLoss("{}: {} is missing", kTokenizerFile, pattern_path);
    const std::string* regex = nullptr;
    const std::string* literal = nullptr;
    RETURN_IF_ERROR(read_string(*pattern, "Regex", kTokenizerFile, pattern_path + ".Regex", &regex));
    RETURN_IF_ERROR(read_string(*pattern, "String", kTokenizerFile, pattern_path + ".String", &literal));
    if (regex == nullptr && literal == nullptr) {
      return wrong_type(kTokenizerFile, pattern_path, "{\"Regex\": ...} or {\"String\": ...}", *pattern);
    }
    const std::string* behavior = nullptr;
    RETURN_IF_ERROR(read_string(pre, "behavior", kTokenizerFile, fmt::format("{}.behavior", path), &behavior));
    if (behavior == nullptr) return DataLoss("{}: {}.behavior is missing", kTokenizerFile, path);
    std::optional<bool> invert;
    RETURN_IF_ERROR(read_bool(pre, "invert", kTokenizerFile, fmt::format("{}.invert", path), &invert));
    const bool inverted = invert.value_or(false);
    const std::string options = *behavior + (inverted ? ", invert" : "");
    if (literal != nullptr) {
      chain->stages.push_back(fmt::format("<Split String {}: {}>", options, *literal));
      chain->shown.push_back(fmt::format("Split(String '{}', {})", *literal, options));
      return OkStatus();
    }
    std::string canonical = canonical_regex(*regex);
    bool isolated = *behavior == "Isolated" && !inverted;
    if (*behavior == "Removed" && inverted) {
      // Keeps the matches and drops the text between them: the same as Isolated for a
      // regex that matches every character (Llama 3's and Qwen2's, as Granite and Phi-4 write them).
      for (PreTokenizerType t : {PreTokenizerType::kLlama3, PreTokenizerType::kQwen2}) {
        isolated = isolated || canonical == canonical_regex(pre_tokenizer_regexes(t)[0]);
      }
    }
    chain->stages.push_back(isolated ? std::move(canonical) : fmt::format("<Split {}: {}>", options, canonical));
    chain->shown.push_back(fmt::format("Split(Regex '{}', {})", *regex, options));
    return OkStatus();
  }

  if (*type == "Digits") {
    std::optional<bool> individual;
    RETURN_IF_ERROR(
        read_bool(pre, "individual_digits", kTokenizerFile, fmt::format("{}.individual_digits", path), &individual));
    chain->stages.push_back(canonical_regex(individual.value_or(false) ? R"(\p{N})" : R"(\p{N}+)"));
    chain->shown.push_back(fmt::format("Digits(individual_digits={})", individual.value_or(false)));
    return OkStatus();
  }

  if (*type == "ByteLevel") {
    std::optional<bool> use_regex;
    std::optional<bool> add_prefix_space;
    RETURN_IF_ERROR(read_bool(pre, "use_regex", kTokenizerFile, fmt::format("{}.use_regex", path), &use_regex));
    RETURN_IF_ERROR(read_bool(pre, "add_prefix_space", kTokenizerFile, fmt::format("{}.add_prefix_space", path),
                              &add_prefix_space));
    if (use_regex.value_or(true)) {
      chain->stages.push_back(canonical_regex(pre_tokenizer_regexes(PreTokenizerType::kGpt2)[0]));
    }
    chain->stages.emplace_back(kByteLevelStage);
    chain->shown.push_back(fmt::format("ByteLevel(use_regex={})", use_regex.value_or(true)));
    chain->has_byte_level = true;
    chain->add_prefix_space = chain->add_prefix_space || add_prefix_space.value_or(false);
    return OkStatus();
  }

  if (*type == "Punctuation") {
    const std::string* behavior = nullptr;
    RETURN_IF_ERROR(read_string(pre, "behavior", kTokenizerFile, fmt::format("{}.behavior", path), &behavior));
    const std::string b = behavior == nullptr ? "Isolated" : *behavior;
    chain->stages.push_back(b == "Contiguous" ? std::string(kPunctuationStage) : "<Punctuation " + b + ">");
    chain->shown.push_back(fmt::format("Punctuation({})", b));
    return OkStatus();
  }

  // Whitespace, WhitespaceSplit, Metaspace, BertPreTokenizer, UnicodeScripts, ...
  chain->stages.push_back("<" + *type + ">");
  chain->shown.push_back(*type);
  return OkStatus();
}

std::string join(const std::vector<std::string>& parts, std::string_view separator) {
  if (parts.empty()) return "none";
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += separator;
    out += parts[i];
  }
  return out;
}

// The llama.cpp pre name of a byte-level chain, or Unimplemented naming it.
Result<std::string_view> match_pre_tokenizer(const PreTokenizerChain& chain) {
  for (const KnownPreTokenizer& k : known_pre_tokenizers()) {
    if (k.stages == chain.stages) return k.name;
  }
  return Unimplemented(
      "{}: pre_tokenizer [{}] is not a pre-tokenizer this build knows (it recognises those of GPT-2, Llama 3, "
      "Qwen2, DeepSeek LLM/Coder/V3, Falcon and StarCoder, and llama.cpp's own regexes); use a GGUF of the model "
      "converted by llama.cpp",
      kTokenizerFile, join(chain.shown, " > "));
}

// --- SentencePiece-style BPE ---------------------------------------------------------------

// Whether the normalizer and pre-tokenizer write spaces as U+2581 the way SentencePiece
// does (Llama 2: Prepend + Replace normalizers; Mistral: a Metaspace pre-tokenizer), and
// whether they put one before the text. Unimplemented for anything else.
Status read_sentencepiece_spaces(const json& root, bool* add_space_prefix) {
  bool prepend = false;
  bool replace = false;
  // The normalizer: Prepend("▁"), Replace(" " -> "▁"), possibly in a Sequence.
  std::vector<std::pair<const json*, std::string>> normalizers;
  if (const json* n = member(root, "normalizer")) normalizers.emplace_back(n, "normalizer");
  for (size_t i = 0; i < normalizers.size(); ++i) {
    const json& n = *normalizers[i].first;
    const std::string path = normalizers[i].second;
    if (!n.is_object()) return wrong_type(kTokenizerFile, path, "an object", n);
    const std::string* type = nullptr;
    RETURN_IF_ERROR(read_string(n, "type", kTokenizerFile, path + ".type", &type));
    if (type == nullptr) return DataLoss("{}: {}.type is missing", kTokenizerFile, path);
    if (*type == "Sequence") {
      const json* list = member(n, "normalizers");
      if (list == nullptr || !list->is_array()) {
        return DataLoss("{}: {}.normalizers must be an array", kTokenizerFile, path);
      }
      if (normalizers.size() + list->size() > 64) return DataLoss("{}: {}: too many normalizers", kTokenizerFile, path);
      for (size_t k = 0; k < list->size(); ++k)
        normalizers.emplace_back(&(*list)[k], fmt::format("{}.normalizers[{}]", path, k));
      continue;
    }
    const std::string* text = nullptr;
    if (*type == "Prepend") {
      RETURN_IF_ERROR(read_string(n, "prepend", kTokenizerFile, path + ".prepend", &text));
      if (text != nullptr && *text == kSpaceMarker) {
        prepend = true;
        continue;
      }
    } else if (*type == "Replace") {
      const json* pattern = member(n, "pattern");
      const std::string* from = nullptr;
      if (pattern != nullptr)
        RETURN_IF_ERROR(read_string(*pattern, "String", kTokenizerFile, path + ".pattern", &from));
      RETURN_IF_ERROR(read_string(n, "content", kTokenizerFile, path + ".content", &text));
      if (from != nullptr && *from == " " && text != nullptr && *text == kSpaceMarker) {
        replace = true;
        continue;
      }
    }
    return Unimplemented(
        "{}: {} {} is not supported with a SentencePiece-style BPE model (byte_fallback); only Prepend('▁') and "
        "Replace(' ' -> '▁') are",
        kTokenizerFile, path, *type);
  }
  bool metaspace = false;
  bool metaspace_prefix = false;
  if (const json* pre = member(root, "pre_tokenizer")) {
    const std::string* type = nullptr;
    if (!pre->is_object()) return wrong_type(kTokenizerFile, "pre_tokenizer", "an object", *pre);
    RETURN_IF_ERROR(read_string(*pre, "type", kTokenizerFile, "pre_tokenizer.type", &type));
    if (type == nullptr) return DataLoss("{}: pre_tokenizer.type is missing", kTokenizerFile);
    if (*type != "Metaspace") {
      return Unimplemented(
          "{}: pre_tokenizer {} is not supported with a SentencePiece-style BPE model (byte_fallback); only none or "
          "Metaspace is",
          kTokenizerFile, *type);
    }
    const std::string* replacement = nullptr;
    RETURN_IF_ERROR(read_string(*pre, "replacement", kTokenizerFile, "pre_tokenizer.replacement", &replacement));
    if (replacement != nullptr && *replacement != kSpaceMarker) {
      return Unimplemented("{}: pre_tokenizer.replacement '{}' is not supported (only '▁' is)", kTokenizerFile,
                           *replacement);
    }
    const std::string* scheme = nullptr;
    RETURN_IF_ERROR(read_string(*pre, "prepend_scheme", kTokenizerFile, "pre_tokenizer.prepend_scheme", &scheme));
    std::optional<bool> add_prefix_space;
    RETURN_IF_ERROR(
        read_bool(*pre, "add_prefix_space", kTokenizerFile, "pre_tokenizer.add_prefix_space", &add_prefix_space));
    if (scheme != nullptr) {
      if (*scheme != "always" && *scheme != "first" && *scheme != "never") {
        return DataLoss("{}: pre_tokenizer.prepend_scheme must be 'always', 'first' or 'never', not '{}'",
                        kTokenizerFile, *scheme);
      }
      // "first" prefixes only the text before the first special token; llama.cpp's
      // add_space_prefix also prefixes the text after each one (with parse_special).
      metaspace_prefix = *scheme != "never";
    } else {
      metaspace_prefix = add_prefix_space.value_or(true);
    }
    metaspace = true;
  }
  if (!replace && !metaspace) {
    return Unimplemented(
        "{}: a BPE model with byte_fallback but without SentencePiece spaces (a Replace(' ' -> '▁') normalizer or a "
        "Metaspace pre-tokenizer) is not supported",
        kTokenizerFile);
  }
  *add_space_prefix = prepend || metaspace_prefix;
  return OkStatus();
}

bool is_byte_token(std::string_view text) {
  return text.size() == 6 && text.substr(0, 3) == "<0x" && text[5] == '>' && hex_value(text[3]) >= 0 &&
         hex_value(text[4]) >= 0;
}

// --- Tokens ---------------------------------------------------------------------------------

// convert_hf_to_gguf's does_token_look_special: added tokens that some models forget to
// mark special (deepseek-coder, command-r, gemma).
bool looks_special(std::string_view text) {
  if (text == "<pad>" || text == "<mask>" || text == "<2mass>" || text == "[@BOS@]") return true;
  if (text.starts_with("<|") && text.ends_with("|>")) return true;
  if (text.starts_with("<\xEF\xBD\x9C") && text.ends_with("\xEF\xBD\x9C>")) return true;  // <｜ ... ｜>
  return text.starts_with("<unused") && text.ends_with(">");
}

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
};

Status read_added_tokens(const json& root, std::vector<AddedToken>* out) {
  const json* list = member(root, "added_tokens");
  if (list == nullptr) return OkStatus();
  if (!list->is_array()) return wrong_type(kTokenizerFile, "added_tokens", "an array", *list);
  out->reserve(list->size());
  for (size_t i = 0; i < list->size(); ++i) {
    const json& item = (*list)[i];
    const std::string path = fmt::format("added_tokens[{}]", i);
    if (!item.is_object()) return wrong_type(kTokenizerFile, path, "an object", item);
    AddedToken t;
    const json* id = member(item, "id");
    if (id == nullptr) return DataLoss("{}: {}.id is missing", kTokenizerFile, path);
    const std::optional<int64_t> id_value = token_id(*id);
    if (!id_value) return bad_id(*id, kTokenizerFile, path + ".id");
    t.id = *id_value;
    const std::string* content = nullptr;
    RETURN_IF_ERROR(read_string(item, "content", kTokenizerFile, path + ".content", &content));
    if (content == nullptr || content->empty()) {
      return DataLoss("{}: {}.content is missing or empty", kTokenizerFile, path);
    }
    t.content = *content;
    std::optional<bool> special;
    std::optional<bool> lstrip;
    std::optional<bool> rstrip;
    RETURN_IF_ERROR(read_bool(item, "special", kTokenizerFile, path + ".special", &special));
    RETURN_IF_ERROR(read_bool(item, "lstrip", kTokenizerFile, path + ".lstrip", &lstrip));
    RETURN_IF_ERROR(read_bool(item, "rstrip", kTokenizerFile, path + ".rstrip", &rstrip));
    t.special = special.value_or(false);
    t.lstrip = lstrip.value_or(false);
    t.rstrip = rstrip.value_or(false);
    out->push_back(std::move(t));
  }
  return OkStatus();
}

// model.merges as "left right" lines, from either spelling.
Status read_merges(const json& model, std::vector<std::string>* out) {
  const json* merges = member(model, "merges");
  if (merges == nullptr) return DataLoss("{}: model.merges is missing (a BPE model needs its merges)", kTokenizerFile);
  if (!merges->is_array()) return wrong_type(kTokenizerFile, "model.merges", "an array", *merges);
  out->reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    if (m.is_string()) {
      const auto& line = m.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      if (space == 0 || space == std::string::npos || space + 1 == line.size() ||
          line.find(' ', space + 1) != std::string::npos) {
        return DataLoss("{}: model.merges[{}] must be 'left right' (two tokens, one space), not '{}'", kTokenizerFile,
                        i, line);
      }
      out->push_back(line);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      const auto& left = m[0].get_ref<const std::string&>();
      const auto& right = m[1].get_ref<const std::string&>();
      if (left.empty() || right.empty()) return DataLoss("{}: model.merges[{}] has an empty token", kTokenizerFile, i);
      if (left.find(' ') != std::string::npos || right.find(' ') != std::string::npos) {
        return DataLoss("{}: model.merges[{}] has a token with a space, which a BPE merge list cannot hold",
                        kTokenizerFile, i);
      }
      std::string line = left;
      line += ' ';
      line += right;
      out->push_back(std::move(line));
    } else {
      return wrong_type(kTokenizerFile, fmt::format("model.merges[{}]", i),
                        "a string 'left right' or a [left, right] pair", m);
    }
  }
  return OkStatus();
}

// model.vocab, then the added tokens over it, then [PAD<id>] for the holes.
Status build_tokens(const json& model, const std::vector<AddedToken>& added, VocabType type, int64_t pad_to_size,
                    const std::string* unk_token, Vocab* v) {
  const json* vocab = member(model, "vocab");
  if (vocab == nullptr) return DataLoss("{}: model.vocab is missing", kTokenizerFile);
  if (!vocab->is_object()) return wrong_type(kTokenizerFile, "model.vocab", "an object (token -> id)", *vocab);
  int64_t size = 0;
  std::vector<std::pair<int64_t, const std::string*>> entries;
  entries.reserve(vocab->size());
  for (const auto& [text, id_value] : vocab->items()) {
    const std::optional<int64_t> valid = token_id(id_value);
    if (!valid) return bad_id(id_value, kTokenizerFile, fmt::format("model.vocab['{}']", text));
    const int64_t id = *valid;
    entries.emplace_back(id, &text);
    size = std::max(size, id + 1);
  }
  for (const AddedToken& t : added)
    size = std::max(size, t.id + 1);
  if (size == 0) return DataLoss("{}: model.vocab is empty", kTokenizerFile);
  if (pad_to_size > kMaxVocabSize) return InvalidArgument("vocab size {} is too large to pad to", pad_to_size);
  if (pad_to_size > 0 && pad_to_size < size) {
    v->warnings.push_back(fmt::format(
        "the model's vocab_size {} is smaller than the tokenizer's {} tokens; the tokens are kept", pad_to_size, size));
  }
  size = std::max(size, pad_to_size);

  v->tokens.assign(static_cast<size_t>(size), VocabToken{});
  std::vector<bool> is_set(static_cast<size_t>(size), false);
  for (const auto& [id, text] : entries) {
    const auto i = static_cast<size_t>(id);
    if (is_set[i]) {
      return DataLoss("{}: model.vocab gives id {} to both '{}' and '{}'", kTokenizerFile, id, v->tokens[i].text,
                      *text);
    }
    is_set[i] = true;
    VocabToken& t = v->tokens[i];
    t.text = *text;
    t.attr = type == VocabType::kSpm && is_byte_token(t.text) ? kAttrByte : kAttrNormal;
    if (type == VocabType::kSpm && unk_token != nullptr && t.text == *unk_token) t.attr = kAttrUnknown;
  }
  for (const AddedToken& a : added) {
    const auto i = static_cast<size_t>(a.id);
    VocabToken& t = v->tokens[i];
    is_set[i] = true;
    t.text = a.content;
    t.score = 0.0f;
    if (type == VocabType::kSpm && unk_token != nullptr && a.content == *unk_token) {
      t.attr = kAttrUnknown;
    } else if (a.special || looks_special(a.content)) {
      t.attr = kAttrControl;
    } else {
      t.attr = kAttrUserDefined;
      // convert_hf_to_gguf pre-normalizes user-defined spaces (for Gemma).
      if (type == VocabType::kBpe) t.text = replace_all(t.text, kSpaceMarker, " ");
    }
    if (a.lstrip) t.attr |= kAttrLstrip;
    if (a.rstrip) t.attr |= kAttrRstrip;
  }
  for (size_t i = 0; i < v->tokens.size(); ++i) {
    VocabToken& t = v->tokens[i];
    if (!is_set[i]) {
      t.text = fmt::format("[PAD{}]", i);
      t.attr = kAttrUnused;
    } else if (t.text.empty()) {
      v->warnings.push_back(fmt::format("empty token at index {}", i));
      t.text = fmt::format("[EMPTY_{}]", i);
    }
  }
  return OkStatus();
}

// SentencePiece scores from the merge ranks: a token made by an earlier merge scores higher.
void score_from_merges(const std::vector<std::string>& merges, Vocab* v) {
  const float unreachable = -static_cast<float>(merges.size() + 1);
  for (VocabToken& t : v->tokens) {
    if (t.attr != kAttrNormal) continue;
    size_t len = 0;
    (void)unicode::decode(t.text.data(), t.text.size(), &len);
    t.score = len == t.text.size() ? 0.0f : unreachable;  // one character: never made by a merge
  }
  std::vector<bool> scored(v->tokens.size(), false);
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& line = merges[rank];
    const size_t space = line.find(' ');
    joined.assign(line, 0, space);
    joined.append(line, space + 1);
    const int32_t id = v->find(joined);
    if (id == kNoToken || scored[static_cast<size_t>(id)]) continue;
    scored[static_cast<size_t>(id)] = true;
    VocabToken& t = v->tokens[static_cast<size_t>(id)];
    if (t.attr == kAttrNormal) t.score = -static_cast<float>(rank + 1);
  }
}

// --- tokenizer_config.json ------------------------------------------------------------------

Status read_special_token(const json& config, const char* key, Vocab* v, int32_t* id) {
  const json* entry = member(config, key);
  if (entry == nullptr) return OkStatus();
  const std::string* text = nullptr;
  if (entry->is_string()) {
    text = &entry->get_ref<const std::string&>();
  } else if (entry->is_object()) {
    RETURN_IF_ERROR(read_string(*entry, "content", kConfigFile, fmt::format("{}.content", key), &text));
    if (text == nullptr) return DataLoss("{}: {}.content is missing", kConfigFile, key);
  } else {
    return wrong_type(kConfigFile, key, "a token (a string, or an object with 'content')", *entry);
  }
  const int32_t found = v->find(*text);
  if (found == kNoToken) {
    v->warnings.push_back(fmt::format("{}: {} '{}' is not a token; ignored", kConfigFile, key, *text));
    return OkStatus();
  }
  *id = found;
  return OkStatus();
}

Status read_chat_template(const json& config, Vocab* v) {
  const json* t = member(config, "chat_template");
  if (t == nullptr) return OkStatus();
  if (t->is_string()) {
    v->chat_template = t->get<std::string>();
    return OkStatus();
  }
  if (!t->is_array()) return wrong_type(kConfigFile, "chat_template", "a string or a list of {name, template}", *t);
  bool found = false;
  for (size_t i = 0; i < t->size(); ++i) {
    const json& item = (*t)[i];
    const std::string path = fmt::format("chat_template[{}]", i);
    if (!item.is_object()) return wrong_type(kConfigFile, path, "an object {name, template}", item);
    const std::string* name = nullptr;
    const std::string* text = nullptr;
    RETURN_IF_ERROR(read_string(item, "name", kConfigFile, path + ".name", &name));
    RETURN_IF_ERROR(read_string(item, "template", kConfigFile, path + ".template", &text));
    if (name == nullptr || text == nullptr)
      return DataLoss("{}: {} needs a 'name' and a 'template'", kConfigFile, path);
    if (*name == "default" && !found) {
      v->chat_template = *text;
      found = true;
    }
  }
  if (!found) {
    v->warnings.push_back(
        fmt::format("{}: chat_template lists {} templates but none named 'default'; the model has no default template",
                    kConfigFile, t->size()));
  }
  return OkStatus();
}

Status read_config(std::string_view config_json, Vocab* v) {
  json config = json::object();
  if (!config_json.empty()) {
    RETURN_IF_ERROR(parse_json(config_json, kConfigFile, &config));
    if (!config.is_object()) return wrong_type(kConfigFile, "the top level", "an object", config);
  }
  const std::pair<const char*, int32_t*> special_keys[] = {
      {"bos_token", &v->bos_id}, {"eos_token", &v->eos_id}, {"unk_token", &v->unk_id},
      {"sep_token", &v->sep_id}, {"pad_token", &v->pad_id}, {"mask_token", &v->mask_id},
  };
  for (const auto& [key, id] : special_keys)
    RETURN_IF_ERROR(read_special_token(config, key, v, id));

  std::optional<bool> add_bos;
  std::optional<bool> add_eos;
  RETURN_IF_ERROR(read_bool(config, "add_bos_token", kConfigFile, "add_bos_token", &add_bos));
  RETURN_IF_ERROR(read_bool(config, "add_eos_token", kConfigFile, "add_eos_token", &add_eos));
  v->add_bos = add_bos.value_or(v->add_bos);
  v->add_eos = add_eos.value_or(v->add_eos);
  if (v->add_bos && v->bos_id == kNoToken) {
    if (add_bos.has_value()) return DataLoss("{}: add_bos_token is true, but bos_token names no token", kConfigFile);
    v->warnings.push_back(
        fmt::format("pre-tokenizer wants a BOS token, but {} names none; none is added", kConfigFile));
    v->add_bos = false;
  }
  if (v->add_eos && v->eos_id == kNoToken) {
    return DataLoss("{}: add_eos_token is true, but eos_token names no token", kConfigFile);
  }
  if (v->add_sep && v->sep_id == kNoToken) v->add_sep = false;
  return read_chat_template(config, v);
}

}  // namespace

Result<Vocab> vocab_from_hf(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                            int64_t pad_to_size) {
  json root;
  RETURN_IF_ERROR(parse_json(tokenizer_json, kTokenizerFile, &root));
  if (!root.is_object()) return wrong_type(kTokenizerFile, "the top level", "an object", root);
  const json* model = member(root, "model");
  if (model == nullptr) return DataLoss("{}: model is missing (not a tokenizer.json?)", kTokenizerFile);
  if (!model->is_object()) return wrong_type(kTokenizerFile, "model", "an object", *model);

  // model.type; old GPT-2 files leave it out (HF then tells the model by its fields).
  std::string model_type;
  {
    const std::string* type = nullptr;
    RETURN_IF_ERROR(read_string(*model, "type", kTokenizerFile, "model.type", &type));
    if (type != nullptr) {
      model_type = *type;
    } else if (member(*model, "merges") != nullptr) {
      model_type = "BPE";
    } else {
      return DataLoss("{}: model.type is missing", kTokenizerFile);
    }
  }
  if (model_type != "BPE") {
    return Unimplemented(
        "{}: model.type '{}' is not supported yet (byte-level BPE and SentencePiece-style BPE are); use a GGUF of "
        "the model converted by llama.cpp",
        kTokenizerFile, model_type);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string* affix = nullptr;
    RETURN_IF_ERROR(read_string(*model, key, kTokenizerFile, fmt::format("model.{}", key), &affix));
    if (affix != nullptr && !affix->empty()) {
      return Unimplemented("{}: model.{} '{}' is not supported (llama.cpp's BPE has none)", kTokenizerFile, key,
                           *affix);
    }
  }
  std::optional<bool> byte_fallback;
  std::optional<bool> ignore_merges;
  RETURN_IF_ERROR(read_bool(*model, "byte_fallback", kTokenizerFile, "model.byte_fallback", &byte_fallback));
  RETURN_IF_ERROR(read_bool(*model, "ignore_merges", kTokenizerFile, "model.ignore_merges", &ignore_merges));
  const std::string* unk_token = nullptr;
  RETURN_IF_ERROR(read_string(*model, "unk_token", kTokenizerFile, "model.unk_token", &unk_token));

  PreTokenizerChain chain;
  if (const json* pre = member(root, "pre_tokenizer")) {
    RETURN_IF_ERROR(read_pre_tokenizer(*pre, "pre_tokenizer", 0, &chain));
  }

  Vocab v;
  if (chain.has_byte_level) {
    ASSIGN_OR_RETURN(const std::string_view pre_name, match_pre_tokenizer(chain));
    const std::optional<PreTokenizerInfo> known = pre_tokenizer_info(pre_name);
    if (!known) return Internal("pre-tokenizer '{}' has no PreTokenizerInfo", pre_name);
    const PreTokenizerInfo& info = *known;
    v.type = VocabType::kBpe;
    v.model = "gpt2";
    v.pre = std::string(pre_name);
    v.pre_type = info.type;
    v.clean_spaces = info.clean_spaces;
    v.ignore_merges = ignore_merges.value_or(info.ignore_merges);
    v.add_bos = info.add_bos;
    v.add_sep = info.add_sep;
    if (chain.add_prefix_space) {
      v.warnings.push_back("pre_tokenizer: ByteLevel add_prefix_space is ignored, as llama.cpp ignores it");
    }
    if (const json* decoder = member(root, "decoder")) {
      const std::string* type = nullptr;
      if (decoder->is_object()) RETURN_IF_ERROR(read_string(*decoder, "type", kTokenizerFile, "decoder.type", &type));
      if (type == nullptr || (*type != "ByteLevel" && *type != "Sequence")) {
        v.warnings.push_back("decoder is not ByteLevel; tokens are decoded byte-level anyway");
      }
    }
  } else if (byte_fallback.value_or(false)) {
    RETURN_IF_ERROR(read_sentencepiece_spaces(root, &v.add_space_prefix));
    v.type = VocabType::kSpm;
    v.model = "llama";
    v.pre = "default";
    // llama_vocab's defaults for "llama", used where tokenizer_config.json says nothing.
    v.bos_id = 1;
    v.eos_id = 2;
    v.unk_id = 0;
    v.add_bos = true;
  } else {
    return Unimplemented(
        "{}: a BPE model without a ByteLevel pre-tokenizer and without byte_fallback is not supported "
        "(pre_tokenizer: [{}])",
        kTokenizerFile, join(chain.shown, " > "));
  }

  std::vector<std::string> merges;
  RETURN_IF_ERROR(read_merges(*model, &merges));
  std::vector<AddedToken> added;
  RETURN_IF_ERROR(read_added_tokens(root, &added));
  RETURN_IF_ERROR(build_tokens(*model, added, v.type, pad_to_size, unk_token, &v));
  if (Status s = v.build_index(); !s.ok()) return s.with_context(kTokenizerFile);
  if (v.type == VocabType::kBpe) {
    v.merges = std::move(merges);
  } else {
    score_from_merges(merges, &v);
  }
  // Default ids that are not tokens are dropped, as vocab_from_gguf does.
  for (int32_t* id : {&v.bos_id, &v.eos_id, &v.unk_id}) {
    if (*id != kNoToken && !v.valid_id(*id)) *id = kNoToken;
  }
  if (unk_token != nullptr) {
    if (const int32_t id = v.find(*unk_token); id != kNoToken) v.unk_id = id;
  }

  RETURN_IF_ERROR(read_config(tokenizer_config_json, &v));
  v.apply_load_rules();
  return v;
}

}  // namespace bw
