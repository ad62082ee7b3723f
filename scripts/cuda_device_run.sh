#!/bin/bash
# One-shot device run (the lent GPU machine): every GPU test, the kernel benches, the
# PyTorch peer and the decode/prefill numbers of docs/PERF.md, a short table last.
# Expects .carry/cuda/{bin,lib}: bin/ holds bw_gpu_tests, breakwater, bw_cuda_gemv_bench,
# bw_cuda_decode_ops_bench and bw_cuda_attention_bench from a CUDA build; lib/ the .so
# files the device lacks (fmt, spdlog, hiredis, sqlite3, pcre2); the binaries may come as
# bin.tgz instead (a tar of bin/: together they exceed the 64 MiB a device call carries,
# compressed they take ~25).
# scripts/cuda_device_kit.sh builds and packs all of that (--trace adds bin/breakwater_trace).
# Usage: bash scripts/cuda_device_run.sh [MODE] with MODE tests, bench, profile, long
# (single-stream decode by context length, each path), ab (single stream by context, the
# kit's breakwater against each .carry/*/bw.tgz's), trace (the trace build's cycle counts
# of the fused decoder stack, at 512 and 32,768 tokens), attn (prefill attention kernel
# times against other builds' and SDPA), attn-profile (that kernel under Nsight Compute,
# with its SASS), blocks (decode and prefill by KV block size) or all (default: tests and
# bench);
# BW_PEER_GENERATE=0 skips the slow transformers `generate` peer.
set -u
C=$PWD/.carry/cuda
if [ -f $C/bin.tgz ]; then (cd $C && tar xzf bin.tgz); fi
MODE=${1:-all}
LT=$(ls /usr/local/cuda/lib64/libcublasLt.so.13 /usr/local/cuda*/targets/x86_64-linux/lib/libcublasLt.so.13 2>/dev/null | head -1)
if [ -z "$LT" ]; then LT=$(find /usr /opt -name 'libcublasLt.so.13' 2>/dev/null | head -1); fi
export LD_LIBRARY_PATH=$C/lib:$(dirname "${LT:-/x/x}"):${LD_LIBRARY_PATH:-}
export BW_SOURCE_DIR=$PWD
BW=$C/bin/breakwater
# The random-weight models of the 1.5B and 7B shapes (bf16) at $M and $M7, each made once.
M=/tmp/q15; M7=/tmp/q7
make_model() { [ -d "$1" ] || $BW make-model --preset "$2" --out "$1" --dtype bf16 > /dev/null 2>&1; }
make_models() { make_model $M deepseek-r1-distill-qwen-1.5b; make_model $M7 deepseek-r1-distill-qwen-7b; }
# Other builds' binaries carried beside the kit: unpacks every .carry/*/TGZ (a tar of one
# binary NAME, made by cuda_device_kit.sh --pack / --pack-attn) and prints their paths.
unpack_others() {
  for tgz in $PWD/.carry/*/"$1"; do
    [ -f "$tgz" ] || continue
    (cd "$(dirname "$tgz")" && tar xzf "$1") && echo "$(dirname "$tgz")/$2"
  done
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
ldd $C/bin/bw_gpu_tests | grep "not found"
if [ "$MODE" = tests ] || [ "$MODE" = all ]; then
  s=$SECONDS; timeout 240 $C/bin/bw_gpu_tests --gtest_brief=1 > $OUT/gpu_tests.log 2>&1
  echo "bw_gpu_tests rc $? in $((SECONDS - s)) s: $(grep -E 'tests ran' $OUT/gpu_tests.log)"
  grep -E "^\[  (PASSED|FAILED|SKIPPED)|FAILED|Failure|bf16 greedy" $OUT/gpu_tests.log | head -30
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  if [ -x $C/bin/bw_cuda_gemv_bench ]; then echo "== gemv"; timeout 60 $C/bin/bw_cuda_gemv_bench > $OUT/gemv.log 2>&1; tail -40 $OUT/gemv.log; fi
  echo "== decode ops"; timeout 60 $C/bin/bw_cuda_decode_ops_bench 2>&1 | grep -v matmul
  echo "== attention"; timeout 60 $C/bin/bw_cuda_attention_bench > $OUT/attention.log 2>&1; cat $OUT/attention.log
  echo "== peer (PyTorch)"; PYTHONUNBUFFERED=1 timeout 200 python3 scripts/cuda_peer.py 2>&1 | grep -v Warning | tail -8
  make_model $M deepseek-r1-distill-qwen-1.5b
  echo "== 1.5B"; timeout 150 $BW bench offline --model $M --device cuda --input-len 512 --output-len 64 --batch 1,8,32,64,128,256 2>&1 | tail -8
  timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1
  BW_CUDA_STACK=0 timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1  # op by op
  BW_CUDA_STACK_DEBUG=3 timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1  # the weight stream alone
  timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 128 --batch 1 --enforce-eager 2>&1 | tail -1
  BW_CUDA_STACK=0 BW_CUDA_PDL=0 timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1
  timeout 60 $BW bench offline --model $M --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | tail -1
  BW_CUDA_WGMMA=0 timeout 60 $BW bench offline --model $M --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | tail -1  # mma.sync prefill attention
  BW_CUDA_STEP_TIMING=1 timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | grep "step timing"
  s=$SECONDS; make_model $M7 deepseek-r1-distill-qwen-7b; echo "7B made in $((SECONDS - s)) s"
  echo "== 7B"; timeout 120 $BW bench offline --model $M7 --device cuda --input-len 512 --output-len 128 --batch 1,32 2>&1 | tail -3
  BW_CUDA_STACK=0 timeout 60 $BW bench offline --model $M7 --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1  # op by op
  BW_CUDA_STACK=0 BW_CUDA_PDL=0 timeout 60 $BW bench offline --model $M7 --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1
  BW_CUDA_STACK=0 BW_GEMV_ROWS=0 timeout 60 $BW bench offline --model $M7 --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | tail -1  # multi-row GEMV at M = 1
  timeout 60 $BW bench offline --model $M7 --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | tail -1
  BW_CUDA_STEP_TIMING=1 timeout 60 $BW bench offline --model $M7 --device cuda --input-len 512 --output-len 128 --batch 1 2>&1 | grep "step timing"
fi
if [ "$MODE" = long ]; then
  # Single stream at reasoning-length contexts: the default path, the fused stack with its
  # context limit lifted, and op by op (docs/BENCHMARKING.md, docs/PERF.md).
  one() { local m=$1 L=$2; shift 2; echo "$(basename $m) L=$L $*: $(env "$@" timeout 90 $BW bench offline --model $m --device cuda --input-len $L --output-len 32 --batch 1 2>&1 | tail -1)"; }
  make_models
  for m in $M $M7; do
    for L in 512 8192 16384 24576 32768; do
      one $m $L X=default; one $m $L BW_CUDA_STACK_MAX_TILES=0; one $m $L BW_CUDA_STACK=0
    done
  done
fi
if [ "$MODE" = blocks ]; then
  # The KV block size (BLOCK_SIZES, default "16 32 64"): single-stream and batched decode of
  # the 1.5B, and prefill of the 7B from 2,048 to 32,768 tokens (fresh cache: consecutive
  # blocks), each size in turn, BLOCK_ROUNDS rounds (default 1).
  make_models
  one() { local bs=$1; shift; echo "bs=$bs $*: $(timeout 120 $BW bench offline --device cuda --kv-block-size $bs "$@" 2>&1 | tail -1)"; }
  for round in $(seq ${BLOCK_ROUNDS:-1}); do
    for bs in ${BLOCK_SIZES:-16 32 64}; do
      one $bs --model $M --input-len 512 --output-len 128 --batch 1
      one $bs --model $M --input-len 8192 --output-len 32 --batch 1
      one $bs --model $M --input-len 512 --output-len 128 --batch 64
      one $bs --model $M --input-len 512 --output-len 128 --batch 256
      one $bs --model $M7 --input-len 512 --output-len 64 --batch 1
      for L in 2048 8192 32768; do one $bs --model $M7 --input-len $L --output-len 1 --batch 1 --max-batched-tokens 8192; done
      one $bs --model $M7 --input-len 32768 --output-len 1 --batch 1
    done
  done
fi
if [ "$MODE" = ab ]; then
  # A / B single stream, the kit's breakwater against other builds' (every .carry/*/bw.tgz:
  # a tar of one breakwater, e.g. main's as .carry/base, made by cuda_device_kit.sh --pack
  # BUILD NAME; carry those folders too), alternating in one run: a kernel's speed moves a
  # few percent between runs and with code generation alone, so A/B numbers come from one run.
  BINS="$BW $(unpack_others bw.tgz breakwater)"
  # AB_LENS (default "512 8192 16384 32768") and AB_LENS7 ("512 8192 32768") pick the
  # contexts of the 1.5B and the 7B (empty: none); AB_ENVS runs each binary under each of
  # these settings too (e.g. "X=0 BW_CUDA_STACK_FLAT=0"; X=0 stands for none); AB_ROUNDS
  # sets the rounds (default 2).
  LENS=${AB_LENS-512 8192 16384 32768} LENS7=${AB_LENS7-512 8192 32768} CASES=""
  [ -n "$LENS" ] && make_model $M deepseek-r1-distill-qwen-1.5b
  [ -n "$LENS7" ] && make_model $M7 deepseek-r1-distill-qwen-7b
  for L in $LENS; do CASES="$CASES $M:$L"; done
  for L in $LENS7; do CASES="$CASES $M7:$L"; done
  for case in $CASES; do
    m=${case%%:*} L=${case##*:}
    for round in $(seq ${AB_ROUNDS:-2}); do
      for bin in $BINS; do
        for e in ${AB_ENVS:-X=0}; do
          echo "$(basename $m) L=$L $(basename "$(dirname "$bin")") $e: $(env $e BW_CUDA_STACK_MAX_TILES=0 timeout 90 $bin \
            bench offline --model $m --device cuda --input-len $L --output-len 32 --batch 1 2>&1 | tail -1)"
        done
      done
    done
  done
fi
if [ "$MODE" = attn ]; then
  # Prefill attention kernel times, the kit's bench against other builds' (every
  # .carry/*/attn.tgz: one bw_cuda_attention_bench, made by cuda_device_kit.sh --pack-attn
  # BUILD NAME) and SDPA, alternating in one run, on the short and the long shapes; the
  # wgmma kernel's line of each. ATTN_ENVS runs the kit's bench under each setting too
  # (e.g. "X=0 BW_CUDA_PREFILL_TMA=0"; X=0 stands for none), ATTN_ROUNDS sets the rounds
  # (default 2).
  KIT_BENCH=$C/bin/bw_cuda_attention_bench
  BENCHES="$KIT_BENCH $(unpack_others attn.tgz bw_cuda_attention_bench)"
  wgmma_only() { grep -o "T=.*wgmma [0-9.]* us ([0-9]* TFLOP/s)[ a-z0-9]*" | sed 's/ d=128 bs=[0-9]*: kernel 64 rows.*wgmma/:/'; }
  for round in $(seq ${ATTN_ROUNDS:-2}); do
    for b in $BENCHES; do
      envs=X=0
      [ "$b" = "$KIT_BENCH" ] && envs=${ATTN_ENVS:-X=0}
      for e in $envs; do
        echo "== $(basename "$(dirname "$(dirname "$b")")")/$(basename "$(dirname "$b")") $e"
        env $e timeout 60 $b | wgmma_only; env $e timeout 60 $b 0 long | wgmma_only
      done
    done
    echo "== SDPA"; PYTHONUNBUFFERED=1 timeout 120 python3 scripts/cuda_peer.py attention 2>&1 | grep "^sdpa"
    PYTHONUNBUFFERED=1 timeout 120 python3 scripts/cuda_peer.py long 2>&1 | grep "^sdpa"
  done
fi
if [ "$MODE" = attn-profile ]; then
  # The wgmma prefill kernel under Nsight Compute on one long-prompt case (ATTN_CASE,
  # default 3: 8,192 tokens, 28/4 heads): the summary sections and the SASS with each
  # instruction's stall samples ($OUT/attn_source.csv), and the kernel's SASS
  # ($OUT/attn.sass).
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  cuobjdump -sass -fun prefill_attention_wgmma_kernel $C/bin/bw_cuda_attention_bench > $OUT/attn.sass 2>&1 ||
    /usr/local/cuda/bin/cuobjdump -sass $C/bin/bw_cuda_attention_bench > $OUT/attn.sass 2>&1
  BW_BENCH_CASE=${ATTN_CASE:-3} timeout 300 $NCU -k regex:prefill_attention_wgmma -s 2 -c 1 --import-source yes \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis -o $OUT/attn -f \
    $C/bin/bw_cuda_attention_bench 0 long > $OUT/ncu_run.log 2>&1
  echo "ncu rc $?"; tail -3 $OUT/ncu_run.log
  timeout 120 $NCU -i $OUT/attn.ncu-rep --page details 2>&1 | grep -vE "^\s*$|----" | head -150
  timeout 120 $NCU -i $OUT/attn.ncu-rep --page source --print-source sass --csv > $OUT/attn_source.csv 2>&1
  echo "source page rc $?: $(wc -l < $OUT/attn_source.csv) lines"
fi
if [ "$MODE" = trace ] && [ ! -x $C/bin/breakwater_trace ]; then
  echo "no bin/breakwater_trace in the kit: make it with scripts/cuda_device_kit.sh --trace"
fi
if [ "$MODE" = trace ] && [ -x $C/bin/breakwater_trace ]; then
  make_model $M deepseek-r1-distill-qwen-1.5b
  for L in 512 32768; do
    echo "== trace, 1.5B, $L tokens (layer 5, CTA 0; the last step)"
    BW_CUDA_STACK_MAX_TILES=0 timeout 90 $C/bin/breakwater_trace bench offline --model $M --device cuda --input-len $L \
      --output-len 3 --batch 1 2>&1 | grep -E "CTA 0[):;,]" | tail -8
  done
fi
if [ "$MODE" = profile ]; then
  make_model $M deepseek-r1-distill-qwen-1.5b
  echo "== profile prefill 2048"; BW_CUDA_PROFILE=1 timeout 60 $BW bench offline --model $M --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | grep -A14 "cuda profile"
  echo "== profile decode b1"; BW_CUDA_PROFILE=1 timeout 60 $BW bench offline --model $M --device cuda --input-len 512 --output-len 64 --batch 1 2>&1 | grep -A14 "cuda profile"
fi
