#include "io/safetensors.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/checked_math.h"

namespace bw {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using safetensors_internal::dtype_from_safetensors;
using safetensors_internal::kSupportedDTypes;

// --- JSON ---------------------------------------------------------------------------

// Builds a json DOM from nlohmann's SAX events without exceptions, rejecting what the
// plain parser would silently accept: a key repeated in one object (nlohmann keeps the
// last) and nesting deeper than a safetensors header or index ever needs (each level
// costs an allocation, so a header of 100 MB of '[' would otherwise cost gigabytes).
class StrictJsonBuilder {
 public:
  static constexpr size_t kMaxDepth = 32;

  bool null() { return put(json(nullptr)); }
  bool boolean(bool v) { return put(json(v)); }
  bool number_integer(json::number_integer_t v) { return put(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return put(json(v)); }
  bool number_float(json::number_float_t v, const json::string_t& /*text*/) { return put(json(v)); }
  bool string(json::string_t& v) { return put(json(std::move(v))); }
  bool binary(json::binary_t& /*v*/) {
    error_ = "unexpected binary value";
    return false;
  }
  bool start_object(std::size_t /*size*/) { return open(json::object()); }
  bool start_array(std::size_t /*size*/) { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(json::string_t& k) {
    if (stack_.empty() || !stack_.back()->is_object()) {
      error_ = "key outside an object";
      return false;
    }
    if (stack_.back()->get_ref<const json::object_t&>().count(k) != 0) {
      error_ = fmt::format("key '{}' appears twice in one object", k);
      return false;
    }
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const json::exception& ex) {
    error_ = ex.what();
    return false;
  }

  json& root() { return root_; }
  const std::string& error() const { return error_; }

 private:
  // Inserts `v` where the parser is (root, array end, or under the last key) and returns
  // it; nullptr when the structure is broken (cannot happen with nlohmann's parser).
  json* insert(json v) {
    if (stack_.empty()) {
      if (has_root_) return nullptr;
      has_root_ = true;
      root_ = std::move(v);
      return &root_;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      auto& arr = top.get_ref<json::array_t&>();
      arr.push_back(std::move(v));
      return &arr.back();
    }
    auto& obj = top.get_ref<json::object_t&>();
    auto [it, inserted] = obj.emplace(std::move(key_), std::move(v));
    return inserted ? &it->second : nullptr;
  }
  bool put(json v) {
    if (insert(std::move(v)) == nullptr) {
      error_ = "malformed JSON structure";
      return false;
    }
    return true;
  }
  bool open(json v) {
    if (stack_.size() >= kMaxDepth) {
      error_ = fmt::format("nested deeper than {} levels", kMaxDepth);
      return false;
    }
    json* p = insert(std::move(v));
    if (p == nullptr) {
      error_ = "malformed JSON structure";
      return false;
    }
    stack_.push_back(p);
    return true;
  }
  bool close() {
    if (stack_.empty()) {
      error_ = "malformed JSON structure";
      return false;
    }
    stack_.pop_back();
    return true;
  }

  json root_;
  bool has_root_ = false;
  std::vector<json*> stack_;  // open containers; each points into its parent
  std::string key_;
  std::string error_;
};

// Parses `text` as one JSON value (whitespace around it allowed). Never throws; on failure
// returns nullopt and sets `error`.
std::optional<json> parse_json(std::string_view text, std::string* error) {
  StrictJsonBuilder builder;
  const bool ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json,
                                  /*strict=*/true, /*ignore_comments=*/false);
  if (!ok) {
    *error = builder.error().empty() ? std::string("invalid JSON") : builder.error();
    return std::nullopt;
  }
  return std::move(builder.root());
}

// A short JSON rendering of a value for error messages.
std::string json_text(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

// A non-negative JSON integer, or nullopt (negative, fractional, not a number).
std::optional<uint64_t> json_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i >= 0) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

std::string dims_text(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

// --- Reading one file ---------------------------------------------------------------

struct ParsedEntry {
  TensorEntry entry;
  uint64_t begin = 0;
  uint64_t end = 0;
};

Status parse_metadata(const std::string& file, const json& value, std::map<std::string, std::string>* metadata) {
  if (value.is_null()) return OkStatus();
  if (!value.is_object()) {
    return DataLoss("{}: __metadata__ must be an object of strings, found {}", file, value.type_name());
  }
  for (const auto& [key, v] : value.get_ref<const json::object_t&>()) {
    if (!v.is_string()) {
      return DataLoss("{}: __metadata__ '{}' must be a string, found {} {}", file, key, v.type_name(), json_text(v));
    }
    metadata->emplace(key, v.get_ref<const std::string&>());
  }
  return OkStatus();
}

Result<ParsedEntry> parse_entry(const std::string& file, const std::string& name, const json& value,
                                const uint8_t* data, uint64_t data_bytes) {
  if (!value.is_object()) {
    return DataLoss("{}: tensor '{}': expected an object with dtype, shape and data_offsets, found {}", file, name,
                    value.type_name());
  }
  const json* dtype_json = nullptr;
  const json* shape_json = nullptr;
  const json* offsets_json = nullptr;
  for (const auto& [key, v] : value.get_ref<const json::object_t&>()) {
    if (key == "dtype") {
      dtype_json = &v;
    } else if (key == "shape") {
      shape_json = &v;
    } else if (key == "data_offsets") {
      offsets_json = &v;
    } else {
      return DataLoss("{}: tensor '{}': unexpected field '{}' (expected dtype, shape, data_offsets)", file, name, key);
    }
  }
  if (dtype_json == nullptr) return DataLoss("{}: tensor '{}': missing field 'dtype'", file, name);
  if (shape_json == nullptr) return DataLoss("{}: tensor '{}': missing field 'shape'", file, name);
  if (offsets_json == nullptr) return DataLoss("{}: tensor '{}': missing field 'data_offsets'", file, name);

  if (!dtype_json->is_string()) {
    return DataLoss("{}: tensor '{}': dtype must be a string, found {} {}", file, name, dtype_json->type_name(),
                    json_text(*dtype_json));
  }
  const std::string& dtype_str = dtype_json->get_ref<const std::string&>();

  if (!shape_json->is_array()) {
    return DataLoss("{}: tensor '{}': shape must be an array of non-negative integers, found {} {}", file, name,
                    shape_json->type_name(), json_text(*shape_json));
  }
  std::vector<uint64_t> dims;
  const auto& shape_arr = shape_json->get_ref<const json::array_t&>();
  for (size_t i = 0; i < shape_arr.size(); ++i) {
    const std::optional<uint64_t> d = json_u64(shape_arr[i]);
    if (!d || *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return DataLoss("{}: tensor '{}': shape dimension {} is {}, expected a non-negative integer", file, name, i,
                      json_text(shape_arr[i]));
    }
    dims.push_back(*d);
  }

  if (!offsets_json->is_array() || offsets_json->size() != 2) {
    return DataLoss("{}: tensor '{}': data_offsets must be [begin, end], found {}", file, name,
                    json_text(*offsets_json));
  }
  const std::optional<uint64_t> begin = json_u64((*offsets_json)[0]);
  const std::optional<uint64_t> end = json_u64((*offsets_json)[1]);
  if (!begin || !end) {
    return DataLoss("{}: tensor '{}': data_offsets must be two non-negative integers, found {}", file, name,
                    json_text(*offsets_json));
  }

  const std::optional<DType> dtype = dtype_from_safetensors(dtype_str);
  if (!dtype) {
    return Unimplemented("{}: tensor '{}': dtype '{}' is not supported (supported: {})", file, name, dtype_str,
                         kSupportedDTypes);
  }
  if (dims.size() > static_cast<size_t>(Shape::kMaxRank)) {
    return Unimplemented("{}: tensor '{}': shape {} has rank {}, at most {} is supported", file, name, dims_text(dims),
                         dims.size(), Shape::kMaxRank);
  }

  uint64_t numel = 1;
  for (uint64_t d : dims) {
    const std::optional<uint64_t> n = checked_mul(numel, d);
    if (!n || *n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return DataLoss("{}: tensor '{}': shape {} has more elements than fit in 63 bits", file, name, dims_text(dims));
    }
    numel = *n;
  }
  const std::optional<uint64_t> nbytes = dtype_bytes(*dtype, numel);
  if (!nbytes) {
    return DataLoss("{}: tensor '{}': shape {} of {} is larger than 2^64 bytes", file, name, dims_text(dims),
                    dtype_str);
  }
  if (*end < *begin) {
    return DataLoss("{}: tensor '{}': data_offsets [{}, {}] end before they begin", file, name, *begin, *end);
  }
  if (*end - *begin != *nbytes) {
    return DataLoss("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {}", file, name,
                    *begin, *end, *end - *begin, dims_text(dims), dtype_str, *nbytes);
  }
  if (*end > data_bytes) {
    return DataLoss("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data section ({} bytes)", file,
                    name, *begin, *end, data_bytes);
  }

  ParsedEntry out;
  out.entry.name = name;
  out.entry.dtype = *dtype;
  for (uint64_t d : dims)
    out.entry.shape.push_back(static_cast<int64_t>(d));
  out.entry.data = data + *begin;
  out.entry.nbytes = *nbytes;
  out.begin = *begin;
  out.end = *end;
  return out;
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  ASSIGN_OR_RETURN(SafetensorsFile file, parse(mapped.bytes(), path));
  // The entries point into the mapping, whose address does not change when it moves.
  file.mapped_ = std::move(mapped);
  return file;
}

Result<SafetensorsFile> SafetensorsFile::parse(std::span<const uint8_t> bytes, std::string name) {
  if (bytes.size() < 8) {
    return DataLoss("{}: file is {} bytes, shorter than the 8-byte header length", name, bytes.size());
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i)
    header_bytes = (header_bytes << 8) | bytes[static_cast<size_t>(i)];
  const uint64_t after_length = bytes.size() - 8;
  if (header_bytes > kSafetensorsMaxHeaderBytes) {
    return DataLoss("{}: header length {} is over the limit of {} bytes", name, header_bytes,
                    kSafetensorsMaxHeaderBytes);
  }
  if (header_bytes > after_length) {
    return DataLoss("{}: header length {} runs past the end of the file ({} bytes follow the length)", name,
                    header_bytes, after_length);
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<size_t>(header_bytes));
  std::string json_error;
  std::optional<json> header = parse_json(text, &json_error);
  if (!header) return DataLoss("{}: header is not valid JSON: {}", name, json_error);
  if (!header->is_object()) {
    return DataLoss("{}: header must be a JSON object, found {}", name, header->type_name());
  }

  const uint8_t* data = bytes.data() + 8 + header_bytes;
  const uint64_t data_bytes = after_length - header_bytes;

  SafetensorsFile file;
  file.name_ = std::move(name);
  std::vector<ParsedEntry> entries;
  for (const auto& [key, value] : header->get_ref<const json::object_t&>()) {
    if (key == "__metadata__") {
      RETURN_IF_ERROR(parse_metadata(file.name_, value, &file.metadata_));
      continue;
    }
    ASSIGN_OR_RETURN(ParsedEntry entry, parse_entry(file.name_, key, value, data, data_bytes));
    entries.push_back(std::move(entry));
  }

  std::sort(entries.begin(), entries.end(), [](const ParsedEntry& a, const ParsedEntry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.entry.name < b.entry.name;
  });
  // Non-empty ranges may not share a byte; empty tensors occupy nothing.
  uint64_t data_end = 0;
  const ParsedEntry* last = nullptr;  // the non-empty entry that ends at data_end
  for (const ParsedEntry& e : entries) {
    if (e.begin == e.end) continue;
    if (last != nullptr && e.begin < data_end) {
      return DataLoss("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", file.name_, last->entry.name, last->begin,
                      last->end, e.entry.name, e.begin, e.end);
    }
    data_end = e.end;
    last = &e;
  }
  if (data_end != data_bytes) {
    return DataLoss("{}: the data section is {} bytes but the tensors end at byte {}; {} trailing bytes", file.name_,
                    data_bytes, data_end, data_bytes - data_end);
  }

  file.tensors_.reserve(entries.size());
  for (ParsedEntry& e : entries) {
    const std::string& n = e.entry.name;
    if (!file.index_.emplace(n, file.tensors_.size()).second) {
      return DataLoss("{}: tensor '{}' appears twice", file.name_, n);
    }
    file.tensors_.push_back(std::move(e.entry));
  }
  return file;
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// --- Models (single file or sharded folder) -------------------------------------------

namespace {

bool is_plain_file_name(std::string_view s) {
  if (s.empty() || s == "." || s == "..") return false;
  return s.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

}  // namespace

Result<SafetensorsModel> SafetensorsModel::open(const std::string& file_or_dir) {
  std::error_code ec;
  const fs::path path(file_or_dir);
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return NotFound("{}: no such file or directory", file_or_dir);
  if (fs::is_directory(st)) {
    const fs::path single = path / kSafetensorsSingleName;
    if (fs::exists(single, ec)) return open_single(single.string());
    const fs::path index = path / kSafetensorsIndexName;
    if (fs::exists(index, ec)) return open_index(index.string());
    return NotFound("{}: holds neither {} nor {}", file_or_dir, kSafetensorsSingleName, kSafetensorsIndexName);
  }
  if (file_or_dir.ends_with(".index.json")) return open_index(file_or_dir);
  return open_single(file_or_dir);
}

Result<SafetensorsModel> SafetensorsModel::open_single(const std::string& path) {
  SafetensorsModel model;
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
  model.shards_.push_back(std::move(file));
  model.metadata_ = model.shards_.back().metadata();
  for (const TensorEntry& t : model.shards_.back().tensors())
    model.index_.emplace(t.name, &t);
  return model;
}

Result<SafetensorsModel> SafetensorsModel::open_index(const std::string& index_name) {
  const fs::path index_path(index_name);
  ASSIGN_OR_RETURN(MappedFile index_file, MappedFile::open(index_name));
  if (index_file.size() > kSafetensorsMaxHeaderBytes) {
    return DataLoss("{}: {} bytes is over the limit of {} bytes for an index", index_name, index_file.size(),
                    kSafetensorsMaxHeaderBytes);
  }
  std::string json_error;
  std::optional<json> root =
      parse_json(std::string_view(reinterpret_cast<const char*>(index_file.data()), index_file.size()), &json_error);
  if (!root) return DataLoss("{}: not valid JSON: {}", index_name, json_error);
  if (!root->is_object()) return DataLoss("{}: must be a JSON object, found {}", index_name, root->type_name());

  SafetensorsModel model;
  const auto& top = root->get_ref<const json::object_t&>();
  if (auto it = top.find("metadata"); it != top.end() && !it->second.is_null()) {
    if (!it->second.is_object()) {
      return DataLoss("{}: metadata must be an object, found {}", index_name, it->second.type_name());
    }
    for (const auto& [key, v] : it->second.get_ref<const json::object_t&>()) {
      model.metadata_.emplace(key, v.is_string() ? v.get_ref<const std::string&>()
                                                 : v.dump(-1, ' ', false, json::error_handler_t::replace));
    }
  }
  const auto wm = top.find("weight_map");
  if (wm == top.end()) return DataLoss("{}: missing 'weight_map'", index_name);
  if (!wm->second.is_object()) {
    return DataLoss("{}: weight_map must be an object of tensor -> shard file, found {}", index_name,
                    wm->second.type_name());
  }
  const auto& weight_map = wm->second.get_ref<const json::object_t&>();
  if (weight_map.empty()) return DataLoss("{}: weight_map lists no tensors", index_name);
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : weight_map) {
    if (!shard.is_string()) {
      return DataLoss("{}: weight_map['{}'] must be a shard file name, found {} {}", index_name, tensor,
                      shard.type_name(), json_text(shard));
    }
    const std::string& s = shard.get_ref<const std::string&>();
    if (!is_plain_file_name(s)) {
      return DataLoss(
          "{}: weight_map['{}'] names shard '{}', which is not a plain file name in the "
          "index's folder",
          index_name, tensor, s);
    }
    shard_names.insert(s);
  }

  const fs::path dir = index_path.parent_path();
  std::map<std::string, size_t, std::less<>> shard_of;  // shard file name -> position in shards_
  model.shards_.reserve(shard_names.size());
  for (const std::string& s : shard_names) {
    Result<SafetensorsFile> shard = SafetensorsFile::open((dir / s).string());
    if (!shard.ok()) return shard.status().with_context(fmt::format("{}: shard '{}'", index_name, s));
    shard_of.emplace(s, model.shards_.size());
    model.shards_.push_back(std::move(shard).value());
  }
  // The entries live in each SafetensorsFile's vector, which does not move from here on.
  std::map<std::string, std::string_view, std::less<>> found_in;  // tensor -> shard file name
  for (const auto& [s, i] : shard_of) {
    for (const TensorEntry& t : model.shards_[i].tensors()) {
      auto [it, inserted] = found_in.emplace(t.name, s);
      if (!inserted) {
        return DataLoss("{}: tensor '{}' is in two shards, '{}' and '{}'", index_name, t.name, it->second, s);
      }
      model.index_.emplace(t.name, &t);
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    const std::string& s = shard.get_ref<const std::string&>();
    if (model.shards_[shard_of.find(s)->second].find(tensor) == nullptr) {
      return DataLoss("{}: weight_map puts tensor '{}' in shard '{}', but that shard has no such tensor", index_name,
                      tensor, s);
    }
  }
  return model;
}

const TensorEntry* SafetensorsModel::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<const TensorEntry*> SafetensorsModel::tensors() const {
  std::vector<const TensorEntry*> out;
  out.reserve(index_.size());
  for (const SafetensorsFile& shard : shards_) {
    for (const TensorEntry& t : shard.tensors())
      out.push_back(&t);
  }
  return out;
}

}  // namespace bw
