#!/usr/bin/env bash
# Client disconnects (streamed and not) cancel at once; admission and shutdown: 429 with Retry-After when running + queued is full, SIGTERM drains
# (503 + Retry-After for new requests, /health 503), an in-flight stream past the grace period
# ends with an error event and [DONE], and the process exits 0.
# Usage: KIMI_SERVE=path/to/kimi-serve lifecycle_test.sh
source "$(dirname "$0")/lib.sh"

start_server s --max-num-seqs 1 --max-queue 0 --shutdown-grace 1
URL="http://127.0.0.1:$s_PORT"
JSON=(-H "Content-Type: application/json")
LONG='{"prompt":[1,2,3],"max_tokens":100000,"ignore_eos":true,"stream":true}'

ABORT='vllm:request_success_total{model_name="kimi-tiny",engine="0",finished_reason="abort"}'
running_zero() { [ "$(metric "$s_PORT" 'vllm:num_requests_running{')" = 0 ] && [ "$(metric "$s_PORT" 'kimi:http_requests_in_flight{')" = 0 ]; }
# Generations of 100000 tokens: only a cancel ends them within the test's time.
aborts=$(metric "$s_PORT" "$ABORT")
curl -sN -m 1 -o "$WORK/cut" "${JSON[@]}" "$URL/v1/completions" -d "$LONG" || true
check "stream disconnect: the stream had started" grep -q '^data: {' "$WORK/cut"
check "stream disconnect: running count back to 0" wait_for 5 running_zero
check "stream disconnect: counted as abort" test "$(metric "$s_PORT" "$ABORT")" -gt "$aborts"
aborts=$(metric "$s_PORT" "$ABORT")
curl -s -m 1 -o /dev/null "${JSON[@]}" "$URL/v1/chat/completions" \
  -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":100000,"ignore_eos":true}' || true
check "non-streamed disconnect: running count back to 0" wait_for 5 running_zero
check "non-streamed disconnect: counted as abort" test "$(metric "$s_PORT" "$ABORT")" -gt "$aborts"

# A long stream occupies the only sequence.
curl -sN -m 30 -o "$WORK/long" "${JSON[@]}" "$URL/v1/completions" -d "$LONG" &
long_pid=$!
started() { grep -qs '^data: {' "$WORK/long"; }
check "long stream started" wait_for 10 started

status=$(curl -s -m 10 -o "$WORK/body" -D "$WORK/h" -w '%{http_code}' "${JSON[@]}" "$URL/v1/completions" \
  -d '{"prompt":[1],"max_tokens":1}')
check "at capacity: 429" eq "$status" 429
check "  ... Retry-After" test -n "$(grep -i '^retry-after: [0-9]' "$WORK/h")"
check "  ... rate_limit_exceeded error object" \
  jqe '.error.code == "rate_limit_exceeded" and (.error|has("param") and has("type"))' "$WORK/body"

kill -TERM "$s_PID"
draining() {
  [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$URL/health")" = 503 ]
}
check "SIGTERM: /health turns 503" wait_for 5 draining
status=$(curl -s -m 10 -o "$WORK/body" -D "$WORK/h" -w '%{http_code}' "${JSON[@]}" "$URL/v1/chat/completions" \
  -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}')
check "draining: new requests get 503" eq "$status" 503
check "  ... Retry-After" test -n "$(grep -i '^retry-after: [0-9]' "$WORK/h")"
check "  ... unavailable error object" jqe '.error.code == "unavailable" and .error.type == "server_error"' "$WORK/body"

exited() { ! kill -0 "$s_PID" 2>/dev/null; }
check "the server exits within grace + a few seconds" wait_for 10 exited
rc=0
wait "$s_PID" || rc=$?
check "exit status 0" eq "$rc" 0
wait "$long_pid" || true
check "the cut stream got an error event" grep -q '^data: {"error":' "$WORK/long"
check "  ... and ends with [DONE]" eq "$(tail -c 14 "$WORK/long" | head -c 12)" "data: [DONE]"

finish
