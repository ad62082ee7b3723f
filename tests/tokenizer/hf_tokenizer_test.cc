// vocab_from_hf() and open_tokenizer() on Hugging Face tokenizer.json files.
//
// For each vocab GGUF of testdata/tokenizer with llama.cpp vectors and a pre-tokenizer
// that tokenizer.json can name, the test writes the tokenizer.json + tokenizer_config.json
// (+ config.json) that convert_hf_to_gguf.py would have read to write that GGUF: its
// tokens, merges and token types, with the real pre_tokenizer / normalizer / decoder of
// the model family. It loads them through open_tokenizer(folder) and checks the Vocab
// against the GGUF's and every vector against llama.cpp's ids (add_special = false,
// parse_special = false, as test-tokenizer-0). Then the mapping rules and malformed files,
// on small hand-written files.
#include "tokenizer/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/test_support.h"
#include "tokenizer/open_tokenizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab_vectors.h"

namespace bw {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// --- The sections of the real tokenizer.json files --------------------------------------------

// openai-community/gpt2 (written before use_regex existed; it defaults to true).
constexpr const char* kGpt2Pre = R"json({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true})json";
// EleutherAI/gpt-neox-20b, mosaicml/mpt-7b.
constexpr const char* kNeoxPre =
    R"json({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})json";
// meta-llama/Meta-Llama-3-8B.
constexpr const char* kLlama3Pre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {
        "type": "Split",
        "pattern": {
          "Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        },
        "behavior": "Isolated",
        "invert": false
      },
      {
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": true,
        "use_regex": false
      }
    ]
  })json";
// Qwen/Qwen2-7B, Qwen2.5, deepseek-ai/DeepSeek-R1-Distill-Qwen-*.
constexpr const char* kQwen2Pre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {
        "type": "Split",
        "pattern": {
          "Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        },
        "behavior": "Isolated",
        "invert": false
      },
      {
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": false,
        "use_regex": false
      }
    ]
  })json";
// deepseek-ai/deepseek-llm-7b-base, DeepSeek-V2(-Lite), DeepSeek-Coder-V2, deepseek-coder-7b-v1.5.
constexpr const char* kDeepseekLlmPre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "[\r\n]"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?[!-/:-~！-／：-～‘-‟　-。]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s+$"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥ࠀ-一가-퟿]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]
  })json";
// deepseek-ai/deepseek-coder-6.7b-instruct.
constexpr const char* kDeepseekCoderPre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "[\r\n]"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?\\p{L}+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?\\p{P}+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥ࠀ-一가-퟿]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]
  })json";
// deepseek-ai/DeepSeek-V3, DeepSeek-R1.
constexpr const char* kDeepseekV3Pre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]
  })json";
// bigcode/starcoder, smallcloudai/Refact-1_6-base, HuggingFaceTB/SmolLM.
constexpr const char* kStarcoderPre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
    ]
  })json";
// tiiuae/falcon-7b.
constexpr const char* kFalconPre = R"json({
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Punctuation", "behavior": "Contiguous"},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      {"type": "Digits", "individual_digits": false},
      {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": false}
    ]
  })json";
constexpr const char* kByteLevelDecoder =
    R"json({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})json";
constexpr const char* kEmptyNormalizers = R"json({"type": "Sequence", "normalizers": []})json";
// meta-llama/Llama-2-7b-hf: SentencePiece's spaces as normalizers.
constexpr const char* kLlama2Normalizer = R"json({
    "type": "Sequence",
    "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    ]
  })json";
constexpr const char* kLlama2Decoder = R"json({
    "type": "Sequence",
    "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "ByteFallback"},
      {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}
    ]
  })json";
// mistralai/Mistral-7B-v0.1 (and Llama 2 files written by newer tokenizers).
constexpr const char* kMetaspacePre =
    R"json({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false})json";

// --- Writing the files convert_hf_to_gguf would have read -----------------------------------

// convert_hf_to_gguf's does_token_look_special.
bool looks_special(std::string_view t) {
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" ||
         (t.starts_with("<|") && t.ends_with("|>")) ||
         (t.starts_with("<\xEF\xBD\x9C") && t.ends_with("\xEF\xBD\x9C>")) ||
         (t.starts_with("<unused") && t.ends_with(">"));
}

struct HfCase {
  std::string name;                  // ggml-vocab-<name>.gguf
  std::vector<std::string> vectors;  // ggml-vocab-<v>.gguf.inp/.out checked with it
  const char* pre_tokenizer;         // JSON
  const char* normalizer;
  const char* decoder;
  bool merges_as_pairs = false;       // tokenizers >= 0.20 writes [left, right]
  std::optional<bool> ignore_merges;  // model.ignore_merges, when the real file has it
  bool tokens_as_objects = false;     // tokenizer_config.json's bos/eos as {"content": ...}
};

void PrintTo(const HfCase& c, std::ostream* os) { *os << c.name; }

const std::vector<HfCase>& hf_cases() {
  const std::optional<bool> absent;
  static const std::vector<HfCase> cases = {
      // name, vectors, pre_tokenizer, normalizer, decoder, merges as pairs, ignore_merges, tokens as objects
      {"gpt-2", {"gpt-2"}, kGpt2Pre, "null", kByteLevelDecoder, false, absent, false},
      {"mpt", {"mpt"}, kNeoxPre, "null", kByteLevelDecoder, false, absent, true},
      {"llama-bpe", {"llama-bpe"}, kLlama3Pre, "null", kByteLevelDecoder, true, true, true},
      {"qwen2",
       {"qwen2", "deepseek-r1-qwen"},
       kQwen2Pre,
       R"json({"type": "NFC"})json",
       kByteLevelDecoder,
       true,
       false,
       false},
      {"deepseek-llm", {"deepseek-llm"}, kDeepseekLlmPre, kEmptyNormalizers, kByteLevelDecoder, false, absent, true},
      {"deepseek-coder",
       {"deepseek-coder"},
       kDeepseekCoderPre,
       kEmptyNormalizers,
       kByteLevelDecoder,
       false,
       absent,
       true},
      {"starcoder", {"starcoder"}, kStarcoderPre, "null", kByteLevelDecoder, false, absent, false},
      {"refact", {"refact"}, kStarcoderPre, "null", kByteLevelDecoder, true, absent, false},
      {"falcon", {"falcon"}, kFalconPre, "null", kByteLevelDecoder, false, absent, false},
      {"llama-spm", {"llama-spm"}, "null", kLlama2Normalizer, kLlama2Decoder, false, absent, true},
      {"phi-3", {"phi-3"}, kMetaspacePre, "null", kLlama2Decoder, false, absent, false},
  };
  return cases;
}

// transformers' SentencePieceExtractor: every split of a piece into two pieces of the
// vocabulary, pieces by score (high first, stable), each piece's splits by the ids of
// their halves.
std::vector<std::pair<std::string, std::string>> sentencepiece_merges(const Vocab& g, size_t base_end) {
  struct Merge {
    float score;
    int32_t left;
    int32_t right;
  };
  std::vector<Merge> merges;
  for (size_t id = 0; id < base_end; ++id) {
    const VocabToken& t = g.tokens[id];
    if (t.attr != kAttrNormal) continue;
    std::vector<Merge> local;
    size_t len = 0;
    for (size_t k = 0; k < t.text.size(); k += len) {
      (void)unicode::decode(t.text.data() + k, t.text.size() - k, &len);
      if (k == 0) continue;
      const int32_t l = g.find(std::string_view(t.text).substr(0, k));
      const int32_t r = g.find(std::string_view(t.text).substr(k));
      if (l != kNoToken && r != kNoToken && static_cast<size_t>(l) < base_end && static_cast<size_t>(r) < base_end) {
        local.push_back({t.score, l, r});
      }
    }
    std::sort(local.begin(), local.end(),
              [](const Merge& a, const Merge& b) { return std::pair(a.left, a.right) < std::pair(b.left, b.right); });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) { return a.score > b.score; });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const Merge& m : merges)
    out.emplace_back(g.tokens[static_cast<size_t>(m.left)].text, g.tokens[static_cast<size_t>(m.right)].text);
  return out;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

json literal(const char* text) { return json::parse(text); }

// tokenizer.json, tokenizer_config.json and config.json for the GGUF vocab `g`.
void write_hf_folder(const Vocab& g, const HfCase& c, const fs::path& dir) {
  const bool spm = g.type == VocabType::kSpm;
  size_t base_end = 0;  // the model's own tokens end after the last NORMAL / BYTE one
  for (size_t i = 0; i < g.size(); ++i) {
    if (g.tokens[i].attr & (kAttrNormal | kAttrByte)) base_end = i + 1;
  }
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < g.size(); ++i) {
    const VocabToken& t = g.tokens[i];
    if (t.attr == kAttrUnused) continue;  // a hole, padded back to config.json's vocab_size
    const bool is_added = (t.attr & (kAttrControl | kAttrUserDefined | kAttrUnknown)) != 0;
    if (!is_added || i < base_end) vocab[t.text] = i;
    if (is_added) {
      const bool special = (t.attr & (kAttrControl | kAttrUnknown)) != 0 && (t.attr & kAttrUserDefined) == 0;
      added.push_back({{"id", i},
                       {"content", t.text},
                       {"single_word", false},
                       {"lstrip", (t.attr & kAttrLstrip) != 0},
                       {"rstrip", (t.attr & kAttrRstrip) != 0},
                       {"normalized", !special},
                       {"special", special}});
    }
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  if (spm) {
    pairs = sentencepiece_merges(g, base_end);
  } else {
    for (const std::string& m : g.merges) {
      const size_t space = m.find(' ', 1);
      pairs.emplace_back(m.substr(0, space), m.substr(space + 1));
    }
  }
  json merges = json::array();
  for (const auto& [l, r] : pairs) {
    if (c.merges_as_pairs) {
      merges.push_back(json::array({l, r}));
    } else {
      merges.push_back(fmt::format("{} {}", l, r));
    }
  }
  json model = {
      {"type", "BPE"},
      {"dropout", nullptr},
      {"unk_token", g.valid_id(g.unk_id) && spm ? json(g.tokens[static_cast<size_t>(g.unk_id)].text) : json()},
      {"continuing_subword_prefix", nullptr},
      {"end_of_word_suffix", nullptr},
      {"fuse_unk", spm},
      {"byte_fallback", spm},
      {"vocab", std::move(vocab)},
      {"merges", std::move(merges)}};
  if (c.ignore_merges) model["ignore_merges"] = *c.ignore_merges;
  const json tokenizer = {{"version", "1.0"},
                          {"truncation", nullptr},
                          {"padding", nullptr},
                          {"added_tokens", std::move(added)},
                          {"normalizer", literal(c.normalizer)},
                          {"pre_tokenizer", literal(c.pre_tokenizer)},
                          {"post_processor", nullptr},
                          {"decoder", literal(c.decoder)},
                          {"model", std::move(model)}};
  write_file(dir / "tokenizer.json", tokenizer.dump(2));

  json config = {{"model_max_length", 4096}, {"clean_up_tokenization_spaces", false}};
  auto token = [&](int32_t id) -> json {
    const std::string& text = g.tokens[static_cast<size_t>(id)].text;
    if (!c.tokens_as_objects) return text;
    return {{"__type", "AddedToken"}, {"content", text}, {"lstrip", false},
            {"normalized", false},    {"rstrip", false}, {"single_word", false}};
  };
  for (const auto& [key, id] : {std::pair("bos_token", g.bos_id), std::pair("eos_token", g.eos_id),
                                std::pair("unk_token", g.unk_id), std::pair("pad_token", g.pad_id)}) {
    if (g.valid_id(id)) config[key] = token(id);
  }
  // Real files mostly leave add_bos_token out where it is the model's default.
  const bool default_add_bos = spm || pre_tokenizer_info(g.pre)->add_bos;
  if (g.add_bos != default_add_bos) config["add_bos_token"] = g.add_bos;
  if (g.add_eos) config["add_eos_token"] = true;
  if (!g.chat_template.empty()) config["chat_template"] = g.chat_template;
  write_file(dir / "tokenizer_config.json", config.dump(2));
  write_file(dir / "config.json", json({{"vocab_size", g.size()}, {"model_type", "test"}}).dump(2));
}

// The attributes the GGUF's tokens get from a tokenizer.json: today's convert_hf_to_gguf
// makes an added token that looks special CONTROL (older GGUFs have it USER_DEFINED).
uint32_t expected_attr(const VocabToken& t) {
  if ((t.attr & kAttrUserDefined) && looks_special(t.text)) return (t.attr & ~kAttrUserDefined) | kAttrControl;
  return t.attr;
}

void expect_same_vocab(const Vocab& g, const Vocab& h) {
  ASSERT_EQ(h.size(), g.size());
  EXPECT_EQ(h.type, g.type);
  if (g.type == VocabType::kBpe) {
    EXPECT_EQ(h.pre_type, g.pre_type);
    EXPECT_EQ(h.merges, g.merges);
  }
  EXPECT_EQ(h.bos_id, g.bos_id);
  EXPECT_EQ(h.eos_id, g.eos_id);
  EXPECT_EQ(h.eot_id, g.eot_id);
  EXPECT_EQ(h.eom_id, g.eom_id);
  EXPECT_EQ(h.unk_id, g.unk_id);
  EXPECT_EQ(h.pad_id, g.pad_id);
  EXPECT_EQ(h.fim_pre_id, g.fim_pre_id);
  EXPECT_EQ(h.fim_suf_id, g.fim_suf_id);
  EXPECT_EQ(h.fim_mid_id, g.fim_mid_id);
  EXPECT_EQ(h.eog_ids, g.eog_ids);
  EXPECT_EQ(h.add_bos, g.add_bos);
  EXPECT_EQ(h.add_eos, g.add_eos);
  EXPECT_EQ(h.add_space_prefix, g.add_space_prefix);
  EXPECT_EQ(h.clean_spaces, g.clean_spaces);
  EXPECT_EQ(h.ignore_merges, g.ignore_merges);
  EXPECT_EQ(h.chat_template, g.chat_template);
  int mismatches = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const VocabToken& a = g.tokens[i];
    const VocabToken& b = h.tokens[i];
    // SentencePiece's special tokens: the GGUFs' types come from the .model file, not tokenizer.json.
    const bool compare_attr = g.type == VocabType::kBpe || (a.attr & (kAttrNormal | kAttrByte)) != 0;
    if (a.text == b.text && (!compare_attr || b.attr == expected_attr(a))) continue;
    if (++mismatches <= 5) {
      ADD_FAILURE() << "token " << i << ": gguf '" << a.text << "' attr " << a.attr << " (expected " << expected_attr(a)
                    << "), tokenizer.json '" << b.text << "' attr " << b.attr;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// --- Reference vectors through tokenizer.json -------------------------------------------------

class HfVectorTest : public ::testing::TestWithParam<HfCase> {};

TEST_P(HfVectorTest, MatchesGgufAndLlamaCpp) {
  const HfCase& c = GetParam();
  BW_TESTDATA_OR_SKIP(gguf_path, "tokenizer/ggml-vocab-" + c.name + ".gguf");
  auto gguf = GgufFile::open(gguf_path.string());
  ASSERT_TRUE(gguf.ok()) << gguf.status().to_string();
  auto g = vocab_from_gguf(*gguf);
  ASSERT_TRUE(g.ok()) << g.status().to_string();

  test::TempDir dir;
  write_hf_folder(*g, c, dir.path());
  auto tok = open_tokenizer(dir.path().string());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  const Tokenizer& t = **tok;
  expect_same_vocab(*g, t.vocab());
  EXPECT_TRUE(t.vocab().warnings.empty()) << t.vocab().warnings.front();

  for (const std::string& v : c.vectors) {
    BW_TESTDATA_OR_SKIP(inp, "tokenizer/ggml-vocab-" + v + ".gguf.inp");
    BW_TESTDATA_OR_SKIP(out, "tokenizer/ggml-vocab-" + v + ".gguf.out");
    const auto inputs = test::read_inputs(inp);
    const auto expected = test::read_outputs(out);
    ASSERT_EQ(inputs.size(), expected.size());
    ASSERT_FALSE(inputs.empty());
    size_t matched = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const std::vector<int32_t> ids = t.encode(inputs[i], /*add_special=*/false, /*parse_special=*/false);
      if (ids == expected[i]) {
        ++matched;
      } else {
        ADD_FAILURE() << c.name << " (" << v << ") on '" << inputs[i]
                      << "'\n  expected: " << test::ids_to_string(expected[i])
                      << "\n  got:      " << test::ids_to_string(ids);
      }
      EXPECT_EQ(t.decode(ids), inputs[i]) << c.name;
    }
    std::cout << "[hf vectors] " << c.name << " (" << v << ") pre=" << t.vocab().pre << ": " << matched << "/"
              << inputs.size() << " match\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabs, HfVectorTest, ::testing::ValuesIn(hf_cases()),
                         [](const ::testing::TestParamInfo<HfCase>& info) {
                           return test::sanitize_test_name(info.param.name);
                         });

// --- Small hand-written files -----------------------------------------------------------------

// A byte-level tokenizer.json: the 256 byte tokens, a few merges, the given pre_tokenizer.
json tiny_bpe(const char* pre_tokenizer = kQwen2Pre) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(&s, unicode::byte_to_codepoint(static_cast<uint8_t>(b)));
    vocab[s] = b;
  }
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  vocab["\xC4\xA0w"] = 260;  // "Ġw"
  return {{"version", "1.0"},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", json::parse(pre_tokenizer)},
          {"post_processor", nullptr},
          {"decoder", json::parse(kByteLevelDecoder)},
          {"model",
           {{"type", "BPE"},
            {"vocab", std::move(vocab)},
            {"merges", json::array({"h e", "l l", "he ll", "hell o", "\xC4\xA0 w"})}}}};
}

json added_token(int64_t id, const std::string& content, bool special, bool lstrip = false, bool rstrip = false) {
  return {{"id", id},         {"content", content},  {"single_word", false}, {"lstrip", lstrip},
          {"rstrip", rstrip}, {"normalized", false}, {"special", special}};
}

Result<Vocab> load(const json& tokenizer, const json& config = json(), int64_t pad_to_size = 0) {
  return vocab_from_hf(tokenizer.dump(), config.is_null() ? std::string() : config.dump(), pad_to_size);
}

// A pre_tokenizer of Split(Regex, Isolated) stages and a ByteLevel without regex.
std::string split_chain(const std::vector<std::string>& regexes) {
  json list = json::array();
  for (const std::string& r : regexes)
    list.push_back({{"type", "Split"}, {"pattern", {{"Regex", r}}}, {"behavior", "Isolated"}, {"invert", false}});
  list.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
  return json({{"type", "Sequence"}, {"pretokenizers", list}}).dump();
}

TEST(HfTokenizer, TinyByteLevelVocabEncodes) {
  auto v = load(tiny_bpe(kLlama3Pre), {{"bos_token", "<s>"}});
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(v->type, VocabType::kBpe);
  EXPECT_EQ(v->model, "gpt2");
  EXPECT_EQ(v->pre, "llama-bpe");
  EXPECT_EQ(v->size(), 261u);
  EXPECT_EQ(v->merges.size(), 5u);
  // "<s>" is no token: a warning, and llama-bpe's default add_bos is dropped with it.
  EXPECT_EQ(v->bos_id, kNoToken);
  EXPECT_FALSE(v->add_bos);
  EXPECT_EQ(v->warnings.size(), 2u);
  auto tok = Tokenizer::from_vocab(std::move(v).value());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ((*tok)->encode("hello world", false, false), (std::vector<int32_t>{259, 260, 'o', 'r', 'l', 'd'}));
  EXPECT_EQ((*tok)->decode((*tok)->encode("hello world", false, false)), "hello world");
}

TEST(HfTokenizer, DeepseekV3PreTokenizer) {
  auto v = load(tiny_bpe(kDeepseekV3Pre));
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(v->pre_type, PreTokenizerType::kDeepseek3);
  EXPECT_EQ(v->pre, "deepseek-v3");
  EXPECT_FALSE(v->clean_spaces);
  EXPECT_FALSE(v->ignore_merges);
  EXPECT_FALSE(v->add_bos);
}

TEST(HfTokenizer, RealPreTokenizersMapToLlamaCppOnes) {
  const std::vector<std::tuple<const char*, PreTokenizerType, const char*>> cases = {
      {kGpt2Pre, PreTokenizerType::kGpt2, "gpt-2"},
      {kNeoxPre, PreTokenizerType::kGpt2, "gpt-2"},
      {kLlama3Pre, PreTokenizerType::kLlama3, "llama-bpe"},
      {kQwen2Pre, PreTokenizerType::kQwen2, "qwen2"},
      {kDeepseekLlmPre, PreTokenizerType::kDeepseekLlm, "deepseek-llm"},
      {kDeepseekCoderPre, PreTokenizerType::kDeepseekCoder, "deepseek-coder"},
      {kDeepseekV3Pre, PreTokenizerType::kDeepseek3, "deepseek-v3"},
      {kStarcoderPre, PreTokenizerType::kStarcoder, "starcoder"},
      {kFalconPre, PreTokenizerType::kFalcon, "falcon"},
  };
  for (const auto& [pre, type, name] : cases) {
    auto v = load(tiny_bpe(pre));
    ASSERT_TRUE(v.ok()) << name << ": " << v.status().to_string();
    EXPECT_EQ(v->pre_type, type) << name;
    EXPECT_EQ(v->pre, name);
  }
  // Granite 4 / OLMo 3 / Phi-4 write Llama 3's regex as Removed + invert, which keeps the
  // same pieces because the regex matches every character.
  std::string removed = kLlama3Pre;
  removed.replace(removed.find("\"Isolated\",\n        \"invert\": false"), 36,
                  "\"Removed\",\n        \"invert\": true");
  auto v = load(tiny_bpe(removed.c_str()));
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(v->pre_type, PreTokenizerType::kLlama3);
}

// llama.cpp's own regexes, written as Split stages, map to their type.
TEST(HfTokenizer, LlamaCppRegexesAsSplitStages) {
  using T = PreTokenizerType;
  for (T type : {T::kGpt2, T::kLlama3, T::kQwen2, T::kDeepseekLlm, T::kDeepseekCoder, T::kDeepseek3, T::kFalcon,
                 T::kStarcoder, T::kBloom, T::kViking, T::kTekken, T::kChameleon, T::kGpt4o}) {
    const std::string pre = split_chain(pre_tokenizer_regexes(type));
    auto v = load(tiny_bpe(pre.c_str()));
    ASSERT_TRUE(v.ok()) << pre_tokenizer_type_name(type) << ": " << v.status().to_string();
    EXPECT_EQ(v->pre_type, type) << pre_tokenizer_type_name(type);
  }
}

TEST(HfTokenizer, UnknownPreTokenizerIsUnimplemented) {
  // Qwen3.5's regex (letters with marks): not a pre-tokenizer of this build.
  const std::string qwen35 = split_chain(
      {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"});
  auto v = load(tiny_bpe(qwen35.c_str()));
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(v.status().message().find("pre_tokenizer"), std::string::npos) << v.status().message();
  EXPECT_NE(v.status().message().find(R"([^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+)"), std::string::npos) << v.status().message();

  // A known regex with another split behaviour, a Split on a string, a WhitespaceSplit.
  std::string merged = kQwen2Pre;
  merged.replace(merged.find("\"Isolated\""), 10, "\"MergedWithPrevious\"");
  for (const std::string& pre :
       {merged,
        std::string(R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"String": " "}, )"
                    R"("behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "use_regex": false}]})"),
        std::string(
            R"({"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "ByteLevel"}]})")}) {
    auto u = load(tiny_bpe(pre.c_str()));
    ASSERT_FALSE(u.ok()) << pre;
    EXPECT_EQ(u.status().code(), StatusCode::kUnimplemented) << u.status().to_string();
  }
  // A BPE without ByteLevel and without byte_fallback.
  json no_byte_level = tiny_bpe();
  no_byte_level["pre_tokenizer"] = {{"type", "Whitespace"}};
  auto u = load(no_byte_level);
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(u.status().message().find("Whitespace"), std::string::npos) << u.status().message();
}

TEST(HfTokenizer, OtherModelTypesAreUnimplemented) {
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    json t = tiny_bpe();
    t["model"]["type"] = type;
    auto v = load(t);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(v.status().message().find(type), std::string::npos) << v.status().message();
  }
}

TEST(HfTokenizer, MalformedFilesAreDataLoss) {
  struct Case {
    std::string name;
    std::function<void(json*)> edit;
    std::string expected;  // in the message
  };
  const std::vector<Case> cases = {
      {"no model", [](json* t) { t->erase("model"); }, "tokenizer.json: model is missing"},
      {"model not an object", [](json* t) { (*t)["model"] = 3; }, "tokenizer.json: model must be an object, not 3"},
      {"no merges", [](json* t) { (*t)["model"].erase("merges"); }, "model.merges is missing"},
      {"merges not an array", [](json* t) { (*t)["model"]["merges"] = "h e"; }, "model.merges must be an array"},
      {"merge of numbers",
       [](json* t) {
         (*t)["model"]["merges"] = json::array({json::array({1, 2})});
       },
       "model.merges[0] must be a string 'left right' or a [left, right] pair, not an array"},
      {"merge of three parts", [](json* t) { (*t)["model"]["merges"][1] = "a b c"; },
       "model.merges[1] must be 'left right'"},
      {"merge of one part", [](json* t) { (*t)["model"]["merges"][0] = "ab"; }, "model.merges[0] must be 'left right'"},
      {"no vocab", [](json* t) { (*t)["model"].erase("vocab"); }, "model.vocab is missing"},
      {"vocab an array", [](json* t) { (*t)["model"]["vocab"] = json::array(); }, "model.vocab must be an object"},
      {"negative id", [](json* t) { (*t)["model"]["vocab"]["he"] = -1; }, "model.vocab['he'] = -1 is not a token id"},
      {"huge id", [](json* t) { (*t)["model"]["vocab"]["he"] = 1LL << 40; }, "model.vocab['he'] = 1099511627776"},
      {"string id", [](json* t) { (*t)["model"]["vocab"]["he"] = "7"; },
       "model.vocab['he'] must be a token id (an integer), not the string '7'"},
      {"two texts, one id", [](json* t) { (*t)["model"]["vocab"]["he"] = 5; }, "model.vocab gives id 5 to both"},
      {"added tokens not a list", [](json* t) { (*t)["added_tokens"] = json::object(); },
       "added_tokens must be an array"},
      {"added token without id",
       [](json* t) {
         (*t)["added_tokens"] = json::array({{{"content", "<x>"}}});
       },
       "added_tokens[0].id is missing"},
      {"added token without content",
       [](json* t) {
         (*t)["added_tokens"] = json::array({{{"id", 300}, {"special", true}}});
       },
       "added_tokens[0].content is missing or empty"},
      {"added token special not a bool",
       [](json* t) {
         (*t)["added_tokens"] = json::array({{{"id", 300}, {"content", "<x>"}, {"special", "yes"}}});
       },
       "added_tokens[0].special must be true or false"},
      {"duplicate text", [](json* t) { (*t)["added_tokens"] = json::array({added_token(300, "he", true)}); },
       "duplicate token"},
      {"pre_tokenizer without type",
       [](json* t) {
         (*t)["pre_tokenizer"] = {{"pretokenizers", json::array()}};
       },
       "pre_tokenizer.type is missing"},
      {"split without pattern", [](json* t) { (*t)["pre_tokenizer"]["pretokenizers"][0].erase("pattern"); },
       "pre_tokenizer.pretokenizers[0].pattern is missing"},
      {"regex not a string", [](json* t) { (*t)["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = 1; },
       "pre_tokenizer.pretokenizers[0].pattern.Regex must be a string, not 1"},
      {"use_regex not a bool", [](json* t) { (*t)["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = "no"; },
       "pre_tokenizer.pretokenizers[1].use_regex must be true or false"},
      {"ignore_merges not a bool", [](json* t) { (*t)["model"]["ignore_merges"] = 1; },
       "model.ignore_merges must be true or false, not 1"},
      {"top level an array", [](json* t) { *t = json::array(); }, "tokenizer.json: the top level must be an object"},
  };
  for (const Case& c : cases) {
    json t = tiny_bpe();
    c.edit(&t);
    auto v = load(t);
    ASSERT_FALSE(v.ok()) << c.name;
    EXPECT_EQ(v.status().code(), StatusCode::kDataLoss) << c.name << ": " << v.status().to_string();
    EXPECT_NE(v.status().message().find(c.expected), std::string::npos)
        << c.name << ": '" << v.status().message() << "' does not say '" << c.expected << "'";
  }
  for (const std::string& text :
       {std::string(), std::string("not json"), std::string("{\"model\": "), std::string("[1, 2")}) {
    auto v = vocab_from_hf(text, "");
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(v.status().message().find("tokenizer.json: not valid JSON"), std::string::npos) << v.status().message();
  }
}

TEST(HfTokenizer, MalformedConfigIsDataLoss) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "tokenizer_config.json: not valid JSON"},
      {"[]", "tokenizer_config.json: the top level must be an object"},
      {R"({"bos_token": 1})", "tokenizer_config.json: bos_token must be a token (a string, or an object"},
      {R"({"eos_token": {"id": 3}})", "tokenizer_config.json: eos_token.content is missing"},
      {R"({"add_bos_token": "yes"})", "tokenizer_config.json: add_bos_token must be true or false"},
      {R"({"add_eos_token": true})", "add_eos_token is true, but eos_token names no token"},
      {R"({"add_bos_token": true, "bos_token": null})", "add_bos_token is true, but bos_token names no token"},
      {R"({"chat_template": 7})", "chat_template must be a string or a list of {name, template}"},
      {R"({"chat_template": [{"name": "default"}]})", "chat_template[0] needs a 'name' and a 'template'"},
      {R"({"chat_template": ["x"]})", "chat_template[0] must be an object"},
  };
  for (const auto& [config, expected] : cases) {
    auto v = vocab_from_hf(tiny_bpe().dump(), config);
    ASSERT_FALSE(v.ok()) << config;
    EXPECT_EQ(v.status().code(), StatusCode::kDataLoss) << config;
    EXPECT_NE(v.status().message().find(expected), std::string::npos) << config << ": " << v.status().message();
  }
}

// Cut anywhere, a file gives an error, never a crash.
TEST(HfTokenizer, TruncatedFilesFailCleanly) {
  json t = tiny_bpe();
  t["added_tokens"] = json::array({added_token(261, "<|im_start|>", true)});
  const std::string text = t.dump();
  for (size_t n = 0; n < text.size(); n += 7) {
    auto v = vocab_from_hf(std::string_view(text).substr(0, n), "");
    EXPECT_FALSE(v.ok()) << n;
  }
  EXPECT_TRUE(vocab_from_hf(text, "").ok());
}

TEST(HfTokenizer, AddedTokens) {
  json t = tiny_bpe();
  t["added_tokens"] = json::array({
      added_token(261, "<|endoftext|>", true),
      added_token(262, "<|im_start|>", false),  // looks special: CONTROL anyway
      added_token(263, "<mask>", false, /*lstrip=*/true),
      added_token(264, "\xE2\x96\x81user", false, false, /*rstrip=*/true),  // "▁user": shown with a space
      added_token(266, "<tool>", false),                                    // leaves a hole at 265
      added_token(5, "<over>", true),                                       // replaces model.vocab's id 5
  });
  auto v = load(t, {{"eos_token", "<|endoftext|>"}});
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  ASSERT_EQ(v->size(), 267u);
  EXPECT_EQ(v->tokens[261].attr, kAttrControl);
  EXPECT_EQ(v->tokens[262].attr, kAttrControl);
  EXPECT_EQ(v->tokens[263].attr, kAttrControl | kAttrLstrip);
  EXPECT_EQ(v->tokens[264].text, " user");
  EXPECT_EQ(v->tokens[264].attr, kAttrUserDefined | kAttrRstrip);
  EXPECT_EQ(v->tokens[265].text, "[PAD265]");
  EXPECT_EQ(v->tokens[265].attr, kAttrUnused);
  EXPECT_EQ(v->tokens[266].attr, kAttrUserDefined);
  EXPECT_EQ(v->tokens[5].text, "<over>");
  EXPECT_EQ(v->tokens[5].attr, kAttrControl);
  EXPECT_EQ(v->eos_id, 261);
  EXPECT_EQ(v->eog_ids, (std::vector<int32_t>{261}));
  auto tok = Tokenizer::from_vocab(std::move(v).value());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  // USER_DEFINED tokens are always cut out; CONTROL ones only with parse_special.
  EXPECT_EQ((*tok)->encode("hello<tool>", false, false), (std::vector<int32_t>{259, 266}));
  EXPECT_EQ((*tok)->encode("hello<|endoftext|>", false, true), (std::vector<int32_t>{259, 261}));
}

TEST(HfTokenizer, PadToSize) {
  auto v = load(tiny_bpe(), json(), /*pad_to_size=*/300);
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  ASSERT_EQ(v->size(), 300u);
  for (size_t i = 261; i < 300; ++i) {
    EXPECT_EQ(v->tokens[i].text, "[PAD" + std::to_string(i) + "]");
    EXPECT_EQ(v->tokens[i].attr, kAttrUnused);
  }
  EXPECT_TRUE(v->warnings.empty());
  // Smaller than the tokens: kept, with a warning.
  auto w = load(tiny_bpe(), json(), /*pad_to_size=*/100);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(w->size(), 261u);
  EXPECT_EQ(w->warnings.size(), 1u);
  // Absurd sizes are refused.
  auto x = load(tiny_bpe(), json(), /*pad_to_size=*/int64_t{1} << 40);
  ASSERT_FALSE(x.ok());
  EXPECT_EQ(x.status().code(), StatusCode::kInvalidArgument);
}

TEST(HfTokenizer, MergesInBothSpellings) {
  json pairs = tiny_bpe();
  json merges = json::array();
  for (const auto& m : pairs["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    merges.push_back(json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)}));
  }
  pairs["model"]["merges"] = merges;
  auto a = load(tiny_bpe());
  auto b = load(pairs);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->merges, b->merges);
  EXPECT_EQ(b->merges[4], "\xC4\xA0 w");
}

TEST(HfTokenizer, IgnoreMerges) {
  auto a = load(tiny_bpe(kLlama3Pre));  // llama-bpe's default
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->ignore_merges);
  json t = tiny_bpe(kLlama3Pre);
  t["model"]["ignore_merges"] = false;
  auto b = load(t);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->ignore_merges);
  t = tiny_bpe(kQwen2Pre);
  t["model"]["ignore_merges"] = true;
  auto c = load(t);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->ignore_merges);
}

TEST(HfTokenizer, SpecialTokensFromConfig) {
  json t = tiny_bpe(kLlama3Pre);
  t["added_tokens"] = json::array({added_token(261, "<|begin_of_text|>", true), added_token(262, "<|eot_id|>", true),
                                   added_token(263, "<pad>", true)});
  // Llama 3 writes strings; older files {"__type": "AddedToken", "content": ...} objects.
  auto v = load(t, {{"bos_token", "<|begin_of_text|>"},
                    {"eos_token", {{"__type", "AddedToken"}, {"content", "<|eot_id|>"}, {"lstrip", false}}},
                    {"pad_token", "<pad>"},
                    {"unk_token", nullptr},
                    {"sep_token", "<nope>"}});
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(v->bos_id, 261);
  EXPECT_EQ(v->eos_id, 262);
  EXPECT_EQ(v->pad_id, 263);
  EXPECT_EQ(v->unk_id, kNoToken);
  EXPECT_EQ(v->sep_id, kNoToken);
  EXPECT_TRUE(v->add_bos);  // llama-bpe's default
  EXPECT_FALSE(v->add_eos);
  ASSERT_EQ(v->warnings.size(), 1u);  // sep_token '<nope>'
  EXPECT_NE(v->warnings[0].find("<nope>"), std::string::npos);

  auto w = load(t, {{"bos_token", "<|begin_of_text|>"},
                    {"add_bos_token", false},
                    {"add_eos_token", true},
                    {"eos_token", "<|eot_id|>"}});
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_FALSE(w->add_bos);
  EXPECT_TRUE(w->add_eos);
  auto tok = Tokenizer::from_vocab(std::move(w).value());
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->encode("hello", true, false), (std::vector<int32_t>{259, 262}));
}

TEST(HfTokenizer, ChatTemplate) {
  json config = {{"chat_template", "{{ messages }}"}};
  auto a = load(tiny_bpe(), config);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->chat_template, "{{ messages }}");
  // The list form (Command-R, Hermes): the one named "default".
  config["chat_template"] = json::array({{{"name", "tool_use"}, {"template", "TOOLS"}},
                                         {{"name", "default"}, {"template", "DEFAULT"}},
                                         {{"name", "rag"}, {"template", "RAG"}}});
  auto b = load(tiny_bpe(), config);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->chat_template, "DEFAULT");
  // No "default": no template, as llama.cpp writes none.
  config["chat_template"] = json::array({{{"name", "tool_use"}, {"template", "TOOLS"}}});
  auto c = load(tiny_bpe(), config);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->chat_template, "");
  EXPECT_EQ(c->warnings.size(), 1u);
}

// Llama 2 style: BPE with byte_fallback and SentencePiece spaces -> SPM with scores from the merges.
json tiny_spm(const char* normalizer, const char* pre_tokenizer) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b)
    vocab[fmt::format("<0x{:02X}>", b)] = 3 + b;
  int32_t id = 259;
  for (const char* piece : {"\xE2\x96\x81", "a", "b", "ab",
                            "\xE2\x96\x81"
                            "ab",
                            "\xE2\x96\x81"
                            "a",
                            "ba"})
    vocab[piece] = id++;
  return {{"added_tokens",
           json::array({added_token(0, "<unk>", true), added_token(1, "<s>", true), added_token(2, "</s>", true)})},
          {"normalizer", json::parse(normalizer)},
          {"pre_tokenizer", json::parse(pre_tokenizer)},
          {"decoder", json::parse(kLlama2Decoder)},
          {"model",
           {{"type", "BPE"},
            {"unk_token", "<unk>"},
            {"fuse_unk", true},
            {"byte_fallback", true},
            {"vocab", vocab},
            {"merges", json::array({"a b", "\xE2\x96\x81 ab", "\xE2\x96\x81 a"})}}}};  // "ba": no merge
}

TEST(HfTokenizer, SentencePieceStyleBpe) {
  auto v =
      load(tiny_spm(kLlama2Normalizer, "null"), {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(v->type, VocabType::kSpm);
  EXPECT_EQ(v->model, "llama");
  EXPECT_TRUE(v->add_space_prefix);
  EXPECT_TRUE(v->add_bos);
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_EQ(v->tokens[0].attr, kAttrUnknown);
  EXPECT_EQ(v->tokens[1].attr, kAttrControl);
  EXPECT_EQ(v->tokens[3].attr, kAttrByte);
  EXPECT_EQ(v->tokens[3 + 'c'].text, "<0x63>");
  const int32_t ab = v->find("ab");
  EXPECT_FLOAT_EQ(v->tokens[static_cast<size_t>(ab)].score, -1.0f);
  EXPECT_FLOAT_EQ(v->tokens[static_cast<size_t>(v->find("\xE2\x96\x81"
                                                        "ab"))]
                      .score,
                  -2.0f);
  EXPECT_FLOAT_EQ(v->tokens[static_cast<size_t>(v->find("\xE2\x96\x81"
                                                        "a"))]
                      .score,
                  -3.0f);
  EXPECT_FLOAT_EQ(v->tokens[static_cast<size_t>(v->find("a"))].score, 0.0f);
  EXPECT_LT(v->tokens[static_cast<size_t>(v->find("ba"))].score, -3.0f);  // made by no merge
  auto tok = Tokenizer::from_vocab(std::move(v).value());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  const int32_t space_ab = (*tok)->vocab().find(
      "\xE2\x96\x81"
      "ab");
  // "ab" merges before "▁a", then "▁" + "ab" (HF's ranks give the same).
  EXPECT_EQ((*tok)->encode("ab", false, false), (std::vector<int32_t>{space_ab}));
  EXPECT_EQ((*tok)->encode("ab c", true, false),
            (std::vector<int32_t>{1, space_ab, (*tok)->vocab().find("\xE2\x96\x81"), 3 + 'c'}));
  EXPECT_EQ((*tok)->decode((*tok)->encode("ab c", false, false)), "ab c");

  // Mistral's Metaspace; prepend_scheme "never" means no space prefix.
  auto m = load(tiny_spm("null", kMetaspacePre));
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_TRUE(m->add_space_prefix);
  std::string never = kMetaspacePre;
  never.replace(never.find("first"), 5, "never");
  auto n = load(tiny_spm("null", never.c_str()));
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  EXPECT_FALSE(n->add_space_prefix);

  // byte_fallback without SentencePiece spaces, or with another normalizer / pre-tokenizer.
  for (const auto& [normalizer, pre] : {std::pair<const char*, const char*>("null", "null"),
                                        std::pair<const char*, const char*>(R"({"type": "NFKC"})", kMetaspacePre),
                                        std::pair<const char*, const char*>("null", R"({"type": "Whitespace"})")}) {
    auto u = load(tiny_spm(normalizer, pre));
    ASSERT_FALSE(u.ok()) << normalizer << " " << pre;
    EXPECT_EQ(u.status().code(), StatusCode::kUnimplemented) << u.status().to_string();
  }
}

// --- open_tokenizer ---------------------------------------------------------------------------

TEST(OpenTokenizer, HuggingFaceFolderAndFile) {
  test::TempDir dir;
  json t = tiny_bpe(kQwen2Pre);
  t["added_tokens"] = json::array({added_token(261, "<|endoftext|>", true), added_token(262, "<|im_end|>", true)});
  write_file(dir.path() / "tokenizer.json", t.dump());
  write_file(dir.path() / "tokenizer_config.json", R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})");
  write_file(dir.path() / "config.json", R"({"vocab_size": 280, "architectures": ["Qwen2ForCausalLM"]})");
  write_file(dir.path() / "chat_template.jinja", "{{ jinja }}");

  auto tok = open_tokenizer(dir.path().string());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ((*tok)->vocab_size(), 280u);
  EXPECT_EQ((*tok)->eos(), 262);
  EXPECT_EQ((*tok)->pad(), 261);
  EXPECT_EQ((*tok)->vocab().pre_type, PreTokenizerType::kQwen2);
  auto tmpl = find_chat_template(**tok, dir.path().string(), "");
  ASSERT_TRUE(tmpl.ok());
  EXPECT_EQ(*tmpl, "{{ jinja }}");

  // tokenizer_config.json's template wins over chat_template.jinja.
  write_file(dir.path() / "tokenizer_config.json", R"({"eos_token": "<|im_end|>", "chat_template": "CONFIG"})");
  auto file = open_tokenizer((dir.path() / "tokenizer.json").string());
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ((*file)->vocab().chat_template, "CONFIG");

  // Errors name the folder and the file.
  write_file(dir.path() / "config.json", R"({"vocab_size": "big"})");
  auto bad_config = open_tokenizer(dir.path().string());
  ASSERT_FALSE(bad_config.ok());
  EXPECT_EQ(bad_config.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad_config.status().message().find("config.json: vocab_size"), std::string::npos)
      << bad_config.status().message();
  std::filesystem::remove(dir.path() / "config.json");
  write_file(dir.path() / "tokenizer.json", "{\"model\": {}}");
  auto bad = open_tokenizer(dir.path().string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir.path().string()), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("tokenizer.json: model.type is missing"), std::string::npos)
      << bad.status().message();

  test::TempDir empty;
  auto none = open_tokenizer(empty.path().string());
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("tokenizer.json"), std::string::npos);

  auto missing = open_tokenizer((empty.path() / "nope").string());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  write_file(empty.path() / "vocab.txt", "hello");
  auto other = open_tokenizer((empty.path() / "vocab.txt").string());
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
}

TEST(OpenTokenizer, GgufStillLoads) {
  BW_TESTDATA_OR_SKIP(path, "tokenizer/ggml-vocab-gpt-2.gguf");
  auto tok = open_tokenizer(path.string());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ((*tok)->vocab().pre, "gpt-2");
}

}  // namespace
}  // namespace bw
