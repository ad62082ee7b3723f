// Safetensors: reader of Hugging Face's safetensors weight format, for single files and
// for sharded model folders (model-0000K-of-0000N.safetensors plus
// model.safetensors.index.json, as save_pretrained writes them). The writer is
// io/safetensors_writer.h.
//
// File layout: a little-endian u64 N, N bytes of UTF-8 JSON (an object mapping each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional "__metadata__"
// object of string -> string), then the data section; offsets are relative to the first
// byte after the header. The reader treats every file as hostile: each size is checked
// for overflow and against the file, ranges may not overlap or run past the data section,
// nothing may follow the last tensor (gaps between tensors and empty tensors anywhere in
// the section are tolerated, unlike the reference, since they cannot make a read unsafe).
// A bad file is DataLoss, a dtype or rank we do not support is Unimplemented; no input
// crashes, aborts or throws. JSON is read through a SAX handler that also rejects keys
// repeated in one object and nesting deeper than 32 levels.
//
// Ownership: SafetensorsFile::open() maps the file and keeps the map inside the (move-only)
// object; parse() makes views into the caller's bytes, which must outlive it. TensorEntry
// data pointers stay valid while the owning SafetensorsFile / SafetensorsModel lives
// (moving it keeps them valid). Tensor data is only as aligned as the file made it
// (writers that pad the header to 8 bytes, as the reference and ours do, align 8).
//
// Thread-safety: the objects are immutable after open/parse; const methods may be called
// from any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/mapped_file.h"
#include "common/status.h"
#include "io/safetensors_format.h"
#include "io/tensor_entry.h"
#include "tensor/dtype.h"
#include "tensor/tensor_view.h"

namespace bw {

// The largest JSON header accepted (the reference implementation's limit as well).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100ull << 20;

// One .safetensors file.
class SafetensorsFile {
 public:
  // Maps `path` and parses it; errors name the path.
  static Result<SafetensorsFile> open(const std::string& path);
  // Parses a whole file held in `bytes` (not copied: entries point into it). `name` is used
  // in error messages.
  static Result<SafetensorsFile> parse(std::span<const uint8_t> bytes, std::string name);

  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The path (open) or name (parse) this file was read from.
  const std::string& name() const { return name_; }
  // All tensors, sorted by data offset.
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr.
  const TensorEntry* find(std::string_view name) const;
  // The "__metadata__" object (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  std::string name_;
  MappedFile mapped_;  // empty when made by parse()
  std::vector<TensorEntry> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// The weights of a model: a single .safetensors file, a folder holding model.safetensors,
// or a folder holding model.safetensors.index.json and the shards it names (the index file
// itself may also be given). When a folder has both, model.safetensors wins, as in
// transformers. Tensors a shard holds that the index does not list are still found.
class SafetensorsModel {
 public:
  static Result<SafetensorsModel> open(const std::string& file_or_dir);

  SafetensorsModel(SafetensorsModel&&) = default;
  SafetensorsModel& operator=(SafetensorsModel&&) = default;
  SafetensorsModel(const SafetensorsModel&) = delete;
  SafetensorsModel& operator=(const SafetensorsModel&) = delete;

  const TensorEntry* find(std::string_view name) const;
  // All tensors of all shards: shard by shard (in file name order), each by data offset.
  std::vector<const TensorEntry*> tensors() const;
  size_t num_shards() const { return shards_.size(); }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // The index's "metadata" (non-string values as their JSON text, e.g. total_size), or the
  // single file's "__metadata__".
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsModel() = default;
  static Result<SafetensorsModel> open_single(const std::string& path);
  static Result<SafetensorsModel> open_index(const std::string& index_path);

  std::vector<SafetensorsFile> shards_;
  std::map<std::string, const TensorEntry*, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace bw
