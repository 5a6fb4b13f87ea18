#!/usr/bin/env bash
# kimi-chat in a pseudo-terminal (tmux): against a running kimi-serve, a two-turn conversation
# (the second prompt carries the first turn), multi-line input, Ctrl-C during a generation (the
# answer stops, the server cancels, the chat stays), /stats, /save, /exit; then in-process.
# Usage: KIMI_SERVE=... KIMI_CHAT=... chat_tty_test.sh
source "$(dirname "$0")/lib.sh"
KIMI_CHAT="${KIMI_CHAT:?set KIMI_CHAT to the kimi-chat binary}"
command -v tmux >/dev/null || { echo "tmux is not installed (scripts/deps.sh installs it)"; exit 1; }

SOCK="$WORK/tmux.sock"
tm() { tmux -S "$SOCK" "$@"; }
cleanup_tmux() { tm kill-server 2>/dev/null || true; cleanup; }
trap cleanup_tmux EXIT

screen() { tm capture-pane -p -J -t "$1" -S -500; }
has() { screen "$1" | grep -qF -- "$2"; }
# count SESSION TEXT: lines containing TEXT.
count() { screen "$1" | grep -cF -- "$2" || true; }
count_is() { [ "$(count "$1" "$2")" -ge "$3" ]; }
# prompt tokens of the Nth stats line
prompt_tokens() { screen "$1" | grep -F '[ prompt:' | sed -n "${2}p" | sed 's/.*prompt: \([0-9]*\) tokens.*/\1/'; }
type_line() { tm send-keys -t "$1" -l -- "$2"; tm send-keys -t "$1" Enter; }

start_server c
URL="http://127.0.0.1:$c_PORT"

# --- against kimi-serve ---
tm new-session -d -s web -x 220 -y 80 \
  "$KIMI_CHAT --url $URL --max-tokens 8 --temperature 0 --ignore-eos --show-stats; echo EXIT=\$?; sleep 60"
check "url: banner and prompt" wait_for 20 has web "Type /help for commands."
type_line web "Hello there"
check "url: first answer and its stats" wait_for 20 count_is web "[ prompt:" 1
type_line web "And once more"
check "url: second answer" wait_for 20 count_is web "[ prompt:" 2
p1=$(prompt_tokens web 1); p2=$(prompt_tokens web 2)
check "url: the second prompt carries the first turn ($p1 -> $p2 tokens)" test "$p2" -gt $((p1 + 3))
type_line web 'first line \'
type_line web 'second line'
check "url: multi-line input is one turn" wait_for 20 count_is web "[ prompt:" 3
p3=$(prompt_tokens web 3)
check "url: third prompt longer again ($p3)" test "$p3" -gt "$p2"

type_line web "/set max_tokens 100000"
check "url: /set" wait_for 5 has web "(max_tokens = 100000)"
tm send-keys -t web C-u  # nothing pending; keeps the line clean
type_line web "Go on forever"
running_one() { [ "$(metric "$c_PORT" 'vllm:num_requests_running{')" = 1 ]; }
check "url: a long generation is running" wait_for 10 running_one
sleep 0.3
tm send-keys -t web C-c
check "url: Ctrl-C stops the answer" wait_for 10 has web "[stopped]"
running_zero() { [ "$(metric "$c_PORT" 'vllm:num_requests_running{')" = 0 ]; }
check "url: the server cancelled the request" wait_for 5 running_zero
check "url: the chat is still alive after Ctrl-C" wait_for 10 count_is web "interrupted ]" 1
type_line web "/set max_tokens 4"
type_line web "Still there?"
check "url: a turn after Ctrl-C works" wait_for 20 count_is web "[ prompt:" 5
type_line web "/stats"
check "url: /stats repeats the figures" wait_for 10 count_is web "[ prompt:" 6
type_line web "/save $WORK/conv.json"
check "url: /save" wait_for 10 has web "(saved 10 messages"
check "url: saved conversation alternates user/assistant" \
  eq "$(jq -c '[.[].role] | unique' "$WORK/conv.json" 2>/dev/null)" '["assistant","user"]'
type_line web "/exit"
check "url: /exit exits 0" wait_for 10 has web "EXIT=0"

# --- in-process, the embedded tiny model ---
tm new-session -d -s local -x 220 -y 60 \
  "$KIMI_CHAT --max-tokens 6 --system 'Be brief.' --show-stats; echo EXIT=\$?; sleep 60"
check "local: says it uses the embedded model" wait_for 30 has local "embedded tiny model"
type_line local "Hi"
check "local: first answer" wait_for 20 count_is local "[ prompt:" 1
type_line local "Again"
check "local: second answer" wait_for 20 count_is local "[ prompt:" 2
l1=$(prompt_tokens local 1); l2=$(prompt_tokens local 2)
check "local: history kept ($l1 -> $l2 tokens)" test "$l2" -gt $((l1 + 3))
type_line local "/clear"
type_line local "Hi"
check "local: after /clear" wait_for 20 count_is local "[ prompt:" 3
check "local: /clear forgot the conversation" eq "$(prompt_tokens local 3)" "$l1"
type_line local "/clear"
type_line local "/system You are a very terse assistant who answers in one word."
check "local: /system" wait_for 5 has local "(system prompt set)"
type_line local "Hi"
check "local: answer under the new system prompt" wait_for 20 count_is local "[ prompt:" 4
check "local: the new system prompt is in the prompt" test "$(prompt_tokens local 4)" -gt "$l1"
type_line local "/exit"
check "local: /exit exits 0" wait_for 10 has local "EXIT=0"

finish
