#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs Breakwater's main job: the OpenAI-compatible
# server. Installs packages, builds, picks a model (the trained TinyStories model from the
# shared test data when present, else a tiny random one), starts `breakwater serve` on
# port ${PORT:-8000}, sends one demo request and keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
bin=build/src/breakwater
port=${PORT:-8000}
testdata=${BW_TESTDATA:-../shared/testdata}
if [ -f "$testdata/models/stories260K.gguf" ]; then
  model="$testdata/models/stories260K.gguf"
  prompt='"Once upon a time"'
else
  $bin make-model --preset tiny-llama --out build/tiny-llama --dtype f32 --seed 1
  model=build/tiny-llama
  prompt='[1, 2, 3, 4]'  # a random model has no tokenizer: token ids
fi
$bin serve --model "$model" --served-model-name demo --port "$port" --chat-template tests/e2e/simple_chat.jinja &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
echo "demo request: POST /v1/completions {\"prompt\": $prompt, \"max_tokens\": 32}"
curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"demo\", \"prompt\": $prompt, \"max_tokens\": 32}"
echo
echo "serving on http://127.0.0.1:$port (OpenAI API under /v1); Ctrl-C stops it"
wait $server
