#!/bin/bash
# Device run (the lent GPU machine): GPU tests, first numbers, per-op profiles.
# Expects .carry/cuda/{bin/bw_gpu_tests,bin/breakwater,lib/*.so,peer.py}: copies of the
# build outputs, of the .so files the device lacks (fmt, spdlog, hiredis, sqlite3, pcre2)
# and of scripts/cuda_peer.py. Usage: bash scripts/cuda_device_run.sh MODE, with MODE one
# of tests, bench, profile, tp (tests + profile), final, all.
set -u
C=$PWD/.carry/cuda
MODE=${1:-all}
LT=$(ls /usr/local/cuda/lib64/libcublasLt.so.13 /usr/local/cuda/lib/libcublasLt.so.13 /usr/local/cuda*/targets/x86_64-linux/lib/libcublasLt.so.13 2>/dev/null | head -1)
if [ -z "$LT" ]; then LT=$(find /usr /opt -name 'libcublasLt.so.13' 2>/dev/null | head -1); fi
echo "cublasLt: $LT"
export LD_LIBRARY_PATH=$C/lib:$(dirname "${LT:-/x/x}"):${LD_LIBRARY_PATH:-}
export BW_SOURCE_DIR=$PWD
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
ldd $C/bin/bw_gpu_tests | grep "not found"
if [ "$MODE" = tests ] || [ "$MODE" = all ] || [ "$MODE" = tp ] || [ "$MODE" = final ]; then
  for i in 1 2 3; do $C/bin/bw_gpu_tests --gtest_brief=1 > $OUT/gpu_tests.log 2>&1; echo "bw_gpu_tests run $i rc $? $(grep -E 'tests ran' $OUT/gpu_tests.log)"; done
  grep -E "^\[  (PASSED|FAILED|SKIPPED)|FAILED|Failure|bf16 greedy|tests ran" $OUT/gpu_tests.log | head -40
  grep -E "position|relative error" $OUT/gpu_tests.log | head -12
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  echo "== peer (PyTorch)"; PYTHONUNBUFFERED=1 timeout 240 python3 $C/peer.py 2>&1 | grep -v Warning | tail -8
  M=/tmp/q15
  ( time $C/bin/breakwater make-model --preset deepseek-r1-distill-qwen-1.5b --out $M --dtype bf16 ) 2>&1 | tail -4
  $C/bin/breakwater generate --model $M --device cuda --prompt-ids "1,2,3,4,5,6,7,8" --max-tokens 64 --ignore-eos --json 2>&1 | tail -c 600; echo
  timeout 300 $C/bin/breakwater bench offline --model $M --device cuda --input-len 512 --output-len 64 --batch 1,8,32,64 2>&1 | tee $OUT/bench15.log | tail -12
  timeout 120 $C/bin/breakwater bench offline --model $M --device cuda --input-len 2048 --output-len 2 --batch 1 2>&1 | tail -4
fi
if [ "$MODE" = profile ] || [ "$MODE" = all ] || [ "$MODE" = tp ]; then
  M=/tmp/q15
  [ -d $M ] || $C/bin/breakwater make-model --preset deepseek-r1-distill-qwen-1.5b --out $M --dtype bf16 > /dev/null
  echo "== profile decode b1"; BW_CUDA_PROFILE=1 $C/bin/breakwater generate --model $M --device cuda --prompt-ids "1,2,3,4,5,6,7,8" --max-tokens 64 --ignore-eos 2>&1 | grep -A16 "cuda profile"
  echo "== profile prefill 2048"; BW_CUDA_PROFILE=1 timeout 120 $C/bin/breakwater bench offline --model $M --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | grep -A14 "cuda profile"
  echo "== profile decode b64"; BW_CUDA_PROFILE=1 timeout 120 $C/bin/breakwater bench offline --model $M --device cuda --input-len 512 --output-len 16 --batch 64 2>&1 | grep -A14 "cuda profile"
fi
if [ "$MODE" = final ]; then
  M=/tmp/q15
  [ -d $M ] || $C/bin/breakwater make-model --preset deepseek-r1-distill-qwen-1.5b --out $M --dtype bf16 > /dev/null
  echo "== 1.5B"; timeout 200 $C/bin/breakwater bench offline --model $M --device cuda --input-len 512 --output-len 64 --batch 1,8,32,64,128,256 2>&1 | tail -8
  timeout 60 $C/bin/breakwater bench offline --model $M --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | tail -1
  echo "== peer (PyTorch)"; PYTHONUNBUFFERED=1 timeout 240 python3 $C/peer.py 2>&1 | grep -v Warning | tail -8
  M7=/tmp/q7; ( time $C/bin/breakwater make-model --preset deepseek-r1-distill-qwen-7b --out $M7 --dtype bf16 ) 2>&1 | grep real
  echo "== 7B"; timeout 200 $C/bin/breakwater bench offline --model $M7 --device cuda --input-len 512 --output-len 64 --batch 1,32 2>&1 | tail -4
  timeout 100 $C/bin/breakwater bench offline --model $M7 --device cuda --input-len 2048 --output-len 1 --batch 1 2>&1 | tail -1
fi
