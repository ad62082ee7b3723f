// StreamingDetokenizer: turns generated token ids into text deltas one id at a time.
//
// Every delta is complete UTF-8: bytes of a character split across tokens (byte-fallback
// tokens <0xE4><0xBD><0xA0>, or byte-level BPE tokens that each hold part of a character)
// are held back until the character is complete, and ill-formed bytes become U+FFFD as
// soon as they cannot start a character any more. The rules are those of
// Tokenizer::decode(ids, skip_special, continuation) - the SentencePiece first-token
// space, a leading BOS and trailing EOS dropped when skipping specials - so the
// concatenation of all deltas and flush() always equals decode() of the same ids. For
// the tokens generated after a prompt, pass continuation = true to keep the space the
// first one starts with (" Paris" after "The capital of France is").
//
// Ownership: keeps a reference to the Tokenizer, which must outlive it. Not thread-safe
// (one per sequence); cheap to create.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace bw {

class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special = true, bool continuation = false);

  // The text that `id` completes (often empty, or several characters at once).
  std::string push(int32_t id);
  // Ends the sequence: the text still held back (an incomplete character becomes
  // U+FFFD). The detokenizer is then ready for a new sequence.
  std::string flush();

  // Bytes of an incomplete character held back (at most 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  void append_piece(int32_t id, std::string* out);

  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool continuation_;
  size_t count_ = 0;           // ids pushed since the start of the sequence
  bool remove_space_ = false;  // the next piece loses one leading space
  bool holding_eos_ = false;   // an EOS that decode() drops if it is the last id
  std::string pending_;        // the start of an incomplete UTF-8 character
};

}  // namespace bw
