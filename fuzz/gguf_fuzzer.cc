// libFuzzer target for the GGUF reader: GgufFile::parse on arbitrary bytes must return a
// Status or a file, never crash, hang or allocate without bound; a file it accepts must
// have every metadata value readable and every (reasonably small) tensor dequantisable
// from the bytes it claims, and copying it through GgufWriter must give a file that parses
// and serialises to the same bytes again. Seeds: fuzz/corpus/gguf/ (written by tests/io/gguf_test.cc).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "tensor/quant.h"

namespace {

constexpr int64_t kMaxTensorElements = int64_t{1} << 20;

size_t touch_array(const bw::GgufArray& array) {
  size_t sum = array.size();
  if (const auto* nested = array.get<bw::GgufArray>()) {
    for (const auto& a : *nested)
      sum += touch_array(a);
  } else if (const auto* strings = array.get<std::string>()) {
    for (const auto& s : *strings)
      sum += s.size();
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = bw::GgufFile::parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
  if (!file.ok()) {
    if (file.status().message().empty()) __builtin_trap();
    return 0;
  }
  size_t sink = 0;
  for (const auto& kv : file->metadata()) {
    sink += kv.key.size() + kv.value.describe().size();
    if (const bw::GgufArray* a = kv.value.as_array()) sink += touch_array(*a);
    // The typed getters go through the same lookups a model loader uses.
    (void)file->get_uint(kv.key);
    (void)file->get_float(kv.key);
    (void)file->get_string_array(kv.key);
    (void)file->get_float_array(kv.key);
    (void)file->get_int_array(kv.key);
  }
  for (const auto& t : file->tensors()) {
    if (file->find_tensor(t.name) != &t) __builtin_trap();
    const uint64_t offset = file->data_offset_of(t);
    if (offset > size || t.nbytes > size - offset) __builtin_trap();
    if (t.numel() > kMaxTensorElements) continue;
    if (!bw::is_float(t.dtype) && !bw::is_quantized(t.dtype)) {
      for (uint64_t i = 0; i < t.nbytes; ++i)
        sink += t.data[i];
      continue;
    }
    std::vector<float> out(static_cast<size_t>(t.numel()));
    const bw::Status s = bw::convert_to_f32(t.dtype, t.data, t.nbytes, out.data(), t.numel());
    if (!s.ok()) __builtin_trap();
    for (float v : out)
      sink += v == v ? 1 : 0;
  }
  // Writer round trip: rewrite the accepted file, parse it back, rewrite again: the two
  // images must be identical (a reader/writer disagreement would show up here).
  bw::GgufWriter writer;
  for (const auto& kv : file->metadata())
    writer.set(kv.key, kv.value);
  for (const auto& t : file->tensors()) {
    if (!writer.add_tensor(t.name, t.dtype, t.shape, {t.data, t.nbytes}).ok()) __builtin_trap();
  }
  auto image = writer.serialize();
  if (image.ok()) {  // fails only for a general.alignment the reader tolerates but ggml would not
    auto again = bw::GgufFile::parse(*image, "rewritten.gguf");
    if (!again.ok()) __builtin_trap();
    bw::GgufWriter writer2;
    for (const auto& kv : again->metadata())
      writer2.set(kv.key, kv.value);
    for (const auto& t : again->tensors()) {
      if (!writer2.add_tensor(t.name, t.dtype, t.shape, {t.data, t.nbytes}).ok()) __builtin_trap();
    }
    auto image2 = writer2.serialize();
    if (!image2.ok() || *image2 != *image) __builtin_trap();
  }
  volatile size_t keep = sink;
  (void)keep;
  return 0;
}
