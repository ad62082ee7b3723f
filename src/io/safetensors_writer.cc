#include "io/safetensors_writer.h"

#include <array>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/checked_math.h"

namespace bw {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using safetensors_internal::is_valid_utf8;
using safetensors_internal::json_quote;

Status validate_for_write(std::span<const TensorToWrite> tensors, const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorToWrite& t = tensors[i];
    if (t.name.empty()) return InvalidArgument("tensor {} has an empty name", i);
    if (!is_valid_utf8(t.name)) return InvalidArgument("tensor {}: name is not UTF-8", i);
    if (t.name == "__metadata__") {
      return InvalidArgument("'__metadata__' is reserved, not a tensor name");
    }
    if (!names.insert(t.name).second) {
      return InvalidArgument("tensor '{}' appears twice", t.name);
    }
    const std::string_view dtype = safetensors_dtype_name(t.dtype);
    if (dtype.empty()) {
      return InvalidArgument("tensor '{}': dtype {} cannot be stored in safetensors", t.name, dtype_name(t.dtype));
    }
    uint64_t numel = 1;
    for (int d = 0; d < t.shape.rank(); ++d) {
      if (t.shape[d] < 0) {
        return InvalidArgument("tensor '{}': shape {} has a negative dimension", t.name, t.shape.to_string());
      }
      const std::optional<uint64_t> n = checked_mul(numel, static_cast<uint64_t>(t.shape[d]));
      if (!n || *n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return InvalidArgument("tensor '{}': shape {} is too large", t.name, t.shape.to_string());
      }
      numel = *n;
    }
    const std::optional<uint64_t> nbytes = dtype_bytes(t.dtype, numel);
    if (!nbytes || *nbytes != t.data.size()) {
      return InvalidArgument("tensor '{}': {} bytes of data but shape {} of {} needs {}", t.name, t.data.size(),
                             t.shape.to_string(), dtype, nbytes.value_or(0));
    }
  }
  for (const auto& [k, v] : metadata) {
    if (!is_valid_utf8(k) || !is_valid_utf8(v)) {
      return InvalidArgument("metadata key or value is not UTF-8 (key '{}')", k);
    }
  }
  return OkStatus();
}

// The header: fields in the reference implementation's order, padded with spaces so the
// data section starts at a multiple of 8 bytes.
std::string make_header(std::span<const TensorToWrite* const> tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_quote(k);
      h += ':';
      h += json_quote(v);
    }
    h += '}';
  }
  uint64_t offset = 0;
  for (const TensorToWrite* t : tensors) {
    if (h.size() > 1) h += ',';
    h += json_quote(t->name);
    h += ":{\"dtype\":\"";
    h += safetensors_dtype_name(t->dtype);
    h += "\",\"shape\":[";
    for (int d = 0; d < t->shape.rank(); ++d) {
      if (d > 0) h += ',';
      h += std::to_string(t->shape[d]);
    }
    h += "],\"data_offsets\":[";
    h += std::to_string(offset);
    h += ',';
    offset += t->data.size();
    h += std::to_string(offset);
    h += "]}";
  }
  h += '}';
  while ((8 + h.size()) % 8 != 0)
    h += ' ';
  return h;
}

std::span<const uint8_t> as_bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// Writes one file of already validated tensors.
Status write_file(const std::string& path, std::span<const TensorToWrite* const> tensors,
                  const std::map<std::string, std::string>& metadata) {
  const std::string header = make_header(tensors, metadata);
  std::array<uint8_t, 8> length{};
  for (size_t i = 0; i < 8; ++i)
    length[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  std::vector<std::span<const uint8_t>> pieces;
  pieces.reserve(tensors.size() + 2);
  pieces.emplace_back(length);
  pieces.push_back(as_bytes(header));
  for (const TensorToWrite* t : tensors)
    pieces.push_back(t->data);
  return write_file_atomically(path, pieces);
}

// "model-00001-of-00003.safetensors" (at least 5 digits each, as save_pretrained names them).
bool is_shard_file_name(std::string_view s) {
  auto digits = [&s]() {
    size_t n = 0;
    while (n < s.size() && s[n] >= '0' && s[n] <= '9')
      ++n;
    s.remove_prefix(n);
    return n;
  };
  auto take = [&s](std::string_view lit) {
    if (!s.starts_with(lit)) return false;
    s.remove_prefix(lit.size());
    return true;
  };
  return take("model-") && digits() >= 5 && take("-of-") && digits() >= 5 && take(".safetensors") && s.empty();
}

Status remove_if_exists(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
  if (ec) return Unavailable("{}: cannot remove stale file: {}", p.string(), ec.message());
  return OkStatus();
}

// Removes model-*-of-*.safetensors files of an earlier save that `keep` does not hold.
Status remove_stale_shards(const fs::path& dir, const std::set<std::string>& keep) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (is_shard_file_name(name) && keep.count(name) == 0) stale.push_back(it->path());
  }
  if (ec) return Unavailable("{}: cannot list: {}", dir.string(), ec.message());
  for (const fs::path& p : stale)
    RETURN_IF_ERROR(remove_if_exists(p));
  return OkStatus();
}

}  // namespace

Status write_safetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                         const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(validate_for_write(tensors, metadata).with_context(path));
  std::vector<const TensorToWrite*> ptrs;
  ptrs.reserve(tensors.size());
  for (const TensorToWrite& t : tensors)
    ptrs.push_back(&t);
  return write_file(path, ptrs, metadata);
}

Status write_safetensors_sharded(const std::string& dir, std::span<const TensorToWrite> tensors,
                                 uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(validate_for_write(tensors, metadata).with_context(dir));
  if (max_shard_bytes == 0) return InvalidArgument("{}: max_shard_bytes must be positive", dir);

  // Greedy in the given order: a shard closes when the next tensor would take it past the
  // limit; a tensor larger than the limit gets a shard of its own.
  std::vector<std::vector<const TensorToWrite*>> shards(1);
  uint64_t shard_bytes = 0;
  uint64_t total_bytes = 0;
  for (const TensorToWrite& t : tensors) {
    const std::optional<uint64_t> grown = checked_add(shard_bytes, t.data.size());
    if (!shards.back().empty() && (!grown || *grown > max_shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&t);
    shard_bytes += t.data.size();
    const std::optional<uint64_t> total = checked_add(total_bytes, t.data.size());
    if (!total) return InvalidArgument("{}: the tensors hold more than 2^64 bytes", dir);
    total_bytes = *total;
  }

  const fs::path root(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return Unavailable("{}: cannot create directory: {}", dir, ec.message());

  if (shards.size() == 1) {
    RETURN_IF_ERROR(write_file((root / kSafetensorsSingleName).string(), shards[0], metadata));
    RETURN_IF_ERROR(remove_if_exists(root / kSafetensorsIndexName));
    RETURN_IF_ERROR(remove_stale_shards(root, {}));
    sync_directory(dir);
    return OkStatus();
  }

  const size_t n = shards.size();
  std::set<std::string> names;
  json weight_map = json::object();
  for (size_t i = 0; i < n; ++i) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
    RETURN_IF_ERROR(write_file((root / name).string(), shards[i], metadata));
    for (const TensorToWrite* t : shards[i])
      weight_map[t->name] = name;
    names.insert(name);
  }
  // A stale single file would win over the index when the folder is read.
  RETURN_IF_ERROR(remove_if_exists(root / kSafetensorsSingleName));
  json index = json::object();
  json& index_metadata = index["metadata"] = json::object();
  for (const auto& [k, v] : metadata)
    index_metadata[k] = v;
  index_metadata["total_size"] = total_bytes;
  index["weight_map"] = std::move(weight_map);
  const std::string text = index.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  const std::array<std::span<const uint8_t>, 1> pieces = {as_bytes(text)};
  RETURN_IF_ERROR(write_file_atomically((root / kSafetensorsIndexName).string(), pieces));
  RETURN_IF_ERROR(remove_stale_shards(root, names));
  sync_directory(dir);
  return OkStatus();
}

}  // namespace bw
