#!/usr/bin/env bash
# Builds what a run on the lent GPU machine needs and packs it into .carry/cuda (git-ignored)
# for scripts/cuda_device_run.sh: bin.tgz (breakwater, bw_gpu_tests and the CUDA kernel
# benches; with --trace also breakwater_trace, built with BW_STACK_TRACE) and lib/ (the
# shared libraries those binaries load that the device machine lacks: it has the CUDA
# libraries but no Debian -dev packages). Then, from the device tool:
#   run(command="bash scripts/cuda_device_run.sh all", carry=[".carry/cuda"])
# Usage: scripts/cuda_device_kit.sh [--trace | --pack BUILD NAME | --pack-attn BUILD NAME];
# BW_CUDA_ARCHS (default 90) picks the architectures, BW_CUDA_BUILD (default build-cuda)
# the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."

# --pack BUILD NAME only packs BUILD/src/breakwater as .carry/NAME/bw.tgz (another build's
# binary for the run script's ab mode, e.g. main's as NAME base) and exits; --pack-attn
# BUILD NAME the same for BUILD/bench/bw_cuda_attention_bench as .carry/NAME/attn.tgz (the
# attn mode). Such a folder needs no lib/: the kit's serves every binary.
pack() {  # BUILD NAME PATH-IN-BUILD TGZ
  [ -x "$1/$3" ] || { echo "usage: $0 --pack|--pack-attn BUILD NAME (needs $1/$3)" >&2; exit 2; }
  mkdir -p ".carry/$2" && tar czf ".carry/$2/$4" -C "$(dirname "$1/$3")" "$(basename "$3")"
  echo "packed $1/$3 as .carry/$2/$4"
  exit 0
}
case "${1:-}" in
  --pack) [ $# -eq 3 ] && pack "$2" "$3" src/breakwater bw.tgz ;;&
  --pack-attn) [ $# -eq 3 ] && pack "$2" "$3" bench/bw_cuda_attention_bench attn.tgz ;;&
  --pack | --pack-attn) echo "usage: $0 $1 BUILD NAME" >&2; exit 2 ;;
esac
TRACE=0
[ "${1:-}" = "--trace" ] && TRACE=1
BUILD=${BW_CUDA_BUILD:-build-cuda}
ARCHS=${BW_CUDA_ARCHS:-90}
TARGETS=(breakwater bw_gpu_tests bw_cuda_gemv_bench bw_cuda_decode_ops_bench bw_cuda_attention_bench)

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBW_CUDA=ON -DBW_CUDA_ARCHS="$ARCHS" >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target "${TARGETS[@]}"
if [ "$TRACE" = 1 ]; then
  cmake -S . -B "$BUILD-trace" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBW_CUDA=ON -DBW_CUDA_ARCHS="$ARCHS" \
    -DCMAKE_CUDA_FLAGS=-DBW_STACK_TRACE >/dev/null
  cmake --build "$BUILD-trace" -j "$(nproc)" --target breakwater
fi

KIT=.carry/cuda
rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/lib"
cp "$BUILD/src/breakwater" "$BUILD/tests/bw_gpu_tests" "$KIT/bin/"
for bench in bw_cuda_gemv_bench bw_cuda_decode_ops_bench bw_cuda_attention_bench; do
  cp "$BUILD/bench/$bench" "$KIT/bin/"
done
[ "$TRACE" = 1 ] && cp "$BUILD-trace/src/breakwater" "$KIT/bin/breakwater_trace"

# The libraries outside the C/C++ runtime and CUDA (which the device has): fmt, spdlog,
# hiredis, sqlite3, pcre2 and whatever else the binaries come to load.
for bin in "$KIT"/bin/*; do
  ldd "$bin" | awk '$3 ~ /^\// { print $3 }'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libstdc++.so* | libgcc_s.so* | ld-linux* | libpthread.so* | libdl.so* | librt.so*) ;;
    libcuda.so* | libcudart.so* | libcublas*.so* | libnccl.so*) ;;
    *) cp -L "$lib" "$KIT/lib/" ;;
  esac
done

# Together the binaries exceed what a device call carries (64 MiB); compressed they fit.
(cd "$KIT" && tar czf bin.tgz bin && rm -rf bin)
echo "kit: $(du -sh "$KIT" | cut -f1) in $KIT ($(ls "$KIT/lib" | tr '\n' ' '))"
