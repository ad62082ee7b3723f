#include <gtest/gtest.h>

#include <vector>

#include "backend/cuda/cuda_device.h"
#include "support/test_support.h"
#include "tensor/dtype.h"

namespace bw {
namespace {

TEST(CudaConvertTest, F32ToBf16MatchesCpuBitForBit) {
  auto devices = cuda::list_devices();
  ASSERT_TRUE(devices.ok()) << devices.status().to_string();
  ASSERT_FALSE(devices->empty());
  for (int64_t n : {1, 255, 256, 100003}) {
    auto src = test::random_floats(static_cast<size_t>(n), 42 + static_cast<uint32_t>(n), -1e4f, 1e4f);
    std::vector<uint16_t> dst(static_cast<size_t>(n), 0xffff);
    ASSERT_TRUE(cuda::convert_f32_to_bf16_on_device(0, src.data(), dst.data(), n).ok());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(dst[i], f32_to_bf16(src[i])) << "i=" << i;
  }
}

}  // namespace
}  // namespace bw
