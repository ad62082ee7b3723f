#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
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

struct SafetensorsDType {
  std::string_view name;
  DType type;
};

constexpr std::array<SafetensorsDType, 7> kDTypes = {{
    {"F32", DType::kF32},
    {"F16", DType::kF16},
    {"BF16", DType::kBF16},
    {"I32", DType::kI32},
    {"I64", DType::kI64},
    {"I8", DType::kI8},
    {"U8", DType::kU8},
}};

constexpr std::string_view kSupportedDTypes = "F32, F16, BF16, I32, I64, I8, U8";

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.type;
  }
  return std::nullopt;
}

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

// A JSON string literal (quotes and escapes) of UTF-8 text.
std::string json_quote(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
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

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1fu;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0fu;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (s.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3fu);
    }
    static constexpr uint32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
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

std::string_view safetensors_dtype_name(DType t) {
  for (const auto& d : kDTypes) {
    if (d.type == t) return d.name;
  }
  return {};
}

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

// --- Writer ---------------------------------------------------------------------------

namespace {

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

Status write_all(int fd, const std::string& path, std::span<const uint8_t> bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t chunk = std::min<size_t>(bytes.size() - done, size_t{1} << 30);
    const ssize_t n = ::write(fd, bytes.data() + done, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unavailable("{}: write failed: {}", path, std::strerror(errno));
    }
    if (n == 0) return Unavailable("{}: write made no progress", path);
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

// Writes the pieces to a temporary file beside `path`, syncs it and renames it to `path`.
Status write_file_atomically(const std::string& path, std::span<const std::span<const uint8_t>> pieces) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = fmt::format("{}.tmp.{}.{}", path, ::getpid(), counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("{}: cannot create: {}", tmp, std::strerror(errno));
  Status status;
  for (std::span<const uint8_t> piece : pieces) {
    status = write_all(fd, tmp, piece);
    if (!status.ok()) break;
  }
  if (status.ok() && ::fsync(fd) != 0) status = Unavailable("{}: fsync failed: {}", tmp, std::strerror(errno));
  if (::close(fd) != 0 && status.ok()) status = Unavailable("{}: close failed: {}", tmp, std::strerror(errno));
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = Unavailable("{}: cannot rename to {}: {}", tmp, path, std::strerror(errno));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
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

void sync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);  // best effort: some file systems cannot sync directories
  ::close(fd);
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
    sync_dir(dir);
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
  sync_dir(dir);
  return OkStatus();
}

}  // namespace bw
