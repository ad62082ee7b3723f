// Safetensors writer: single files and sharded model folders in the layout Hugging Face's
// save_pretrained writes (model.safetensors, or model-0000K-of-0000N.safetensors plus
// model.safetensors.index.json). The reader is io/safetensors.h.
//
// Every file is written to a temporary name beside its destination, synced and renamed
// over it (common/atomic_file.h), so a crash leaves either the old file or the whole new
// one. The header is padded with spaces so the data section starts at a multiple of 8
// bytes, as the reference implementation does.
//
// Thread-safety: the writers may run concurrently (temporary names are unique per process
// and call), though not on the same destination.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "common/status.h"
#include "io/safetensors_format.h"
#include "tensor/dtype.h"
#include "tensor/tensor_view.h"

namespace bw {

struct TensorToWrite {
  std::string name;
  DType dtype;
  Shape shape;
  std::span<const uint8_t> data;  // numel * dtype size bytes, row-major
};

// Writes one file: the header (tensors in the given order, padded with spaces to a multiple
// of 8 bytes) and the tensors laid out in the given order. Writes `path` + a temporary
// suffix, syncs it and renames it, so `path` is either the old file or the whole new one.
// InvalidArgument for duplicate/empty/non-UTF-8 names, sizes that do not match the shape,
// or dtypes safetensors cannot hold; Unavailable for I/O errors.
Status write_safetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                         const std::map<std::string, std::string>& metadata = {});

// Writes a model folder like save_pretrained: model.safetensors when all tensor bytes fit
// in `max_shard_bytes`, else model-00001-of-0000N.safetensors ... (greedy in the given
// order; a tensor larger than the limit gets a shard of its own) and
// model.safetensors.index.json with metadata.total_size and the weight_map. `metadata`
// goes into every shard's "__metadata__" and into the index's "metadata". Creates `dir`;
// removes a stale model.safetensors / index / shard set that the new files replace.
Status write_safetensors_sharded(const std::string& dir, std::span<const TensorToWrite> tensors,
                                 uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata = {});

}  // namespace bw
