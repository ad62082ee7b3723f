#include "tokenizer/detokenizer.h"

#include "tokenizer/unicode.h"

namespace bw {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special, bool continuation)
    : tokenizer_(tokenizer), skip_special_(skip_special), continuation_(continuation) {}

void StreamingDetokenizer::append_piece(int32_t id, std::string* out) {
  std::string_view piece = tokenizer_.piece(id, skip_special_);
  if (remove_space_ && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
  remove_space_ = false;
  pending_.append(piece);
  const size_t consumed = unicode::append_repaired(out, pending_, /*final=*/false);
  pending_.erase(0, consumed);
}

std::string StreamingDetokenizer::push(int32_t id) {
  const Vocab& vocab = tokenizer_.vocab();
  std::string out;
  if (holding_eos_) {  // the held EOS was not the last id after all
    holding_eos_ = false;
    append_piece(vocab.eos_id, &out);
  }
  if (count_++ == 0) {
    remove_space_ = vocab.add_space_prefix && !continuation_;
    if (skip_special_ && vocab.add_bos && id == vocab.bos_id) {
      remove_space_ = false;
      return out;
    }
  }
  if (skip_special_ && vocab.add_eos && id == vocab.eos_id) {
    holding_eos_ = true;
    return out;
  }
  append_piece(id, &out);
  return out;
}

std::string StreamingDetokenizer::flush() {
  std::string out;
  holding_eos_ = false;  // a trailing EOS is dropped
  unicode::append_repaired(&out, pending_, /*final=*/true);
  pending_.clear();
  count_ = 0;
  remove_space_ = false;
  return out;
}

}  // namespace bw
