#!/bin/bash
# serve --device cuda as a real HTTP server (device machine; see scripts/cuda_device_run.sh for
# the carry layout: .carry/fin/{bin.tgz,lib}, and .carry/srv/stories260K.gguf copied from
# the shared test data): stories260K (text, greedy: CPU vs CUDA text, also cut by a stop
# string while streaming; logprobs; a seeded draw with and without logprobs) and
# the 1.5B shape (token prompts, streaming, 16 concurrent requests).
set -u
C=$PWD/.carry/srv  # stories260K.gguf
BW=${BW:-$PWD/.carry/fin/bin/breakwater}
[ -x $BW ] || (cd $PWD/.carry/fin && tar xzf bin.tgz)
LT=$(ls /usr/local/cuda/lib64/libcublasLt.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$PWD/.carry/fin/lib:$(dirname "${LT:-/x/x}"):${LD_LIBRARY_PATH:-}
DEV=${DEV:-cuda}
start() {  # port, log, args...
  local port=$1 log=$2; shift 2
  $BW serve --port $port "$@" > $log 2>&1 &
  local pid=$!
  for i in $(seq 1 120); do
    grep -q "serving" $log && return 0
    kill -0 $pid 2>/dev/null || break  # exited at start: no point waiting
    sleep 0.5
  done
  echo "server did not come up:"; tail -5 $log; return 1
}
req='{"prompt":"Once upon a time","max_tokens":40,"temperature":0}'
req_stop='{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"stop":[" she"],"stream":true}'
for d in cpu $DEV; do
  start 8391 /tmp/s_$d.log --model $C/stories260K.gguf --device $d --served-model-name s || continue
  echo "$d: $(curl -s localhost:8391/v1/completions -H 'Content-Type: application/json' -d "$req" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(repr(j["choices"][0]["text"]), j["usage"])')"
  # A stop string mid-way, streamed (on a GPU the step after the stop is already enqueued).
  echo "$d stop: $(curl -sN localhost:8391/v1/completions -H 'Content-Type: application/json' -d "$req_stop" | python3 -c 'import json,sys
chunks = [json.loads(l[6:]) for l in sys.stdin if l.startswith("data: {")]
print(repr("".join(c["text"] for ch in chunks for c in ch["choices"])), [c["finish_reason"] for ch in chunks for c in ch["choices"] if c.get("finish_reason")])')"
  # Log-probabilities (sampled on the device on a GPU) and a seeded draw with and without them.
  echo "$d logprobs: $(curl -s localhost:8391/v1/completions -H 'Content-Type: application/json' -d '{"prompt":"Once upon a time","max_tokens":4,"temperature":0,"logprobs":3}' | python3 -c 'import json,sys; lp=json.load(sys.stdin)["choices"][0]["logprobs"]; print([round(x,3) for x in lp["token_logprobs"]], [{k: round(v,3) for k,v in t.items()} for t in lp["top_logprobs"][:2]])')"
  for lp in '' ',"logprobs":2'; do
    echo "$d seeded${lp:+ with logprobs}: $(curl -s localhost:8391/v1/completions -H 'Content-Type: application/json' -d "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0.9,\"seed\":11$lp}" | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["choices"][0]["text"]))')"
  done
  kill -TERM %1; wait
done
M=${M15:-/tmp/q15}; [ -d $M ] || $BW make-model --preset deepseek-r1-distill-qwen-1.5b --out $M --dtype bf16 > /dev/null 2>&1
start 8392 /tmp/s_q15.log --model $M --device $DEV --served-model-name q --max-model-len ${MAXLEN:-4096} || exit 1
rm -f /tmp/codes.txt /tmp/r*.json
P=$(python3 -c "print(list(range(100, 100 + ${PLEN:-512})))")
curl -sN localhost:8392/v1/completions -H 'Content-Type: application/json' -d "{\"prompt\":$P,\"max_tokens\":16,\"temperature\":0,\"stream\":true,\"return_token_ids\":true}" > /tmp/stream.txt
echo "stream: $(python3 -c 'import json
ids = [i for l in open("/tmp/stream.txt") if l.startswith("data: {") for c in json.loads(l[6:])["choices"] for i in c.get("token_ids", [])]
print(len(ids), "token ids:", ids)')"
s=$(date +%s.%N)
pids=""
for i in $(seq 1 16); do
  curl -s -o /tmp/r$i.json -w '%{http_code}\n' localhost:8392/v1/completions -H 'Content-Type: application/json' -d "{\"prompt\":$P,\"max_tokens\":64,\"temperature\":0.8,\"top_p\":0.9,\"seed\":$i}" >> /tmp/codes.txt &
  pids="$pids $!"
done
wait $pids
echo "16 concurrent: codes $(sort /tmp/codes.txt | uniq -c | tr '\n' ' ') in $(python3 -c "print(round($(date +%s.%N)-$s,2))") s; completion tokens $(cat /tmp/r*.json | python3 -c 'import sys,json; d=sys.stdin.read().replace("}{","}\n{").splitlines(); print(sum(json.loads(x)["usage"]["completion_tokens"] for x in d))')"
curl -s localhost:8392/metrics | grep -E "^breakwater:(kv_cache_usage_perc|num_requests_running)|^breakwater:generation_tokens_total" | head -4
kill -TERM %1; wait; tail -2 /tmp/s_q15.log
