#include "io/gguf.h"

#include <array>
#include <bit>
#include <cstring>
#include <limits>

#include "common/checked_math.h"

namespace bw {

static_assert(std::endian::native == std::endian::little, "the GGUF reader and writer assume a little-endian host");

namespace {

constexpr std::array<std::string_view, 13> kGgufTypeNames = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64",
};

// ggml type ids (ggml.h enum ggml_type); empty names are ids ggml never used or retired.
constexpr std::array<std::string_view, 40> kGgmlTypeNames = {
    "F32",    "F16",      "Q4_0",     "Q4_1",     "Q4_2",  "Q4_3",  "Q5_0",       "Q5_1",       "Q8_0",       "Q8_1",
    "Q2_K",   "Q3_K",     "Q4_K",     "Q5_K",     "Q6_K",  "Q8_K",  "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",    "IQ1_S",
    "IQ4_NL", "IQ3_S",    "IQ2_S",    "IQ4_XS",   "I8",    "I16",   "I32",        "I64",        "F64",        "IQ1_M",
    "BF16",   "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
};

struct GgmlDType {
  uint32_t ggml_type;
  DType dtype;
};
constexpr std::array<GgmlDType, 14> kGgmlDTypes = {{
    {0, DType::kF32},
    {1, DType::kF16},
    {2, DType::kQ4_0},
    {3, DType::kQ4_1},
    {6, DType::kQ5_0},
    {7, DType::kQ5_1},
    {8, DType::kQ8_0},
    {12, DType::kQ4_K},
    {13, DType::kQ5_K},
    {14, DType::kQ6_K},
    {24, DType::kI8},
    {26, DType::kI32},
    {27, DType::kI64},
    {30, DType::kBF16},
}};

// Smallest encoding of one value of each type (strings: the u64 length; arrays: the u32
// element type and the u64 length).
uint64_t min_encoded_bytes(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kString:
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

// The smallest key/value pair: an empty key (u64 length), the u32 type and a 1-byte value.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
// The smallest tensor info: an empty name, u32 n_dims, one u64 dim, u32 type, u64 offset.
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

std::string quoted_prefix(std::string_view s) {
  constexpr size_t kMax = 40;
  if (s.size() <= kMax) return fmt::format("'{}'", s);
  return fmt::format("'{}...' ({} bytes)", s.substr(0, kMax), s.size());
}

}  // namespace

std::string_view gguf_type_name(GgufType type) {
  const auto i = static_cast<uint32_t>(type);
  return i < kGgufTypeNames.size() ? kGgufTypeNames[i] : std::string_view("invalid");
}

std::optional<GgufType> gguf_type_from_u32(uint32_t raw) {
  if (raw < kGgufTypeNames.size()) return static_cast<GgufType>(raw);
  return std::nullopt;
}

std::string_view ggml_type_name(uint32_t ggml_type) {
  return ggml_type < kGgmlTypeNames.size() ? kGgmlTypeNames[ggml_type] : std::string_view("unknown");
}

std::optional<DType> dtype_from_ggml_type(uint32_t ggml_type) {
  for (const auto& m : kGgmlDTypes) {
    if (m.ggml_type == ggml_type) return m.dtype;
  }
  return std::nullopt;
}

std::optional<uint32_t> ggml_type_from_dtype(DType dtype) {
  for (const auto& m : kGgmlDTypes) {
    if (m.dtype == dtype) return m.ggml_type;
  }
  return std::nullopt;
}

// --- GgufArray / GgufValue ------------------------------------------------------------

size_t GgufArray::size() const {
  return std::visit([](const auto& v) { return v.size(); }, items_);
}

bool GgufValue::is_integer() const {
  switch (type()) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

std::optional<uint64_t> GgufValue::to_uint() const {
  return std::visit(
      [](const auto& v) -> std::optional<uint64_t> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_signed_v<T>) {
            if (v < 0) return std::nullopt;
          }
          return static_cast<uint64_t>(v);
        } else {
          return std::nullopt;
        }
      },
      value_);
}

std::optional<int64_t> GgufValue::to_int() const {
  return std::visit(
      [](const auto& v) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_same_v<T, uint64_t>) {
            if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
          }
          return static_cast<int64_t>(v);
        } else {
          return std::nullopt;
        }
      },
      value_);
}

std::optional<double> GgufValue::to_double() const {
  return std::visit(
      [](const auto& v) -> std::optional<double> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<double>(v);
        } else {
          return std::nullopt;
        }
      },
      value_);
}

std::optional<bool> GgufValue::to_bool() const {
  if (const bool* b = get_if<bool>()) return *b;
  return std::nullopt;
}

std::string GgufValue::describe() const {
  return std::visit(
      [this](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        const std::string_view tn = gguf_type_name(type());
        if constexpr (std::is_same_v<T, std::string>) {
          return fmt::format("{} {}", tn, quoted_prefix(v));
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          return fmt::format("array[{}] of {} elements", gguf_type_name(v.elem_type()), v.size());
        } else if constexpr (std::is_same_v<T, bool>) {
          return fmt::format("{} {}", tn, v ? "true" : "false");
        } else if constexpr (std::is_integral_v<T>) {
          return fmt::format("{} {}", tn, static_cast<std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>>(v));
        } else {
          return fmt::format("{} {}", tn, v);
        }
      },
      value_);
}

// --- Parser ---------------------------------------------------------------------------

namespace {

// A bounds-checked little-endian reader over the file image.
class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> bytes) : data_(bytes.data()), size_(bytes.size()) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return data_ + pos_; }
  void advance(uint64_t n) { pos_ += n; }  // callers check remaining() first

  Status truncated(std::string_view what, uint64_t need) const {
    return DataLoss("truncated: {} needs {} bytes at offset {}, but only {} remain", what, need, pos_, remaining());
  }

  template <typename T>
  Result<T> read(std::string_view what) {
    if (remaining() < sizeof(T)) return truncated(what, sizeof(T));
    T v;
    std::memcpy(&v, here(), sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  // A u64 length and that many bytes.
  Result<std::string_view> read_string(std::string_view what) {
    if (remaining() < 8) return truncated(fmt::format("the length of {}", what), 8);
    uint64_t len;
    std::memcpy(&len, here(), 8);
    if (len > remaining() - 8) {
      return DataLoss("truncated: {} has length {} at offset {}, but only {} bytes remain", what, len, pos_,
                      remaining() - 8);
    }
    pos_ += 8;
    std::string_view s(reinterpret_cast<const char*>(here()), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

}  // namespace

class GgufParser {
 public:
  explicit GgufParser(GgufFile& file) : file_(file), cursor_(file.bytes_) {}

  Status run();

 private:
  Status parse_header(uint64_t* tensor_count, uint64_t* kv_count);
  Status parse_metadata(uint64_t kv_count);
  Status parse_alignment();
  Status parse_tensor_infos(uint64_t tensor_count, std::vector<uint64_t>* relative_offsets);
  Status place_tensors(const std::vector<uint64_t>& relative_offsets);

  Result<GgufValue> read_value(GgufType type, int depth);
  Result<GgufArray> read_array(int depth);
  template <typename T>
  GgufArray read_plain_array(uint64_t count);
  Result<GgufArray> read_string_array(uint64_t count);

  GgufFile& file_;
  Cursor cursor_;
};

Status GgufParser::run() {
  uint64_t tensor_count = 0;
  uint64_t kv_count = 0;
  RETURN_IF_ERROR(parse_header(&tensor_count, &kv_count));
  RETURN_IF_ERROR(parse_metadata(kv_count));
  RETURN_IF_ERROR(parse_alignment());
  std::vector<uint64_t> relative_offsets;
  RETURN_IF_ERROR(parse_tensor_infos(tensor_count, &relative_offsets));
  return place_tensors(relative_offsets);
}

Status GgufParser::parse_header(uint64_t* tensor_count, uint64_t* kv_count) {
  if (cursor_.remaining() < 4) {
    return DataLoss("not a GGUF file: {} bytes is too short for the 4-byte magic", cursor_.remaining());
  }
  const uint8_t* m = cursor_.here();
  if (std::memcmp(m, "GGUF", 4) != 0) {
    return DataLoss("not a GGUF file: magic bytes are {:02x} {:02x} {:02x} {:02x}, expected 47 47 55 46 ('GGUF')", m[0],
                    m[1], m[2], m[3]);
  }
  cursor_.advance(4);
  ASSIGN_OR_RETURN(const uint32_t version, cursor_.read<uint32_t>("the version"));
  if (version != 2 && version != 3) {
    const uint32_t swapped = __builtin_bswap32(version);
    if (version == 1) {
      return Unimplemented("GGUF version 1 is not supported (it uses 32-bit lengths); only versions 2 and 3 are");
    }
    if (swapped >= 1 && swapped <= 3) {
      return Unimplemented(
          "this is a big-endian GGUF file (version field reads {:#010x}, i.e. version {} byte-swapped); only "
          "little-endian files are supported",
          version, swapped);
    }
    return Unimplemented("unsupported GGUF version {} (only versions 2 and 3 are supported)", version);
  }
  file_.version_ = version;
  ASSIGN_OR_RETURN(*tensor_count, cursor_.read<uint64_t>("tensor_count"));
  ASSIGN_OR_RETURN(*kv_count, cursor_.read<uint64_t>("metadata_kv_count"));
  // Reject absurd counts before anything is allocated for them.
  if (*kv_count > cursor_.remaining() / kMinKvBytes) {
    return DataLoss(
        "metadata_kv_count {} cannot fit in the {} bytes after the header (each pair takes at least {} bytes)",
        *kv_count, cursor_.remaining(), kMinKvBytes);
  }
  if (*tensor_count > cursor_.remaining() / kMinTensorInfoBytes) {
    return DataLoss(
        "tensor_count {} cannot fit in the {} bytes after the header (each tensor info takes at least {} bytes)",
        *tensor_count, cursor_.remaining(), kMinTensorInfoBytes);
  }
  return OkStatus();
}

Status GgufParser::parse_metadata(uint64_t kv_count) {
  file_.metadata_.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    auto key_or = cursor_.read_string("a metadata key");
    if (!key_or.ok()) {
      return key_or.status().with_context(fmt::format("metadata entry {} of {}", i, kv_count));
    }
    std::string key(*key_or);
    if (file_.key_index_.count(key) != 0) return DataLoss("duplicate metadata key '{}'", key);
    auto type_or = cursor_.read<uint32_t>("the value type");
    if (!type_or.ok()) return type_or.status().with_context(fmt::format("key '{}'", key));
    const auto type = gguf_type_from_u32(*type_or);
    if (!type) {
      return DataLoss("key '{}': value type {} at offset {} is not a GGUF value type (0..12)", key, *type_or,
                      cursor_.pos() - 4);
    }
    auto value_or = read_value(*type, 0);
    if (!value_or.ok()) return value_or.status().with_context(fmt::format("key '{}'", key));
    file_.key_index_.emplace(key, file_.metadata_.size());
    file_.metadata_.push_back(GgufKeyValue{std::move(key), std::move(value_or).value()});
  }
  return OkStatus();
}

Result<GgufValue> GgufParser::read_value(GgufType type, int depth) {
  switch (type) {
    case GgufType::kUint8: {
      ASSIGN_OR_RETURN(uint8_t v, cursor_.read<uint8_t>("a uint8 value"));
      return GgufValue(v);
    }
    case GgufType::kInt8: {
      ASSIGN_OR_RETURN(int8_t v, cursor_.read<int8_t>("an int8 value"));
      return GgufValue(v);
    }
    case GgufType::kUint16: {
      ASSIGN_OR_RETURN(uint16_t v, cursor_.read<uint16_t>("a uint16 value"));
      return GgufValue(v);
    }
    case GgufType::kInt16: {
      ASSIGN_OR_RETURN(int16_t v, cursor_.read<int16_t>("an int16 value"));
      return GgufValue(v);
    }
    case GgufType::kUint32: {
      ASSIGN_OR_RETURN(uint32_t v, cursor_.read<uint32_t>("a uint32 value"));
      return GgufValue(v);
    }
    case GgufType::kInt32: {
      ASSIGN_OR_RETURN(int32_t v, cursor_.read<int32_t>("an int32 value"));
      return GgufValue(v);
    }
    case GgufType::kFloat32: {
      ASSIGN_OR_RETURN(float v, cursor_.read<float>("a float32 value"));
      return GgufValue(v);
    }
    case GgufType::kBool: {
      ASSIGN_OR_RETURN(uint8_t v, cursor_.read<uint8_t>("a bool value"));
      if (v > 1) return DataLoss("bool value {} at offset {} is neither 0 nor 1", v, cursor_.pos() - 1);
      return GgufValue(v == 1);
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(std::string_view v, cursor_.read_string("a string value"));
      return GgufValue(std::string(v));
    }
    case GgufType::kArray: {
      ASSIGN_OR_RETURN(GgufArray v, read_array(depth + 1));
      return GgufValue(std::move(v));
    }
    case GgufType::kUint64: {
      ASSIGN_OR_RETURN(uint64_t v, cursor_.read<uint64_t>("a uint64 value"));
      return GgufValue(v);
    }
    case GgufType::kInt64: {
      ASSIGN_OR_RETURN(int64_t v, cursor_.read<int64_t>("an int64 value"));
      return GgufValue(v);
    }
    case GgufType::kFloat64: {
      ASSIGN_OR_RETURN(double v, cursor_.read<double>("a float64 value"));
      return GgufValue(v);
    }
  }
  return Internal("unhandled GGUF type {}", static_cast<uint32_t>(type));
}

template <typename T>
GgufArray GgufParser::read_plain_array(uint64_t count) {
  // The caller checked count * sizeof(T) <= remaining().
  std::vector<T> v(count);
  if (count > 0) std::memcpy(v.data(), cursor_.here(), count * sizeof(T));
  cursor_.advance(count * sizeof(T));
  return GgufArray(std::move(v));
}

Result<GgufArray> GgufParser::read_string_array(uint64_t count) {
  std::vector<std::string> v;
  v.reserve(count);  // count <= remaining / 8, checked by the caller
  for (uint64_t i = 0; i < count; ++i) {
    if (cursor_.remaining() < 8) {
      return cursor_.truncated(fmt::format("the length of string {} of {}", i, count), 8);
    }
    uint64_t len;
    std::memcpy(&len, cursor_.here(), 8);
    if (len > cursor_.remaining() - 8) {
      return DataLoss("truncated: string {} of {} has length {} at offset {}, but only {} bytes remain", i, count, len,
                      cursor_.pos(), cursor_.remaining() - 8);
    }
    cursor_.advance(8);
    v.emplace_back(reinterpret_cast<const char*>(cursor_.here()), static_cast<size_t>(len));
    cursor_.advance(len);
  }
  return GgufArray(std::move(v));
}

Result<GgufArray> GgufParser::read_array(int depth) {
  if (depth > GgufFile::kMaxArrayDepth) {
    return DataLoss("arrays nested more than {} deep at offset {}", GgufFile::kMaxArrayDepth, cursor_.pos());
  }
  ASSIGN_OR_RETURN(const uint32_t raw_type, cursor_.read<uint32_t>("the array element type"));
  const auto elem_type = gguf_type_from_u32(raw_type);
  if (!elem_type) {
    return DataLoss("array element type {} at offset {} is not a GGUF value type (0..12)", raw_type, cursor_.pos() - 4);
  }
  ASSIGN_OR_RETURN(const uint64_t count, cursor_.read<uint64_t>("the array length"));
  const uint64_t min_bytes = min_encoded_bytes(*elem_type);
  if (count > cursor_.remaining() / min_bytes) {
    return DataLoss(
        "array length {} of {} at offset {} cannot fit in the {} bytes that remain (each element takes at least {} "
        "bytes)",
        count, gguf_type_name(*elem_type), cursor_.pos() - 8, cursor_.remaining(), min_bytes);
  }
  switch (*elem_type) {
    case GgufType::kUint8:
      return read_plain_array<uint8_t>(count);
    case GgufType::kInt8:
      return read_plain_array<int8_t>(count);
    case GgufType::kUint16:
      return read_plain_array<uint16_t>(count);
    case GgufType::kInt16:
      return read_plain_array<int16_t>(count);
    case GgufType::kUint32:
      return read_plain_array<uint32_t>(count);
    case GgufType::kInt32:
      return read_plain_array<int32_t>(count);
    case GgufType::kFloat32:
      return read_plain_array<float>(count);
    case GgufType::kUint64:
      return read_plain_array<uint64_t>(count);
    case GgufType::kInt64:
      return read_plain_array<int64_t>(count);
    case GgufType::kFloat64:
      return read_plain_array<double>(count);
    case GgufType::kBool: {
      std::vector<bool> v(count);
      for (uint64_t i = 0; i < count; ++i) {
        const uint8_t b = cursor_.here()[i];
        if (b > 1) {
          return DataLoss("bool element {} of {} at offset {} is {}, neither 0 nor 1", i, count, cursor_.pos() + i, b);
        }
        v[i] = b == 1;
      }
      cursor_.advance(count);
      return GgufArray(std::move(v));
    }
    case GgufType::kString:
      return read_string_array(count);
    case GgufType::kArray: {
      std::vector<GgufArray> v;
      v.reserve(count);  // count <= remaining / 12
      for (uint64_t i = 0; i < count; ++i) {
        auto inner = read_array(depth + 1);
        if (!inner.ok()) return inner.status().with_context(fmt::format("element {} of {}", i, count));
        v.push_back(std::move(inner).value());
      }
      return GgufArray(std::move(v));
    }
  }
  return Internal("unhandled GGUF array element type {}", raw_type);
}

Status GgufParser::parse_alignment() {
  const GgufValue* v = file_.find("general.alignment");
  if (v == nullptr) return OkStatus();
  const auto a = v->to_uint();
  if (!a || *a == 0 || !std::has_single_bit(*a) || *a > (uint64_t{1} << 31)) {
    return DataLoss("key 'general.alignment': expected a power of two between 1 and 2^31, found {}", v->describe());
  }
  file_.alignment_ = *a;
  return OkStatus();
}

Status GgufParser::parse_tensor_infos(uint64_t tensor_count, std::vector<uint64_t>* relative_offsets) {
  file_.tensors_.reserve(tensor_count);  // tensor_count <= remaining / 32, checked in the header
  relative_offsets->reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    auto name_or = cursor_.read_string("a tensor name");
    if (!name_or.ok()) {
      return name_or.status().with_context(fmt::format("tensor info {} of {}", i, tensor_count));
    }
    TensorEntry entry;
    entry.name = std::string(*name_or);
    const std::string& name = entry.name;
    if (file_.tensor_index_.count(name) != 0) return DataLoss("duplicate tensor name '{}'", name);
    const std::string context = fmt::format("tensor '{}'", name);

    auto n_dims_or = cursor_.read<uint32_t>("n_dims");
    if (!n_dims_or.ok()) return n_dims_or.status().with_context(context);
    const uint32_t n_dims = *n_dims_or;
    if (n_dims < 1 || n_dims > static_cast<uint32_t>(Shape::kMaxRank)) {
      return DataLoss("tensor '{}': n_dims {} is outside 1..{}", name, n_dims, Shape::kMaxRank);
    }
    std::array<uint64_t, Shape::kMaxRank> ne{};
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      auto dim_or = cursor_.read<uint64_t>("a dimension");
      if (!dim_or.ok()) return dim_or.status().with_context(context);
      ne[d] = *dim_or;
      if (ne[d] == 0) return DataLoss("tensor '{}': dimension ne{} is 0", name, d);
      const auto product = checked_mul(numel, ne[d]);
      if (!product || *product > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return DataLoss("tensor '{}': element count overflows (ne{} = {})", name, d, ne[d]);
      }
      numel = *product;
    }
    auto type_or = cursor_.read<uint32_t>("the ggml type");
    if (!type_or.ok()) return type_or.status().with_context(context);
    const uint32_t ggml_type = *type_or;
    auto offset_or = cursor_.read<uint64_t>("the data offset");
    if (!offset_or.ok()) return offset_or.status().with_context(context);

    const auto dtype = dtype_from_ggml_type(ggml_type);
    if (!dtype) {
      if (ggml_type < 1024) {
        return Unimplemented("tensor '{}': ggml type {} ({}) is not supported", name, ggml_type,
                             ggml_type_name(ggml_type));
      }
      return DataLoss("tensor '{}': ggml type {} is not a ggml type", name, ggml_type);
    }
    entry.dtype = *dtype;
    const auto block = static_cast<uint64_t>(block_elements(*dtype));
    if (ne[0] % block != 0) {
      return DataLoss("tensor '{}': row length ne0 = {} is not a multiple of the {} block size {}", name, ne[0],
                      dtype_name(*dtype), block);
    }
    const auto nbytes = dtype_bytes(*dtype, numel);
    if (!nbytes) return DataLoss("tensor '{}': byte size of {} {} values overflows", name, numel, dtype_name(*dtype));
    entry.nbytes = *nbytes;
    for (int d = static_cast<int>(n_dims) - 1; d >= 0; --d)
      entry.shape.push_back(static_cast<int64_t>(ne[d]));

    file_.tensor_index_.emplace(name, file_.tensors_.size());
    file_.tensors_.push_back(std::move(entry));
    relative_offsets->push_back(*offset_or);
  }
  return OkStatus();
}

Status GgufParser::place_tensors(const std::vector<uint64_t>& relative_offsets) {
  const uint64_t file_size = file_.bytes_.size();
  const uint64_t alignment = file_.alignment_;
  const auto padded = checked_add(cursor_.pos(), alignment - 1);
  // pos <= file size and alignment <= 2^31, so this cannot overflow; checked all the same.
  if (!padded) return DataLoss("data section offset overflows");
  const uint64_t data_start = *padded / alignment * alignment;
  file_.data_section_offset_ = data_start;
  if (relative_offsets.empty()) return OkStatus();
  if (data_start > file_size) {
    return DataLoss(
        "the data section would start at offset {} (after the tensor infos, aligned to {}), past the end of the file "
        "({} bytes)",
        data_start, alignment, file_size);
  }
  for (size_t i = 0; i < file_.tensors_.size(); ++i) {
    TensorEntry& t = file_.tensors_[i];
    const uint64_t rel = relative_offsets[i];
    if (rel % alignment != 0) {
      return DataLoss(
          "tensor '{}': data offset {} (relative to the data section at {}) is not a multiple of the alignment {}",
          t.name, rel, data_start, alignment);
    }
    const auto begin = checked_add(data_start, rel);
    const auto end = begin ? checked_add(*begin, t.nbytes) : std::nullopt;
    if (!end || *end > file_size) {
      return DataLoss("tensor '{}': data [offset {}, {} bytes] extends past end of file ({} bytes)", t.name,
                      begin ? fmt::format("{}", *begin) : fmt::format("{} + {}", data_start, rel), t.nbytes, file_size);
    }
    t.data = file_.bytes_.data() + *begin;
  }
  return OkStatus();
}

// --- GgufFile -------------------------------------------------------------------------

Result<GgufFile> GgufFile::open(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  GgufFile file;
  file.name_ = path;
  file.mapped_ = std::move(mapped);
  file.bytes_ = file.mapped_.bytes();
  GgufParser parser(file);
  const Status status = parser.run();
  if (!status.ok()) return status.with_context(path);
  return file;
}

Result<GgufFile> GgufFile::parse(std::span<const uint8_t> bytes, std::string name) {
  GgufFile file;
  file.name_ = std::move(name);
  file.bytes_ = bytes;
  GgufParser parser(file);
  const Status status = parser.run();
  if (!status.ok()) return status.with_context(file.name_);
  return file;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second].value;
}

const TensorEntry* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

Result<const GgufValue*> lookup(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.find(key);
  if (v == nullptr) return NotFound("{}: metadata key '{}' not found", file.name(), key);
  return v;
}

Status wrong_type(const GgufFile& file, std::string_view key, std::string_view expected, const GgufValue& v) {
  return DataLoss("{}: key '{}': expected {}, found {}", file.name(), key, expected, v.describe());
}

}  // namespace

Result<std::string> GgufFile::get_string(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (const std::string* s = v->as_string()) return *s;
  return wrong_type(*this, key, "a string", *v);
}

Result<uint64_t> GgufFile::get_uint(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (auto u = v->to_uint()) return *u;
  return wrong_type(*this, key, "a non-negative integer", *v);
}

Result<int64_t> GgufFile::get_int(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (auto i = v->to_int()) return *i;
  return wrong_type(*this, key, "an integer within int64", *v);
}

Result<double> GgufFile::get_float(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (auto d = v->to_double()) return *d;
  return wrong_type(*this, key, "a number", *v);
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (auto b = v->to_bool()) return *b;
  return wrong_type(*this, key, "a bool", *v);
}

Result<std::span<const std::string>> GgufFile::get_string_array(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (const GgufArray* a = v->as_array()) {
    if (const auto* strings = a->get<std::string>()) return std::span<const std::string>(*strings);
  }
  return wrong_type(*this, key, "an array of strings", *v);
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (const GgufArray* a = v->as_array()) {
    std::optional<std::vector<float>> out = std::visit(
        [](const auto& items) -> std::optional<std::vector<float>> {
          using T = typename std::decay_t<decltype(items)>::value_type;
          if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
            std::vector<float> r(items.size());
            for (size_t i = 0; i < items.size(); ++i)
              r[i] = static_cast<float>(items[i]);
            return r;
          } else {
            return std::nullopt;
          }
        },
        a->items());
    if (out) return std::move(*out);
  }
  return wrong_type(*this, key, "an array of numbers", *v);
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  const GgufArray* a = v->as_array();
  if (a == nullptr) return wrong_type(*this, key, "an array of integers", *v);
  if (const auto* u64 = a->get<uint64_t>()) {
    std::vector<int64_t> r(u64->size());
    for (size_t i = 0; i < u64->size(); ++i) {
      if ((*u64)[i] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return DataLoss("{}: key '{}': element {} = {} does not fit in int64", name_, key, i, (*u64)[i]);
      }
      r[i] = static_cast<int64_t>((*u64)[i]);
    }
    return r;
  }
  std::optional<std::vector<int64_t>> out = std::visit(
      [](const auto& items) -> std::optional<std::vector<int64_t>> {
        using T = typename std::decay_t<decltype(items)>::value_type;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          std::vector<int64_t> r(items.size());
          for (size_t i = 0; i < items.size(); ++i)
            r[i] = static_cast<int64_t>(items[i]);
          return r;
        } else {
          return std::nullopt;
        }
      },
      a->items());
  if (out) return std::move(*out);
  return wrong_type(*this, key, "an array of integers", *v);
}

}  // namespace bw
