#!/usr/bin/env bash
# The test command of the README and of CI (.ci/run). Steps, each must pass:
#   1. format check (clang-format) of every C++ file;
#   2. release build (CUDA sources too when nvcc exists) and the `cpu` tests;
#   3. AddressSanitizer + UndefinedBehaviorSanitizer build (clang) and the `cpu` tests again;
#   4. clang-tidy over the engine sources;
#   5. the libFuzzer targets of the sanitizer build, each for a bounded time
#      (BW_FUZZ_SECONDS, default 10: CI has 40 minutes on 2 cores; the other steps take
#      ~28 of them on an ordinary day, ~37 on a slow one).
# Set BW_TEST_STEPS to a subset (e.g. "build asan") to run fewer steps.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${BW_JOBS:-$(nproc)}
STEPS=${BW_TEST_STEPS:-"format build asan tidy fuzz"}
FUZZ_SECONDS=${BW_FUZZ_SECONDS:-10}
export BW_TESTDATA=${BW_TESTDATA:-$(cd .. && pwd)/shared/testdata}
export GTEST_COLOR=no

step() { echo; echo "=== $* === (${SECONDS}s since the start)"; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

if has_step format; then
  step "clang-format check"
  git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror
fi

if has_step build; then
  step "release build (BW_CUDA=AUTO) + cpu tests"
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBW_CUDA=AUTO >/dev/null
  cmake --build build -j "$JOBS"
  ctest --test-dir build -L cpu -j "$JOBS" --output-on-failure
fi

# The sanitizer build is made with clang and also holds the libFuzzer targets, so the fuzz
# step needs no third build of the tree.
# Line tables only (-gline-tables-only): the sanitizers' stack traces keep file and line, and the
# build takes less time than with full debug info.
SAN_FLAGS=(-G Ninja -DCMAKE_BUILD_TYPE=Debug -DBW_SANITIZE=ON -DBW_FUZZ=ON -DBW_CUDA=OFF
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -gline-tables-only")

if has_step asan; then
  step "ASan + UBSan build (clang, with the fuzz targets) + cpu tests"
  CC=clang CXX=clang++ cmake -S . -B build-asan "${SAN_FLAGS[@]}" -DBW_BUILD_TESTS=ON >/dev/null
  cmake --build build-asan -j "$JOBS"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan -L cpu -j "$JOBS" --output-on-failure
fi

if has_step tidy; then
  step "clang-tidy"
  [ -f build/compile_commands.json ] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  tidy_log=$(mktemp)
  if ! git ls-files 'src/*.cc' | xargs -P "$JOBS" -n 4 clang-tidy -p build --quiet --extra-arg=-Wno-unknown-warning-option --warnings-as-errors='*' \
      >"$tidy_log" 2>&1; then
    grep -v "warnings generated" "$tidy_log"; rm -f "$tidy_log"
    echo "clang-tidy reported findings"; exit 1
  fi
  rm -f "$tidy_log"
fi

if has_step fuzz; then
  step "libFuzzer targets (${FUZZ_SECONDS}s each)"
  fuzz_targets=$(cd fuzz && ls *_fuzzer.cc | sed -e 's/^/bw_/' -e 's/\.cc$//')
  if ! has_step asan; then  # the fuzz targets alone, without the tests
    CC=clang CXX=clang++ cmake -S . -B build-asan "${SAN_FLAGS[@]}" -DBW_BUILD_TESTS=OFF >/dev/null
  fi
  # shellcheck disable=SC2086
  cmake --build build-asan -j "$JOBS" --target $fuzz_targets
  for fuzzer in build-asan/fuzz/bw_*_fuzzer; do
    name=$(basename "$fuzzer" | sed -e 's/^bw_//' -e 's/_fuzzer$//')
    corpus=$(mktemp -d)
    echo "fuzzing $name for ${FUZZ_SECONDS}s"
    "$fuzzer" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      "$corpus" "fuzz/corpus/$name" 2>&1 | grep -E "^(stat::number_of_executed_units|Done|==|SUMMARY)" || true
    status=${PIPESTATUS[0]}
    rm -rf "$corpus"
    if [ "$status" -ne 0 ]; then echo "fuzzer $name found a problem (exit $status)"; exit 1; fi
  done
fi

echo
echo "run-tests: all steps passed ($STEPS) in ${SECONDS}s"
