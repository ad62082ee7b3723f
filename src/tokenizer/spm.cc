#include "tokenizer/spm.h"

#include <algorithm>
#include <queue>
#include <string>

#include "tokenizer/unicode.h"

namespace bw {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581

}  // namespace

SpmModel::SpmModel(const Vocab& vocab) : vocab_(vocab) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
    int32_t id = vocab.find(name);
    if (id == kNoToken) id = vocab.find(std::string(1, static_cast<char>(b)));
    if (id == kNoToken && vocab.valid_id(vocab.unk_id)) id = vocab.unk_id;  // llama.cpp would throw here
    byte_tokens_[b] = id;
  }
  // Can a merge join a character (other than U+2581) to a following U+2581?
  for (const VocabToken& t : vocab.tokens) {
    for (size_t p = t.text.find(kSpaceMarker, 1); p != std::string::npos; p = t.text.find(kSpaceMarker, p + 1)) {
      if (p < kSpaceMarker.size() || t.text.compare(p - kSpaceMarker.size(), kSpaceMarker.size(), kSpaceMarker) != 0) {
        segmentable_ = false;
      }
    }
  }
}

void SpmModel::encode(std::string_view text, std::vector<int32_t>* out) const {
  if (!segmentable_) {
    merge(text, out);
    return;
  }
  // Segments start at each U+2581 symbol that follows another symbol. Symbols are cut as
  // merge() cuts them (by lead byte, so an invalid byte may swallow a following U+2581).
  auto flush = [&](std::string_view segment) {
    if (!WordCache::cacheable(segment)) {
      merge(segment, out);
      return;
    }
    const uint64_t hash = WordCache::hash(segment);
    if (cache_.find(segment, hash, out)) return;
    const size_t before = out->size();
    merge(segment, out);
    cache_.insert(segment, hash, out->data() + before, out->size() - before);
  };
  size_t begin = 0;
  bool prev_is_marker = false;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = std::min(unicode::sequence_length(static_cast<uint8_t>(text[pos])), text.size() - pos);
    const bool is_marker = text.compare(pos, len, kSpaceMarker) == 0;
    if (is_marker && !prev_is_marker && pos > begin) {
      flush(text.substr(begin, pos - begin));
      begin = pos;
    }
    prev_is_marker = is_marker;
    pos += len;
  }
  if (begin < text.size()) flush(text.substr(begin));
}

void SpmModel::merge(std::string_view text, std::vector<int32_t>* out) const {
  struct Symbol {
    uint32_t start;
    uint32_t len;  // 0 once merged into the left neighbour
    int32_t prev;
    int32_t next;
  };
  struct Bigram {
    float score;
    int32_t left;
    int32_t right;
    uint32_t size;
  };
  // Highest score first; on a tie the leftmost.
  struct Lower {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  if (text.empty()) return;
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Bigram> storage;
  symbols.clear();
  for (size_t offset = 0; offset < text.size();) {
    const size_t len = std::min(unicode::sequence_length(static_cast<uint8_t>(text[offset])), text.size() - offset);
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({static_cast<uint32_t>(offset), static_cast<uint32_t>(len), index - 1,
                       offset + len == text.size() ? -1 : index + 1});
    offset += len;
  }
  storage.clear();
  std::priority_queue<Bigram, std::vector<Bigram>, Lower> queue(Lower(), std::move(storage));
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = symbols[left].len + symbols[right].len;
    const int32_t id = vocab_.find(text.substr(symbols[left].start, size));
    if (id == kNoToken) return;
    queue.push({vocab_.tokens[static_cast<size_t>(id)].score, left, right, size});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i)
    try_add(i - 1, i);

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    // Skip pairs one of whose symbols has changed since.
    if (left.len == 0 || right.len == 0 || left.len + right.len != bigram.size) continue;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    try_add(left.prev, bigram.left);
    try_add(bigram.left, left.next);
  }

  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    const std::string_view piece = text.substr(s.start, s.len);
    if (const int32_t id = vocab_.find(piece); id != kNoToken) {
      out->push_back(id);
      continue;
    }
    for (char c : piece) {
      const int32_t id = byte_tokens_[static_cast<uint8_t>(c)];
      if (id != kNoToken) out->push_back(id);
    }
  }
}

}  // namespace bw
