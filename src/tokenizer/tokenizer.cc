#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <utility>

#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/spm.h"
#include "tokenizer/text_util.h"
#include "tokenizer/unicode.h"
#include "tokenizer/wpm.h"

namespace bw {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581, SentencePiece's space

bool is_c_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// A byte-level BPE token's bytes: each character mapped back through GPT-2's byte map;
// characters outside it are shown as llama.cpp shows them.
std::string unmap_byte_level(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const uint32_t cp = unicode::decode(text.data() + i, text.size() - i, &len);
    i += len;
    if (const int b = unicode::codepoint_to_byte(cp); b >= 0) {
      out.push_back(static_cast<char>(b));
      continue;
    }
    std::string utf8;
    unicode::append_utf8(&utf8, cp);
    out += "[UNK_BYTE_0x";
    for (char c : utf8)
      out += fmt::format("{:02x}", static_cast<uint8_t>(c));
    out += text + "]";
  }
  return out;
}

}  // namespace

// --- Special tokens ----------------------------------------------------------------------

// Finds special tokens in text the way llama.cpp's tokenizer_st_partition does: tokens
// in priority order (longest text first), each one cutting every remaining piece of raw
// text at all its non-overlapping occurrences, left to right. Equivalently: list every
// occurrence of every special token once, then accept them in (priority, position) order
// unless they overlap text already taken.
class Tokenizer::SpecialMatcher {
 public:
  explicit SpecialMatcher(const Vocab& vocab) : vocab_(vocab) {
    for (size_t id = 0; id < vocab.size(); ++id) {
      if (vocab.tokens[id].attr & (kAttrControl | kAttrUserDefined | kAttrUnknown)) {
        order_.push_back(static_cast<int32_t>(id));
      }
    }
    std::stable_sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
      return vocab.tokens[static_cast<size_t>(a)].text.size() > vocab.tokens[static_cast<size_t>(b)].text.size();
    });
    for (size_t prio = 0; prio < order_.size(); ++prio) {
      const VocabToken& t = vocab.tokens[static_cast<size_t>(order_[prio])];
      const auto first = static_cast<uint8_t>(t.text[0]);
      by_first_byte_[1][first].push_back(static_cast<uint32_t>(prio));
      // Without parse_special, CONTROL and UNKNOWN tokens are plain text.
      if (!(t.attr & (kAttrControl | kAttrUnknown))) by_first_byte_[0][first].push_back(static_cast<uint32_t>(prio));
    }
    for (int mode = 0; mode < 2; ++mode) {
      for (int b = 0; b < 256; ++b) {
        is_first_byte_[mode][b] = !by_first_byte_[mode][b].empty();
        any_[mode] = any_[mode] || is_first_byte_[mode][b];
      }
    }
  }

  void partition(std::string_view text, bool parse_special, std::vector<Fragment>* out) const {
    const int mode = parse_special ? 1 : 0;
    if (!any_[mode]) {
      out->push_back({0, text.size(), kNoToken});
      return;
    }
    const auto& lists = by_first_byte_[mode];
    const auto& is_first = is_first_byte_[mode];
    thread_local std::vector<std::pair<uint32_t, size_t>> candidates;  // (priority, position)
    candidates.clear();
    for (size_t pos = 0; pos < text.size(); ++pos) {
      if (!is_first[static_cast<uint8_t>(text[pos])]) continue;
      for (uint32_t prio : lists[static_cast<uint8_t>(text[pos])]) {
        const std::string& t = vocab_.tokens[static_cast<size_t>(order_[prio])].text;
        if (t.size() <= text.size() - pos && std::memcmp(text.data() + pos, t.data(), t.size()) == 0) {
          candidates.emplace_back(prio, pos);
        }
      }
    }
    if (candidates.empty()) {
      out->push_back({0, text.size(), kNoToken});
      return;
    }
    std::sort(candidates.begin(), candidates.end());

    struct Taken {
      size_t end;  // the token plus the whitespace it strips
      size_t token_begin;
      size_t token_end;
      int32_t id;
    };
    std::map<size_t, Taken> taken;  // by begin
    for (const auto& [prio, pos] : candidates) {
      const int32_t id = order_[prio];
      const size_t end = pos + vocab_.tokens[static_cast<size_t>(id)].text.size();
      auto next = taken.lower_bound(pos);
      const size_t next_begin = next == taken.end() ? text.size() : next->first;
      const size_t prev_end = next == taken.begin() ? 0 : std::prev(next)->second.end;
      if (pos < prev_end || end > next_begin) continue;  // overlaps text already taken
      const uint32_t attr = vocab_.tokens[static_cast<size_t>(id)].attr;
      size_t begin = pos;
      size_t stop = end;
      if (attr & kAttrLstrip) {
        while (begin > prev_end && is_c_space(text[begin - 1]))
          --begin;
      }
      if (attr & kAttrRstrip) {
        while (stop < next_begin && is_c_space(text[stop]))
          ++stop;
      }
      taken.emplace(begin, Taken{stop, pos, end, id});
    }
    size_t cursor = 0;
    for (const auto& [begin, t] : taken) {
      if (begin > cursor) out->push_back({cursor, begin, kNoToken});
      out->push_back({t.token_begin, t.token_end, t.id});
      cursor = t.end;
    }
    if (cursor < text.size()) out->push_back({cursor, text.size(), kNoToken});
  }

 private:
  const Vocab& vocab_;
  std::vector<int32_t> order_;                                           // special token ids by priority
  std::array<std::array<std::vector<uint32_t>, 256>, 2> by_first_byte_;  // [parse_special][byte] -> priorities
  std::array<std::array<bool, 256>, 2> is_first_byte_{};
  std::array<bool, 2> any_{};
};

// --- Construction ------------------------------------------------------------------------

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {}
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& gguf) {
  ASSIGN_OR_RETURN(Vocab vocab, vocab_from_gguf(gguf));
  auto result = from_vocab(std::move(vocab));
  if (!result.ok()) return result.status().with_context(gguf.name());
  return result;
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_vocab(Vocab vocab) {
  if (vocab.tokens.empty()) return InvalidArgument("vocab has no tokens");
  if (vocab.tokens.size() > static_cast<size_t>(INT32_MAX)) return InvalidArgument("vocab has too many tokens");
  for (size_t i = 0; i < vocab.tokens.size(); ++i) {
    if (vocab.tokens[i].text.empty()) return InvalidArgument("token {} has an empty text", i);
  }
  if (Status s = vocab.build_index(); !s.ok()) return Status(StatusCode::kInvalidArgument, s.message());
  if (vocab.add_bos && !vocab.valid_id(vocab.bos_id)) {
    return InvalidArgument("add_bos is set but bos_id {} is not a token", vocab.bos_id);
  }
  if (vocab.add_eos && !vocab.valid_id(vocab.eos_id)) {
    return InvalidArgument("add_eos is set but eos_id {} is not a token", vocab.eos_id);
  }
  if (vocab.type == VocabType::kWpm && vocab.add_sep && !vocab.valid_id(vocab.sep_id)) {
    return InvalidArgument("add_sep is set but sep_id {} is not a token", vocab.sep_id);
  }
  std::sort(vocab.eog_ids.begin(), vocab.eog_ids.end());
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer(std::move(vocab)));
  RETURN_IF_ERROR(tokenizer->init());
  return tokenizer;
}

Status Tokenizer::init() {
  pieces_.resize(vocab_.size());
  for (size_t id = 0; id < vocab_.size(); ++id) {
    const VocabToken& t = vocab_.tokens[id];
    std::string& piece = pieces_[id];
    if (t.attr & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      piece = t.text;
    } else if (t.attr & kAttrNormal) {
      piece = vocab_.type == VocabType::kBpe ? unmap_byte_level(t.text) : replace_all(t.text, kSpaceMarker, " ");
    } else if (t.attr & kAttrByte) {
      // "<0xXX>"
      const int hi = t.text.size() >= 6 ? hex_value(t.text[3]) : -1;
      const int lo = t.text.size() >= 6 ? hex_value(t.text[4]) : -1;
      if (hi >= 0 && lo >= 0) piece.assign(1, static_cast<char>(hi * 16 + lo));
    }
    // Other types (UNUSED, UNDEFINED) show nothing.
  }
  specials_ = std::make_unique<SpecialMatcher>(vocab_);
  switch (vocab_.type) {
    case VocabType::kBpe: {
      ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::create(vocab_.pre_type));
      pre_tokenizer_ = std::make_unique<PreTokenizer>(std::move(pre));
      ASSIGN_OR_RETURN(bpe_, BpeModel::create(vocab_));
      break;
    }
    case VocabType::kSpm:
      spm_ = std::make_unique<SpmModel>(vocab_);
      break;
    case VocabType::kWpm:
      wpm_ = std::make_unique<WpmModel>(vocab_);
      break;
  }
  return OkStatus();
}

// --- Encoding ----------------------------------------------------------------------------

void Tokenizer::partition(std::string_view text, bool parse_special, std::vector<Fragment>* out) const {
  if (text.empty()) return;
  specials_->partition(text, parse_special, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode(text, add_special, parse_special, &out);
  return out;
}

void Tokenizer::encode_text(std::string_view text, std::vector<int32_t>* out) const {
  switch (vocab_.type) {
    case VocabType::kBpe: {
      std::string canonical;
      if (!unicode::is_canonical(text)) {  // invalid bytes -> U+FFFD, as llama.cpp
        canonical = unicode::canonicalize(text);
        text = canonical;
      }
      thread_local std::vector<std::string_view> words;
      words.clear();
      pre_tokenizer_->split(text, &words);
      for (std::string_view word : words)
        bpe_->encode_word(word, out);
      break;
    }
    case VocabType::kSpm:
      spm_->encode(text, out);
      break;
    case VocabType::kWpm:
      wpm_->encode(text, out);
      break;
  }
}

void Tokenizer::encode(std::string_view text, bool add_special, bool parse_special, std::vector<int32_t>* out) const {
  std::vector<Fragment> fragments;
  partition(text, parse_special, &fragments);
  switch (vocab_.type) {
    case VocabType::kSpm: {
      if (add_special && vocab_.add_bos) out->push_back(vocab_.bos_id);
      bool prev_special = true;  // the text, and text after a special token, get the space prefix
      std::string piece;
      for (const Fragment& f : fragments) {
        if (f.token != kNoToken) {
          out->push_back(f.token);
          prev_special = true;
          continue;
        }
        piece.clear();
        if (vocab_.add_space_prefix && prev_special) piece.push_back(' ');
        piece.append(text.substr(f.begin, f.end - f.begin));
        encode_text(replace_all(piece, " ", kSpaceMarker), out);
        prev_special = false;
      }
      if (add_special && vocab_.add_eos) out->push_back(vocab_.eos_id);
      break;
    }
    case VocabType::kBpe: {
      if (add_special && vocab_.add_bos) out->push_back(vocab_.bos_id);
      for (const Fragment& f : fragments) {
        if (f.token != kNoToken) {
          out->push_back(f.token);
        } else {
          encode_text(text.substr(f.begin, f.end - f.begin), out);
        }
      }
      if (add_special && vocab_.add_eos) out->push_back(vocab_.eos_id);
      break;
    }
    case VocabType::kWpm: {
      if (add_special && vocab_.valid_id(vocab_.bos_id)) out->push_back(vocab_.bos_id);  // [CLS]
      for (const Fragment& f : fragments) {
        if (f.token != kNoToken) {
          out->push_back(f.token);
        } else {
          encode_text(text.substr(f.begin, f.end - f.begin), out);
        }
      }
      if (add_special && vocab_.valid_id(vocab_.sep_id)) out->push_back(vocab_.sep_id);  // [SEP]
      break;
    }
  }
}

// --- Decoding ----------------------------------------------------------------------------

std::string_view Tokenizer::piece(int32_t id, bool skip_special) const {
  if (!vocab_.valid_id(id)) return {};
  if (skip_special && (vocab_.tokens[static_cast<size_t>(id)].attr & (kAttrControl | kAttrUnknown))) return {};
  return pieces_[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special, bool continuation) const {
  bool remove_space = vocab_.add_space_prefix && !continuation;
  if (skip_special && vocab_.add_bos && !ids.empty() && ids.front() == vocab_.bos_id) {
    remove_space = false;
    ids = ids.subspan(1);
  }
  if (skip_special && vocab_.add_eos && !ids.empty() && ids.back() == vocab_.eos_id) ids = ids.first(ids.size() - 1);
  std::string raw;
  for (int32_t id : ids) {
    std::string_view p = piece(id, skip_special);
    if (remove_space && !p.empty() && p.front() == ' ') p.remove_prefix(1);
    remove_space = false;
    raw.append(p);
  }
  std::string text;
  text.reserve(raw.size());
  unicode::append_repaired(&text, raw, /*final=*/true);
  return text;
}

}  // namespace bw
