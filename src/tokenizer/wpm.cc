#include "tokenizer/wpm.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace bw {
namespace {

// BERT's CJK ideograph ranges (with the HF upper bound quirk for extension C..E).
bool is_chinese_char(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

}  // namespace

WpmModel::WpmModel(const Vocab& vocab) : vocab_(vocab) {
  for (const auto& t : vocab.tokens)
    max_token_len_ = std::max(max_token_len_, t.text.size());
}

std::vector<std::string> WpmModel::split_words(std::string_view text) const {
  std::vector<std::string> words(1);
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    uint32_t cp = unicode::decode(text.data() + i, text.size() - i, &len);
    i += len;
    if (vocab_.wpm_strip_accents) cp = unicode::nfd_first(cp);
    const uint16_t f = unicode::flags(cp);
    if (f & unicode::kWhitespace) {
      if (!words.back().empty()) words.emplace_back();
      continue;
    }
    if (cp == 0 || cp == unicode::kReplacementChar || (f & unicode::kControl)) continue;
    if (vocab_.wpm_strip_accents && (f & unicode::kMark)) continue;
    std::string s;
    unicode::append_utf8(&s, vocab_.wpm_lowercase ? unicode::to_lower(cp) : cp);
    if ((f & unicode::kPunctuation) || (cp < 0x7F && (f & unicode::kSymbol)) || is_chinese_char(cp)) {
      if (!words.back().empty()) words.emplace_back();
      words.back() = std::move(s);  // a word of its own
      words.emplace_back();
    } else {
      words.back() += s;
    }
  }
  if (words.back().empty()) words.pop_back();
  return words;
}

void WpmModel::encode(std::string_view text, std::vector<int32_t>* out) const {
  std::string word;
  for (const std::string& w : split_words(text)) {
    if (w.empty()) continue;
    word.assign("\xE2\x96\x81");  // the word-initial marker
    word += w;
    const size_t n = word.size();
    const size_t before = out->size();
    for (size_t i = 0; i < n; ++i) {
      bool matched = false;
      for (size_t j = std::min(n, i + max_token_len_ + 1); j > i; --j) {
        const int32_t id = vocab_.find(std::string_view(word).substr(i, j - i));
        if (id != kNoToken) {
          out->push_back(id);
          matched = true;
          i = j - 1;
          break;
        }
      }
      if (!matched) {  // the word cannot be covered: drop what was found
        out->resize(before);
        break;
      }
    }
    if (out->size() == before && vocab_.valid_id(vocab_.unk_id)) out->push_back(vocab_.unk_id);
  }
}

}  // namespace bw
