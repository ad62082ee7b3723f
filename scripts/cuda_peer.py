# Same-run peer numbers: D2D copy bandwidth, bf16 GEMM peak, SDPA prefill attention,
# transformers generate (random-weight Qwen2 with DeepSeek-R1-Distill-Qwen-1.5B shapes).
# `python3 scripts/cuda_peer.py long`: only SDPA on bw_cuda_attention_bench's long shapes;
# `attention`: only SDPA on its default shapes.
import time, torch
torch.manual_seed(0)
dev = "cuda"
def bench(fn, iters=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(iters):
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts)//2] / 1e3
def sdpa_prefill():
    # bw_cuda_attention_bench's default shapes: T = 2,048 causal, and a chunk of 512 after 1,536.
    import torch.nn.functional as F
    for hq, hkv in [(12, 2), (28, 4)]:
        q = torch.randn(1, hq, 2048, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, hkv, 2048, 128, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
        t = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        print(f"sdpa causal T=2048 hq={hq} hkv={hkv} d=128: {t * 1e6:.0f} us ({4 * 2048 * 2048 / 2 * hq * 128 / t / 1e12:.0f} TFLOP/s)")
        # The chunked-prefill case of bw_cuda_attention_bench: 512 new queries after 1,536 cached
        # (bottom-right causal mask; SDPA takes no GQA with an explicit mask, so K/V repeated).
        try:
            from torch.nn.attention.bias import causal_lower_right
            kr = k.repeat_interleave(hq // hkv, dim=1); vr = v.repeat_interleave(hq // hkv, dim=1)
            q2 = q[:, :, 1536:].contiguous(); mask = causal_lower_right(512, 2048)
            t = bench(lambda: F.scaled_dot_product_attention(q2, kr, vr, attn_mask=mask))
            print(f"sdpa chunk 512 after 1536 hq={hq} hkv={hkv} d=128: {t * 1e6:.0f} us")
        except Exception as ex:  # noqa
            print("chunked sdpa failed:", ex)
import sys
if sys.argv[1:] == ["attention"]:
    sdpa_prefill()
    sys.exit(0)
if sys.argv[1:] == ["long"]:
    # bw_cuda_attention_bench's `long` shapes only: one sequence of 8,192 tokens, and a chunk
    # of 2,048 queries after 14,336 cached (bottom-right causal mask, K/V repeated).
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right
    for hq, hkv in [(12, 2), (28, 4)]:
        T = 8192
        q = torch.randn(1, hq, T, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, hkv, T, 128, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
        t = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        print(f"sdpa causal T={T} hq={hq} hkv={hkv} d=128: {t * 1e6:.0f} us ({4 * T * T / 2 * hq * 128 / t / 1e12:.0f} TFLOP/s)")
        L, C = 2048, 14336
        q = torch.randn(1, hq, L, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, hq, L + C, 128, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
        mask = causal_lower_right(L, L + C)
        t = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        pairs = L * C + L * (L + 1) / 2
        print(f"sdpa chunk {L} after {C} hq={hq} hkv={hkv} d=128: {t * 1e6:.0f} us ({4 * pairs * hq * 128 / t / 1e12:.0f} TFLOP/s)")
    sys.exit(0)
a = torch.randn(1 << 30, device=dev, dtype=torch.bfloat16)  # 2 GiB
b = torch.empty_like(a)
t = bench(lambda: b.copy_(a))
print(f"d2d copy: {2 * a.numel() * 2 / t / 1e12:.2f} TB/s (read+write)")
del a, b
x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16); y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
t = bench(lambda: x @ y)
print(f"bf16 gemm 8192^3: {2 * 8192**3 / t / 1e12:.0f} TFLOP/s")
x = torch.randn(2048, 3584, device=dev, dtype=torch.bfloat16); w = torch.randn(18944 * 2, 3584, device=dev, dtype=torch.bfloat16)
t = bench(lambda: x @ w.t())
print(f"bf16 gemm 2048x37888x3584 (7B gate_up): {2 * 2048 * 37888 * 3584 / t / 1e12:.0f} TFLOP/s")
sdpa_prefill()
import torch.nn.functional as F
# Decode attention (one query per sequence, every sequence `ctx` long) over contiguous K/V,
# the cases of bw_cuda_decode_ops_bench's sweep (which reads a paged cache): with
# enable_gqa, and with K/V repeated to every query head beforehand (repeat not timed).
# Ten calls per timing, so that launch overhead counts as it does inside a graph.
for hq, hkv, name in [(12, 2, "1.5B"), (28, 4, "7B")]:
    for batch, ctx in [(1, 4096), (1, 32768), (32, 4096), (128, 2048), (256, 4096)]:
        q = torch.randn(batch, hq, 1, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(batch, hkv, ctx, 128, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
        kv_bytes = 2 * k.numel() * 2
        res = []
        try:
            t = bench(lambda: [F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for _ in range(10)]) / 10
            res.append(f"gqa {t * 1e6:.1f} us [{kv_bytes / t / 1e9:.0f} GB/s]")
        except Exception as ex:  # noqa
            res.append(f"gqa failed: {ex}")
        if batch * ctx <= 32 * 4096:  # the repeated copy of the largest cases does not fit comfortably
            kr = k.repeat_interleave(hq // hkv, dim=1); vr = v.repeat_interleave(hq // hkv, dim=1)
            t = bench(lambda: [F.scaled_dot_product_attention(q, kr, vr) for _ in range(10)]) / 10
            res.append(f"repeated {t * 1e6:.1f} us")
            del kr, vr
        print(f"sdpa decode {name} batch {batch} context {ctx}: " + ", ".join(res))
        del q, k, v
import os
try:
    if os.environ.get("BW_PEER_GENERATE", "1") == "0":
        raise RuntimeError("skipped (BW_PEER_GENERATE=0)")
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(dev):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 151936, (1, 512), device=dev)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize(); t0 = time.time()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False); torch.cuda.synchronize(); t1 = time.time()
        model.generate(ids, max_new_tokens=129, min_new_tokens=129, do_sample=False); torch.cuda.synchronize(); t2 = time.time()
    dec = (t2 - t1) - (t1 - t0)
    print(f"transformers generate 1.5B shape bf16, prompt 512: prefill {512 / (t1 - t0):.0f} tok/s, decode {128 / dec:.1f} tok/s")
except Exception as ex:  # noqa
    print("transformers peer failed:", ex)
