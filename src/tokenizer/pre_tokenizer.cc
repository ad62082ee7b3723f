#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <utility>

#include "tokenizer/pre_tokenizer_scanners.h"
#include "tokenizer/unicode.h"

namespace bw {
namespace {

// --- The patterns, as llama.cpp writes them (llm_tokenizer_bpe) ------------------------

constexpr std::string_view kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Llama 3's with \p{N} for \p{N}{1,3}.
constexpr std::string_view kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kBloomRegex = R"( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+)";
// deepseek-llm's letters: the cased letters of its tokenizer.json, as code point ranges.
constexpr std::string_view kDeepseekLlmLetters =
    R"(\s?[\x{41}-\x{5A}\x{61}-\x{7A}\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293})"
    R"(\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1})"
    R"(\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD})"
    R"(\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15})"
    R"(\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D})"
    R"(\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB})"
    R"(\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D})"
    R"(\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E})"
    R"(\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D})"
    R"(\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06})"
    R"(\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB})"
    R"(\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
constexpr std::string_view kCjkRegex = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

// --- Names -----------------------------------------------------------------------------

struct NamedPreTokenizer {
  std::string_view name;
  PreTokenizerInfo info;
};

constexpr PreTokenizerInfo info(PreTokenizerType type, bool clean_spaces = true) {
  PreTokenizerInfo i;
  i.type = type;
  i.clean_spaces = clean_spaces;
  return i;
}

PreTokenizerInfo with(PreTokenizerInfo i, bool ignore_merges, bool add_bos, bool add_sep = false, bool no_bos = false) {
  i.ignore_merges = ignore_merges;
  i.add_bos = add_bos;
  i.add_sep = add_sep;
  i.no_bos = no_bos;
  return i;
}

const std::vector<NamedPreTokenizer>& named_pre_tokenizers() {
  using T = PreTokenizerType;
  static const std::vector<NamedPreTokenizer> names = {
      {"default", info(T::kDefault)},
      {"llama3", with(info(T::kLlama3), true, true)},
      {"llama-v3", with(info(T::kLlama3), true, true)},
      {"llama-bpe", with(info(T::kLlama3), true, true)},
      {"falcon3", with(info(T::kLlama3), true, true)},
      {"pixtral", with(info(T::kLlama3), true, true)},
      {"dbrx", info(T::kLlama3)},
      {"smaug-bpe", info(T::kLlama3)},
      {"chatglm-bpe", with(info(T::kLlama3), false, false, false, true)},
      {"deepseek-llm", info(T::kDeepseekLlm, false)},
      {"deepseek-coder", info(T::kDeepseekCoder, false)},
      {"deepseek-v3", info(T::kDeepseek3, false)},
      {"falcon", info(T::kFalcon)},
      {"mpt", info(T::kGpt2)},
      {"gpt-2", info(T::kGpt2)},
      {"phi-2", info(T::kGpt2)},
      {"jina-es", info(T::kGpt2)},
      {"jina-de", info(T::kGpt2)},
      {"gigachat", info(T::kGpt2)},
      {"jina-v2-es", info(T::kGpt2)},
      {"jina-v2-de", info(T::kGpt2)},
      {"jina-v1-en", with(info(T::kGpt2), false, false, true)},
      {"jina-v2-code", with(info(T::kGpt2), false, false, true)},
      {"roberta-bpe", with(info(T::kGpt2), false, false, true)},
      {"olmo", info(T::kGpt2)},
      {"jais", info(T::kGpt2)},
      {"starcoder", info(T::kStarcoder)},
      {"refact", info(T::kStarcoder)},
      {"command-r", info(T::kStarcoder, false)},
      {"smollm", info(T::kStarcoder, false)},
      {"codeshell", info(T::kStarcoder)},
      {"exaone", info(T::kStarcoder)},
      {"minerva-7b", info(T::kStarcoder)},
      {"qwen2", info(T::kQwen2, false)},
      {"deepseek-r1-qwen", info(T::kQwen2, false)},
      {"megrez", info(T::kQwen2)},
      {"stablelm2", info(T::kQwen2)},
      {"poro-chat", info(T::kBloom, false)},
      {"bloom", info(T::kBloom)},
      {"gpt3-finnish", info(T::kBloom)},
      {"viking", info(T::kViking, false)},
      {"tekken", with(info(T::kTekken, false), true, true)},
      {"chameleon", with(info(T::kChameleon, false), false, true)},
      {"gpt-4o", info(T::kGpt4o, false)},
  };
  return names;
}

// --- Category collapsing (llama.cpp's unicode_regex_split) ---------------------------

constexpr char kCollapsedNumber = '\xD1';
constexpr char kCollapsedLetter = '\xD2';
constexpr char kCollapsedPunctuation = '\xD3';
constexpr char kCollapsedMark = '\xD4';
constexpr char kCollapsedSymbol = '\xD5';
constexpr char kCollapsedOther = '\xD0';

// The byte standing for a code point in the collapsed text.
char collapse(uint32_t cp, uint16_t flags) {
  if (cp < 0x80) return static_cast<char>(cp);
  if (flags & unicode::kWhitespace) return '\x0B';
  switch (flags & unicode::kCategoryMask) {
    case unicode::kNumber:
      return kCollapsedNumber;
    case unicode::kLetter:
      return kCollapsedLetter;
    case unicode::kPunctuation:
      return kCollapsedPunctuation;
    case unicode::kMark:
      return kCollapsedMark;
    case unicode::kSymbol:
      return kCollapsedSymbol;
    default:
      return kCollapsedOther;
  }
}

struct CategoryClass {
  std::string_view name;
  char byte;
  std::string_view ascii;  // the ASCII members, in class syntax
};

constexpr std::array<CategoryClass, 10> kCategoryClasses = {{
    {R"(\p{N})", kCollapsedNumber, "0-9"},
    {R"(\p{L})", kCollapsedLetter, "A-Za-z"},
    {R"(\p{P})", kCollapsedPunctuation, R"(!-#%-*,-/:-;?-@\[-\]_\{\})"},
    {R"(\p{M})", kCollapsedMark, ""},
    {R"(\p{S})", kCollapsedSymbol, R"(\$\+<->^`\|)"},
    {R"(\p{Lu})", kCollapsedLetter, "A-Za-z"},
    {R"(\p{Ll})", kCollapsedLetter, "A-Za-z"},
    {R"(\p{Lt})", kCollapsedLetter, "A-Za-z"},
    {R"(\p{Lm})", kCollapsedLetter, "A-Za-z"},
    {R"(\p{Lo})", kCollapsedLetter, "A-Za-z"},
}};

bool uses_categories(std::string_view regex) {
  for (const auto& c : kCategoryClasses) {
    if (regex.find(c.name) != std::string_view::npos) return true;
  }
  return false;
}

// Rewrites \p{X} as a class of X's collapsed byte and its ASCII members.
std::string collapse_pattern(std::string_view regex) {
  std::string out;
  bool inside = false;  // within [...]; classes do not nest
  for (size_t i = 0; i < regex.size(); ++i) {
    const char c = regex[i];
    if (c == '[' && (i == 0 || regex[i - 1] != '\\')) {
      out += '[';
      inside = true;
      continue;
    }
    if (inside && c == ']' && regex[i - 1] != '\\') {
      out += ']';
      inside = false;
      continue;
    }
    if (c == '\\' && i + 3 < regex.size() && regex[i + 1] == 'p' && regex[i + 2] == '{') {
      const size_t close = regex.find('}', i + 3);
      if (close != std::string_view::npos && close <= i + 10) {
        const std::string_view name = regex.substr(i, close - i + 1);
        const CategoryClass* found = nullptr;
        for (const auto& cc : kCategoryClasses) {
          if (cc.name == name) found = &cc;
        }
        if (found != nullptr) {
          if (!inside) out += '[';
          out += found->byte;
          out += found->ascii;
          if (!inside) out += ']';
          i = close;
          continue;
        }
      }
    }
    out += c;
  }
  return out;
}

// --- Per-thread scratch ------------------------------------------------------------------

struct MatchDataDeleter {
  void operator()(pcre2_match_data* p) const { pcre2_match_data_free(p); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* p) const { pcre2_match_context_free(p); }
};
struct JitStackDeleter {
  void operator()(pcre2_jit_stack* p) const { pcre2_jit_stack_free(p); }
};

struct Scratch {
  std::vector<uint32_t> cps;
  std::vector<uint16_t> flags;
  std::string collapsed;               // one byte per code point
  std::string wide;                    // UTF-8 with non-ASCII whitespace as \v
  std::vector<uint32_t> wide_offsets;  // byte offset in `wide` of each code point, and the end
  std::vector<uint32_t> pieces, next;  // piece lengths in code points
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> match_data;
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> match_context;
  std::unique_ptr<pcre2_jit_stack, JitStackDeleter> jit_stack;

  Scratch() {
    match_data.reset(pcre2_match_data_create(32, nullptr));
    match_context.reset(pcre2_match_context_create(nullptr));
    jit_stack.reset(pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr));
    if (match_context && jit_stack) pcre2_jit_stack_assign(match_context.get(), nullptr, jit_stack.get());
  }
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

// --- Stages ------------------------------------------------------------------------------

struct PreTokenizer::Stage {
  enum class Kind { kGpt2, kLlama3, kQwen2, kCollapsedRegex, kWideRegex };
  Kind kind = Kind::kGpt2;
  pcre2_code* code = nullptr;

  Stage() = default;
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;
  ~Stage() { pcre2_code_free(code); }

  void run(Scratch& s, uint32_t begin, uint32_t end, std::vector<uint32_t>* out) const;
  void run_custom(const Scratch& s, uint32_t begin, uint32_t end, std::vector<uint32_t>* out) const;
  void run_regex(Scratch& s, uint32_t begin, uint32_t end, std::vector<uint32_t>* out) const;
};

void PreTokenizer::Stage::run(Scratch& s, uint32_t begin, uint32_t end, std::vector<uint32_t>* out) const {
  if (kind == Kind::kCollapsedRegex || kind == Kind::kWideRegex) {
    run_regex(s, begin, end, out);
  } else {
    run_custom(s, begin, end, out);
  }
}

void PreTokenizer::Stage::run_custom(const Scratch& s, uint32_t begin, uint32_t end, std::vector<uint32_t>* out) const {
  switch (kind) {
    case Kind::kGpt2:
      pretok::scan_gpt2(s.cps.data(), s.flags.data(), begin, end, out);
      break;
    case Kind::kLlama3:
      pretok::scan_llama3(s.cps.data(), s.flags.data(), begin, end, 3, out);
      break;
    case Kind::kQwen2:
      pretok::scan_llama3(s.cps.data(), s.flags.data(), begin, end, 1, out);
      break;
    default:
      break;
  }
}

// llama.cpp's unicode_regex_split_stl for one fragment: every match, and the text between
// matches, becomes a piece. The fragment is the whole subject (so `$` and lookaheads end
// there). A matching error (JIT stack exhausted on a pathological input) leaves the rest
// of the fragment as one piece.
void PreTokenizer::Stage::run_regex(Scratch& s, uint32_t begin, uint32_t end, std::vector<uint32_t>* out) const {
  const bool wide = kind == Kind::kWideRegex;
  const char* text = wide ? s.wide.data() + s.wide_offsets[begin] : s.collapsed.data() + begin;
  const size_t length = wide ? s.wide_offsets[end] - s.wide_offsets[begin] : end - begin;
  // Byte offset in the subject -> code point offset in the fragment (a forward cursor).
  uint32_t cursor_cp = begin;
  auto to_cp = [&](size_t byte) -> uint32_t {
    if (!wide) return begin + static_cast<uint32_t>(byte);
    while (s.wide_offsets[cursor_cp] - s.wide_offsets[begin] < byte)
      ++cursor_cp;
    return cursor_cp;
  };
  pretok::PieceSink sink(begin, out);
  size_t start = 0;
  const uint32_t options = wide ? PCRE2_NO_UTF_CHECK : 0;
  while (start < length) {
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text), length, start, options, s.match_data.get(),
                               s.match_context.get());
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH, or a resource limit
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(s.match_data.get());
    const size_t match_begin = ovector[0];
    const size_t match_end = ovector[1];
    if (match_end <= match_begin) {  // an empty match: no piece, try one character later
      start = match_begin + (wide ? unicode::sequence_length(static_cast<uint8_t>(text[match_begin])) : 1);
      continue;
    }
    sink.end_at(to_cp(match_begin));
    sink.end_at(to_cp(match_end));
    start = match_end;
  }
  sink.end_at(end);
}

// --- PreTokenizer ------------------------------------------------------------------------

std::optional<PreTokenizerInfo> pre_tokenizer_info(std::string_view name) {
  for (const auto& n : named_pre_tokenizers()) {
    if (n.name == name) return n.info;
  }
  return std::nullopt;
}

std::string_view pre_tokenizer_type_name(PreTokenizerType type) {
  switch (type) {
    case PreTokenizerType::kDefault:
      return "default";
    case PreTokenizerType::kGpt2:
      return "gpt-2";
    case PreTokenizerType::kLlama3:
      return "llama3";
    case PreTokenizerType::kQwen2:
      return "qwen2";
    case PreTokenizerType::kDeepseekLlm:
      return "deepseek-llm";
    case PreTokenizerType::kDeepseekCoder:
      return "deepseek-coder";
    case PreTokenizerType::kDeepseek3:
      return "deepseek-v3";
    case PreTokenizerType::kFalcon:
      return "falcon";
    case PreTokenizerType::kStarcoder:
      return "starcoder";
    case PreTokenizerType::kBloom:
      return "bloom";
    case PreTokenizerType::kViking:
      return "viking";
    case PreTokenizerType::kTekken:
      return "tekken";
    case PreTokenizerType::kChameleon:
      return "chameleon";
    case PreTokenizerType::kGpt4o:
      return "gpt-4o";
  }
  return "unknown";
}

std::vector<std::string> pre_tokenizer_regexes(PreTokenizerType type) {
  using T = PreTokenizerType;
  const std::string gpt2(kGpt2Regex);
  switch (type) {
    case T::kDefault:
      return {R"([\p{P}\$\+<=>\^~\|]+)", gpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"};
    case T::kGpt2:
      return {gpt2};
    case T::kLlama3:
      return {std::string(kLlama3Regex)};
    case T::kQwen2:
      return {std::string(kQwen2Regex)};
    case T::kDeepseekLlm:
      return {"[\r\n]",
              std::string(kDeepseekLlmLetters),
              R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)",
              R"(\s+$)",
              std::string(kCjkRegex),
              R"(\p{N}+)"};
    case T::kDeepseekCoder:
      return {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", std::string(kCjkRegex), R"(\p{N})"};
    case T::kDeepseek3:
      return {R"(\p{N}{1,3})", R"([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)",
              "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
              "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"};
    case T::kFalcon:
      return {R"([\p{P}\$\+<=>\^~\|]+)", gpt2, "[0-9][0-9][0-9]"};
    case T::kStarcoder:
      return {R"(\p{N})", gpt2};
    case T::kBloom:
      return {std::string(kBloomRegex)};
    case T::kViking:
      return {std::string(kBloomRegex), R"(\p{N})"};
    case T::kTekken:
      return {
          R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+)"
          R"(((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
    case T::kChameleon:
      return {"<sentinel:[0-9]+>",       "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
              "([\\t\\n]|    |  )",      R"(\p{N})",
              R"([\p{P}!-/:-@\[-`{-~])", gpt2};
    case T::kGpt4o:
      return {R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+)"
              R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+)"
              R"(((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?)"
              R"([^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  }
  return {};
}

Result<PreTokenizer> PreTokenizer::create(PreTokenizerType type, bool force_regex) {
  PreTokenizer p;
  p.type_ = type;
  uint32_t jit_supported = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &jit_supported);
  for (const std::string& regex : pre_tokenizer_regexes(type)) {
    auto stage = std::make_unique<Stage>();
    if (!force_regex && regex == kGpt2Regex) {
      stage->kind = Stage::Kind::kGpt2;
    } else if (!force_regex && regex == kLlama3Regex) {
      stage->kind = Stage::Kind::kLlama3;
    } else if (!force_regex && regex == kQwen2Regex) {
      stage->kind = Stage::Kind::kQwen2;
    } else {
      const bool collapsed = uses_categories(regex);
      stage->kind = collapsed ? Stage::Kind::kCollapsedRegex : Stage::Kind::kWideRegex;
      const std::string pattern = collapsed ? collapse_pattern(regex) : regex;
      const uint32_t options = PCRE2_DOLLAR_ENDONLY | (collapsed ? 0u : PCRE2_UTF);
      int error = 0;
      PCRE2_SIZE error_offset = 0;
      stage->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                  &error_offset, nullptr);
      if (stage->code == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error, message, sizeof(message));
        return Internal("pre-tokenizer '{}': regex '{}' does not compile at offset {}: {}",
                        pre_tokenizer_type_name(type), regex, error_offset, reinterpret_cast<const char*>(message));
      }
      if (jit_supported != 0) pcre2_jit_compile(stage->code, PCRE2_JIT_COMPLETE);  // else: interpreted
      (collapsed ? p.needs_collapsed_ : p.needs_wide_) = true;
    }
    p.stages_.push_back(std::move(stage));
  }
  return p;
}

PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>* words) const {
  if (text.empty()) return;
  Scratch& s = scratch();
  // Decode into code points and their flags.
  s.cps.clear();
  s.flags.clear();
  const auto& flag_table = unicode::FlagTable::get();
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const uint32_t cp = unicode::decode(text.data() + i, text.size() - i, &len);
    s.cps.push_back(cp);
    s.flags.push_back(flag_table(cp));
    i += len;
  }
  const size_t n = s.cps.size();
  if (needs_collapsed_) {
    s.collapsed.resize(n);
    for (size_t i = 0; i < n; ++i)
      s.collapsed[i] = collapse(s.cps[i], s.flags[i]);
  }
  if (needs_wide_) {
    s.wide.clear();
    s.wide_offsets.resize(n + 1);
    for (size_t i = 0; i < n; ++i) {
      s.wide_offsets[i] = static_cast<uint32_t>(s.wide.size());
      uint32_t cp = s.cps[i];
      if (cp >= 0x80 && (s.flags[i] & unicode::kWhitespace)) cp = 0x0B;
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFF;  // a surrogate: matched by no class we use, like std::wregex
      unicode::append_utf8(&s.wide, cp);
    }
    s.wide_offsets[n] = static_cast<uint32_t>(s.wide.size());
  }

  s.pieces.assign(1, static_cast<uint32_t>(n));
  for (const auto& stage : stages_) {
    s.next.clear();
    uint32_t begin = 0;
    for (uint32_t len : s.pieces) {
      stage->run(s, begin, begin + len, &s.next);
      begin += len;
    }
    std::swap(s.pieces, s.next);
  }

  // Code point lengths -> byte spans of `text`.
  size_t byte = 0;
  for (uint32_t len : s.pieces) {
    const size_t start = byte;
    for (uint32_t k = 0; k < len; ++k)
      byte += unicode::sequence_length(static_cast<uint8_t>(text[byte]));
    words->push_back(text.substr(start, byte - start));
  }
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string_view> views;
  split(text, &views);
  return {views.begin(), views.end()};
}

}  // namespace bw
