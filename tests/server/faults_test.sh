#!/usr/bin/env bash
# Fault tests: malformed bodies (truncated, not UTF-8, deeply nested), out-of-range parameters,
# and a corrupted checkpoint shard at start-up. Each is answered with the right status and an
# OpenAI error object, and the server stays healthy for the next request.
source "$(dirname "$0")/lib.sh"
DEFAULT_MODEL="${KIMI_DEFAULT_MODEL:?set KIMI_DEFAULT_MODEL to the tiny model directory}"

start_server f --max-num-seqs 4
URL="http://127.0.0.1:$f_PORT"
send() {  # send PATH FILE : status code, body in $WORK/body
  curl -s -m 30 -o "$WORK/body" -w '%{http_code}' -H 'Content-Type: application/json' \
    "$URL$1" --data-binary "@$2"
}
error_object() { jq -e '.error | (.message|length > 0) and has("type") and has("code")' "$WORK/body" >/dev/null; }
healthy() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$URL/health")" = 200 ] &&
  [ "$(curl -s -m 30 "$URL/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt":[1,2,3],"max_tokens":2,"ignore_eos":true}' | jq '.usage.completion_tokens')" = 2 ]
}
fault() {  # fault NAME PATH EXPECTED_STATUS : body from $WORK/req
  check "$1: $3" eq "$(send "$2" "$WORK/req")" "$3"
  check "$1: error object" error_object
  check "$1: healthy after" healthy
}

printf '{"messages":[{"role":"user","content":"hi"' > "$WORK/req"
fault "truncated body" /v1/chat/completions 400
printf '{"messages":[{"role":"user","content":"bad \xff\xfe bytes"}]}' > "$WORK/req"
fault "body not UTF-8" /v1/chat/completions 400
python3 -c 'print("["*200000 + "]"*200000)' > "$WORK/req" 2>/dev/null ||
  node -e 'process.stdout.write("[".repeat(200000) + "]".repeat(200000))' > "$WORK/req"
fault "200000-deep JSON array" /v1/completions 400
node -e 'let s="{\"prompt\":[1],\"x\":"; for(let i=0;i<100000;i++) s+="{\"a\":"; s+="1"+"}".repeat(100000)+"}"; process.stdout.write(s)' > "$WORK/req"
check "100000-deep object in an unknown field: answered" test "$(send /v1/completions "$WORK/req")" != 000
check "  ... healthy after" healthy
echo '{"prompt":[1,2],"max_tokens":-5}' > "$WORK/req"
fault "negative max_tokens" /v1/completions 400
check "  ... names max_tokens" eq "$(jq -r .error.param "$WORK/body")" max_tokens
echo '{"prompt":[1,2],"max_tokens":2,"n":1000000}' > "$WORK/req"
fault "n = 10^6" /v1/completions 400
echo '{"prompt":[1,2],"max_tokens":2,"top_p":2}' > "$WORK/req"
fault "top_p 2" /v1/completions 400
check "  ... names top_p" eq "$(jq -r .error.param "$WORK/body")" top_p
echo '{"prompt":[1,2],"max_tokens":2,"temperature":NaN}' > "$WORK/req"
fault "temperature NaN (not JSON)" /v1/completions 400
echo '{"prompt":[1,2],"max_tokens":2,"temperature":"NaN"}' > "$WORK/req"
fault "temperature \"NaN\"" /v1/completions 400
echo '{"prompt":[1,2],"max_tokens":2,"temperature":1e999}' > "$WORK/req"
fault "temperature 1e999" /v1/completions 400
echo '{"prompt":[-1,2],"max_tokens":2}' > "$WORK/req"
fault "negative token id" /v1/completions 400
echo '{"prompt":[1,99999999],"max_tokens":2}' > "$WORK/req"
fault "token id past the vocabulary" /v1/completions 400
echo '{"prompt":"x","max_tokens":2,"logit_bias":{"abc":5}}' > "$WORK/req"
fault "logit_bias key not a token id" /v1/completions 400

# A checkpoint whose shard is corrupted: refused at start-up with a message naming the file.
cp -r "$DEFAULT_MODEL" "$WORK/bad-model"
shard=$(ls "$WORK/bad-model"/model-00001-of-*.safetensors)
truncate -s 1000 "$shard"
set +e
"$KIMI_SERVE" --model "$WORK/bad-model" --port 0 > "$WORK/bad.log" 2>&1
rc=$?
set -e
check "corrupted shard: exits with status 1 (no crash)" eq "$rc" 1
check "corrupted shard: the message names the shard" grep -q "model-00001-of-" "$WORK/bad.log"
cp "$DEFAULT_MODEL"/model-00001-of-*.safetensors "$shard"
printf 'XXXXXXXX' | dd of="$shard" bs=1 seek=0 conv=notrunc 2>/dev/null
set +e
"$KIMI_SERVE" --model "$WORK/bad-model" --port 0 > "$WORK/bad2.log" 2>&1
rc=$?
set -e
check "garbage header length: exits with status 1" eq "$rc" 1
check "garbage header length: says so" grep -qi "header" "$WORK/bad2.log"
finish
