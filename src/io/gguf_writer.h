// GgufWriter: builds a GGUF v3 file (metadata + tensors) and writes it in one go.
//
// Metadata keeps insertion order; set() on an existing key replaces its value in place, so
// copying every key of a GgufFile (e.g. all `tokenizer.*` keys) reproduces the same keys,
// order and value types. The data section is aligned to `general.alignment` when that key
// is set (it must then be a uint32 power of two, as ggml requires), else 32; each tensor
// starts at an aligned offset and is padded with zeros (a file without tensors ends right
// after its metadata, as ggml writes it).
//
// Ownership: add_tensor() keeps a view of the caller's bytes (they must stay valid until
// write()/serialize() returns); add_tensor_copy() copies them. Not thread-safe (a builder).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "io/gguf.h"
#include "tensor/dtype.h"
#include "tensor/tensor_view.h"

namespace bw {

class GgufWriter {
 public:
  GgufWriter() = default;

  // Adds `key`, or replaces its value in place when it is already set.
  void set(std::string key, GgufValue value);
  const GgufValue* find(std::string_view key) const;
  // Removes `key`; false when it was not set.
  bool remove(std::string_view key);
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }

  // Adds a tensor; `shape` is outermost first (it is written ne0-first). InvalidArgument
  // for a duplicate name, a rank outside 1..4, a zero dimension, a row length that is not
  // a whole number of blocks, a dtype GGUF cannot store, or data of the wrong size.
  Status add_tensor(std::string name, DType dtype, Shape shape, std::span<const uint8_t> data);
  Status add_tensor_copy(std::string name, DType dtype, Shape shape, std::span<const uint8_t> data);
  size_t num_tensors() const { return tensors_.size(); }

  // The whole file image.
  Result<std::vector<uint8_t>> serialize() const;
  // Writes the file to `path` atomically (temporary file + rename, replacing it).
  Status write(const std::string& path) const;

 private:
  struct PendingTensor {
    std::string name;
    DType dtype;
    Shape shape;
    std::span<const uint8_t> view;  // caller's bytes, when `owned` is unused
    std::vector<uint8_t> owned;
    bool is_owned = false;
    std::span<const uint8_t> bytes() const { return is_owned ? std::span<const uint8_t>(owned) : view; }
  };

  Status check_tensor(const std::string& name, DType dtype, const Shape& shape, size_t data_size) const;
  Result<uint64_t> alignment() const;
  // The header, metadata and tensor infos (unpadded), and each tensor's relative offset.
  Result<std::vector<uint8_t>> build_header(uint64_t alignment, std::vector<uint64_t>* offsets) const;

  std::vector<GgufKeyValue> metadata_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace bw
