#!/usr/bin/env bash
# The command-line tools on bad input and in pipes (the CLI audit, session 14): every refusal is
# one line naming the problem with a non-zero exit code, nothing typed is dropped, no silent wrong
# answer. Usage: cli_test.sh run|chat|tokenize BUILD_DIR GOLDEN_MODEL_DIR
# (BUILD_DIR holds the tools and default-model, which has a tokenizer; the golden model has none).
set -uo pipefail
WHAT="$1" B="$2" G="$3"
D="$B/default-model"
[ -f "$G/config.json" ] || { echo "no golden model in $G: skipped"; exit 77; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/kimi-cli-test.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILURES=0 CHECKS=0
check() {
  local what="$1"; shift
  CHECKS=$((CHECKS + 1))
  if "$@"; then echo "ok   - $what"; else echo "FAIL - $what"; FAILURES=$((FAILURES + 1)); fi
}
# t CMD...: runs CMD with stdin from $IN (default empty), stdout to $WORK/out, stderr to
# $WORK/err, exit status in RC; bounded by a timeout (a hang fails the checks).
t() { RC=0; printf '%b' "${IN:-}" | timeout 60 "$@" >"$WORK/out" 2>"$WORK/err" || RC=$?; IN=""; }
out() { cat "$WORK/out"; }
err() { cat "$WORK/err"; }
has_err() { grep -qF -- "$1" "$WORK/err"; }
has_out() { grep -qF -- "$1" "$WORK/out"; }
rc_is() { [ "$RC" = "$1" ]; }
rc_fail() { [ "$RC" != 0 ] && [ "$RC" != 124 ]; }
lines_err() { [ "$(wc -l <"$WORK/err")" = "$1" ]; }

case "$WHAT" in
tokenize)
  T="$B/kimi-tokenize"
  IN='"Hello world"\n"<|im_end|>中文 é"\n""\n' t "$T" --tokenizer "$D"
  cp "$WORK/out" "$WORK/ids"
  check "encode: exit 0, three lines" eval 'rc_is 0 && [ "$(wc -l <"$WORK/ids")" = 3 ]'
  IN="$(cat "$WORK/ids")\n" t "$T" --tokenizer "$D" --decode
  check "decode round-trips the encoded lines" \
    eval '[ "$(out)" = "$(printf "%s\n" "\"Hello world\"" "\"<|im_end|>中文 é\"" "\"\"")" ]'
  IN='"<|im_end|>"\n' t "$T" --tokenizer "$D"; special="$(out)"
  IN='"<|im_end|>"\n' t "$T" --tokenizer "$D" --no-special
  check "--no-special encodes the special name as text" eval '[ "$(out)" != "$special" ] && [ "$special" = "[$(echo "$special" | tr -d "[]")]" ]'
  # An id beyond int used to be narrowed: 4294967297 decoded as id 1, with exit 0.
  IN='[1]\n[4294967297]\n' t "$T" --tokenizer "$D" --decode
  check "decode: 4294967297 is refused, not decoded as id 1" \
    eval 'rc_is 1 && has_err "line 2: token id 4294967297 is outside the vocabulary" && [ "$(wc -l <"$WORK/out")" = 1 ]'
  IN='[18446744073709551615]\n' t "$T" --tokenizer "$D" --decode
  check "decode: 2^64-1 is named as given (was: id -1)" eval 'rc_is 1 && has_err "token id 18446744073709551615 is outside"'
  IN='[-3]\n' t "$T" --tokenizer "$D" --decode
  check "decode: a negative id is refused" eval 'rc_is 1 && has_err "token id -3 is outside"'
  IN='"a"\n' t "$T" --tokenizer "$WORK/nothing"
  check "missing tokenizer folder: one line, exit 1" eval 'rc_is 1 && lines_err 1 && has_err "tiktoken.model"'
  IN='"a"\n' t "$T" --tokenizer "$G"
  check "model without tokenizer files: one line, exit 1" eval 'rc_is 1 && lines_err 1 && has_err "tiktoken.model"'
  t "$T"
  check "no --tokenizer: refused" eval 'rc_fail && has_err "--tokenizer is required"'
  ;;
run)
  R="$B/kimi-run"
  t "$R" --model "$G" --prompt-ids 1,2,3 --max-tokens 4 --temperature 0; first="$(out)"
  check "greedy run: exit 0, a JSON array of at most 4 ids" \
    eval 'rc_is 0 && echo "$first" | grep -qE "^\[[0-9]+(,[0-9]+){0,3}\]$"'
  t "$R" --model "$G" --prompt-ids 1,2,3 --max-tokens 4 --temperature 0
  check "greedy run is repeatable" eval '[ "$(out)" = "$first" ]'
  t "$R" --prompt "Hello" --max-tokens 2 --temperature 0
  check "--prompt on the default model: ids, then the text as a JSON string" \
    eval 'rc_is 0 && [ "$(wc -l <"$WORK/out")" = 2 ] && [ "$(out | sed -n 2p | cut -c1)" = "\"" ]'
  t "$R" --model "$G" --prompt ""
  check "--prompt '': says the prompt is empty" eval 'rc_is 1 && lines_err 1 && has_err "kimi-run: --prompt is empty"'
  t "$R" --model "$G" --prompt-ids 1,2,
  check "--prompt-ids with a trailing comma is refused" eval 'rc_is 1 && has_err "ends with a comma"'
  t "$R" --model "$G" --prompt-ids 1,,2
  check "--prompt-ids with an empty item is refused" eval 'rc_is 1 && has_err "is not an integer"'
  t "$R" --model "$G" --prompt-ids 1,300
  check "--prompt-ids outside the vocabulary is refused" eval 'rc_is 1 && has_err "outside the vocabulary 0..255"'
  t "$R" --model "$G" --prompt-ids 1 --max-tokens -1
  check "--max-tokens -1 is refused" eval 'rc_fail && has_err "--max-tokens"'
  t "$R" --model "$G" --prompt-ids 1 --temperature -1
  check "--temperature -1 is refused" eval 'rc_is 1 && has_err "temperature must be"'
  t "$R" --model "$G" --prompt-ids 1 --top-p 1.5
  check "--top-p 1.5 is refused" eval 'rc_is 1 && has_err "top_p must be in (0, 1]"'
  t "$R" --model "$G" --prompt-ids 1 --top-p abc
  check "--top-p abc is refused" eval 'rc_fail && has_err "--top-p"'
  t "$R" --model "$G" --prompt-ids 1 --bogus
  check "an unknown flag is refused" eval 'rc_fail && has_err "--bogus"'
  t "$R" --model "$WORK/nothing" --prompt-ids 1
  check "a missing model folder: one line, exit 1" eval 'rc_is 1 && lines_err 1 && has_err "config.json"'
  mkdir -p "$WORK/bad" && cp "$G"/*.json "$WORK/bad/" && cp "$G"/model-*.safetensors "$WORK/bad/"
  truncate -s 100 "$WORK/bad/model-00001-of-00002.safetensors"
  t "$R" --model "$WORK/bad" --prompt-ids 1
  check "a truncated checkpoint: one line, exit 1" eval 'rc_is 1 && lines_err 1'
  t "$R" --help
  check "--help describes the sampling options" eval 'rc_is 0 && has_out "nucleus sampling" && has_out "sampling seed"'
  ;;
chat)
  C=("$B/kimi-chat" --backend cpu)
  IN='Hello\n' t "${C[@]}" --max-tokens 3 --ignore-eos --temperature 0
  check "piped turn: exit 0, the answer alone on stdout (no prompts)" \
    eval 'rc_is 0 && [ "$(wc -l <"$WORK/out")" = 1 ] && ! has_out "> "'
  # A last line ending in '\' used to be dropped at end of input.
  IN='Hello \\' t "${C[@]}" --max-tokens 3 --ignore-eos --show-stats
  check "a continued line at end of input is sent, not dropped" eval 'rc_is 0 && has_out "[ prompt:"'
  IN='"""\nHello' t "${C[@]}" --max-tokens 3 --ignore-eos --show-stats
  check "an unclosed \"\"\" block at end of input is sent" eval 'rc_is 0 && has_out "[ prompt:"'
  # /set used to accept anything stod/stoi parsed, and every later turn failed.
  IN='/set temperature -1\n/set top_p 5\n/set max_tokens 3x\n/set max_tokens 0\n/set seed 1.5\n/set temperature\nHello\n' \
    t "${C[@]}" --max-tokens 3 --ignore-eos
  check "/set refuses out-of-range and malformed values" \
    eval 'has_out "temperature must be a number in [0, 2], got '"'"'-1'"'"'" && has_out "top_p must be a number in (0, 1], got 5" &&
          has_out "max_tokens must be an integer in [1, 2147483647], got '"'"'3x'"'"'" &&
          has_out "got '"'"'0'"'"'" && has_out "seed must be an integer" && ! has_out " = "'
  check "/set: the turn after the refusals is answered (exit 0)" eval 'rc_is 0 && ! has_err "error:"'
  IN='/set temperature 0.5\n/set seed 7\n' t "${C[@]}"
  check "/set accepts good values" eval 'rc_is 0 && has_out "(temperature = 0.5)" && has_out "(seed = 7)"'
  t "${C[@]}" --top-p 0
  check "--top-p 0 is refused at start (was: every turn failed)" eval 'rc_fail && has_err "--top-p" && has_err "(0, 1]"'
  t "${C[@]}" --max-tokens 0
  check "--max-tokens 0: refused with a readable range" eval 'rc_fail && has_err "1 to 2147483647" && ! has_err "179769"'
  t "${C[@]}" --temperature 3
  check "--temperature 3 is refused" eval 'rc_fail && has_err "--temperature"'
  IN='Hello\n' t "${C[@]}" --model "$G"
  check "a model without a tokenizer is refused at start" eval 'rc_is 1 && lines_err 1 && has_err "has no tokenizer files"'
  t "${C[@]}" --model "$WORK/nothing"
  check "a missing model folder: one line, exit 1" eval 'rc_is 1 && lines_err 1 && has_err "config.json"'
  t "${C[@]}" --url http://127.0.0.1:1
  check "an unreachable --url: one line, exit 1" eval 'rc_is 1 && lines_err 1 && has_err "cannot reach"'
  t "${C[@]}" --bogus
  check "an unknown flag is refused" eval 'rc_fail && has_err "--bogus"'
  # With --model-name the connection is first tried by the turn: it fails, and piped input has
  # no one to read the message, so the exit code says it.
  IN='hi\n' t "$B/kimi-chat" --url http://127.0.0.1:1 --model-name x
  check "piped: a failed turn is reported on stderr and exits 1" eval 'rc_is 1 && has_err "error: request failed"'
  IN='/save '"$WORK"'/no/such/dir/c.json\n/regen\n' t "${C[@]}"
  check "/save to an unwritable path and an unknown command: messages, exit 0" \
    eval 'rc_is 0 && has_out "cannot write" && has_out "unknown command /regen"'
  ;;
*) echo "usage: cli_test.sh run|chat|tokenize BUILD_DIR GOLDEN_MODEL_DIR"; exit 2 ;;
esac
echo "$((CHECKS - FAILURES))/$CHECKS checks passed"
[ "$FAILURES" = 0 ]
