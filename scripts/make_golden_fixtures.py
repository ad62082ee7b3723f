#!/usr/bin/env python3
"""Builds the golden fixtures in tests/golden/fixtures/ with Hugging Face transformers.

Each fixture is a tiny random-weight model saved as a Hugging Face folder (config.json +
model.safetensors, float32) plus reference.json holding, for a fixed token sequence, the
logits of every position and the 16 tokens that greedy generation produces after it. The
C++ golden tests load the folder with Breakwater and compare (tests/golden/).

Usage:  python3 scripts/make_golden_fixtures.py OUT_DIR
Needs torch and transformers (any version from 4.45 on; v5 writes `rope_parameters`
instead of `rope_theta`/`rope_scaling`, and Breakwater reads both).

Weights are drawn from a seeded normal distribution larger than HF's default init (so
logits are well separated and greedy decoding has no near-ties); biases and norm weights
are random too, so a reader that drops a bias or a norm weight fails the test. A seed
is rejected and the next one tried while the smallest top-2 logit gap along the greedy
path is below MIN_GAP.
"""
import json
import os
import platform
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

PROMPT = [1, 17, 42, 99, 7, 200, 3, 150, 64, 31, 5, 77]
NUM_GREEDY = 16
MIN_GAP = 2e-2
VOCAB = 256

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              rms_norm_eps=1e-6, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
              attn_implementation="eager")

# name -> (family, config overrides, rope (theta, scaling or None), write legacy rope keys)
FIXTURES = {
    # Llama with grouped-query attention (4 query heads, 2 KV heads), untied LM head.
    "llama-gqa": ("llama", dict(num_attention_heads=4, num_key_value_heads=2,
                                tie_word_embeddings=False), (10000.0, None), False),
    # Llama 3.1-style rope scaling (small original context so every regime is hit), MQA,
    # tied embeddings, config.json in the legacy rope_theta/rope_scaling form of real
    # DeepSeek-R1-Distill-Llama checkpoints.
    "llama3-rope-scaling-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=1,
                                               tie_word_embeddings=True),
                                 (500000.0, dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0,
                                                 original_max_position_embeddings=32)), True),
    # Qwen2: QKV bias, GQA, tied embeddings (as DeepSeek-R1-Distill-Qwen-1.5B).
    "qwen2-bias-tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=True), (1000000.0, None), True),
    # Qwen2: QKV bias, multi-head attention, untied (as DeepSeek-R1-Distill-Qwen-7B).
    "qwen2-mha-untied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=4,
                                       tie_word_embeddings=False), (10000.0, None), False),
}


def make_config(family, overrides, rope):
    theta, scaling = rope
    kwargs = dict(COMMON, **overrides)
    cls = LlamaConfig if family == "llama" else Qwen2Config
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            params = dict(scaling, rope_theta=theta)
        kwargs["rope_parameters"] = params
    else:
        kwargs["rope_theta"] = theta
        if scaling:
            kwargs["rope_scaling"] = dict(scaling)
    return cls(**kwargs)


def randomize(model, seed, tied):
    # With tied embeddings a large embedding makes every token predict itself (the residual
    # stream still holds its own embedding), so tied models get a smaller one.
    embed_std = 0.25 if tied else 1.0
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in ** 0.5))
    model.tie_weights()


def greedy(model, prompt):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NUM_GREEDY,
                         do_sample=False, min_new_tokens=NUM_GREEDY, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    gaps = []
    for s in out.scores:
        top2 = torch.topk(s[0].float(), 2).values
        gaps.append(float(top2[0] - top2[1]))
    return tokens, gaps


def build(name, family, overrides, rope, legacy, out_dir):
    cfg = make_config(family, overrides, rope)
    model_cls = LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM
    for seed in range(1000, 1100):
        torch.manual_seed(seed)
        model = model_cls(cfg).float().eval()
        randomize(model, seed, cfg.tie_word_embeddings)
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT])).logits[0].float()
        tokens, gaps = greedy(model, PROMPT)
        prompt_gaps = (torch.topk(logits, 2).values[:, 0] - torch.topk(logits, 2).values[:, 1]).tolist()
        # A greedy path that repeats one token tests little: ask for variety too.
        if min(gaps) >= MIN_GAP and len(set(tokens)) >= 6:
            break
    else:
        raise SystemExit(f"{name}: no seed gave top-2 gaps >= {MIN_GAP} and varied tokens")

    path = os.path.join(out_dir, name)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(path, extra)):
            os.remove(os.path.join(path, extra))
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg_json = json.load(f)
    if legacy:
        # The form real checkpoints (e.g. DeepSeek-R1-Distill) use: rope_theta + rope_scaling.
        theta, scaling = rope
        cfg_json.pop("rope_parameters", None)
        cfg_json["rope_theta"] = theta
        cfg_json["rope_scaling"] = dict(scaling) if scaling else None
        with open(cfg_path, "w") as f:
            json.dump(cfg_json, f, indent=2, sort_keys=True)

    ref = {
        "fixture": name,
        "architecture": model_cls.__name__,
        "seed": seed,
        "prompt_ids": PROMPT,
        "logits_shape": list(logits.shape),
        "logits": [[float(f"{v:.9g}") for v in row] for row in logits.tolist()],
        "greedy_ids": tokens,
        "greedy_min_top2_gap": min(gaps),
        "prompt_min_top2_gap": min(prompt_gaps),
        "dtype": "float32",
        "attn_implementation": "eager",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "command": "python3 scripts/make_golden_fixtures.py tests/golden/fixtures",
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    size = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    print(f"{name}: seed {seed}, greedy {tokens}, min gap {min(gaps):.4f}, {size} bytes")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/fixtures"
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {platform.platform()}")
    for name, (family, overrides, rope, legacy) in FIXTURES.items():
        build(name, family, overrides, rope, legacy, out_dir)


if __name__ == "__main__":
    main()
