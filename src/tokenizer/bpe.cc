#include "tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "tokenizer/bpe_word_cache.h"
#include "tokenizer/unicode.h"

namespace bw {
namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Words up to this many bytes merge in place with a linear scan for the best pair;
// longer ones (a run of CJK text, a long number) use a heap, as llama.cpp does.
constexpr size_t kShortWord = 64;

}  // namespace

// (left symbol, right symbol) -> (rank, merged symbol), open addressing.
class BpeModel::MergeTable {
 public:
  struct Merge {
    int32_t rank = INT32_MAX;
    int32_t result = kNoToken;
  };

  explicit MergeTable(size_t n) {
    size_t capacity = 16;
    while (capacity < n * 2)
      capacity <<= 1;
    slots_.resize(capacity);
    mask_ = capacity - 1;
  }

  // The first merge of a pair wins, as in llama.cpp (bpe_ranks.emplace).
  void insert(int32_t left, int32_t right, int32_t rank, int32_t result) {
    const uint64_t key = make_key(left, right);
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, {rank, result}};
        return;
      }
      if (slots_[i].key == key) return;
    }
  }

  Merge find(int32_t left, int32_t right) const {
    const uint64_t key = make_key(left, right);
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i].merge;
      if (slots_[i].key == kEmpty) return {};
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge;
  };
  static uint64_t make_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

class BpeModel::RawIndex {
 public:
  StringMap<int32_t> map;
};

BpeModel::BpeModel() = default;
BpeModel::~BpeModel() = default;

Result<std::unique_ptr<BpeModel>> BpeModel::create(const Vocab& vocab) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->num_tokens_ = static_cast<int32_t>(vocab.size());
  m->ignore_merges_ = vocab.ignore_merges;

  StringMap<int32_t> extra;  // symbols that are not tokens
  auto symbol_of = [&](std::string_view text) -> int32_t {
    if (const int32_t id = vocab.find(text); id != kNoToken) return id;
    if (auto it = extra.find(text); it != extra.end()) return it->second;
    const auto id = static_cast<int32_t>(m->num_tokens_ + m->extra_texts_.size());
    m->extra_texts_.emplace_back(text);
    extra.emplace(std::string(text), id);
    return id;
  };

  for (int b = 0; b < 256; ++b) {
    std::string mapped;
    unicode::append_utf8(&mapped, unicode::byte_to_codepoint(static_cast<uint8_t>(b)));
    m->byte_symbol_[b] = symbol_of(mapped);
    m->single_char_token_[b] = vocab.find(std::string(1, static_cast<char>(b)));
  }

  m->merges_ = std::make_unique<MergeTable>(vocab.merges.size());
  std::string joined;
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& line = vocab.merges[rank];
    const size_t space = line.find(' ', 1);
    if (space == std::string::npos || space + 1 >= line.size()) continue;  // unusable, as in llama.cpp
    const std::string_view left(line.data(), space);
    const std::string_view right(line.data() + space + 1, line.size() - space - 1);
    const int32_t l = symbol_of(left);
    const int32_t r = symbol_of(right);
    joined.assign(left);
    joined.append(right);
    m->merges_->insert(l, r, static_cast<int32_t>(rank), symbol_of(joined));
    ++m->num_merges_;
  }
  if (m->num_merges_ == 0 && !vocab.merges.empty()) {
    return InvalidArgument("tokenizer.ggml.merges: none of the {} merges is of the form 'left right'",
                           vocab.merges.size());
  }

  if (m->ignore_merges_) {
    m->whole_words_ = std::make_unique<RawIndex>();
    std::string raw;
    for (size_t id = 0; id < vocab.tokens.size(); ++id) {
      const std::string& text = vocab.tokens[id].text;
      raw.clear();
      bool mappable = true;
      for (size_t i = 0; i < text.size() && mappable;) {
        size_t len = 1;
        const int b = unicode::codepoint_to_byte(unicode::decode(text.data() + i, text.size() - i, &len));
        mappable = b >= 0;
        raw.push_back(static_cast<char>(b));
        i += len;
      }
      if (mappable && !raw.empty()) m->whole_words_->map.emplace(raw, static_cast<int32_t>(id));
    }
  }
  m->cache_ = std::make_unique<WordCache>();
  return m;
}

void BpeModel::emit(int32_t symbol, std::vector<int32_t>* out) const {
  if (symbol < num_tokens_) {
    out->push_back(symbol);
    return;
  }
  // Not a token: llama.cpp looks up each byte of the symbol's (mapped) text on its own.
  for (char c : extra_texts_[static_cast<size_t>(symbol - num_tokens_)]) {
    const int32_t id = single_char_token_[static_cast<uint8_t>(c)];
    if (id != kNoToken) out->push_back(id);
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = whole_words_->map.find(word); it != whole_words_->map.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (word.size() == 1) {
    emit(byte_symbol_[static_cast<uint8_t>(word[0])], out);
    return;
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  const uint64_t hash = cacheable ? WordCache::hash(word) : 0;
  if (cacheable && cache_->find(word, hash, out)) return;
  const size_t before = out->size();
  if (word.size() <= kShortWord) {
    merge(word, out);
  } else {
    merge_long(word, out);
  }
  if (cacheable) cache_->insert(word, hash, out->data() + before, out->size() - before);
}

// Short words: symbols and pair ranks in small arrays; repeatedly merge the leftmost
// lowest-rank pair, shifting the tail left.
void BpeModel::merge(std::string_view word, std::vector<int32_t>* out) const {
  int32_t sym[kShortWord];
  int32_t rank[kShortWord];
  int32_t result[kShortWord];
  size_t n = word.size();
  for (size_t i = 0; i < n; ++i)
    sym[i] = byte_symbol_[static_cast<uint8_t>(word[i])];
  auto score = [&](size_t i) {
    const MergeTable::Merge m = merges_->find(sym[i], sym[i + 1]);
    rank[i] = m.rank;
    result[i] = m.result;
  };
  for (size_t i = 0; i + 1 < n; ++i)
    score(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (rank[i] < rank[best]) best = i;
    }
    if (rank[best] == INT32_MAX) break;
    sym[best] = result[best];
    // Drop symbol best+1; pair j (j > best) becomes the old pair j+1.
    std::memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof(int32_t));
    if (n >= best + 3) {
      std::memmove(rank + best + 1, rank + best + 2, (n - best - 3) * sizeof(int32_t));
      std::memmove(result + best + 1, result + best + 2, (n - best - 3) * sizeof(int32_t));
    }
    --n;
    if (best > 0) score(best - 1);
    if (best + 1 < n) score(best);
  }
  for (size_t i = 0; i < n; ++i)
    emit(sym[i], out);
}

// Long words: a doubly linked list of symbols and a min-heap of candidate pairs ordered by
// (rank, position); stale candidates are recognised by the symbols' current ids.
void BpeModel::merge_long(std::string_view word, std::vector<int32_t>* out) const {
  struct Node {
    int32_t id;  // kNoToken once merged into its left neighbour
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t result;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  thread_local std::vector<Node> nodes;
  thread_local std::vector<Candidate> heap_storage;
  const auto n = static_cast<int32_t>(word.size());
  nodes.resize(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    nodes[i] = {byte_symbol_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  heap_storage.clear();
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap(std::greater<>(),
                                                                              std::move(heap_storage));
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const MergeTable::Merge m = merges_->find(nodes[left].id, nodes[right].id);
    if (m.rank == INT32_MAX) return;
    heap.push({m.rank, left, right, nodes[left].id, nodes[right].id, m.result});
  };
  for (int32_t i = 0; i + 1 < n; ++i)
    try_pair(i, i + 1);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Node& left = nodes[c.left];
    Node& right = nodes[c.right];
    if (left.id != c.left_id || right.id != c.right_id || left.next != c.right) continue;  // stale
    left.id = c.result;
    right.id = kNoToken;
    left.next = right.next;
    if (right.next >= 0) nodes[right.next].prev = c.left;
    try_pair(left.prev, c.left);
    try_pair(c.left, left.next);
  }
  for (int32_t i = 0; i >= 0; i = nodes[i].next)
    emit(nodes[i].id, out);
}

}  // namespace bw
