// libFuzzer target for the safetensors reader: parses arbitrary bytes as a .safetensors
// file and, when that succeeds, reads every byte of every tensor (so a view that points
// outside the input is caught by ASan) and checks the lookups agree with the list.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = bw::SafetensorsFile::parse(std::span<const uint8_t>(data, size), "fuzz.safetensors");
  if (!file.ok()) {
    if (file.status().message().empty()) std::abort();  // every error must say what failed
    return 0;
  }
  uint64_t sum = 0;
  uint64_t prev_end = 0;
  for (const bw::TensorEntry& t : file->tensors()) {
    if (t.data < data || t.nbytes > size || t.data + t.nbytes > data + size) std::abort();
    if (t.nbytes != t.view().nbytes()) std::abort();
    if (file->find(t.name) != &t) std::abort();
    for (uint64_t i = 0; i < t.nbytes; ++i)
      sum += t.data[i];
    const uint64_t begin = static_cast<uint64_t>(t.data - data);
    if (t.nbytes > 0 && begin < prev_end) std::abort();  // overlapping tensors
    if (t.nbytes > 0) prev_end = begin + t.nbytes;
  }
  for (const auto& [key, value] : file->metadata())
    sum += key.size() + value.size();
  volatile uint64_t sink = sum;
  (void)sink;
  return 0;
}
