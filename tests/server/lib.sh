# Shared helpers for the server tests: start a real kimi-serve on a free loopback port, wait for
# it, stop it, and small assertion helpers. Source it; every wait is bounded.
set -euo pipefail

KIMI_SERVE="${KIMI_SERVE:?set KIMI_SERVE to the kimi-serve binary}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/kimi-srv-test.XXXXXX")"
SERVER_PIDS=()
FAILURES=0
CHECKS=0

cleanup() {
  for pid in "${SERVER_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_server NAME ARGS... : starts kimi-serve --port 0 ARGS, sets ${NAME}_PORT / ${NAME}_PID.
start_server() {
  local name="$1"; shift
  local log="$WORK/$name.log"
  "$KIMI_SERVE" --port 0 --log-level warn "$@" >"$log" 2>&1 &
  local pid=$!
  SERVER_PIDS+=("$pid")
  local port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.* on http:\/\/127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | head -1)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "kimi-serve $name died at start"; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$log"; echo "kimi-serve $name did not start within 30 s"; exit 1; }
  printf -v "${name}_PORT" '%s' "$port"
  printf -v "${name}_PID" '%s' "$pid"
  printf -v "${name}_LOG" '%s' "$log"
  echo "started $name (pid $pid) on port $port"
}

# check DESCRIPTION COMMAND... : runs the command, records pass/fail.
check() {
  local what="$1"; shift
  CHECKS=$((CHECKS + 1))
  if "$@"; then
    echo "ok   - $what"
  else
    echo "FAIL - $what"
    FAILURES=$((FAILURES + 1))
  fi
}

# eq A B : string equality, printing both on mismatch.
eq() {
  [ "$1" = "$2" ] && return 0
  echo "    expected '$2', got '$1'" >&2
  return 1
}

jqe() { jq -e "$@" >/dev/null; }

finish() {
  echo "$CHECKS checks, $FAILURES failed"
  [ "$FAILURES" -eq 0 ]
}

# wait_for SECONDS COMMAND... : polls every 0.1 s until the command succeeds.
wait_for() {
  local limit="$1"; shift
  local end=$(( $(date +%s%N) + limit * 1000000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  return 1
}

# metric PORT NAME_WITH_LABEL_PREFIX : the value of the first sample line starting with it.
metric() {
  curl -s -m 5 "http://127.0.0.1:$1/metrics" | grep -F "$2" | grep -v '^#' | head -1 | awk '{print $NF}'
}
