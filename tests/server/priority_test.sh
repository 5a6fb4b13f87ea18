#!/usr/bin/env bash
# --scheduling-policy priority on the wire: with one sequence busy, queued requests start by
# their 'priority' (lower first), not by arrival; 'priority' values outside vLLM's int64 range
# or not integers are a 400 naming the field; an unknown policy stops the server at start-up.
# Usage: KIMI_SERVE=path/to/kimi-serve priority_test.sh
source "$(dirname "$0")/lib.sh"

start_server p --scheduling-policy priority --max-num-seqs 1 --max-queue 4
URL="http://127.0.0.1:$p_PORT"
JSON=(-H "Content-Type: application/json")
# stream NAME PRIORITY: a generation only a disconnect ends, streamed into $WORK/NAME.
stream() {
  curl -sN -m 60 -o "$WORK/$1" "${JSON[@]}" "$URL/v1/completions" \
    -d "{\"prompt\":[1,2,3],\"max_tokens\":100000,\"ignore_eos\":true,\"stream\":true,\"priority\":$2}" &
  printf -v "${1}_pid" '%s' "$!"
}
started() { grep -qs '^data: {' "$WORK/$1"; }
waiting() { [ "$(metric "$p_PORT" 'vllm:num_requests_waiting{')" = "$1" ]; }

stream busy 0
check "the first stream holds the only sequence" wait_for 10 started busy
stream low 5
check "low priority queued" wait_for 10 waiting 1
stream high -1
check "high priority queued behind it" wait_for 10 waiting 2
kill "$busy_pid"  # the disconnect cancels it: the queue's head starts
check "the later, higher-priority request starts first" wait_for 10 started high
check "  ... while the earlier one still waits" eq "$(started low && echo started || echo waiting)" waiting
kill "$high_pid"
check "then the lower-priority one" wait_for 10 started low
kill "$low_pid"
wait "$busy_pid" "$high_pid" "$low_pid" 2>/dev/null || true

param() {
  curl -s -m 30 -o "$WORK/body" "${JSON[@]}" "$URL/v1/chat/completions" \
    -d "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2,\"priority\":$1}" -w '%{http_code} '
  jq -r '.error.param // "none"' "$WORK/body"
}
check "priority -9223372036854775808 accepted" eq "$(param -9223372036854775808)" "200 none"
check "priority 9223372036854775808: 400 naming it" eq "$(param 9223372036854775808)" "400 priority"
check "priority \"high\": 400 naming it" eq "$(param '"high"')" "400 priority"
check "priority 1.5: 400 naming it" eq "$(param 1.5)" "400 priority"

set +e
"$KIMI_SERVE" --port 0 --backend cpu --scheduling-policy lifo > "$WORK/bad.log" 2>&1
rc=$?
set -e
check "--scheduling-policy lifo: refused at start-up" test "$rc" -ne 0
check "  ... naming the option" grep -q "scheduling-policy" "$WORK/bad.log"
finish
