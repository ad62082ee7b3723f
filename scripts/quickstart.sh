#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs Breakwater's main job end to end:
# install packages, build, make a tiny random model, generate from it, and (when the
# shared test data is present) generate from the trained TinyStories model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
bin=build/src/breakwater
$bin make-model --preset tiny-llama --out build/tiny-llama --dtype f32 --seed 1
$bin generate --model build/tiny-llama --prompt-ids 1,2,3,4 --max-tokens 16
testdata=${BW_TESTDATA:-../shared/testdata}
if [ -f "$testdata/models/stories260K.gguf" ]; then
  echo "stories260K (prompt: 'Once upon a time'):"
  $bin generate --model "$testdata/models/stories260K.gguf" --prompt-ids 1,403,407,261,378 --max-tokens 64
fi
