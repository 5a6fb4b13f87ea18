#!/usr/bin/env bash
# kimi-serve on the wire, with curl + jq: routes, SSE framing, errors and their statuses,
# auth, body limit, tokenize, metrics, disconnect mid-stream, concurrency.
# Usage: KIMI_SERVE=path/to/kimi-serve curl_test.sh
source "$(dirname "$0")/lib.sh"

KEY=test-key
start_server main --api-key "$KEY" --max-model-len 512 --max-num-seqs 8 --max-body-mb 1
P=$main_PORT
URL="http://127.0.0.1:$P"
AUTH=(-H "Authorization: Bearer $KEY")
JSON=(-H "Content-Type: application/json")

# post PATH BODY [CURL ARGS...]: body -> $WORK/body, headers -> $WORK/headers, prints the status.
post() {
  local path="$1" body="$2"; shift 2
  curl -s -m 30 -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' "${AUTH[@]}" "${JSON[@]}" "$@" \
    "$URL$path" -d "$body"
}
get() {
  local path="$1"; shift
  curl -s -m 10 -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' "$@" "$URL$path"
}
body() { jq -r "$1" "$WORK/body"; }
header() { grep -i "^$1:" "$WORK/headers" | head -1 | cut -d' ' -f2- | tr -d '\r'; }
# is_error STATUS TYPE CODE: the body is an OpenAI error object with these fields.
is_error() {
  jq -e --arg t "$2" --arg c "$3" \
    '(.error | has("message") and has("type") and has("param") and has("code")) and
     (.error.message | length > 0) and .error.type == $t and ((.error.code // "") == $c)' "$WORK/body" >/dev/null ||
    { echo "    body: $(cat "$WORK/body")" >&2; return 1; }
}

MSG='[{"role":"user","content":"Hello there"}]'

# --- health, version, models ---
check "GET /health is 200 without a key" eq "$(get /health)" 200
check "GET /version" eq "$(get /version; body .version)" "200$(body .version)"
check "GET /version has a version" test -n "$(body .version)"
check "GET /v1/models is 200" eq "$(get /v1/models "${AUTH[@]}")" 200
check "/v1/models lists the served model" eq "$(body '.object + " " + .data[0].object + " " + .data[0].id')" "list model kimi-tiny"
check "/v1/models has root, max_model_len, created, owned_by" \
  eq "$(body '[(.data[0].root|length>0), .data[0].max_model_len, (.data[0].created>0), (.data[0].owned_by|length>0)]|@csv')" "true,512,true,true"
check "GET /v1/models/kimi-tiny" eq "$(get /v1/models/kimi-tiny "${AUTH[@]}"; body .id)" "200kimi-tiny"
check "GET /v1/models/other is 404" eq "$(get /v1/models/other "${AUTH[@]}")" 404
check "  ... model_not_found" is_error 404 invalid_request_error model_not_found

# --- auth ---
check "no key: 401" eq "$(curl -s -m 10 -o "$WORK/body" -w '%{http_code}' "$URL/v1/models")" 401
check "  ... invalid_api_key error object" is_error 401 invalid_request_error invalid_api_key
check "wrong key: 401" eq "$(curl -s -m 10 -o "$WORK/body" -w '%{http_code}' -H 'Authorization: Bearer test-keY' "$URL/v1/chat/completions" -d '{}')" 401
check "/metrics needs no key" eq "$(get /metrics)" 200
check "CORS preflight answered" eq "$(curl -s -m 10 -o /dev/null -w '%{http_code}' -X OPTIONS "$URL/v1/chat/completions")" 204

# --- non-streamed chat ---
check "chat: 200" eq "$(post /v1/chat/completions "{\"model\":\"kimi-tiny\",\"messages\":$MSG,\"max_tokens\":8}")" 200
check "chat: object, role, index" eq "$(body '.object + " " + .choices[0].message.role + " " + (.choices[0].index|tostring)')" "chat.completion assistant 0"
check "chat: finish_reason stop or length" jqe '.choices[0].finish_reason == "stop" or .choices[0].finish_reason == "length"' "$WORK/body"
check "chat: usage adds up, at most 8 tokens" jqe '.usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens and .usage.completion_tokens <= 8 and .usage.completion_tokens >= 1 and .usage.prompt_tokens > 5' "$WORK/body"
check "chat: id and created" jqe '(.id|startswith("chatcmpl-")) and (.created > 1700000000)' "$WORK/body"
check "request_id: the response id is vLLM's, chatcmpl- and the id" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":1,\"request_id\":\"abc-1\"}"; body .id)" "200chatcmpl-abc-1"
check "X-Request-Id header: cmpl- and the header's id" \
  eq "$(post /v1/completions '{"prompt":[1,2],"max_tokens":1,"request_id":"ignored"}' -H 'X-Request-Id: xyz-2'; body .id)" "200cmpl-xyz-2"
check "chat: max_tokens 1 -> length, 1 token" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":1,\"ignore_eos\":true}"; body '.choices[0].finish_reason + (.usage.completion_tokens|tostring)')" "200length1"
check "nulls and unknown fields are accepted" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":2,\"stop\":null,\"tools\":null,\"temperature\":null,\"seed\":null,\"store\":false,\"metadata\":{\"x\":\"y\"},\"service_tier\":\"auto\",\"stream_options\":null}")" 200

# --- streamed chat: framing (serving.md §1.6, §3.6) ---
stream_body="{\"messages\":$MSG,\"max_tokens\":6,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
curl -sN -m 30 -D "$WORK/sh" -o "$WORK/stream" "${AUTH[@]}" "${JSON[@]}" -H 'Accept-Encoding: gzip, deflate, br' \
  "$URL/v1/chat/completions" -d "$stream_body"
check "stream: Content-Type exactly text/event-stream" eq "$(grep -i '^content-type:' "$WORK/sh" | cut -d' ' -f2- | tr -d '\r')" "text/event-stream"
check "stream: not compressed for a gzip/br client" test -z "$(grep -i '^content-encoding:' "$WORK/sh")"
check "stream: every event is 'data: ...' followed by a blank line" \
  node -e 'const s=require("fs").readFileSync(process.argv[1],"utf8"); if(!s.endsWith("\n\n")) process.exit(1);
           const ev=s.slice(0,-2).split("\n\n"); process.exit(ev.every(e=>e.startsWith("data: ") && !e.includes("\n"))?0:1)' "$WORK/stream"
check "stream: ends with data: [DONE]" eq "$(tail -c 14 "$WORK/stream" | head -c 12)" "data: [DONE]"
{ sed -n 's/^data: //p' "$WORK/stream" | grep -v '^\[DONE\]$' || true; } > "$WORK/chunks"
check "stream: first chunk carries role and content" jqe -s '.[0].choices[0].delta.role == "assistant" and (.[0].choices[0].delta|has("content"))' "$WORK/chunks"
check "stream: one id, one created, object chunk" jqe -s '(map(.id)|unique|length) == 1 and (map(.created)|unique|length) == 1 and all(.object == "chat.completion.chunk")' "$WORK/chunks"
check "stream: a finish chunk with empty delta" jqe -s 'map(select(.choices[0].finish_reason != null)) | length == 1 and (.[0].choices[0].delta == {})' "$WORK/chunks"
check "stream: exactly one usage chunk, last, choices []" jqe -s 'map(select(.choices == [])) | length == 1' "$WORK/chunks"
check "stream: usage chunk is the last and adds up" jqe -s '.[-1].choices == [] and .[-1].usage.total_tokens == .[-1].usage.prompt_tokens + .[-1].usage.completion_tokens and .[-1].usage.completion_tokens >= 1' "$WORK/chunks"
check "stream: other chunks carry usage null" jqe -s '.[:-1] | all(has("usage") and .usage == null)' "$WORK/chunks"
# continuous_usage_stats (vLLM): every content chunk carries the usage so far.
curl -sN -m 30 -o "$WORK/stream_cu" "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" \
  -d "{\"messages\":$MSG,\"max_tokens\":5,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}"
{ sed -n 's/^data: //p' "$WORK/stream_cu" | grep -v '^\[DONE\]$' || true; } > "$WORK/chunks_cu"
check "stream, continuous usage: usage on every chunk, prompt fixed, completion growing to the total" \
  jqe -s '(.[:-1] | all(.usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens))
          and ([.[:-1][].usage.completion_tokens] | . == sort)
          and ([.[].usage.prompt_tokens] | unique | length) == 1
          and .[-1].choices == [] and .[-1].usage.completion_tokens == 5
          and ([.[:-1][].usage.completion_tokens] | max) == 5' "$WORK/chunks_cu"
curl -sN -m 30 -o "$WORK/stream2" "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" \
  -d "{\"messages\":$MSG,\"max_tokens\":3,\"stream\":true}"
check "stream without stream_options: no usage chunk" test -z "$(grep -F '"choices":[]' "$WORK/stream2")"
check "stream without stream_options: no usage key" test -z "$(grep -F '"usage"' "$WORK/stream2")"
check "stream with n=2: both choices finish" \
  eq "$(curl -sN -m 30 "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" -d "{\"messages\":$MSG,\"max_tokens\":3,\"n\":2,\"stream\":true}" |
        sed -n 's/^data: {/{/p' | jq -s -c '[.[] | .choices[0] | select(.finish_reason != null) | .index] | sort')" "[0,1]"

# --- completions ---
check "completions: text prompt" eq "$(post /v1/completions '{"prompt":"Once upon a time","max_tokens":5}'; body '.object + " " + (.choices|length|tostring)')" "200text_completion 1"
check "completions: token-id prompt, ignore_eos -> length" \
  eq "$(post /v1/completions '{"prompt":[1,2,3,4],"max_tokens":4,"ignore_eos":true}'; body '.choices[0].finish_reason + (.usage.prompt_tokens|tostring) + (.usage.completion_tokens|tostring)')" "200length44"
check "completions: two prompts x n=2 -> 4 choices" \
  eq "$(post /v1/completions '{"prompt":[[5,6],[7,8,9]],"max_tokens":2,"n":2}'; body '[.choices[].index]|@csv')" "2000,1,2,3"
check "completions: echo prepends the prompt" \
  eq "$(post /v1/completions '{"prompt":"Echo me","max_tokens":2,"echo":true}'; body '.choices[0].text|startswith("Echo me")')" "200true"
# top_logprobs holds the sampled token and the k alternatives (OpenAI: "up to logprobs+1"; vLLM).
has_sampled='[.tokens, .token_logprobs, .top_logprobs] | transpose | all(.[0] as $t | .[1] as $v | .[2][$t] == $v)'
check "completions: logprobs=2" \
  jqe ".choices[0].logprobs | (.tokens|length) == 3 and (.token_logprobs|length) == 3 and (.top_logprobs|all(length == 2 or length == 3)) and (.text_offset[0] == 0) and ($has_sampled)" \
  <(post /v1/completions '{"prompt":[3,4],"max_tokens":3,"ignore_eos":true,"logprobs":2,"return_tokens_as_token_ids":true}' >/dev/null; cat "$WORK/body")
check "completions: logprobs=0 still gives the sampled token's entry" \
  jqe ".choices[0].logprobs | (.top_logprobs|all(length == 1)) and ($has_sampled)" \
  <(post /v1/completions '{"prompt":[3,4],"max_tokens":3,"ignore_eos":true,"logprobs":0,"return_tokens_as_token_ids":true}' >/dev/null; cat "$WORK/body")
check "completions: echo with logprobs leads with the prompt (its first token without a logprob)" \
  jqe '.choices[0] | .text != "" and (.logprobs | (.tokens|length) == 5 and .token_logprobs[0] == null and .top_logprobs[0] == null
       and (.token_logprobs[1:]|all(. <= 0)) and (.top_logprobs[1:]|all(length == 1 or length == 2)) and .text_offset[0] == 0
       and (.text_offset|. == sort))' \
  <(post /v1/completions '{"prompt":[3,4,5],"max_tokens":2,"ignore_eos":true,"logprobs":1,"echo":true}' >/dev/null; cat "$WORK/body")
check "completions: prompt_logprobs in vLLM's shape" \
  jqe '.choices[0].prompt_logprobs | length == 3 and .[0] == null and (.[1]|has("4")) and (.[2]["5"]|has("logprob") and has("rank") and has("decoded_token"))' \
  <(post /v1/completions '{"prompt":[3,4,5],"max_tokens":1,"prompt_logprobs":0}' >/dev/null; cat "$WORK/body")
check "completions stream: echo with logprobs in the first chunk" \
  eq "$(curl -sN -m 30 "${AUTH[@]}" "${JSON[@]}" "$URL/v1/completions" -d '{"prompt":[3,4,5],"max_tokens":2,"ignore_eos":true,"logprobs":0,"echo":true,"stream":true}' |
        sed -n 's/^data: //p' | grep -v DONE | jq -s -c '[(.[0].choices[0].logprobs.tokens|length), .[0].choices[0].logprobs.token_logprobs[0], (map(.choices[0].logprobs.tokens|length)|add)]')" "[4,null,5]"
check "prompt_logprobs with stream is a 400 naming it" \
  eq "$(post /v1/completions '{"prompt":[3,4],"max_tokens":1,"prompt_logprobs":1,"stream":true}'; body .error.param)" "400prompt_logprobs"
check "completions stream: text_completion chunks, usage, [DONE]" \
  eq "$(curl -sN -m 30 "${AUTH[@]}" "${JSON[@]}" "$URL/v1/completions" -d '{"prompt":[1,2,3],"max_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}' |
        sed -n 's/^data: //p' | grep -v DONE | jq -s -c '[(all(.object == "text_completion")), .[-1].usage.completion_tokens, (map(.choices[0].text // "")|length > 0)]')" "[true,4,true]"
check "a stop_token_ids token: finish_reason stop, stop_reason its id as an integer (vLLM)" \
  eq "$(post /v1/completions '{"prompt":[1,2],"max_tokens":5,"logit_bias":{"100":100},"stop_token_ids":[100]}'; body '[.choices[0].finish_reason, .choices[0].stop_reason] | tojson')" '200["stop",100]'
check "logit_bias forces a token" \
  eq "$(post /v1/completions '{"prompt":[1,2],"max_tokens":5,"ignore_eos":true,"logit_bias":{"100":100},"logprobs":0,"return_tokens_as_token_ids":true}'; body '.choices[0].logprobs.tokens|unique|@csv')" '200"token_id:100"'
check "chat logprobs: top_logprobs=2 per token" \
  jqe '.choices[0].logprobs.content | length == 4 and all(.top_logprobs|length == 2) and all(.bytes|length > 0)' \
  <(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":4,\"ignore_eos\":true,\"logprobs\":true,\"top_logprobs\":2}" >/dev/null; cat "$WORK/body")

# --- JSON mode (response_format json_object) ---
check "json mode: 200" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":30,\"response_format\":{\"type\":\"json_object\"}}")" 200
check "json mode: an object when stopped, else the start of one" \
  jqe '.choices[0] | if .finish_reason == "stop" then (.message.content | fromjson | type) == "object"
                     else .finish_reason == "length" and (.message.content | test("^\\s*\\{")) end' "$WORK/body"
open_id=$(post /tokenize '{"prompt":"{"}' >/dev/null; body '.tokens[0]')
close_id=$(post /tokenize '{"prompt":"}"}' >/dev/null; body '.tokens[0]')
check "json mode steered to {}: the object, then EOS" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":20,\"response_format\":{\"type\":\"json_object\"},\"logit_bias\":{\"$open_id\":100,\"$close_id\":100}}"; body '.choices[0].message.content + " " + .choices[0].finish_reason')" "200{} stop"

# --- structured outputs (response_format json_schema) ---
# A schema whose documents are bounded (an enum, a boolean; whitespace runs are capped at 40
# bytes), so that generation must end with a whole document within 440 tokens.
SCHEMA='{"type":"object","properties":{"ok":{"type":"boolean"},"color":{"enum":["red","green","blue"]}},"required":["ok","color"],"additionalProperties":false}'
RF="{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"answer\",\"strict\":true,\"schema\":$SCHEMA}}"
valid_doc='fromjson | (keys_unsorted == ["ok","color"]) and (.ok|type) == "boolean" and (.color|IN("red","green","blue"))'
check "json_schema chat: 200" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":440,\"response_format\":$RF}")" 200
check "json_schema chat: stopped with a document valid against the schema" \
  jqe ".choices[0].finish_reason == \"stop\" and (.choices[0].message.content | $valid_doc)" "$WORK/body"
echo "    json_schema chat document: $(body .choices[0].message.content | tr -s ' \n\t' ' ')"
check "json_schema completions: 200" eq "$(post /v1/completions "{\"prompt\":\"Answer:\",\"max_tokens\":440,\"temperature\":1,\"seed\":3,\"response_format\":$RF}")" 200
check "json_schema completions: stopped with a valid document" \
  jqe ".choices[0].finish_reason == \"stop\" and (.choices[0].text | $valid_doc)" "$WORK/body"
curl -sN -m 60 -o "$WORK/stream_js" "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" \
  -d "{\"messages\":$MSG,\"max_tokens\":440,\"stream\":true,\"temperature\":1,\"seed\":8,\"response_format\":$RF}"
{ sed -n 's/^data: //p' "$WORK/stream_js" | grep -v '^\[DONE\]$' || true; } > "$WORK/chunks_js"
check "json_schema stream: the deltas join into a valid document" \
  jqe -s "([.[].choices[0].delta.content // empty] | join(\"\") | $valid_doc) and (map(.choices[0].finish_reason) | index(\"stop\") != null)" "$WORK/chunks_js"
# Malformed or unsupported schemas: 400 with the path of the offending field as param.
schema_param() {
  post /v1/chat/completions "{\"messages\":$MSG,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":$1}}" >/dev/null
  echo "$(jq -r '.error.param' "$WORK/body")"
}
S=response_format.json_schema.schema
check "json_schema without schema: 400" eq "$(schema_param '{"name":"x"}')" "$S"
check "json_schema without name: 400" eq "$(schema_param '{"schema":{}}')" "response_format.json_schema.name"
check "json_schema: schema not an object" eq "$(schema_param '{"name":"x","schema":[1]}')" "$S"
check "json_schema: unknown type name" eq "$(schema_param '{"name":"x","schema":{"type":"text"}}')" "$S.type"
check "json_schema: unsupported keyword named" eq "$(schema_param '{"name":"x","schema":{"properties":{"a":{"type":"string","pattern":"^a"}}}}')" "$S.properties.a.pattern"
check "  ... in the message" jqe '.error.message | test("pattern")' "$WORK/body"
check "  ... an invalid_request_error" is_error 400 invalid_request_error ""
check "json_schema: bad \$ref" eq "$(schema_param '{"name":"x","schema":{"$ref":"#/$defs/nope"}}')" "$S.\$ref"
check "json_schema: required names a missing property" eq "$(schema_param '{"name":"x","schema":{"properties":{"a":{}},"required":["b"]}}')" "$S.required[0]"
check "json_schema: a required self-reference admits no document" eq "$(schema_param '{"name":"x","schema":{"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]}}')" "$S"
# vLLM's extras through extra_body: guided_json (a JSON string of the schema here) and
# structured_outputs.json go the json_schema path.
check "guided_json completions: 200" eq "$(post /v1/completions "{\"prompt\":\"Answer:\",\"max_tokens\":440,\"temperature\":1,\"seed\":5,\"guided_json\":$(jq -cn --arg s "$SCHEMA" '$s')}")" 200
check "guided_json completions: stopped with a valid document" \
  jqe ".choices[0].finish_reason == \"stop\" and (.choices[0].text | $valid_doc)" "$WORK/body"
check "structured_outputs.json chat: 200" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":440,\"temperature\":1,\"seed\":6,\"structured_outputs\":{\"json\":$SCHEMA}}")" 200
check "structured_outputs.json chat: stopped with a valid document" \
  jqe ".choices[0].finish_reason == \"stop\" and (.choices[0].message.content | $valid_doc)" "$WORK/body"
check "the same schema in response_format and guided_json: 200" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":440,\"response_format\":$RF,\"guided_json\":$SCHEMA}")" 200
check "  ... a valid document" jqe ".choices[0].message.content | $valid_doc" "$WORK/body"
extra_param() {
  post /v1/chat/completions "{\"messages\":$MSG,$1}" >/dev/null
  echo "$(jq -r '.error.param' "$WORK/body")"
}
check "guided_json: unsupported keyword named" eq "$(extra_param '"guided_json":{"type":"string","pattern":"^a"}')" "guided_json.pattern"
check "structured_outputs.json: unsupported keyword named" eq "$(extra_param '"structured_outputs":{"json":{"type":"number","minimum":0}}')" "structured_outputs.json.minimum"
check "response_format json_object with a different guided_json: 400" eq "$(extra_param "\"response_format\":{\"type\":\"json_object\"},\"guided_json\":$SCHEMA")" "guided_json"
check "  ... naming both" jqe '.error.message | test("response_format") and test("guided_json")' "$WORK/body"
check "guided_choice: 400" eq "$(extra_param '"guided_choice":["yes","no"]')" "guided_choice"
check "structured_outputs.regex: 400" eq "$(extra_param '"structured_outputs":{"regex":"a+"}')" "structured_outputs.regex"
check "the server still answers after the 400s" eq "$(post /v1/completions '{"prompt":"hi","max_tokens":2}')" 200

# --- prefix caching: the second turn starts from the first turn's prompt ---
LONG="$(printf 'tell me about the weather in a long and winding sentence number %s, ' 1 2 3 4 5 6)"
T1="[{\"role\":\"user\",\"content\":\"$LONG\"}]"
check "turn 1: 200" eq "$(post /v1/chat/completions "{\"messages\":$T1,\"max_tokens\":6,\"ignore_eos\":true}")" 200
p1=$(body .usage.prompt_tokens)
a1=$(body '.choices[0].message.content | @json')
check "turn 1: a prompt of 64+ tokens, nothing cached" eq "$(body '.usage.prompt_tokens >= 64 and .usage.prompt_tokens_details.cached_tokens == 0')" true
T2="[{\"role\":\"user\",\"content\":\"$LONG\"},{\"role\":\"assistant\",\"content\":$a1},{\"role\":\"user\",\"content\":\"and tomorrow?\"}]"
check "turn 2: 200" eq "$(post /v1/chat/completions "{\"messages\":$T2,\"max_tokens\":4}")" 200
# The first turn left its prompt and its answer (but the last token); how much of the answer
# the second turn's rendering shares depends on how its text re-tokenizes.
c2=$(body .usage.prompt_tokens_details.cached_tokens)
check "turn 2: the first turn's prompt is cached, and not the whole prompt" \
  eq "$(body ".usage.prompt_tokens_details.cached_tokens >= $p1 and .usage.prompt_tokens_details.cached_tokens < .usage.prompt_tokens")" true
check "metrics: prefix cache hits counted" test "$(curl -s -m 10 "$URL/metrics" | awk '/^vllm:prefix_cache_hits_total/ {print $2}' | cut -d. -f1)" -ge "$p1"
curl -sN -m 30 -o "$WORK/stream_t2" "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" \
  -d "{\"messages\":$T2,\"max_tokens\":3,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}"
{ sed -n 's/^data: //p' "$WORK/stream_t2" | grep -v '^\[DONE\]$' || true; } > "$WORK/chunks_t2"
check "turn 2 again, continuous usage: every chunk carries the cached tokens" \
  jqe -s "length >= 2 and all(.usage.prompt_tokens_details.cached_tokens == $c2)" "$WORK/chunks_t2"

# --- prefix caching: requests sharing a system prompt share its prefill ---
SYS="$(printf 'You are a careful assistant for a weather service; rule %s: answer briefly and cite the station. ' 1 2 3 4 5)"
S1="[{\"role\":\"system\",\"content\":\"$SYS\"},{\"role\":\"user\",\"content\":\"rain in Paris?\"}]"
S2="[{\"role\":\"system\",\"content\":\"$SYS\"},{\"role\":\"user\",\"content\":\"and snow in Oslo tomorrow morning?\"}]"
sys_len=$(post /tokenize "{\"messages\":$S1,\"return_token_strs\":true}" >/dev/null; body '.token_strs | index("<|im_user|>")')
check "system prompt: 64+ tokens before the first user marker" test "$sys_len" -ge 64
check "system prompt, first request: 200, nothing cached" \
  eq "$(post /v1/chat/completions "{\"messages\":$S1,\"max_tokens\":3}"; body .usage.prompt_tokens_details.cached_tokens)" "2000"
check "system prompt, another user message: the system prompt is cached" \
  eq "$(post /v1/chat/completions "{\"messages\":$S2,\"max_tokens\":3}"; body .usage.prompt_tokens_details.cached_tokens)" "200$sys_len"

# --- tokenize / detokenize ---
check "tokenize" eq "$(post /tokenize '{"prompt":"Hello world"}'; body '(.count == (.tokens|length)) and .max_model_len == 512')" "200true"
ids=$(jq -c .tokens "$WORK/body")
check "detokenize round trip" eq "$(post /detokenize "{\"tokens\":$ids}"; body .prompt)" "200Hello world"
check "tokenize messages uses the chat template" \
  eq "$(post /tokenize "{\"messages\":$MSG,\"return_token_strs\":true}"; body '[.token_strs[0], .token_strs[-1]]|@csv')" '200"<|im_system|>","<|im_middle|>"'

# --- errors ---
check "malformed JSON: 400" eq "$(post /v1/chat/completions '{"messages": [')" 400
check "  ... error object" is_error 400 invalid_request_error ""
check "empty messages: 400 naming messages" eq "$(post /v1/chat/completions '{"messages":[]}'; body .error.param)" "400messages"
check "temperature 5: 400 naming temperature" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"temperature\":5}"; body .error.param)" "400temperature"
check "priority under fcfs: accepted (and ignored, as vLLM)" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":2,\"priority\":3}")" 200
check "image part: 400" eq "$(post /v1/chat/completions '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}'; body .error.param)" "400messages[0].content[0].type"
check "unknown model: 404 model_not_found" eq "$(post /v1/chat/completions "{\"model\":\"gpt-4o\",\"messages\":$MSG}"; body .error.code)" "404model_not_found"
check "prompt + max_tokens over the context: 400" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"max_tokens\":100000}")" 400
check "  ... context_length_exceeded, 'maximum context length'" \
  jqe '.error.code == "context_length_exceeded" and .error.param == "messages" and (.error.message|contains("maximum context length is 512 tokens"))' "$WORK/body"
long=$(node -e 'console.log(JSON.stringify(Array.from({length:600},(_, i)=>i%200+1)))')
check "over-long prompt: 400 maximum context length, naming prompt" \
  eq "$(post /v1/completions "{\"prompt\":$long,\"max_tokens\":1}"; body '(.error.message|contains("maximum context length")) and .error.param == "prompt"')" "400true"
check "completions: prompt + max_tokens over the context names prompt" \
  eq "$(post /v1/completions '{"prompt":[1,2,3],"max_tokens":600}'; body '.error.code + " " + .error.param')" "400context_length_exceeded prompt"
head -c 1500000 /dev/zero | tr '\0' 'a' > "$WORK/big"
check "body over --max-body-mb: 413" \
  eq "$(curl -s -m 30 -o "$WORK/body" -w '%{http_code}' "${AUTH[@]}" "${JSON[@]}" "$URL/v1/completions" --data-binary "@$WORK/big")" 413
check "  ... error object" is_error 413 invalid_request_error request_too_large
check "unknown route: 404 error object" eq "$(post /v1/embeddings '{"input":"x"}')" 404
check "  ... error object" is_error 404 invalid_request_error not_found
check "GET on a POST route: 405, Allow: POST" \
  eq "$(curl -s -m 10 -D "$WORK/headers" -o "$WORK/body" -w '%{http_code}' "${AUTH[@]}" "$URL/v1/chat/completions"; header allow)" "405POST"
check "  ... error object" is_error 405 invalid_request_error ""
check "POST on a GET route: 405, Allow: GET" \
  eq "$(curl -s -m 10 -D "$WORK/headers" -o /dev/null -w '%{http_code}' "$URL/health" -d x; header allow)" "405GET"

# --- tools: the mapping through the server (the random model never calls on its own) ---
TOOLS='[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]'
HIST='[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_abc123","content":"sunny"}]'
check "tool history renders in Kimi form with canonical ids" \
  eq "$(post /tokenize "{\"messages\":$HIST,\"tools\":$TOOLS,\"return_token_strs\":true}"; body '.token_strs|join("")|(contains("<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>") and contains("## Return of functions.get_weather:0") and (contains("call_abc123")|not) and contains("tool_declare"))')" "200true"
check "chat with tool history: 200" eq "$(post /v1/chat/completions "{\"messages\":$HIST,\"tools\":$TOOLS,\"max_tokens\":4}")" 200
check "named tool_choice: a tool call with the Kimi id" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"tools\":$TOOLS,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},\"max_tokens\":5}"; body '.choices[0].message.tool_calls[0] | .id + " " + .type + " " + .function.name')" "200functions.get_weather:0 function get_weather"
curl -sN -m 30 "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" -o "$WORK/tstream" \
  -d "{\"messages\":$MSG,\"tools\":$TOOLS,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},\"max_tokens\":6,\"stream\":true}"
check "named tool_choice streamed: first delta has role and the call's id, type, name" \
  jqe -s '.[0].choices[0].delta | .role == "assistant" and .tool_calls[0].index == 0 and .tool_calls[0].id == "functions.get_weather:0" and .tool_calls[0].type == "function" and .tool_calls[0].function.name == "get_weather"' \
  <(sed -n 's/^data: {/{/p' "$WORK/tstream")
check "named tool_choice streamed: no marker text leaks into content" \
  test -z "$(sed -n 's/^data: {/{/p' "$WORK/tstream" | jq -r '.choices[0].delta.content // empty' | grep -F '<|')"
# Forced calls are masked to Kimi's tool-call grammar: a declared function, arguments valid for its
# schema (short documents only here, so the random model must finish), the section end, EOS.
STOOLS='[{"type":"function","function":{"name":"set_unit","parameters":{"type":"object","properties":{"unit":{"enum":["c","f"]},"ok":{"type":"boolean"}},"required":["unit","ok"],"additionalProperties":false}}},{"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{},"additionalProperties":false}}}]'
NAMED='{"type":"function","function":{"name":"set_unit"}}'
VALID='(.function.name as $n | .function.arguments | fromjson | if $n == "set_unit" then ((.unit == "c" or .unit == "f") and (.ok | type == "boolean") and length == 2) else . == {} end)'
check "named tool_choice: arguments valid for the schema, id numbered after the history's call" \
  eq "$(post /v1/chat/completions "{\"messages\":$HIST,\"tools\":$STOOLS,\"tool_choice\":$NAMED}"; body ".choices[0] | [.finish_reason, (.message.tool_calls | length), .message.tool_calls[0].id, (.message.tool_calls[0] | $VALID)] | @csv")" '200"tool_calls",1,"functions.set_unit:1",true'
check "required tool_choice, parallel_tool_calls false: one call of a declared function" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"tools\":$STOOLS,\"tool_choice\":\"required\",\"parallel_tool_calls\":false,\"temperature\":1,\"seed\":3}"; body ".choices[0] | [.finish_reason, (.message.tool_calls | length), (.message.tool_calls[0] | .id == \"functions.\" + .function.name + \":0\" and $VALID)] | @csv")" '200"tool_calls",1,true'
curl -sN -m 30 "${AUTH[@]}" "${JSON[@]}" "$URL/v1/chat/completions" -o "$WORK/tstream2" \
  -d "{\"messages\":$MSG,\"tools\":$STOOLS,\"tool_choice\":$NAMED,\"stream\":true}"
check "named tool_choice streamed: the argument deltas join into valid arguments" \
  jqe -s "[.[] | .choices[0] | select(. != null)] | ([.[].delta.tool_calls[0].function.arguments // empty] | add | {function: {name: \"set_unit\", arguments: .}} | $VALID) and .[-1].finish_reason == \"tool_calls\"" \
  <(sed -n 's/^data: {/{/p' "$WORK/tstream2")
check "required tool_choice with response_format json_object: 400" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"tools\":$STOOLS,\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_object\"}}"; body .error.param)" "400response_format"
PTOOLS='[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"code":{"type":"string","pattern":"^a"}}}}}]'
check "required tool_choice, a parameters keyword the server cannot enforce: 400 naming it" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"tools\":$PTOOLS,\"tool_choice\":\"required\"}"; body .error.param)" "400tools[0].function.parameters.properties.code.pattern"
check "  ... tool_choice auto leaves the schema alone" \
  eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"tools\":$PTOOLS,\"max_tokens\":2}")" 200
check "tool with a '.' in its name: 400" eq "$(post /v1/chat/completions "{\"messages\":$MSG,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a.b\"}}]}"; body .error.param)" "400tools[0].function.name"

# --- concurrency: 8 streams (= --max-num-seqs) at once all complete ---
pids=()
for i in $(seq 1 8); do
  curl -sN -m 60 -o "$WORK/par$i" "${AUTH[@]}" "${JSON[@]}" "$URL/v1/completions" \
    -d '{"prompt":[1,2,3],"max_tokens":20,"ignore_eos":true,"stream":true}' &
  pids+=($!)
done
wait "${pids[@]}" || true
done_count=$(grep -l 'data: \[DONE\]' "$WORK"/par* | wc -l)
check "8 concurrent streams all finish" eq "$done_count" 8

# --- metrics ---
get /metrics >/dev/null
for name in vllm:num_requests_running vllm:num_requests_waiting vllm:kv_cache_usage_perc vllm:prompt_tokens_total \
            vllm:generation_tokens_total vllm:request_success_total vllm:time_to_first_token_seconds_bucket \
            vllm:e2e_request_latency_seconds_count vllm:request_prompt_tokens_bucket \
            vllm:inter_token_latency_seconds_bucket vllm:time_per_output_token_seconds_count \
            vllm:request_time_per_output_token_seconds_count vllm:request_queue_time_seconds_bucket \
            vllm:request_prefill_time_seconds_bucket vllm:request_decode_time_seconds_count \
            vllm:request_inference_time_seconds_sum vllm:iteration_tokens_total_bucket \
            vllm:request_params_n_count vllm:request_max_num_generation_tokens_bucket; do
  check "metrics has $name" grep -q "^$name{" "$WORK/body"
done
check "metrics: cache_config_info" grep -q '^vllm:cache_config_info{block_size="64",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="[0-9]*",engine="0"} 1$' "$WORK/body"
check "metrics content type" eq "$(header content-type)" "text/plain; version=0.0.4; charset=utf-8"
check "generation tokens were counted" test "$(metric "$P" 'vllm:generation_tokens_total{')" -gt 50
# vLLM's semantics: an inter-token gap per token after each sample's first, a queue time per request.
itl0=$(metric "$P" 'vllm:inter_token_latency_seconds_count{')
queue0=$(metric "$P" 'vllm:request_queue_time_seconds_count{')
n0=$(metric "$P" 'vllm:request_params_n_count{'); len0=$(metric "$P" 'finished_reason="length"')
pre0=$(metric "$P" 'vllm:request_prefill_time_seconds_count{'); inf0=$(metric "$P" 'vllm:request_inference_time_seconds_count{')
it0=$(metric "$P" 'vllm:iteration_tokens_total_sum{')
post /v1/completions '{"prompt":[1,2,3],"max_tokens":8,"ignore_eos":true,"n":2}' >/dev/null
check "metrics: 2 samples x 7 inter-token gaps" eq "$(( $(metric "$P" 'vllm:inter_token_latency_seconds_count{') - itl0 ))" 14
check "metrics: one queue time for the request" eq "$(( $(metric "$P" 'vllm:request_queue_time_seconds_count{') - queue0 ))" 1
# vLLM counts each sample as a (child) request, and n once per parent request.
check "metrics: n observed once per request" eq "$(( $(metric "$P" 'vllm:request_params_n_count{') - n0 ))" 1
check "metrics: each sample's finish counted" eq "$(( $(metric "$P" 'finished_reason="length"') - len0 ))" 2
check "metrics: a prefill time per sample" eq "$(( $(metric "$P" 'vllm:request_prefill_time_seconds_count{') - pre0 ))" 2
check "metrics: an inference time per sample" eq "$(( $(metric "$P" 'vllm:request_inference_time_seconds_count{') - inf0 ))" 2
it=$(( $(metric "$P" 'vllm:iteration_tokens_total_sum{') - it0 ))  # 2 x 7 decode inputs + up to 3 prompt
check "metrics: step tokens 2x7 decodes + prompt ($it)" test "$it" -ge 14 -a "$it" -le 17

finish
