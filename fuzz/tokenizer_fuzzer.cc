// libFuzzer target for the tokenizers: encode arbitrary bytes (invalid UTF-8 included)
// with parse_special on and off, then decode. Nothing may crash; every id must be in the
// vocabulary; decoded text must be valid UTF-8; the streaming detokenizer must add up to
// decode(); and decode(encode(x)) == x must hold where it should: byte-level BPE for any
// valid UTF-8 x, SentencePiece (byte fallback) for valid UTF-8 without U+2581 or special
// tokens. Every pre-tokenizer's words must also cover its input exactly, and SentencePiece's
// segment-by-segment merging must equal llama.cpp's whole-text merging.
//
// The first input byte picks the vocab and the flags; the rest is the text. Vocabs are
// loaded once from $BW_TESTDATA/tokenizer (Qwen2, Llama-2 SPM, BERT, DeepSeek-LLM), or,
// when the test data is absent, built in code (a small byte-level BPE and SPM vocab).
// Seeds: fuzz/corpus/tokenizer/.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

namespace fs = std::filesystem;

std::optional<fs::path> find_tokenizer_dir() {
  if (const char* env = std::getenv("BW_TESTDATA")) return fs::path(env) / "tokenizer";
  std::vector<fs::path> starts = {fs::current_path()};
  std::error_code ec;
  if (auto exe = fs::read_symlink("/proc/self/exe", ec); !ec) starts.push_back(exe.parent_path());
  for (fs::path dir : starts) {
    for (int up = 0; up < 6 && !dir.empty(); ++up, dir = dir.parent_path()) {
      if (fs::exists(dir / "shared/testdata/tokenizer")) return dir / "shared/testdata/tokenizer";
      if (fs::exists(dir / "../shared/testdata/tokenizer")) return dir / "../shared/testdata/tokenizer";
    }
  }
  return std::nullopt;
}

std::string mapped(uint8_t b) {
  std::string s;
  bw::unicode::append_utf8(&s, bw::unicode::byte_to_codepoint(b));
  return s;
}

// A byte-level BPE vocab: the 256 byte characters, a few merges, a control and an added token.
bw::Vocab builtin_bpe() {
  bw::Vocab v;
  v.type = bw::VocabType::kBpe;
  v.model = "gpt2";
  v.pre_type = bw::PreTokenizerType::kLlama3;
  for (int b = 0; b < 256; ++b)
    v.tokens.push_back({mapped(static_cast<uint8_t>(b)), 0.0f, bw::kAttrNormal});
  const std::string sp = mapped(' ');
  for (const char* merge : {"t h", "th e", "i n", "e r", "a n"})
    v.merges.push_back(merge);
  v.merges.push_back(sp + " t");
  v.merges.push_back(sp + "t he");
  for (const std::string& t : {std::string("th"), std::string("the"), std::string("in"), std::string("er"),
                               std::string("an"), sp + "t", sp + "the"}) {
    v.tokens.push_back({t, 0.0f, bw::kAttrNormal});
  }
  v.tokens.push_back({"<|eot|>", 0.0f, bw::kAttrControl});
  v.tokens.push_back({"<tool>", 0.0f, bw::kAttrUserDefined});
  v.eos_id = static_cast<int32_t>(v.tokens.size()) - 2;
  v.eog_ids = {v.eos_id};
  return v;
}

// A SentencePiece vocab: <unk> <s> </s>, the 256 byte tokens and a few pieces.
bw::Vocab builtin_spm() {
  bw::Vocab v;
  v.type = bw::VocabType::kSpm;
  v.model = "llama";
  v.tokens = {{"<unk>", 0.0f, bw::kAttrUnknown}, {"<s>", 0.0f, bw::kAttrControl}, {"</s>", 0.0f, bw::kAttrControl}};
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back({std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", 0.0f, bw::kAttrByte});
  }
  float score = -1.0f;
  for (const char* piece :
       {"\xE2\x96\x81", "\xE2\x96\x81t", "h", "e", "t", "he", "\xE2\x96\x81the", "\xE2\x96\x81th"}) {
    v.tokens.push_back({piece, score, bw::kAttrNormal});
    score -= 1.0f;
  }
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_bos = true;
  v.add_space_prefix = true;
  v.eog_ids = {2};
  return v;
}

struct Fixture {
  std::vector<std::unique_ptr<bw::Tokenizer>> tokenizers;
  std::vector<std::unique_ptr<bw::SpmModel>> spm_models;  // per tokenizer (SPM only), for the whole-text check
  std::vector<bw::PreTokenizer> pre_tokenizers;
};

Fixture* make_fixture() {
  auto* f = new Fixture();
  if (auto dir = find_tokenizer_dir()) {
    for (const char* name : {"ggml-vocab-qwen2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-bert-bge.gguf",
                             "ggml-vocab-deepseek-llm.gguf"}) {
      auto gguf = bw::GgufFile::open((*dir / name).string());
      if (!gguf.ok()) continue;
      auto tok = bw::Tokenizer::from_gguf(*gguf);
      if (!tok.ok()) __builtin_trap();  // the test data must load
      f->tokenizers.push_back(std::move(tok).value());
    }
  }
  if (f->tokenizers.empty()) {
    for (bw::Vocab v : {builtin_bpe(), builtin_spm()}) {
      auto tok = bw::Tokenizer::from_vocab(std::move(v));
      if (!tok.ok()) __builtin_trap();
      f->tokenizers.push_back(std::move(tok).value());
    }
  }
  for (const auto& tok : f->tokenizers) {
    f->spm_models.push_back(tok->vocab().type == bw::VocabType::kSpm ? std::make_unique<bw::SpmModel>(tok->vocab())
                                                                     : nullptr);
  }
  for (int t = 0; t <= static_cast<int>(bw::PreTokenizerType::kGpt4o); ++t) {
    auto p = bw::PreTokenizer::create(static_cast<bw::PreTokenizerType>(t));
    if (!p.ok()) __builtin_trap();
    f->pre_tokenizers.push_back(std::move(p).value());
  }
  return f;
}

const Fixture& fixture() {
  static const Fixture* f = make_fixture();
  return *f;
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  (void)fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Fixture& f = fixture();
  const uint8_t control = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool parse_special = control & 1;
  const bool add_special = control & 2;
  const bool skip_special = control & 4;
  const bool continuation = control & 0x40;
  const size_t which = (control >> 3) % f.tokenizers.size();
  const bw::Tokenizer& tok = *f.tokenizers[which];

  const std::vector<int32_t> ids = tok.encode(text, add_special, parse_special);
  for (int32_t id : ids)
    check(tok.vocab().valid_id(id));

  const std::string decoded = tok.decode(ids, skip_special, continuation);
  check(bw::unicode::is_valid_utf8(decoded));
  bw::StreamingDetokenizer stream(tok, skip_special, continuation);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string delta = stream.push(id);
    check(bw::unicode::is_valid_utf8(delta));
    streamed += delta;
  }
  streamed += stream.flush();
  check(streamed == decoded);

  // Round trips.
  if (!add_special && bw::unicode::is_valid_utf8(text)) {
    const std::string shown = tok.decode(ids);
    switch (tok.vocab().type) {
      case bw::VocabType::kBpe:
        check(shown == text);
        break;
      case bw::VocabType::kSpm:
        if (!parse_special && text.find("\xE2\x96\x81") == std::string_view::npos) check(shown == text);
        break;
      case bw::VocabType::kWpm:
        break;  // lowercases, drops accents and control characters
    }
  }

  // SentencePiece: merging segment by segment (cached) equals merging the whole text.
  if (const bw::SpmModel* spm = f.spm_models[which].get()) {
    std::string escaped;
    for (char c : text)
      escaped += c == ' ' ? std::string_view("\xE2\x96\x81") : std::string_view(&c, 1);
    std::vector<int32_t> segmented, whole;
    spm->encode(escaped, &segmented);
    spm->encode_whole(escaped, &whole);
    check(segmented == whole);
  }

  // Pre-tokenizers: the words cover the (canonical) text, none is empty.
  const std::string canonical = bw::unicode::canonicalize(text);
  const auto& pre = f.pre_tokenizers[(control >> 3) % f.pre_tokenizers.size()];
  std::vector<std::string_view> words;
  pre.split(canonical, &words);
  size_t offset = 0;
  for (std::string_view w : words) {
    check(!w.empty() && w.data() == canonical.data() + offset);
    offset += w.size();
  }
  check(offset == canonical.size());
  return 0;
}
