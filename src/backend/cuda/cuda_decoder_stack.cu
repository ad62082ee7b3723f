// A whole batch-1 decode step of a dense decoder (every layer, the final norm and the LM
// head) in one persistent kernel: the Hopper path of Backend::decoder_stack.
//
// Why: at batch 1 each layer is a chain of small ops. Run as separate kernels (even fused
// and graph-replayed), every op boundary drains the GPU's loads and refills them, and the
// latency-bound ops between the projections (attention, norms) leave HBM idle: the 1.5B
// step reached 47% of the weight-streaming roofline that way, its small projections at
// 1.0-2.3 TB/s. Here one CTA per SM lives for the whole step, and its weights never wait
// for its data: a producer thread streams the CTA's share of every weight matrix, in the
// order the step uses them, into a ring of shared-memory pages with bulk copies (TMA, one
// per page, L2 evict-first), while eight consumer warps wait for the activations the next
// op needs and then compute from whatever pages have landed. The ring (8 pages of 24 KiB
// per SM for the 1.5B shape, 5 of 37 KiB for the 7B: ~25 MB on the GPU) keeps HBM busy
// for ~6 us across a wait.
//
// Measured on an H200 (docs/PERF.md): 1.5B 859-863 vs 623-640 tokens/s op by op, 7B 273-280 vs 240.
// The weight stream alone (BW_CUDA_STACK_DEBUG=3) runs the 1.5B step at 1,284 tokens/s
// (94% of the roofline); what is left is latency the ring does not cover: each op waits
// for every CTA (a release, an acquire poll and a reload of the activations: ~3 us under
// a saturated L2), the attention step (~7 us from the QKV wait to its merged output),
// and pages of many short rows cost the consumers about as long as HBM takes to deliver
// them. Measurement aids (wrong results):
// BW_CUDA_STACK_DEBUG=1 skips the attention, 2 also every wait, 3 also the arithmetic; 4
// copies no weights (the consumers' own rate: no waits, no attention), 5 the same with the
// waits and the attention (the dependency chain alone);
// BW_CUDA_STACK_PAGE_KB sets the page size, BW_CUDA_STACK_MAX_SPLITS caps the attention
// splits per KV head (the tests give items several tiles that way), BW_CUDA_STACK_TILE_BUFFERS
// (1 or 2) and BW_CUDA_STACK_MAX_TILES override the attention's tile buffers and the
// longest context the stack takes (kTwoBufferTiles, kMaxTilesPerItem), BW_CUDA_STACK_PAUSE=0
// keeps the weight stream going while the consumers wait between ops (see
// g_stream_paused), BW_CUDA_STACK_TC puts
// the gate/up (1) and LM head (2) pages on tensor cores (cuda_decoder_stack_tc_page.cuh:
// measured no faster for the consumers and slower for the step so far); a build with
// BW_STACK_TRACE defined prints the cycles between the steps of a layer at every step, and
// how long each consumer warp waited for each projection's pages and worked on them, and
// how long the producer waited for free slots or was paused before pushing them.
//
// The work of each op is split statically: CTA c owns rows [c N / G, (c + 1) N / G) of
// every projection (G CTAs), so its share of a matrix is one contiguous byte range and a
// page holds whole rows. Ops that need all of the previous op's output wait on per-layer
// arrival counters in global memory (release / acquire), which the last CTA to leave the
// kernel zeroes again (no memset per step):
//   QKV  rms_norm(residual) (each CTA normalises the whole row itself) @ Wqkv + bias
//   ATTN one work item per (KV head, split of the context): RoPE on q (and on the new k,
//        written to its cache slot with v by the item holding the last position), online
//        softmax over the item's keys in tiles of 32 (copied to shared memory before the
//        wait for QKV), a partial result; the last items of a KV head to arrive (one per
//        query head, each waiting for the rest) merge the partials into the attention
//        output.
//   O    residual += attn @ Wo
//   GU   act = silu(rms_norm(residual) @ Wgate) * (... @ Wup); gate and up pages of the
//        same rows alternate in the ring
//   DOWN residual += act @ Wdown
//   then rms_norm(residual) @ Wlm_head -> f32 logits.
// Each value is rounded where the separate ops round it (every op's output is stored in
// bf16), so the step computes what the per-op path computes, up to the order of f32 sums.
//
// Files: cuda_decoder_stack_consumer.cuh (sizes, the page walk, the ring and barrier
// primitives, the consumers' GEMV over a page), cuda_decoder_stack_tc_page.cuh (the same on
// tensor cores, a warp per page), cuda_decoder_stack_attention.cuh (the attention step),
// this file (the producer, the step's sequence of ops, the launch).
//
// Requirements (decoder_stack_supported): bf16 weights, activations and cache, head_dim 64
// or 128, at most 8 query heads per KV head, sizes that keep rows 16-byte aligned, a
// device that runs sm_90a code (bulk copies and mbarrier transaction counts), and a block
// table of at most kMaxTilesPerItem tiles per attention item (longer contexts are faster
// op by op).
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "backend/cuda/cuda_decoder_stack_attention.cuh"
#include "backend/cuda/cuda_decoder_stack_consumer.cuh"
#include "backend/cuda/cuda_decoder_stack_tc_page.cuh"
#include "backend/cuda/cuda_env.h"

namespace bw::cuda {

namespace decoder_stack {

#ifdef BW_WGMMA
// The producer (one thread): every page of the step, in the consumers' order (consume()
// walks the same pages with walk_rows / walk_gate_up), as one bulk copy each. The index
// arithmetic stays out of the per-page path: it runs at the rate of HBM, alone.
__device__ void produce(const DecoderStackArgs& a, const Plan& p, uint32_t ring, uint32_t full, uint32_t empty) {
  uint64_t policy = 0;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  RingCursor cur;
  uint32_t issued = 0;
#ifdef BW_STACK_TRACE
  int traced_op = kTraceNone;  // the op of the pages pushed now, in layer 5 of CTA 0
#endif
  auto push = [&](const char* src, uint32_t bytes) {
#ifdef BW_STACK_TRACE
    const long long t0 = clock64();
#endif
    if (issued >= static_cast<uint32_t>(p.pages)) mbar_wait(empty + 8 * cur.slot, cur.phase ^ 1);
#ifdef BW_STACK_TRACE
    const long long t1 = clock64();
#endif
    while (p.pause_between_ops && stream_paused()) {
    }
#ifdef BW_STACK_TRACE
    if (traced_op != kTraceNone) {
      const long long t2 = clock64();
      if (g_push_count[traced_op]++ == 0) g_push_first[traced_op] = t2;
      g_push_slot_wait[traced_op] += t1 - t0;
      g_push_paused[traced_op] += t2 - t1;
      g_push_last[traced_op] = t2;
    }
#endif
    if (debug_skips_copies(a.debug)) {
      mbar_arrive(full + 8 * cur.slot);  // measurement aid: no copy, the consumers' rate alone
    } else {
      mbar_expect_tx(full + 8 * cur.slot, bytes);
      bulk_load(ring + cur.slot * p.page_bytes, src, bytes, full + 8 * cur.slot, policy);
    }
    cur.advance(p.pages);
    ++issued;
  };
  // The CTA's rows of a [n, k] matrix, R rows per page.
  auto push_rows = [&](const void* w, int64_t n, int64_t k, int R) {
    int64_t r0 = 0, r1 = 0;
    cta_rows(n, &r0, &r1);
    const char* src = reinterpret_cast<const char*>(as_bf16(w) + r0 * k);
    const int64_t page = static_cast<int64_t>(R) * k * 2;
    for (int64_t left = (r1 - r0) * k * 2; left > 0; left -= page, src += page)
      push(src, static_cast<uint32_t>(min(page, left)));
  };
  const int64_t H = a.hidden, F = a.intermediate, HqD = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const int64_t qkv_rows = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * a.head_dim;
  int64_t u0 = 0, u1 = 0;
  cta_rows(F, &u0, &u1);
  const int64_t gu_page = static_cast<int64_t>(p.rows_h) * H * 2, up_offset = F * H * 2;
#ifdef BW_STACK_TRACE
#define TRACE_PUSH(op) traced_op = blockIdx.x == 0 && l == 5 ? (op) : kTraceNone;
#else
#define TRACE_PUSH(op)
#endif
  for (int l = 0; l < a.num_layers; ++l) {
    const DecoderStackLayer& w = a.layers[l];
    TRACE_PUSH(kTraceQkv);
    push_rows(w.qkv, qkv_rows, H, p.rows_h);
    TRACE_PUSH(kTraceO);
    push_rows(w.o_proj, H, HqD, p.rows_q);
    TRACE_PUSH(kTraceGateUp);
    const char* gate = reinterpret_cast<const char*>(as_bf16(w.gate_up) + u0 * H);
    for (int64_t left = (u1 - u0) * H * 2; left > 0; left -= gu_page, gate += gu_page) {
      const auto bytes = static_cast<uint32_t>(min(gu_page, left));
      push(gate, bytes);
      push(gate + up_offset, bytes);
    }
    TRACE_PUSH(kTraceDown);
    push_rows(w.down, H, F, p.rows_f);
    TRACE_PUSH(kTraceNone);
  }
#undef TRACE_PUSH
  push_rows(a.lm_head, a.vocab, H, p.rows_h);
}

template <int D>
__device__ void consume(Consumer& c) {
  const DecoderStackArgs& a = c.a;
  const Plan& p = c.p;
  const int G = static_cast<int>(gridDim.x);
  const int64_t H = a.hidden, F = a.intermediate, HqD = static_cast<int64_t>(a.num_heads) * D;
  const int64_t qkv_rows = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
  bf16* residual = static_cast<bf16*>(a.residual);
  bf16* qkv = static_cast<bf16*>(a.qkv);
  bf16* act = static_cast<bf16*>(a.act);
  // Slices per row of each op (from its rows per page; a short last page keeps them).
  const int s_h = slices_for(p.rows_h), s_q = slices_for(p.rows_q), s_f = slices_for(p.rows_f);
  // The CTA's rows of the residual stream (the o and down projections own the same rows)
  // live in shared memory too: their epilogue adds to them without a round trip to L2,
  // and stores the new values for the other CTAs' norms.
  const int64_t r0 = cta_first(H), owned = cta_count(H);
  for (int64_t i = c.tid; i < owned; i += kConsumerThreads)
    c.own[i] = __bfloat162float(__ldcg(residual + r0 + i));
  auto add_to_residual = [&](int64_t i, float s) {
    const float v = round_bf16(c.own[i] + round_bf16(s));
    c.own[i] = v;
    residual[r0 + i] = __float2bfloat16_rn(v);
  };
  // BW_STACK_TRACE builds (a measurement aid; it costs registers): cycles between the
  // steps of layer 5 on CTA 0 (and within the o and down steps: their waits and loads of
  // x) and each warp's pages in its projections (Consumer::page), printed at the end of
  // every step; and the attention step's (on CTA 0 and on the CTAs that merged the splits).
  // (Counting the landed ring pages at an op's start, as an earlier version did, held the
  // counting warp back 3-4k cycles in that op: the op then ended that much later.)
#ifdef BW_STACK_TRACE
  const bool trace_cta = blockIdx.x == 0 && c.tid == 0;
  __shared__ long long t[16];
  int traced_layer = -1;
  if (c.tid < kConsumerWarps) {
    g_trace_op[c.tid] = kTraceNone;
    for (int i = 0; i < kTraceOps; ++i)
      g_page_wait[i][c.tid] = g_page_work[i][c.tid] = g_page_gap[i][c.tid] = g_op_end[i][c.tid] =
          g_page_count[i][c.tid] = 0;
  }
  consumer_sync();
#define TRACE_LAYER(l) traced_layer = (l);
#define STAMP(i) \
  if (trace_cta && traced_layer == 5) t[i] = clock64();
#define TRACE_OP(op) \
  if (blockIdx.x == 0 && c.lane == 0) g_trace_op[c.warp] = traced_layer == 5 ? (op) : kTraceNone;
#else
#define TRACE_LAYER(l)
#define STAMP(i)
#define TRACE_OP(op)
#endif
  // residual += x @ W^T for the CTA's rows (the o and down projections; the producer
  // streams W), x = src[0, k) once *ready reaches target; then *done is bumped.
  auto residual_projection = [&](const int* ready, int target, const void* src, int64_t k, int R, int S, int* done) {
    c.wait_for(ready, target);
    c.load_x(src, k);
    c.resume_stream();
#ifdef BW_STACK_TRACE
    const bool is_o = done == c.layer_counters(traced_layer) + kODone;
    STAMP(is_o ? 12 : 13);
    TRACE_OP(is_o ? kTraceO : kTraceDown);
#endif
    const OpUnits ou(k, S, c.warp);
    walk_rows(H, R, [&](int64_t i, int rows) { c.page(ou, rows, c.acc + i * S); });
    c.pause_stream();
    c.finish(owned, S, add_to_residual);
    c.arrive(done);
  };
  float* second_half = c.acc + p.acc_floats / 2;  // QKV: the biases; gate/up: the up sums
  for (int l = 0; l < a.num_layers; ++l) {
    const DecoderStackLayer& w = a.layers[l];
    int* ctr = c.layer_counters(l);
    TRACE_LAYER(l);
    STAMP(0);
    const int64_t q0 = cta_first(qkv_rows), q_count = cta_count(qkv_rows);
    const bf16* bias = as_bf16(w.qkv_bias);
    for (int64_t i = c.tid; i < q_count; i += kConsumerThreads)
      second_half[i] = bias != nullptr ? __bfloat162float(bias[q0 + i]) : 0.0f;
    if (l > 0) c.wait_for(c.layer_counters(l - 1) + kDownDone, G);
    STAMP(1);
    c.load_normed_x(a.residual, H, w.attn_norm, a.eps);
    c.resume_stream();
    STAMP(2);
    TRACE_OP(kTraceQkv);
    const OpUnits qkv_units(H, s_h, c.warp);
    walk_rows(qkv_rows, p.rows_h, [&](int64_t i, int rows) { c.page(qkv_units, rows, c.acc + i * s_h); });
    c.pause_stream();
    STAMP(3);
    c.finish(q_count, s_h, [&](int64_t i, float s) { qkv[q0 + i] = __float2bfloat16_rn(s + second_half[i]); });
    c.arrive(ctr + kQkvDone);
    STAMP(4);

    Attention<D> attn(c, l);
    const bool skip_attention = debug_skips_attention(a.debug);
    if (!skip_attention) attn.plan();
    c.wait_for(ctr + kQkvDone, G);
    STAMP(5);
    if (!skip_attention) {
      attn.run();
    } else if (static_cast<int>(blockIdx.x) < a.num_kv_heads) {
      c.arrive(ctr + kAttnDone);
    }
    STAMP(6);

    residual_projection(ctr + kAttnDone, attn.arrivals(), a.attn_out, HqD, p.rows_q, s_q, ctr + kODone);
    STAMP(7);

    c.wait_for(ctr + kODone, G);
    c.load_normed_x(a.residual, H, w.ffn_norm, a.eps);
    c.resume_stream();
    STAMP(8);
    TRACE_OP(kTraceGateUp);
    int64_t u0 = 0;
    if (p.tc_ops & kTcGateUp) {  // a warp per page on the tensor cores: one sum per row
      PageGeom geom;
      geom.init(H, p.rows_h, c.lane);
      int turn = 0;
      u0 = walk_gate_up(F, p.rows_h, [&](int64_t i, int rows, bool is_up) {
        tc_page(c, geom, rows, (is_up ? second_half : c.acc) + i, turn);
      });
    } else {
      const OpUnits ou(H, s_h, c.warp);
      u0 = walk_gate_up(F, p.rows_h, [&](int64_t i, int rows, bool is_up) {
        c.page(ou, rows, (is_up ? second_half : c.acc) + i * s_h);
      });
    }
    c.pause_stream();
    STAMP(9);
    const int s_gu = p.tc_ops & kTcGateUp ? 1 : s_h;
    c.finish(cta_count(F), s_gu, [&](int64_t i, float g) {
      float u = 0.0f;
      for (int j = 0; j < s_gu; ++j)
        u += second_half[i * s_gu + j];
      g = round_bf16(g);
      act[u0 + i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * round_bf16(u));
    });
    c.arrive(ctr + kGateUpDone);
    STAMP(10);
    residual_projection(ctr + kGateUpDone, G, a.act, F, p.rows_f, s_f, ctr + kDownDone);
    STAMP(11);
  }
  c.wait_for(c.layer_counters(a.num_layers - 1) + kDownDone, G);
  c.load_normed_x(a.residual, H, a.final_norm, a.eps);
  c.resume_stream();
  // The LM head's rows are many: each warp sums whole rows straight into the logits.
  int64_t v0 = 0, v1 = 0;
  cta_rows(a.vocab, &v0, &v1);
  if (p.tc_ops & kTcLmHead) {
    PageGeom geom;
    geom.init(H, p.rows_h, c.lane);
    int turn = 0;
    walk_rows(a.vocab, p.rows_h, [&](int64_t i, int rows) { tc_page(c, geom, rows, a.logits + v0 + i, turn); });
  } else {
    const OpUnits ou(H, 1, c.warp);
    walk_rows(a.vocab, p.rows_h, [&](int64_t i, int rows) { c.page(ou, rows, a.logits + v0 + i); });
  }

#ifdef BW_STACK_TRACE
  if (trace_cta) {
    printf(
        "stack trace (layer 5, CTA 0; cycles: wait, norm, QKV, epilogue, wait, attention, o, wait + norm, gate/up, "
        "epilogue, down, then o's and down's wait and load of x):");
    for (int i = 1; i < 12; ++i)
      printf(" %lld", t[i] - t[i - 1]);
    printf(" %lld %lld\n", t[12] - t[6], t[13] - t[10]);
    const char* names[kTraceOps] = {"", "qkv", "o", "gate/up", "down"};
    for (int i = kTraceQkv; i < kTraceOps; ++i) {
      printf(
          "pages %s (layer 5, CTA 0, per warp: pages, cycles waiting, working, between pages, last page's end - warp "
          "0's):",
          names[i]);
      for (int w = 0; w < kConsumerWarps; ++w)
        printf(" w%d %d %lld %lld %lld %lld;", w, g_page_count[i][w], g_page_wait[i][w], g_page_work[i][w],
               g_page_gap[i][w], g_op_end[i][w] - g_op_end[i][0]);
      printf("\n");
    }
    // The producer's pushes of each op against the consumers' start of its pages (t[2],
    // t[12], t[8], t[13]).
    const long long op_start[kTraceOps] = {0, t[2], t[12], t[8], t[13]};
    printf(
        "pushes (layer 5, CTA 0; per op: pages, cycles waiting for a free slot, paused, first and last push - the op's "
        "start):");
    for (int i = kTraceQkv; i < kTraceOps; ++i)
      printf(" %s %d %lld %lld %lld %lld;", names[i], g_push_count[i], g_push_slot_wait[i], g_push_paused[i],
             g_push_first[i] - op_start[i], g_push_last[i] - op_start[i]);
    printf("\n");
  }
  if (c.tid == 0 && (blockIdx.x == 0 || g_attn_trace[blockIdx.x][kAttnTraceMerged] == 1)) {
    const long long* at = g_attn_trace[blockIdx.x];
    printf(
        "attention trace (cycles, layer 5, CTA %d): until the first tile %lld, tiles %lld, partial %lld, merge %lld\n",
        static_cast<int>(blockIdx.x), at[1] - at[0], at[2] - at[1], at[3] - at[2],
        at[kAttnTraceMerged] == 1 ? at[4] - at[3] : -1LL);
    const long long* tiles = g_attn_tiles[blockIdx.x];
    if (blockIdx.x == 0)
      printf(
          "attention tiles (layer 5, CTA 0): %lld tiles; cycles issuing %lld, waiting for the copies %lld, scoring "
          "%lld\n",
          tiles[0], tiles[1], tiles[2], tiles[3]);
  }
#endif
#undef TRACE_LAYER
#undef STAMP
#undef TRACE_OP
  // The last CTA out zeroes the counters for the next step (every other CTA has passed
  // all of its waits by the time it arrives here).
  consumer_sync();
  if (c.tid == 0) {
    int* exit_ctr = c.counters + static_cast<int64_t>(a.num_layers) * p.counters_per_layer;
    __threadfence();
    if (atomicAdd(exit_ctr, 1) == G - 1) {
      for (int64_t i = 0; i <= static_cast<int64_t>(a.num_layers) * p.counters_per_layer; ++i)
        c.counters[i] = 0;
      __threadfence();
    }
  }
}
#endif  // BW_WGMMA

// Nine warps: one SM sub-partition runs three of them, which caps registers at 168 (the
// attention step spills a few bytes at head_dim 128).
template <int D>
__global__ void __launch_bounds__(kThreads, 1) decoder_stack_kernel(DecoderStackArgs a, Plan p) {
#ifdef BW_WGMMA
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* ring = smem;
  unsigned char* scratch = ring + static_cast<int64_t>(p.pages) * p.page_bytes;
  float* acc = reinterpret_cast<float*>(scratch + p.scratch_bytes);
  float* red = acc + p.acc_floats;
  auto* bars = reinterpret_cast<uint64_t*>(red + kConsumerWarps + p.own_floats);
  const uint32_t full = smem_addr(bars), empty = smem_addr(bars + p.pages);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  if (tid == 0) {
    g_stream_paused = 0;
#ifdef BW_STACK_TRACE
    for (int i = 0; i < kTraceOps; ++i)
      g_push_slot_wait[i] = g_push_paused[i] = g_push_first[i] = g_push_last[i] = g_push_count[i] = 0;
#endif
    for (int i = 0; i < p.pages; ++i) {
      mbar_init(full + 8 * i, 1);
      mbar_init(empty + 8 * i, kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads();
  if (warp == kConsumerWarps) {
    // Weights: no earlier kernel writes them, so the stream starts before pdl_wait.
    if (lane == 0) produce(a, p, smem_addr(ring), full, empty);
    return;
  }
  pdl_wait();  // the residual (the embedding) comes from the previous kernel
  Consumer c{a,   p,    ring, full, empty, scratch, acc, red, red + kConsumerWarps, a.counters, RingCursor{},
             tid, warp, lane};
  consume<D>(c);
#else
  (void)a;
  (void)p;
#endif
}

std::atomic<int64_t> g_launches{0};

// Tiles of keys an attention item walks at most in a step: the table's width bounds every
// kv_len of the step (a graph's width is a power of two of blocks, so up to twice the
// longest context it replays).
int64_t tiles_per_item(const DecoderStackArgs& a, const Plan& p) {
  const int64_t context = static_cast<int64_t>(a.table_width) * a.block_size;
  const int64_t per_round = static_cast<int64_t>(p.max_splits) * kTileKeys;
  return (context + per_round - 1) / per_round;
}

Plan make_plan(const DecoderStackArgs& a, int num_sms) {
  Plan p;
  const int64_t H = a.hidden, F = a.intermediate, HqD = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const int64_t longest = std::max({H, F, HqD});
  // Switches are read once: plans are made at every eager step.
  static const int64_t target = int64_t{env_int("BW_CUDA_STACK_PAGE_KB", kTargetPageBytes / 1024)} * 1024;
  p.page_bytes = static_cast<int>(std::max<int64_t>(target, 2 * longest));
  auto rows_for = [&](int64_t k) { return static_cast<int>(std::max<int64_t>(1, p.page_bytes / (2 * k))); };
  p.rows_h = rows_for(H), p.rows_q = rows_for(HqD), p.rows_f = rows_for(F);
  // Which ops take tensor-core pages (a measurement switch for now, off by default):
  // BW_CUDA_STACK_TC = kTcGateUp | kTcLmHead.
  static const int tc_ops = env_int("BW_CUDA_STACK_TC", 0) & (kTcGateUp | kTcLmHead);
  if (tc_ops != 0) {  // tensor-core pages take 1, 2, 4, 8 or 16 rows
    int rows = 1;
    while (rows * 2 <= std::min(p.rows_h, 16))
      rows *= 2;
    if (tc_page_fits(H, rows)) p.rows_h = rows, p.tc_ops = tc_ops;
  }
  // Row sums of an op: the most rows a CTA owns times the slices per row; the gate/up op
  // keeps its up sums in the second half.
  const int64_t qkv_rows = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * a.head_dim;
  auto per_cta = [&](int64_t n) { return (n + num_sms - 1) / num_sms; };
  p.own_floats = static_cast<int>((per_cta(H) + 1) / 2 * 2);
  const int64_t half = std::max({per_cta(qkv_rows) * slices_for(p.rows_h), per_cta(H) * slices_for(p.rows_q),
                                 per_cta(F) * slices_for(p.rows_h), per_cta(H) * slices_for(p.rows_f)});
  p.acc_floats = static_cast<int>(2 * half);
  p.max_splits = std::max(1, num_sms / std::max(1, a.num_kv_heads));
  // A test aid: fewer splits give each attention item several tiles of keys at short
  // contexts (read at every plan: the tests change it between runs).
  if (const int splits = env_int("BW_CUDA_STACK_MAX_SPLITS", 0); splits > 0)
    p.max_splits = std::min(p.max_splits, splits);
  // BW_CUDA_STACK_PAUSE=0 keeps the weight stream going through the waits (a measurement switch).
  static const bool pause = env_int("BW_CUDA_STACK_PAUSE", 1) != 0;
  p.pause_between_ops = pause;
  p.counters_per_layer = static_cast<int>(counters_per_layer(a));
  auto scratch_for = [&](int buffers) {
    return (std::max(2 * longest, attention_scratch_bytes(a.head_dim, buffers)) + 15) / 16 * 16;
  };
  auto pages_for = [&](int64_t scratch) {
    const int64_t fixed = scratch + 4 * (p.acc_floats + kConsumerWarps + p.own_floats) + 16 * kMaxPages;
    return static_cast<int>(std::min<int64_t>(kMaxPages, (kMaxSharedBytes - fixed) / p.page_bytes));
  };
  // Two attention tile buffers (an item's next tile loads while this one is scored) where
  // they cost the ring no page (the 7B shape), or where items walk kTwoBufferTiles tiles or
  // more, which a page is worth: 1.5B (a page of 8 lost) 695.7 vs 684.9 tokens/s at 8,192
  // tokens, 453.3 vs 434.8 at 32,768; 7B 174.8 vs 166.9 at 32,768 (H200).
  static const int forced_buffers = env_int("BW_CUDA_STACK_TILE_BUFFERS", 0);  // measurement switch: 1 or 2
  p.tile_buffers =
      pages_for(scratch_for(2)) == pages_for(scratch_for(1)) || tiles_per_item(a, p) >= kTwoBufferTiles ? 2 : 1;
  if (forced_buffers == 1 || forced_buffers == 2) p.tile_buffers = forced_buffers;
  p.scratch_bytes = static_cast<int>(scratch_for(p.tile_buffers));
  p.pages = pages_for(p.scratch_bytes);
  return p;
}

int64_t shared_bytes(const Plan& p) {
  return static_cast<int64_t>(p.pages) * p.page_bytes + p.scratch_bytes +
         4 * (p.acc_floats + kConsumerWarps + p.own_floats) + 16 * p.pages;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <int D>
cudaError_t launch_for(const DecoderStackArgs& a, const Plan& p, int num_sms, cudaStream_t stream) {
  const auto bytes = static_cast<int>(shared_bytes(p));
  const cudaError_t attr =
      cudaFuncSetAttribute(decoder_stack_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  // Cooperative: the CTAs wait for each other, so all of them must be resident at once;
  // the launch fails (instead of hanging) where they cannot be (e.g. an MPS client
  // limited to fewer SMs). Programmatic serialisation as every kernel here (pdl_wait).
  cudaLaunchAttribute attribute[2];
  attribute[0].id = cudaLaunchAttributeCooperative;
  attribute[0].val.cooperative = 1;
  attribute[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(num_sms);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = bytes;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 2 : 1;
  const cudaError_t launched = cudaLaunchKernelEx(&config, decoder_stack_kernel<D>, a, p);
  if (launched != cudaSuccess) return launched;
  g_launches.fetch_add(1, std::memory_order_relaxed);
  return cudaGetLastError();
}

}  // namespace decoder_stack

using decoder_stack::aligned16;
using decoder_stack::counters_per_layer;
using decoder_stack::g_launches;
using decoder_stack::kConsumerThreads;
using decoder_stack::kMaxGroup;
using decoder_stack::kMaxNormChunks;
using decoder_stack::kMaxTilesPerItem;
using decoder_stack::launch_for;
using decoder_stack::make_plan;
using decoder_stack::Plan;
using decoder_stack::tiles_per_item;

namespace {

// The shape checks of decoder_stack_supported; *plan is the kernel's plan when they pass.
bool shapes_fit(const DecoderStackArgs& a, int num_sms, Plan* plan) {
  if (a.num_layers < 1 || num_sms < 1) return false;
  if (a.head_dim != 64 && a.head_dim != 128) return false;
  if (a.num_kv_heads < 1 || a.num_heads % a.num_kv_heads != 0 || a.num_heads / a.num_kv_heads > kMaxGroup) return false;
  if (a.num_kv_heads > num_sms) return false;
  if (a.hidden % 8 != 0 || a.intermediate % 8 != 0 || a.vocab < 1) return false;
  if (a.hidden > 8 * kMaxNormChunks * kConsumerThreads) return false;
  *plan = make_plan(a, num_sms);
  // Long contexts run op by op: the stack walks an item's tiles one after another on one
  // SM (the op-by-op decode attention spreads them over the GPU). BW_CUDA_STACK_MAX_TILES
  // sets the limit (a measurement switch; 0 lifts it).
  static const int max_tiles = env_int("BW_CUDA_STACK_MAX_TILES", kMaxTilesPerItem);
  if (max_tiles > 0 && tiles_per_item(a, *plan) > max_tiles) return false;
  return plan->pages >= 2;
}

}  // namespace

bool decoder_stack_supported(const DecoderStackArgs& a, int num_sms) {
  Plan p;
  return shapes_fit(a, num_sms, &p);
}

int64_t decoder_stack_counters(const DecoderStackArgs& a) { return a.num_layers * counters_per_layer(a) + 1; }

DecoderStackRing decoder_stack_ring(const DecoderStackArgs& a, int num_sms) {
  const Plan p = make_plan(a, num_sms);
  return {p.pages, p.page_bytes, p.tile_buffers};
}

int64_t decoder_stack_partial_floats(const DecoderStackArgs& a, int num_sms) {
  const Plan p = make_plan(a, num_sms);
  return static_cast<int64_t>(a.num_heads) * p.max_splits * (a.head_dim + 4);
}

cudaError_t launch_decoder_stack(const DecoderStackArgs& a, int num_sms, cudaStream_t stream) {
  Plan p;
  if (!shapes_fit(a, num_sms, &p) || a.layers == nullptr) return cudaErrorInvalidValue;
  const void* buffers[] = {a.residual, a.qkv, a.attn_out, a.act, a.final_norm, a.lm_head, a.logits};
  for (const void* ptr : buffers)
    if (ptr == nullptr || !aligned16(ptr)) return cudaErrorInvalidValue;
  return a.head_dim == 64 ? launch_for<64>(a, p, num_sms, stream) : launch_for<128>(a, p, num_sms, stream);
}

int64_t decoder_stack_launches() { return g_launches.load(std::memory_order_relaxed); }

}  // namespace bw::cuda
