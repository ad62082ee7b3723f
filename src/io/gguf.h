// GGUF: the single-file model format of ggml / llama.cpp. This header holds the metadata
// value types (GgufType, GgufValue, GgufArray), the ggml tensor-type mapping and the
// reader, GgufFile; gguf_writer.h writes files.
//
// File layout (versions 2 and 3, little-endian): magic "GGUF", u32 version, u64
// tensor_count, u64 metadata_kv_count; the key/value pairs (u64-length string key, u32
// value type, value); the tensor infos (string name, u32 n_dims, u64 ne[n_dims] with ne0
// the fastest-varying dimension, u32 ggml type, u64 offset relative to the data section);
// then the data section, which starts at the next multiple of `general.alignment`
// (default 32) and holds each tensor at an aligned offset.
//
// The reader treats the file as untrusted: every count, length and offset is checked
// against the bytes that are really there (with overflow-checked arithmetic) before it is
// used, so a corrupt or hostile file gives a Status (DataLoss for corrupt or truncated
// data, Unimplemented for valid but unsupported features), never a crash or an unbounded
// allocation. Error messages name the file, the key or tensor, and what was expected.
//
// Ownership: metadata values are copied out of the file; tensor data is never copied
// (TensorEntry::data points into the file). GgufFile::open keeps the memory map inside
// the object (moving the object keeps the pointers valid); GgufFile::parse points into
// the caller's bytes, which must outlive the GgufFile. A GgufFile is immutable once built:
// all const methods are safe to call from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/mapped_file.h"
#include "common/status.h"
#include "io/tensor_entry.h"
#include "tensor/dtype.h"

namespace bw {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint8", "int32", "float32", "bool", "string", "array", ...
std::string_view gguf_type_name(GgufType type);
// The GgufType of a raw u32 from a file, nullopt when it is not one.
std::optional<GgufType> gguf_type_from_u32(uint32_t raw);

// --- ggml tensor types ----------------------------------------------------------------

// "F32", "Q4_K", "IQ2_XXS", ... for any ggml type id; "unknown" for ids ggml never used.
std::string_view ggml_type_name(uint32_t ggml_type);
// The DType of a ggml type id, nullopt when Breakwater has no such DType (e.g. Q2_K, I16).
std::optional<DType> dtype_from_ggml_type(uint32_t ggml_type);
// The ggml type id of a DType, nullopt for DTypes GGUF cannot store (u8).
std::optional<uint32_t> ggml_type_from_dtype(DType dtype);

// --- Metadata values ------------------------------------------------------------------

class GgufValue;

// An array value: a typed vector of elements, all of one GgufType. Arrays of arrays hold
// each inner array as a GgufArray (inner arrays may differ in element type and length).
class GgufArray {
 public:
  // The alternative's index is the element's GgufType.
  using Storage = std::variant<std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>, std::vector<int16_t>,
                               std::vector<uint32_t>, std::vector<int32_t>, std::vector<float>, std::vector<bool>,
                               std::vector<std::string>, std::vector<GgufArray>, std::vector<uint64_t>,
                               std::vector<int64_t>, std::vector<double>>;

  GgufArray() = default;  // an empty array of uint8
  template <typename T>
  explicit GgufArray(std::vector<T> items) : items_(std::move(items)) {}
  explicit GgufArray(Storage items) : items_(std::move(items)) {}

  GgufType elem_type() const { return static_cast<GgufType>(items_.index()); }
  size_t size() const;
  bool empty() const { return size() == 0; }
  // The elements when they are exactly std::vector<T>, else nullptr
  // (e.g. get<std::string>(), get<float>(), get<GgufArray>() for nested arrays).
  template <typename T>
  const std::vector<T>* get() const {
    return std::get_if<std::vector<T>>(&items_);
  }
  const Storage& items() const { return items_; }

  bool operator==(const GgufArray& other) const { return items_ == other.items_; }

 private:
  Storage items_;
};

class GgufValue {
 public:
  // The alternative's index is the value's GgufType.
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
                               GgufArray, uint64_t, int64_t, double>;

  GgufValue() = default;  // uint8 0
  // The C++ type picks the GGUF type: GgufValue(uint32_t{2}) is a uint32, GgufValue(2) an
  // int32, GgufValue(1.0f) a float32, GgufValue("x") a string.
  GgufValue(uint8_t v) : value_(v) {}                        // NOLINT(google-explicit-constructor)
  GgufValue(int8_t v) : value_(v) {}                         // NOLINT(google-explicit-constructor)
  GgufValue(uint16_t v) : value_(v) {}                       // NOLINT(google-explicit-constructor)
  GgufValue(int16_t v) : value_(v) {}                        // NOLINT(google-explicit-constructor)
  GgufValue(uint32_t v) : value_(v) {}                       // NOLINT(google-explicit-constructor)
  GgufValue(int32_t v) : value_(v) {}                        // NOLINT(google-explicit-constructor)
  GgufValue(float v) : value_(v) {}                          // NOLINT(google-explicit-constructor)
  GgufValue(bool v) : value_(v) {}                           // NOLINT(google-explicit-constructor)
  GgufValue(uint64_t v) : value_(v) {}                       // NOLINT(google-explicit-constructor)
  GgufValue(int64_t v) : value_(v) {}                        // NOLINT(google-explicit-constructor)
  GgufValue(double v) : value_(v) {}                         // NOLINT(google-explicit-constructor)
  GgufValue(std::string v) : value_(std::move(v)) {}         // NOLINT(google-explicit-constructor)
  GgufValue(std::string_view v) : value_(std::string(v)) {}  // NOLINT(google-explicit-constructor)
  GgufValue(const char* v) : value_(std::string(v)) {}       // NOLINT(google-explicit-constructor)
  GgufValue(GgufArray v) : value_(std::move(v)) {}           // NOLINT(google-explicit-constructor)
  template <typename T>
  GgufValue(std::vector<T> v) : value_(GgufArray(std::move(v))) {}  // NOLINT(google-explicit-constructor)

  GgufType type() const { return static_cast<GgufType>(value_.index()); }
  bool is_integer() const;
  bool is_array() const { return type() == GgufType::kArray; }

  // Exact-type access: the value when it is a T, else nullptr.
  template <typename T>
  const T* get_if() const {
    return std::get_if<T>(&value_);
  }
  const std::string* as_string() const { return get_if<std::string>(); }
  const GgufArray* as_array() const { return get_if<GgufArray>(); }

  // Converting access, nullopt when the type or the value does not fit:
  std::optional<uint64_t> to_uint() const;  // any integer type, value >= 0
  std::optional<int64_t> to_int() const;    // any integer type, value within int64
  std::optional<double> to_double() const;  // float32, float64 or any integer type
  std::optional<bool> to_bool() const;      // bool only

  // "uint32 7", "string 'llama'", "array[string] of 512 elements": for error messages.
  std::string describe() const;

  const Storage& storage() const { return value_; }
  bool operator==(const GgufValue& other) const { return value_ == other.value_; }

 private:
  Storage value_;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

// --- Reader ---------------------------------------------------------------------------

class GgufFile {
 public:
  static constexpr uint64_t kDefaultAlignment = 32;
  static constexpr int kMaxArrayDepth = 8;  // arrays nested deeper than this are rejected

  // Memory-maps `path` and parses it; the map lives as long as the GgufFile.
  static Result<GgufFile> open(const std::string& path);
  // Parses a file image held by the caller; `name` prefixes error messages. Tensor data
  // is not copied: entries point into `bytes`, which must outlive the GgufFile.
  static Result<GgufFile> parse(std::span<const uint8_t> bytes, std::string name);

  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Absolute offset of the data section in the file.
  uint64_t data_section_offset() const { return data_section_offset_; }
  // The whole file image.
  std::span<const uint8_t> bytes() const { return bytes_; }

  // Metadata in file order.
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed getters: NotFound when the key is absent, DataLoss when its type or value does
  // not fit (the message names the file, the key, and the type found).
  Result<std::string> get_string(std::string_view key) const;
  Result<uint64_t> get_uint(std::string_view key) const;  // any integer type, >= 0
  Result<int64_t> get_int(std::string_view key) const;    // any integer type within int64
  Result<double> get_float(std::string_view key) const;   // float32/float64 (or an integer)
  Result<bool> get_bool(std::string_view key) const;
  // A view of a string array (valid while this GgufFile lives).
  Result<std::span<const std::string>> get_string_array(std::string_view key) const;
  // A float32/float64 (or integer) array, converted.
  Result<std::vector<float>> get_float_array(std::string_view key) const;
  // An array of any integer type, converted (uint64 values above INT64_MAX are DataLoss).
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;

  // Tensors in file order (shapes outermost first: GGUF's ne0 is the last dimension).
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* find_tensor(std::string_view name) const;
  // Absolute byte offset of a tensor's data in the file (`tensor` must be one of tensors()).
  uint64_t data_offset_of(const TensorEntry& tensor) const {
    return static_cast<uint64_t>(tensor.data - bytes_.data());
  }

 private:
  friend class GgufParser;  // gguf.cc
  GgufFile() = default;

  std::string name_;
  MappedFile mapped_;  // empty for parse()
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_section_offset_ = 0;
  std::vector<GgufKeyValue> metadata_;
  std::map<std::string, size_t, std::less<>> key_index_;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace bw
