// Tensor-core building blocks shared by the prefill attention kernels (sm_80+): cp.async
// copies, ldmatrix, mma.sync m16n8k16, and the online-softmax step of FlashAttention-2 on
// the m16 tiles whose fragment layout mma.sync and Hopper's wgmma share. Included by .cu
// files only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace bw::cuda {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Element offset of 16-byte chunk c of row r in a [rows][D] bf16 tile whose rows' chunks
// are XOR-swizzled by r % 8: the eight rows an ldmatrix reads at one chunk index sit in
// eight different banks.
template <int D>
__device__ __forceinline__ int swz(int r, int c) {
  return r * D + ((c ^ (r & 7)) << 3);
}

// 16 bytes global -> shared; zero-filled (nothing read) when !pred.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8], bf16 in, f32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same for an a whose rows 8-15 are zero (a1 = a3 = 0): only rows 0-7 of c, the two
// accumulators c[0..1] of the fragment (rows 8-15 come out zero: dropped, no registers).
__device__ __forceinline__ void mma_bf16_rows0_7(float (&c)[2], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  asm volatile(
      "{\n.reg .f32 unused0, unused1;\n"
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, unused0, unused1}, {%2, %6, %3, %6}, {%4, %5}, "
      "{%0, %1, %7, %7};\n}\n"
      : "+f"(c[0]), "+f"(c[1])
      : "r"(a0), "r"(a2), "r"(b0), "r"(b1), "r"(0u), "f"(0.0f));
}

// 2^x with one MUFU op (denormal results flush to zero; ex2(-inf) = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The online-softmax update of one m16 tile of a warp for kKeys scores per row: sc holds
// the raw scores in the accumulator layout (sc[j][0..1]: row g, keys 8j + 2 t4 + {0, 1};
// sc[j][2..3]: row g + 8), keys k0 + ... past a row's limit (lim0 for row g, lim1 for row
// g + 8) are masked when need_mask (and kMayMask: a kernel that knows a tile needs no
// mask passes false, since the compiler turns the runtime test into a compare and select
// per score that every tile pays for). Raises the running maxima m (log2 domain, scaled),
// leaves the probabilities P in sc (f32), updates the partial sums l and returns in corr
// the factors the rows' output accumulators must be scaled by (rescale_rows). Every row
// must have seen a key before (or in) this step, so the maxima stay finite (a row whose
// keys are all masked here keeps its max: its P is 0). Apart from packing P
// (pack_probabilities), so a kernel can pack it once the GEMM reading the previous P is
// done.
template <int kKeys, bool kMayMask = true>
__device__ __forceinline__ void online_softmax_exps(float (&sc)[kKeys / 8][4], float (&m)[2], float (&l)[2],
                                                    float (&corr)[2], bool need_mask, int k0, int lim0, int lim1,
                                                    float scale_log2, int t4) {
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (kMayMask && need_mask) {
        const int key = k0 + j * 8 + t4 * 2 + e;
        if (key > lim0) sc[j][e] = -INFINITY;
        if (key > lim1) sc[j][2 + e] = -INFINITY;
      }
      mx0 = fmaxf(mx0, sc[j][e]);
      mx1 = fmaxf(mx1, sc[j][2 + e]);
    }
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float new0 = fmaxf(m[0], mx0 * scale_log2);
  const float new1 = fmaxf(m[1], mx1 * scale_log2);
  corr[0] = fast_exp2(m[0] - new0);
  corr[1] = fast_exp2(m[1] - new1);
  m[0] = new0;
  m[1] = new1;
  float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
    sc[j][0] = fast_exp2(fmaf(sc[j][0], scale_log2, -new0));
    sc[j][1] = fast_exp2(fmaf(sc[j][1], scale_log2, -new0));
    sc[j][2] = fast_exp2(fmaf(sc[j][2], scale_log2, -new1));
    sc[j][3] = fast_exp2(fmaf(sc[j][3], scale_log2, -new1));
    sum0 += sc[j][0] + sc[j][1];
    sum1 += sc[j][2] + sc[j][3];
  }
  l[0] = l[0] * corr[0] + sum0;
  l[1] = l[1] * corr[1] + sum1;
}

// The probabilities online_softmax_exps left in sc as bf16 A fragments (pf[kk]: keys
// 16 kk.., the layout mma.sync's and wgmma's A operands share).
template <int kKeys>
__device__ __forceinline__ void pack_probabilities(const float (&sc)[kKeys / 8][4], uint32_t (&pf)[kKeys / 16][4]) {
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
    pf[j / 2][(j % 2) * 2] = pack_bf16(sc[j][0], sc[j][1]);
    pf[j / 2][(j % 2) * 2 + 1] = pack_bf16(sc[j][2], sc[j][3]);
  }
}

// Both: P packed into pf as soon as it is computed.
template <int kKeys>
__device__ __forceinline__ void online_softmax_step(float (&sc)[kKeys / 8][4], uint32_t (&pf)[kKeys / 16][4],
                                                    float (&m)[2], float (&l)[2], float (&corr)[2], bool need_mask,
                                                    int k0, int lim0, int lim1, float scale_log2, int t4) {
  online_softmax_exps<kKeys>(sc, m, l, corr, need_mask, k0, lim0, lim1, scale_log2, t4);
  pack_probabilities<kKeys>(sc, pf);
}

// Scales the output accumulators of rows g and g + 8 by corr (skipped when no row of the
// warp raised its max).
template <int kOut>
__device__ __forceinline__ void rescale_rows(float (&o)[kOut][4], const float (&corr)[2]) {
  if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
    for (int j = 0; j < kOut; ++j) {
      o[j][0] *= corr[0];
      o[j][1] *= corr[0];
      o[j][2] *= corr[1];
      o[j][3] *= corr[1];
    }
  }
}

}  // namespace bw::cuda
