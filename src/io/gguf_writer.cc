#include "io/gguf_writer.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "common/atomic_file.h"
#include "common/checked_math.h"

namespace bw {

namespace {

class ByteSink {
 public:
  template <typename T>
  void put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void put_bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  std::vector<uint8_t>& bytes() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

void put_array(ByteSink& sink, const GgufArray& array);

void put_value(ByteSink& sink, const GgufValue& value) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          sink.put_string(v);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          put_array(sink, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          sink.put<uint8_t>(v ? 1 : 0);
        } else {
          sink.put<T>(v);
        }
      },
      value.storage());
}

void put_array(ByteSink& sink, const GgufArray& array) {
  sink.put<uint32_t>(static_cast<uint32_t>(array.elem_type()));
  sink.put<uint64_t>(array.size());
  std::visit(
      [&](const auto& items) {
        using T = typename std::decay_t<decltype(items)>::value_type;
        if constexpr (std::is_same_v<T, std::string>) {
          for (const auto& s : items)
            sink.put_string(s);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          for (const auto& a : items)
            put_array(sink, a);
        } else if constexpr (std::is_same_v<T, bool>) {
          for (bool b : items)
            sink.put<uint8_t>(b ? 1 : 0);
        } else {
          if (!items.empty()) sink.put_bytes(items.data(), items.size() * sizeof(T));
        }
      },
      array.items());
}

// Nested arrays deeper than the reader accepts would make an unreadable file.
int array_depth(const GgufArray& array) {
  const auto* nested = array.get<GgufArray>();
  if (nested == nullptr) return 1;
  int deepest = 0;
  for (const auto& a : *nested)
    deepest = std::max(deepest, array_depth(a));
  return 1 + deepest;
}

uint64_t pad_to(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

}  // namespace

void GgufWriter::set(std::string key, GgufValue value) {
  for (auto& kv : metadata_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  metadata_.push_back(GgufKeyValue{std::move(key), std::move(value)});
}

const GgufValue* GgufWriter::find(std::string_view key) const {
  for (const auto& kv : metadata_) {
    if (kv.key == key) return &kv.value;
  }
  return nullptr;
}

bool GgufWriter::remove(std::string_view key) {
  for (auto it = metadata_.begin(); it != metadata_.end(); ++it) {
    if (it->key == key) {
      metadata_.erase(it);
      return true;
    }
  }
  return false;
}

Status GgufWriter::check_tensor(const std::string& name, DType dtype, const Shape& shape, size_t data_size) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return InvalidArgument("GGUF writer: duplicate tensor name '{}'", name);
  }
  if (!ggml_type_from_dtype(dtype)) {
    return InvalidArgument("GGUF writer: tensor '{}': GGUF cannot store {}", name, dtype_name(dtype));
  }
  if (shape.rank() < 1 || shape.rank() > Shape::kMaxRank) {
    return InvalidArgument("GGUF writer: tensor '{}': rank {} is outside 1..{}", name, shape.rank(), Shape::kMaxRank);
  }
  uint64_t numel = 1;
  for (int d = 0; d < shape.rank(); ++d) {
    if (shape[d] <= 0) return InvalidArgument("GGUF writer: tensor '{}': dimension {} is {}", name, d, shape[d]);
    const auto product = checked_mul(numel, static_cast<uint64_t>(shape[d]));
    if (!product) return InvalidArgument("GGUF writer: tensor '{}': element count overflows", name);
    numel = *product;
  }
  if (shape.cols() % block_elements(dtype) != 0) {
    return InvalidArgument("GGUF writer: tensor '{}': row length {} is not a multiple of the {} block size {}", name,
                           shape.cols(), dtype_name(dtype), block_elements(dtype));
  }
  const auto expected = dtype_bytes(dtype, numel);
  if (!expected || *expected != data_size) {
    return InvalidArgument("GGUF writer: tensor '{}': {} {} values take {} bytes, got {}", name, numel,
                           dtype_name(dtype), expected.value_or(0), data_size);
  }
  return OkStatus();
}

Status GgufWriter::add_tensor(std::string name, DType dtype, Shape shape, std::span<const uint8_t> data) {
  RETURN_IF_ERROR(check_tensor(name, dtype, shape, data.size()));
  tensors_.push_back(PendingTensor{std::move(name), dtype, shape, data, {}, false});
  return OkStatus();
}

Status GgufWriter::add_tensor_copy(std::string name, DType dtype, Shape shape, std::span<const uint8_t> data) {
  RETURN_IF_ERROR(check_tensor(name, dtype, shape, data.size()));
  tensors_.push_back(
      PendingTensor{std::move(name), dtype, shape, {}, std::vector<uint8_t>(data.begin(), data.end()), true});
  return OkStatus();
}

Result<uint64_t> GgufWriter::alignment() const {
  const GgufValue* v = find("general.alignment");
  if (v == nullptr) return GgufFile::kDefaultAlignment;
  const uint32_t* a = v->get_if<uint32_t>();
  if (a == nullptr || *a == 0 || !std::has_single_bit(*a)) {
    return InvalidArgument("GGUF writer: general.alignment must be a uint32 power of two, got {}", v->describe());
  }
  return uint64_t{*a};
}

Result<std::vector<uint8_t>> GgufWriter::build_header(uint64_t alignment, std::vector<uint64_t>* offsets) const {
  ByteSink sink;
  sink.put_bytes("GGUF", 4);
  sink.put<uint32_t>(3);
  sink.put<uint64_t>(tensors_.size());
  sink.put<uint64_t>(metadata_.size());
  for (const auto& kv : metadata_) {
    if (const GgufArray* a = kv.value.as_array(); a != nullptr && array_depth(*a) > GgufFile::kMaxArrayDepth) {
      return InvalidArgument("GGUF writer: key '{}': arrays nested more than {} deep", kv.key,
                             GgufFile::kMaxArrayDepth);
    }
    sink.put_string(kv.key);
    sink.put<uint32_t>(static_cast<uint32_t>(kv.value.type()));
    put_value(sink, kv.value);
  }
  uint64_t offset = 0;
  offsets->clear();
  for (const auto& t : tensors_) {
    sink.put_string(t.name);
    sink.put<uint32_t>(static_cast<uint32_t>(t.shape.rank()));
    for (int d = t.shape.rank() - 1; d >= 0; --d)
      sink.put<uint64_t>(static_cast<uint64_t>(t.shape[d]));
    sink.put<uint32_t>(*ggml_type_from_dtype(t.dtype));
    sink.put<uint64_t>(offset);
    offsets->push_back(offset);
    offset = pad_to(offset + t.bytes().size(), alignment);
  }
  return std::move(sink.bytes());
}

Result<std::vector<uint8_t>> GgufWriter::serialize() const {
  ASSIGN_OR_RETURN(const uint64_t align, alignment());
  std::vector<uint64_t> offsets;
  ASSIGN_OR_RETURN(std::vector<uint8_t> out, build_header(align, &offsets));
  if (tensors_.empty()) return out;  // no data section, so no padding (as ggml writes it)
  out.resize(pad_to(out.size(), align), 0);
  const size_t data_start = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto bytes = tensors_[i].bytes();
    out.resize(data_start + offsets[i], 0);
    out.insert(out.end(), bytes.begin(), bytes.end());
    out.resize(pad_to(out.size(), align), 0);
  }
  return out;
}

Status GgufWriter::write(const std::string& path) const {
  ASSIGN_OR_RETURN(const uint64_t align, alignment());
  std::vector<uint64_t> offsets;
  ASSIGN_OR_RETURN(std::vector<uint8_t> header, build_header(align, &offsets));
  if (!tensors_.empty()) header.resize(pad_to(header.size(), align), 0);

  // Every padding piece views this one buffer (several pieces when the gap is larger).
  const std::vector<uint8_t> zeros(static_cast<size_t>(std::min<uint64_t>(align, 1 << 20)), 0);
  std::vector<std::span<const uint8_t>> pieces;
  pieces.reserve(1 + 2 * tensors_.size());
  pieces.emplace_back(header);
  uint64_t written = header.size();
  for (const auto& t : tensors_) {
    const auto bytes = t.bytes();
    pieces.push_back(bytes);
    written += bytes.size();
    while (written % align != 0) {
      const uint64_t gap = std::min<uint64_t>(align - written % align, zeros.size());
      pieces.emplace_back(zeros.data(), static_cast<size_t>(gap));
      written += gap;
    }
  }
  return write_file_atomically(path, pieces);
}

}  // namespace bw
