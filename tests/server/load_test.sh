#!/usr/bin/env bash
# Load test (loopback only, bounded): LOAD_SECONDS (default 60) of 256 concurrent streaming
# clients (kimi-bench online) on the tiny model, mixed with non-streaming greedy requests whose
# answers must equal a reference, and streams the client drops mid-way. Checks: no failed
# request, every completed greedy answer correct, RSS flat (sampled every second), the server
# healthy with nothing running at the end; prints p99 latencies.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
KIMI_BENCH="${KIMI_BENCH:?set KIMI_BENCH to the kimi-bench binary}"
SECS="${LOAD_SECONDS:-60}"

start_server L --max-num-seqs 256 --max-num-batched-tokens 1024 --max-queue -1
URL="http://127.0.0.1:$L_PORT"
greedy='{"model":"x","prompt":"The quick brown fox","max_tokens":12,"temperature":0,"ignore_eos":true}'
ref=$(curl -s -m 30 "$URL/v1/completions" -H 'Content-Type: application/json' -d "$greedy" | jq -r '.choices[0].text')
check "reference greedy answer obtained" test -n "$ref"

end=$(( $(date +%s) + SECS ))
# RSS sampler.
( while [ "$(date +%s)" -lt "$end" ]; do
    awk '/VmRSS/ {print $2}' "/proc/$L_PID/status" 2>/dev/null; sleep 1
  done > "$WORK/rss" ) &
sampler=$!
# Non-streaming greedy requests: every answer must equal the reference.
( ok=0; bad=0
  while [ "$(date +%s)" -lt "$end" ]; do
    got=$(curl -s -m 120 "$URL/v1/completions" -H 'Content-Type: application/json' -d "$greedy" | jq -r '.choices[0].text' 2>/dev/null)
    if [ "$got" = "$ref" ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done
  echo "$ok $bad" > "$WORK/greedy" ) &
greedy_pid=$!
# Streams dropped after 0.3 s (disconnect mid-stream, often mid-prefill).
( n=0
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -s -N -m 0.3 "$URL/v1/completions" -H 'Content-Type: application/json' \
      -d '{"model":"x","prompt":"'"$(head -c 600 /dev/zero | tr '\0' 'a')"'","max_tokens":200,"stream":true}' >/dev/null 2>&1 || true
    n=$((n + 1))
  done
  echo "$n" > "$WORK/dropped" ) &
drop_pid=$!
# 256 concurrent streaming clients, round after round until the time is up.
rounds=0; failed_total=0; completed_total=0
while [ "$(date +%s)" -lt "$end" ]; do
  "$KIMI_BENCH" online --base-url "$URL" --num-prompts 256 --max-concurrency 256 --input-len 48 \
    --output-len 16 --ignore-eos --seed "$rounds" --disable-progress --num-warmups 0 \
    --result-file "$WORK/round$rounds.json" > "$WORK/round$rounds.txt" 2>&1 || true
  if [ -f "$WORK/round$rounds.json" ]; then
    failed_total=$((failed_total + $(jq .failed "$WORK/round$rounds.json")))
    completed_total=$((completed_total + $(jq .completed "$WORK/round$rounds.json")))
  else
    failed_total=$((failed_total + 256)); cat "$WORK/round$rounds.txt"
  fi
  rounds=$((rounds + 1))
done
wait "$greedy_pid" "$drop_pid" "$sampler"

read -r gok gbad < "$WORK/greedy"
last=$((rounds - 1))
echo "rounds $rounds: $completed_total streamed requests completed, $failed_total failed;" \
     "greedy non-streamed $gok correct, $gbad wrong; $(cat "$WORK/dropped") streams dropped mid-way"
jq -r '"last round: p99 TTFT \(.p99_ttft_ms|floor) ms, p99 TPOT \(.p99_tpot_ms|floor) ms, p99 ITL \(.p99_itl_ms|floor) ms, p99 E2EL \(.p99_e2el_ms|floor) ms, \(.request_throughput) req/s"' "$WORK/round$last.json"
check "no streamed request failed" eq "$failed_total" 0
check "streamed requests completed" test "$completed_total" -gt 0
check "every non-streamed greedy answer correct" eq "$gbad" 0
check "non-streamed requests completed" test "$gok" -gt 0
# RSS flat: the peak of the second half within 10% + 16 MiB of the peak of the first half.
n=$(wc -l < "$WORK/rss"); half=$((n / 2))
first=$(head -n "$half" "$WORK/rss" | sort -n | tail -1)
second=$(tail -n +"$((half + 1))" "$WORK/rss" | sort -n | tail -1)
echo "RSS peak first half ${first} KiB, second half ${second} KiB ($n samples)"
check "RSS flat" test "$second" -le $(( first + first / 10 + 16384 ))
check "nothing running once idle" wait_for 20 bash -c "[ \"\$(curl -s -m 5 $URL/metrics | grep -F 'vllm:num_requests_running{' | awk '{print \$NF}')\" = 0 ]"
check "healthy after the load" eq "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$URL/health")" 200
finish
